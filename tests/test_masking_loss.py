"""Tube / random / running-cell masks and the masked norm-pix loss."""

import pytest
import torch

from data.errors import UserError
from models.videomae import patchify_target
from pretrain.loss import reconstruction_loss
from pretrain.masking import random_mask, running_cell_mask, tube_mask, validate_mask_ratio


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- masks -----------------------------------------------------------------------------------------------------------


def test_tube_mask_counts_exact_and_constant_over_time():
    mask = tube_mask(4, (8, 14, 14), 0.9, _gen())
    assert mask.shape == (4, 1568) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [1408] * 4  # 176 of 196 per slice
    slices = mask.view(4, 8, 196)
    assert (slices.sum(dim=2) == 176).all()
    assert (slices == slices[:, :1]).all()  # the same positions in every slice
    assert not (slices[0, 0] == slices[1, 0]).all()  # each sample draws its own


def test_masks_reproducible_from_seed():
    for fn, ratio in [(tube_mask, 0.9), (random_mask, 0.75), (running_cell_mask, 0.5)]:
        a = fn(3, (4, 6, 6), ratio, _gen(7))
        b = fn(3, (4, 6, 6), ratio, _gen(7))
        assert torch.equal(a, b), fn.__name__
    assert not torch.equal(tube_mask(3, (4, 6, 6), 0.5, _gen(7)), tube_mask(3, (4, 6, 6), 0.5, _gen(8)))


def test_random_mask_count_exact_per_sample():
    mask = random_mask(5, (8, 14, 14), 0.9, _gen())
    assert mask.sum(dim=1).tolist() == [int(0.9 * 1568)] * 5
    assert not (mask.view(5, 8, 196) == mask.view(5, 8, 196)[:, :1]).all()  # not tubes


def test_tube_mask_positions_uniform():
    # Every position of a slice is masked about ratio of the time.
    freq = tube_mask(4000, (1, 4, 4), 0.5, _gen()).float().mean(dim=0)
    assert torch.allclose(freq, torch.full_like(freq, 0.5), atol=0.04)


