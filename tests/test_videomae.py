"""VideoMAE compatibility: the release's state_dict layout, sinusoid table, forward semantics, and equality with the
Hugging Face `transformers` implementation on converted random weights."""

import math

import numpy as np
import pytest
import torch

from models import MODELS, build_classifier, build_pretrain
from models.videomae import VideoMAEClassifier, VideoMAEPretrain, sinusoid_table, token_positions
from pretrain.loss import reconstruction_loss
from pretrain.masking import running_cell_mask, tube_mask

# Tiny geometry shared by the peer tests: 4 frames of 32 x 32, tubelet 2 x 8 x 8 -> 2 x 4 x 4 = 32 tokens.
TINY = dict(img_size=32, patch_size=8, tubelet_size=2)
ENC = dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4)
DEC = dict(decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random (norms and biases too), so no equality holds by accident of the init."""
    g = _gen(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))


def _official_table(n_position: int, d_hid: int) -> torch.Tensor:
    """The release's numpy construction, written out (float64 then float32)."""
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for pos in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32)


# --- layout ----------------------------------------------------------------------------------------------------------


def _spec_block_keys(prefix: str) -> set[str]:
    names = ["norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
             "mlp.fc2.bias"]  # fmt: skip
    return {f"{prefix}.{n}" for n in names}


def test_vit_base_pretrain_state_dict_matches_release():
    with torch.device("meta"):
        model = build_pretrain("vit_base")
    sd = model.state_dict()
    expected = {"mask_token", "encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias", "encoder.norm.weight",
                "encoder.norm.bias", "decoder.norm.weight", "decoder.norm.bias", "decoder.head.weight",
                "decoder.head.bias", "encoder_to_decoder.weight"}  # fmt: skip
    for i in range(12):
        expected |= _spec_block_keys(f"encoder.blocks.{i}")
    for i in range(4):
        expected |= _spec_block_keys(f"decoder.blocks.{i}")
    assert len(sd) == 218
    assert set(sd) == expected
    assert not any("pos" in k for k in sd)  # sinusoid tables are computed, not stored
    assert sd["mask_token"].shape == (1, 1, 384)
    assert sd["encoder.patch_embed.proj.weight"].shape == (768, 3, 2, 16, 16)
    assert sd["encoder.blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert sd["encoder.blocks.0.attn.q_bias"].shape == (768,)
    assert sd["encoder_to_decoder.weight"].shape == (384, 768)
    assert sd["decoder.head.weight"].shape == (1536, 384)
    assert sum(p.numel() for p in model.encoder.parameters()) == 86_227_200  # ViT-B/16 video encoder
    assert model.token_grid == (8, 14, 14) and model.num_tokens == 1568


def test_vit_base_classifier_state_dict_matches_release():
    with torch.device("meta"):
        model = build_classifier("vit_base", 400)
    keys = set(model.state_dict())
    assert "fc_norm.weight" in keys and "head.weight" in keys and "patch_embed.proj.weight" in keys
    assert not any(k.startswith(("norm.", "encoder.")) or "pos" in k for k in keys)
    assert len(keys) == 2 + 12 * 13 + 2 + 2
    with torch.device("meta"):
        no_pool = build_classifier("vit_base", 400, use_mean_pooling=False)
    assert {"norm.weight", "norm.bias"} <= set(no_pool.state_dict()) and no_pool.fc_norm is None


def test_sizes_match_release():
    got = {n: (s.embed_dim, s.depth, s.num_heads, s.decoder_embed_dim, s.decoder_depth, s.decoder_num_heads)
           for n, s in MODELS.items()}  # fmt: skip
    assert got["vit_small"] == (384, 12, 6, 192, 4, 3)
    assert got["vit_base"] == (768, 12, 12, 384, 4, 6)
    assert got["vit_large"] == (1024, 24, 16, 512, 12, 8)
    assert got["vit_huge"] == (1280, 32, 16, 640, 12, 8)


def test_sinusoid_table_matches_release():
    assert torch.equal(sinusoid_table(200, 96), _official_table(200, 96))
    # The tail of the ViT-B grid, where a float32 angle would go wrong.
    table = sinusoid_table(1568, 32)
    assert torch.allclose(table[1500:], _official_table(1568, 32)[1500:], atol=1e-7, rtol=0)


def test_init_like_release():
    model = VideoMAEPretrain(**TINY, num_frames=4, **ENC, **DEC)
    assert model.mask_token.abs().max() <= 0.02 and model.mask_token.std() > 0
    blk = model.encoder.blocks[0]
    assert (blk.attn.q_bias == 0).all() and (blk.attn.v_bias == 0).all() and (blk.mlp.fc1.bias == 0).all()
    assert (blk.norm1.weight == 1).all() and (blk.norm1.bias == 0).all() and blk.norm1.eps == 1e-6
    bound = math.sqrt(6 / (64 + 192))  # xavier uniform for qkv (64 -> 192)
    assert blk.attn.qkv.weight.abs().max() <= bound and blk.attn.qkv.weight.abs().max() > 0.9 * bound
    clf = VideoMAEClassifier(**TINY, all_frames=4, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    assert clf.blocks[0].mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert 0 < clf.head.weight.abs().max() < 1e-4 and (clf.head.bias == 0).all()  # scaled by init_scale 1e-3


# --- forward semantics -----------------------------------------------------------------------------------------------


def _tiny_pretrain(**kw):
    return VideoMAEPretrain(**TINY, num_frames=4, **ENC, **DEC, **kw).eval()


def test_geometry_exposed():
    model = _tiny_pretrain()
    assert (model.patch_size, model.tubelet_size, model.token_grid, model.num_tokens) == (8, 2, (2, 4, 4), 32)
    assert model.img_size == (32, 32) and model.num_frames == 4


def test_prediction_ignores_masked_pixels():
    model = _tiny_pretrain()
    x = torch.randn(2, 3, 4, 32, 32, generator=_gen())
    mask = tube_mask(2, model.token_grid, 0.75, _gen(1))
    out = model(x, mask)
    assert out.shape == (2, 24, 384)
    # Scribble over the tubelet of a masked token: the encoder never sees it.
    tok = int(mask[0].nonzero()[0])
    t, rest = divmod(tok, 16)
    h, w = divmod(rest, 4)
    x2 = x.clone()
    x2[0, :, 2 * t : 2 * t + 2, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8] = 5.0
    assert torch.equal(model(x2, mask), out)
    x3 = x.clone()
    vis = int((~mask[0]).nonzero()[0])
    t, rest = divmod(vis, 16)
    h, w = divmod(rest, 4)
    x3[0, :, 2 * t : 2 * t + 2, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8] = 5.0
    assert not torch.allclose(model(x3, mask), out)


def test_same_weights_any_geometry():
    model = _tiny_pretrain()
    other = VideoMAEPretrain(img_size=(48, 64), patch_size=8, num_frames=8, **ENC, **DEC)
    other.load_state_dict(model.state_dict(), strict=True)
    assert other.token_grid == (4, 6, 8)
    mask = tube_mask(1, other.token_grid, 0.5, _gen())
    assert other(torch.randn(1, 3, 8, 48, 64), mask).shape == (1, 4 * 24, 384)


def test_bad_inputs_raise():
    model = _tiny_pretrain()
    x = torch.randn(2, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="does not match the model"):
        model(torch.randn(2, 3, 8, 32, 32), torch.zeros(2, 32, dtype=torch.bool))
    uneven = torch.zeros(2, 32, dtype=torch.bool)
    uneven[0, :3] = True
    uneven[1, :5] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        model(x, uneven)
    with pytest.raises(ValueError, match="bool"):
        model(x, uneven.long())


def test_token_positions_raster_order():
    sel = torch.tensor([[False, True, True, False], [True, False, False, True]])
    assert token_positions(sel).tolist() == [[1, 2], [0, 3]]


def test_decoder_mask_forward():
    model = _tiny_pretrain()
    x = torch.randn(2, 3, 4, 32, 32)
    mask = tube_mask(2, model.token_grid, 0.75, _gen(1))
    decoder_mask = running_cell_mask(2, model.token_grid, 0.5, _gen(2))
    out = model(x, mask, decoder_mask=decoder_mask)
    assert out.shape == (2, 16, 384)
    loss = reconstruction_loss(out, x, mask, patch_size=8, tubelet_size=2, decoder_mask=decoder_mask)
    assert torch.isfinite(loss)
    # With decoder_mask = ~mask the decoder predicts exactly the masked tokens, as without decoder masking.
    assert torch.equal(model(x, mask, decoder_mask=~mask), model(x, mask))


def test_attention_maps():
    model = _tiny_pretrain()
    x = torch.randn(2, 3, 4, 32, 32)
    mask = tube_mask(2, model.token_grid, 0.75, _gen())
    maps = model.attention_maps(x, mask)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 8, 8)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 4, 8), atol=1e-6)
    clf = VideoMAEClassifier(**TINY, all_frames=4, embed_dim=64, depth=3, num_heads=4, num_classes=5)
    assert [m.shape for m in clf.attention_maps(x)] == [(2, 4, 32, 32)] * 3