def test_running_cell_pattern():
    t, h, w = 8, 4, 6
    mask = running_cell_mask(6, (t, h, w), 0.5, _gen())
    assert mask.shape == (6, t * h * w)
    grid = mask.view(6, t, h, w)
    # Half of every slice is reconstructed; each slice is one 2x2 cell tiled over the grid.
    assert (grid.sum(dim=(2, 3)) == h * w // 2).all()
    cell = grid[:, :, :2, :2]
    assert torch.equal(grid, cell.repeat(1, 1, h // 2, w // 2))
    # The cell pattern runs by one slot per slice: slice i+1's cell is slice i's read one slot further.
    flat = cell.reshape(6, t, 4)
    assert torch.equal(flat[:, 1:], torch.roll(flat[:, :-1], shifts=-1, dims=2))
    # Over any 4 consecutive slices every position is reconstructed at least once.
    assert (~grid[:, :4]).any(dim=1).all()


def test_running_cell_ratios():
    for ratio, kept in [(0.25, 3), (0.5, 2), (0.75, 1)]:
        mask = running_cell_mask(2, (2, 2, 2), ratio, _gen())
        assert (~mask).view(2, 2, 4).sum(dim=2).eq(kept).all()


@pytest.mark.parametrize(
    ("ratio", "grid", "kind", "text"),
    [
        (1.01, (8, 14, 14), "tube", "outside (0, 1)"),
        (0.0, (8, 14, 14), "tube", "outside (0, 1)"),
        (-0.1, (8, 14, 14), "random", "outside (0, 1)"),
        (0.001, (8, 14, 14), "tube", "masks 0 of the 196 tokens of a slice; raise it"),
        (0.2, (8, 14, 14), "running_cell", "--decoder-mask-ratio 0.2 masks 0 of the 4"),
        (0.5, (8, 7, 7), "running_cell", "token grid is 7x7"),
    ],
)
def test_validate_mask_ratio_rejects(ratio, grid, kind, text):
    with pytest.raises(UserError, match=text.replace("(", r"\(").replace(")", r"\)")):
        validate_mask_ratio(ratio, grid, kind)


def test_validate_mask_ratio_returns_count():
    assert validate_mask_ratio(0.9, (8, 14, 14)) == 176
    assert validate_mask_ratio(0.9, (8, 14, 14), "random") == 1411
    assert validate_mask_ratio(0.999, (8, 2, 2)) == 3  # one token of each slice stays visible
    assert validate_mask_ratio(0.5, (8, 14, 14), "running_cell") == 2


def test_validate_mask_ratio_all_masked():
    with pytest.raises(UserError, match="--mask-ratio 1.0 masks all 196 tokens of a slice; lower it"):
        validate_mask_ratio(1.0, (8, 14, 14))
    with pytest.raises(UserError, match="masks all 4 tokens of each 2x2 running cell"):
        validate_mask_ratio(1.0, (8, 14, 14), "running_cell")
    with pytest.raises(UserError, match="--mask-ratio 1.5 is outside"):
        tube_mask(1, (8, 14, 14), 1.5, _gen())


def test_mask_on_generator_device():
    assert tube_mask(2, (2, 2, 2), 0.5, _gen()).device.type == "cpu"


# --- target and loss -------------------------------------------------------------------------------------------------


def _clip(b=2, t=4, hw=32, seed=0):
    return torch.randn(b, 3, t, hw, hw, generator=_gen(seed))


def test_norm_pix_target_stats():
    x = _clip()
    target = patchify_target(x, patch_size=16, tubelet_size=2)  # (B, L, 2*16*16*3)
    assert target.shape == (2, 2 * 2 * 2, 1536) and target.dtype == torch.float32
    per_channel = target.view(2, 8, 512, 3)  # (p c): pixel-major, channel last
    assert per_channel.mean(dim=2).abs().max() < 1e-5
    assert torch.allclose(per_channel.std(dim=2, unbiased=True), torch.ones(2, 8, 3), atol=1e-4)


def test_raw_target_is_unnormalised_pixels_in_order():
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = torch.rand(1, 3, 2, 16, 32, generator=_gen())
    x = (pixels - mean.view(1, 3, 1, 1, 1)) / std.view(1, 3, 1, 1, 1)
    target = patchify_target(x, patch_size=16, tubelet_size=2, normalize=False)  # (1, 2, 1536)
    # Token 1 is the right-hand patch; value index (p0 * 256 + p1 * 16 + p2) * 3 + c.
    p0, p1, p2, c = 1, 3, 5, 2
    assert torch.allclose(target[0, 1, (p0 * 256 + p1 * 16 + p2) * 3 + c], pixels[0, c, p0, p1, 16 + p2], atol=1e-6)


def _loss_inputs():
    x = _clip()
    mask = tube_mask(2, (2, 2, 2), 0.5, _gen(1))  # 4 masked of 8
    pred = torch.randn(2, 4, 1536, generator=_gen(2))
    return x, mask, pred


def _loss(pred, x, mask, **kw):
    return reconstruction_loss(pred, x, mask, patch_size=16, tubelet_size=2, **kw)


def _tubelet_slices(token: int):
    t, rest = divmod(token, 4)
    h, w = divmod(rest, 2)
    return slice(2 * t, 2 * t + 2), slice(16 * h, 16 * h + 16), slice(16 * w, 16 * w + 16)


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_ignores_visible_tokens(normalize):
    x, mask, pred = _loss_inputs()
    base = _loss(pred, x, mask, normalize_target=normalize)
    visible = int((~mask[0]).nonzero()[0])
    masked = int(mask[0].nonzero()[0])
    x_vis = x.clone()
    x_vis[(0, slice(None), *_tubelet_slices(visible))] = torch.randn(3, 2, 16, 16)
    assert torch.equal(_loss(pred, x_vis, mask, normalize_target=normalize), base)
    x_mask = x.clone()
    x_mask[(0, slice(None), *_tubelet_slices(masked))] = torch.randn(3, 2, 16, 16)
    assert not torch.allclose(_loss(pred, x_mask, mask, normalize_target=normalize), base)
    pred2 = pred.clone()
    pred2[0, 0] += 1.0
    assert not torch.allclose(_loss(pred2, x, mask, normalize_target=normalize), base)


def test_loss_equals_mse_on_masked_targets():
    x, mask, pred = _loss_inputs()
    target = patchify_target(x, 16, 2)[mask].view(2, 4, 1536)
    assert torch.allclose(_loss(pred, x, mask), torch.nn.functional.mse_loss(pred, target), atol=1e-6)
    assert torch.allclose(_loss(target, x, mask), torch.tensor(0.0), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_fp32_loss(dtype):
    x, mask, pred = _loss_inputs()
    loss = _loss(pred.to(dtype), x.to(dtype), mask)
    assert loss.dtype == torch.float32
    ref = _loss(pred.to(dtype).float(), x.to(dtype).float(), mask)
    assert torch.equal(loss, ref)


def test_loss_with_decoder_mask_counts_masked_decoded_tokens_only():
    x = _clip()
    mask = tube_mask(2, (2, 2, 2), 0.5, _gen(1))
    decoder_mask = running_cell_mask(2, (2, 2, 2), 0.5, _gen(3))  # decodes 4 of 8 tokens
    decoded = ~decoder_mask
    pred = torch.randn(2, 4, 1536, generator=_gen(2))
    loss = _loss(pred, x, mask, decoder_mask=decoder_mask)
    target = patchify_target(x, 16, 2)[decoded].view(2, 4, 1536)
    weight = mask[decoded].view(2, 4).float()
    per_token = (pred - target).pow(2).mean(dim=-1)
    assert torch.allclose(loss, (per_token * weight).sum() / weight.sum(), atol=1e-6)
    # A prediction for a decoded but visible token does not count.
    hit = (decoded & ~mask)[0].nonzero()
    if len(hit):
        slot = int(decoded[0, : int(hit[0])].sum())
        pred2 = pred.clone()
        pred2[0, slot] += 5.0
        assert torch.equal(_loss(pred2, x, mask, decoder_mask=decoder_mask), loss)


def test_loss_shape_mismatch_raises():
    x, mask, pred = _loss_inputs()
    with pytest.raises(ValueError, match="do not match"):
        _loss(pred[:, :3], x, mask)


@pytest.mark.parametrize("mask_type,decoder_ratio", [("tube", 0.0), ("random", 0.0), ("tube", 0.5)])
def test_known_token_counts_give_the_same_step_without_reading_masks_back(monkeypatch, mask_type, decoder_ratio):
    from models import build_pretrain
    from pretrain.masking import token_counts

    torch.manual_seed(0)
    grid = (2, 4, 4)
    model = build_pretrain("vit_tiny", img_size=64, num_frames=4, encoder_depth=1, decoder_depth=1).eval()
    x = torch.randn(2, 3, 4, 64, 64)
    gen = torch.Generator().manual_seed(1)
    mask = (tube_mask if mask_type == "tube" else random_mask)(2, grid, 0.75, gen)
    decoder_mask = running_cell_mask(2, grid, decoder_ratio, gen) if decoder_ratio else None
    counts = token_counts(mask_type, 0.75, decoder_ratio, grid)
    assert counts[0] == int(mask.sum(1)[0])
    assert counts[1] == int((mask if decoder_mask is None else ~decoder_mask).sum(1)[0])
    pred = model(x, mask, decoder_mask)
    loss = reconstruction_loss(pred, x, mask, patch_size=16, tubelet_size=2, decoder_mask=decoder_mask)

    def no_host_read(self, *args):
        raise AssertionError("a mask was read back to the host")

    monkeypatch.setattr(torch.Tensor, "tolist", no_host_read)
    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    pred_known = model(x, mask, decoder_mask, counts=counts)
    loss_known = reconstruction_loss(pred_known, x, mask, patch_size=16, tubelet_size=2, decoder_mask=decoder_mask,
                                     num_decoded=counts[1])
    monkeypatch.undo()
    assert torch.equal(pred_known, pred) and torch.equal(loss_known, loss)