def test_layer_ids_like_release():
    clf = VideoMAEClassifier(**TINY, all_frames=4, embed_dim=64, depth=3, num_heads=4, num_classes=5)
    ids = {n: clf.get_layer_id(n) for n, _ in clf.named_parameters()}
    assert clf.num_layer_ids == 5
    assert ids["patch_embed.proj.weight"] == 0 and ids["blocks.0.norm1.weight"] == 1
    assert ids["blocks.2.mlp.fc2.bias"] == 3 and ids["fc_norm.weight"] == 4 and ids["head.weight"] == 4
    model = _tiny_pretrain()
    assert model.get_layer_id("encoder.blocks.1.attn.qkv.weight") == 2
    assert model.get_layer_id("decoder.blocks.0.attn.qkv.weight") == model.get_layer_id("mask_token") == 3
    assert clf.no_weight_decay() == {"pos_embed", "cls_token"} and "mask_token" in model.no_weight_decay()


def test_timm_layer_decay_groups():
    from timm.optim import param_groups_layer_decay

    clf = VideoMAEClassifier(**TINY, all_frames=4, embed_dim=64, depth=3, num_heads=4, num_classes=5)
    groups = param_groups_layer_decay(clf, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({round(g["lr_scale"], 6) for g in groups})
    assert scales == sorted(round(0.75**i, 6) for i in range(5))


def test_reset_classifier():
    clf = VideoMAEClassifier(**TINY, all_frames=4, embed_dim=64, depth=1, num_heads=4, num_classes=5)
    x = torch.randn(2, 3, 4, 32, 32)
    clf.reset_classifier(7)
    assert clf(x).shape == (2, 7)
    clf.reset_classifier(0)
    assert clf(x).shape == (2, 64)
    assert clf.forward_head(clf.forward_features(x), pre_logits=True).shape == (2, 64)
    model = _tiny_pretrain()
    model.reset_classifier(10)
    mask = tube_mask(2, model.token_grid, 0.5, _gen())
    assert model(x, mask).shape == (2, 16, 10)


# --- peer: Hugging Face transformers ---------------------------------------------------------------------------------


def _hf():
    return pytest.importorskip("transformers")


def _hf_config(num_labels=0, use_mean_pooling=False, norm_pix_loss=True):
    return _hf().VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_channels=3,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
        decoder_intermediate_size=128, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu",
        use_mean_pooling=use_mean_pooling, norm_pix_loss=norm_pix_loss, num_labels=num_labels,
    )  # fmt: skip


def _block_to_hf(sd: dict, src: str, dst: str) -> dict:
    dim = sd[f"{src}.attn.q_bias"].shape[0]
    q, k, v = sd[f"{src}.attn.qkv.weight"].split(dim)
    return {
        f"{dst}.layernorm_before.weight": sd[f"{src}.norm1.weight"],
        f"{dst}.layernorm_before.bias": sd[f"{src}.norm1.bias"],
        f"{dst}.attention.attention.query.weight": q,
        f"{dst}.attention.attention.query.bias": sd[f"{src}.attn.q_bias"],
        f"{dst}.attention.attention.key.weight": k,
        f"{dst}.attention.attention.value.weight": v,
        f"{dst}.attention.attention.value.bias": sd[f"{src}.attn.v_bias"],
        f"{dst}.attention.output.dense.weight": sd[f"{src}.attn.proj.weight"],
        f"{dst}.attention.output.dense.bias": sd[f"{src}.attn.proj.bias"],
        f"{dst}.layernorm_after.weight": sd[f"{src}.norm2.weight"],
        f"{dst}.layernorm_after.bias": sd[f"{src}.norm2.bias"],
        f"{dst}.intermediate.dense.weight": sd[f"{src}.mlp.fc1.weight"],
        f"{dst}.intermediate.dense.bias": sd[f"{src}.mlp.fc1.bias"],
        f"{dst}.output.dense.weight": sd[f"{src}.mlp.fc2.weight"],
        f"{dst}.output.dense.bias": sd[f"{src}.mlp.fc2.bias"],
    }


def _encoder_to_hf(sd: dict, src: str, depth: int) -> dict:
    out = {
        "videomae.embeddings.patch_embeddings.projection.weight": sd[f"{src}patch_embed.proj.weight"],
        "videomae.embeddings.patch_embeddings.projection.bias": sd[f"{src}patch_embed.proj.bias"],
    }
    for i in range(depth):
        out |= _block_to_hf(sd, f"{src}blocks.{i}", f"videomae.encoder.layer.{i}")
    return out


def pretrain_to_hf(sd: dict, encoder_depth: int, decoder_depth: int) -> dict:
    """Our (= the release's) pretraining state_dict -> `VideoMAEForPreTraining` keys."""
    out = _encoder_to_hf(sd, "encoder.", encoder_depth)
    out |= {
        "videomae.layernorm.weight": sd["encoder.norm.weight"],
        "videomae.layernorm.bias": sd["encoder.norm.bias"],
        "encoder_to_decoder.weight": sd["encoder_to_decoder.weight"],
        "mask_token": sd["mask_token"],
        "decoder.norm.weight": sd["decoder.norm.weight"],
        "decoder.norm.bias": sd["decoder.norm.bias"],
        "decoder.head.weight": sd["decoder.head.weight"],
        "decoder.head.bias": sd["decoder.head.bias"],
    }
    for i in range(decoder_depth):
        out |= _block_to_hf(sd, f"decoder.blocks.{i}", f"decoder.decoder_layers.{i}")
    return out


def classifier_to_hf(sd: dict, depth: int) -> dict:
    """Our (= the release's) fine-tuning state_dict (mean pooling) -> `VideoMAEForVideoClassification` keys."""
    return _encoder_to_hf(sd, "", depth) | {
        "fc_norm.weight": sd["fc_norm.weight"],
        "fc_norm.bias": sd["fc_norm.bias"],
        "classifier.weight": sd["head.weight"],
        "classifier.bias": sd["head.bias"],
    }


def _hf_eps_like_release(model: torch.nn.Module) -> None:
    # HF builds the decoder norm and fc_norm with LayerNorm's default eps 1e-5; the release uses 1e-6 everywhere.
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-6


@pytest.mark.parametrize("norm_pix", [True, False])
def test_pretrain_matches_hf(norm_pix):
    torch.manual_seed(0)
    ours = _tiny_pretrain()
    _randomize(ours)
    hf = _hf().VideoMAEForPreTraining(_hf_config(norm_pix_loss=norm_pix)).eval()
    hf.load_state_dict(pretrain_to_hf(ours.state_dict(), 2, 2), strict=True)
    _hf_eps_like_release(hf)
    x = torch.randn(2, 3, 4, 32, 32, generator=_gen(1))
    mask = tube_mask(2, ours.token_grid, 0.75, _gen(2))  # HF's bool_masked_pos has the same convention
    with torch.no_grad():
        pred = ours(x, mask)
        out = hf(pixel_values=x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
    assert out.logits.shape == pred.shape == (2, 24, 384)
    assert torch.allclose(pred, out.logits, atol=1e-5, rtol=0)
    loss = reconstruction_loss(pred, x, mask, patch_size=8, tubelet_size=2, normalize_target=norm_pix)
    assert torch.allclose(loss, out.loss, atol=1e-5, rtol=1e-5)


def test_encoder_matches_hf_eager_and_sdpa():
    ours = _tiny_pretrain(attn_impl="eager")
    _randomize(ours, seed=3)
    hf = _hf().VideoMAEForPreTraining(_hf_config()).eval()
    hf.load_state_dict(pretrain_to_hf(ours.state_dict(), 2, 2), strict=True)
    x = torch.randn(2, 3, 4, 32, 32, generator=_gen(4))
    mask = tube_mask(2, ours.token_grid, 0.5, _gen(5))
    with torch.no_grad():
        ref = hf.videomae(x.permute(0, 2, 1, 3, 4), bool_masked_pos=mask).last_hidden_state
        assert torch.allclose(ours.forward_features(x, mask), ref, atol=1e-5, rtol=0)
        assert torch.allclose(ours.forward_features(x), hf.videomae(x.permute(0, 2, 1, 3, 4)).last_hidden_state,
                              atol=1e-5, rtol=0)  # fmt: skip


def test_classifier_matches_hf():
    ours = VideoMAEClassifier(**TINY, all_frames=4, embed_dim=64, depth=2, num_heads=4, num_classes=7).eval()
    _randomize(ours, seed=6)
    hf = _hf().VideoMAEForVideoClassification(_hf_config(num_labels=7, use_mean_pooling=True)).eval()
    hf.load_state_dict(classifier_to_hf(ours.state_dict(), 2), strict=True)
    _hf_eps_like_release(hf)
    x = torch.randn(3, 3, 4, 32, 32, generator=_gen(7))
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits, atol=1e-5, rtol=0)
