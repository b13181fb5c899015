"""TSN ResNets / ViT: the model interface, temporal-module placement, the TSN consensus and the checkpoint filters.

Tiny inputs (2 frames of 32 x 32) keep every model cheap on the CPU; no weights are downloaded (timm and torchvision
models are built with random weights and saved to tmp_path).
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from timm.layers import resample_abs_pos_embed
from torch import nn

from data.errors import UserError
from models import tsn
from models.temporal import TEMPORAL_MODULES

B, T, S = 1, 2, 32
TINY_VIT = {"depth": 1, "embed_dim": 64, "num_heads": 2}
# ATR's dense reasoner is ~40M parameters on ResNet-50; the depthwise one exercises the same placement cheaply.
CHEAP_OPTIONS = {"atr": {"er_channel_mode": "depthwise"}}


pytestmark = pytest.mark.usefixtures("one_thread")


def _clip(batch: int = B, frames: int = T, size: int = S, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _build(factory: str, temporal: str | None = None, num_classes: int = 5, **options) -> nn.Module:
    if factory == "vit_b16":
        return tsn.vit_b16(num_classes, T, S, timm_kwargs=TINY_VIT, **options)
    opts = CHEAP_OPTIONS.get(temporal, {}) if temporal else None
    return tsn.TSN_MODELS[factory](num_classes, T, S, temporal=temporal, temporal_options=opts, **options)


@torch.no_grad()
def _perturb(model: nn.Module, skip: str = "\0", seed: int = 1) -> None:
    """Random offsets on every parameter (except names containing ``skip``): zero-initialised gates and timm's
    zero-initialised last BN would otherwise block gradients and hide differences."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if skip not in name:
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------------------------------------------------------------
# Fake temporal modules: a learnable scale, at either insertion point


class _FakeBefore(nn.Module):
    insertion = "before_conv1"
    default_stages = (1, 2, 3, 4)
    built: list[tuple[int, int, tuple[int, int]]] = []

    def __init__(self, channels: int, num_frames: int, *, spatial_size: tuple[int, int], factor: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(factor)))
        type(self).built.append((channels, num_frames, spatial_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def lr_scales(self) -> dict[str, float]:
        return {"scale": 0.1}


class _FakeAfter(_FakeBefore):
    insertion = "after_last_bn"
    default_stages = (2, 3, 4)
    built: list[tuple[int, int, tuple[int, int]]] = []


@pytest.fixture
def fakes(monkeypatch):
    fake = {"fake_before": _FakeBefore, "fake_after": _FakeAfter}
    real_build = tsn.build_temporal

    def build(name, channels, num_frames, *, spatial_size, **options):
        if name in fake:
            return fake[name](channels, num_frames, spatial_size=spatial_size, **options)
        return real_build(name, channels, num_frames, spatial_size=spatial_size, **options)

    monkeypatch.setattr(tsn, "TEMPORAL_MODULES", {**TEMPORAL_MODULES, **fake})
    monkeypatch.setattr(tsn, "build_temporal", build)
    _FakeBefore.built, _FakeAfter.built = [], []
    return fake


# ---------------------------------------------------------------------------------------------------------------------
# Generic: every factory x (plain + every temporal module)


def _cases():
    for factory in ("resnet18", "resnet50", "resnet101"):
        for temporal in (None, *TEMPORAL_MODULES):
            # ResNet-101 repeats ResNet-50's blocks; its temporal variants run with the slow tests.
            marks = [pytest.mark.slow] if factory == "resnet101" and temporal else []
            yield pytest.param(factory, temporal, marks=marks, id=f"{factory}-{temporal or 'plain'}")
    yield pytest.param("vit_b16", None, id="vit_b16-plain")


@pytest.mark.parametrize("factory,temporal", list(_cases()))
def test_generic_forward_backward_shapes(factory, temporal):
    model = _build(factory, temporal)
    _perturb(model)
    x = _clip(batch=2)
    out = model.train()(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    # Gradients in eval mode: in training mode BatchNorm cancels some constants exactly (ATR's actionness bias).
    model.eval()(x).square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []

    with torch.no_grad():
        feats = model.forward_features(x)
        if factory == "vit_b16":
            assert feats.shape == (2 * T, 1 + (S // 16) ** 2, model.num_features)
        else:
            assert feats.shape == (2 * T, model.num_features, 1, 1)  # stride 32 at 32 x 32
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.num_classes == 3
        assert model.get_classifier().out_features == 3
    assert model.num_frames == T and model.img_size == (S, S)


@pytest.mark.parametrize("temporal", ["trm", "atr"])
def test_identity_at_init_equals_plain_tsn(temporal):
    plain = _build("resnet50")
    _perturb(plain)
    model = _build("resnet50", temporal)
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".temporal." in k for k in result.missing_keys)
    assert {k.rsplit(".temporal.", 1)[0] + ".temporal" for k in result.missing_keys} == set(model.temporal_paths)
    plain.eval()
    model.eval()
    x = _clip(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-6, rtol=0)


def test_state_dict_keys_are_timm_and_torchvision_resnet_keys():
    model = tsn.resnet50(1000, T, S)
    assert list(model.state_dict()) == list(timm.create_model("resnet50", pretrained=False).state_dict())
    assert set(model.state_dict()) == set(torchvision.models.resnet50(weights=None).state_dict())
    shifted = tsn.resnet50(1000, T, S, temporal="stw")
    extra = set(shifted.state_dict()) - set(model.state_dict())
    assert extra and all(k.split(".temporal.")[0] + ".temporal" in shifted.temporal_paths for k in extra)


def test_vit_state_dict_keys_are_timm_vit_keys():
    model = _build("vit_b16", num_classes=1000)
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=S, **TINY_VIT)
    assert list(model.state_dict()) == list(reference.state_dict())
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes


# ---------------------------------------------------------------------------------------------------------------------
# Placement


@pytest.mark.parametrize("temporal,count,stages", [("tsm", 16, (1, 2, 3, 4)), ("stw", 16, (1, 2, 3, 4)),
                                                   ("trm", 9, (3, 4)), ("atr", 13, (2, 3, 4))])
def test_resnet50_default_placement(temporal, count, stages):
    model = tsn.resnet50(10, 8, 224, temporal=temporal, temporal_options=CHEAP_OPTIONS.get(temporal))
    assert len(model.temporal_paths) == count
    assert model.temporal_stages == stages
    assert {int(p.split(".")[0][len("layer") :]) for p in model.temporal_paths} == set(stages)


def test_spatial_sizes_and_channels_follow_the_network(fakes):
    tsn.resnet50(10, 8, 224, temporal="fake_before", temporal_stages=(3, 4))
    # TRM spec: layer3.0 512 x 28 x 28 (timm's stride sits on conv2), layer3.1-5 and layer4.0 1024 x 14 x 14,
    # layer4.1-2 2048 x 7 x 7.
    expected = [(512, 8, (28, 28))] + [(1024, 8, (14, 14))] * 6 + [(2048, 8, (7, 7))] * 2
    assert _FakeBefore.built == expected
    tsn.resnet50(10, 8, 224, temporal="fake_after")
    expected = [(512, 8, (28, 28))] * 4 + [(1024, 8, (14, 14))] * 6 + [(2048, 8, (7, 7))] * 3
    assert _FakeAfter.built == expected
    tsn.resnet18(10, 8, (96, 64), temporal="fake_after", temporal_stages=(1, 4))
    assert _FakeAfter.built[-4:] == [(64, 8, (24, 16))] * 2 + [(512, 8, (3, 2))] * 2


def _residual_and_shortcut(block: nn.Module, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain block's residual branch on ``z`` (captured at its last BN) and its shortcut on ``x``."""
    captured = []
    handle = tsn._last_bn(block).register_forward_hook(lambda m, a, out: captured.append(out.clone()))
    block(z)
    handle.remove()
    return captured[0], block.downsample(x) if block.downsample is not None else x


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("insertion", ["before", "after"])
def test_insertion_point_and_unmodified_shortcut(fakes, arch, insertion):
    plain = tsn.TSN_MODELS[arch](5, T, S)
    _perturb(plain)
    model = tsn.TSN_MODELS[arch](5, T, S, temporal=f"fake_{insertion}", temporal_stages=(2,),
                                 temporal_options={"factor": 2.0})
    model.load_state_dict(plain.state_dict(), strict=False)
    plain.eval()
    model.eval()
    with torch.no_grad():
        for i in (0, 1):  # layer2.0 has a downsample shortcut, layer2.1 the identity
            x = torch.randn(2, model.layer2[i].conv1.in_channels, 8, 8)
            if insertion == "before":
                residual, shortcut = _residual_and_shortcut(plain.layer2[i], 2 * x, x)
            else:
                residual, shortcut = _residual_and_shortcut(plain.layer2[i], x, x)
                residual = 2 * residual
            torch.testing.assert_close(model.layer2[i](x), torch.relu(residual + shortcut), atol=1e-6, rtol=0)


def test_deep_copy_rebinds_the_hooks(fakes):
    model = tsn.resnet18(5, T, S, temporal="fake_before").eval()
    _perturb(model, skip=".temporal.")
    twin = copy.deepcopy(model)
    x = _clip()
    with torch.no_grad():
        before = model(x)
        for path in twin.temporal_paths:
            twin.get_submodule(path).scale.fill_(0.5)
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)
        assert not torch.allclose(twin(x), before)


def test_temporal_models_need_their_frame_count_and_plain_tsn_takes_any():
    with pytest.raises(ValueError, match="built for 2"):
        _build("resnet18", "tsm")(_clip(frames=3))
    assert _build("resnet18").eval()(_clip(frames=3)).shape == (B, 5)


# ---------------------------------------------------------------------------------------------------------------------
# TSN consensus


@pytest.mark.parametrize("factory", ["resnet18", "vit_b16"])
def test_logits_are_the_mean_of_the_per_frame_logits(factory):
    model = _build(factory)
    _perturb(model)
    model.eval()
    x = _clip(batch=2, frames=3)
    with torch.no_grad():
        # Each frame alone, as a one-frame clip: checks the fold order (frames of a clip adjacent) too.
        frames = [model(x[:, :, t : t + 1]) for t in range(3)]
        torch.testing.assert_close(model(x), torch.stack(frames).mean(0), atol=1e-5, rtol=1e-5)
        feats = model.forward_features(x)
        pooled = [model.forward_head(model.forward_features(x[:, :, t : t + 1]), pre_logits=True, num_frames=1)
                  for t in range(3)]
        got = model.forward_head(feats, pre_logits=True, num_frames=3)
        torch.testing.assert_close(got, torch.stack(pooled).mean(0), atol=1e-5, rtol=1e-5)


def test_fc_init_and_dropout():
    model = tsn.resnet50(400, T, S)
    assert model.fc.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert model.fc.bias.abs().max().item() == 0 and model.drop.p == 0.5
    vit = _build("vit_b16", num_classes=400, dropout=0.3)
    assert vit.head.weight.std().item() == pytest.approx(0.001, rel=0.05) and vit.head_drop.p == 0.3
    # drop_path is timm's stochastic depth, growing to the given rate at the last block.
    assert tsn.resnet18(5, T, S, drop_path=0.2).layer4[-1].drop_path.drop_prob == pytest.approx(0.2)
    vit = tsn.vit_b16(5, T, S, drop_path=0.2, timm_kwargs={**TINY_VIT, "depth": 2})
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer interface


def test_layer_ids_lr_scales_and_no_weight_decay(fakes):
    model = tsn.resnet18(5, T, S, temporal="fake_before", temporal_stages=(3,))
    assert model.num_layer_ids == 6
    ids = {n: model.get_layer_id(n) for n, _ in model.named_parameters()}
    assert ids["conv1.weight"] == ids["bn1.weight"] == 0
    assert ids["layer1.0.conv1.weight"] == 1 and ids["layer4.1.bn2.bias"] == 4 and ids["fc.weight"] == 5
    assert ids["layer3.0.temporal.scale"] == ids["layer3.1.temporal.scale"] == 3
    assert model.group_matcher()("layer2.0.conv1.weight") == 2
    assert model.lr_scales() == {"layer3.0.temporal.scale": 0.1, "layer3.1.temporal.scale": 0.1}
    assert set(model.lr_scales()) <= dict(model.named_parameters()).keys()
    assert model.no_weight_decay() == set()

    trm = tsn.resnet18(5, T, S, temporal="trm", temporal_options={"offset_lr_mult": 0.1})
    scales = trm.lr_scales()
    assert scales and set(scales) <= dict(trm.named_parameters()).keys() and set(scales.values()) == {0.1}

    vit = tsn.vit_b16(5, T, S, timm_kwargs={**TINY_VIT, "depth": 2})
    assert vit.num_layer_ids == 4
    assert [vit.get_layer_id(n) for n in ("pos_embed", "cls_token", "patch_embed.proj.weight")] == [0, 0, 0]
    assert vit.get_layer_id("blocks.1.mlp.fc1.weight") == 2 and vit.get_layer_id("head.weight") == 3
    assert vit.get_layer_id("norm.weight") == 3 and {"pos_embed", "cls_token"} <= vit.no_weight_decay()
    assert vit.lr_scales() == {}


def test_grad_checkpointing_gives_the_same_result():
    model = _build("resnet18", "tsm", dropout=0.0)
    _perturb(model)
    x = _clip(batch=2)
    model(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Factory options


def test_factory_option_errors():
    with pytest.raises(UserError, match="'mixup'"):
        tsn.resnet18(5, T, S, mixup=0.2)
    with pytest.raises(UserError, match="'nope'.*tsm"):
        tsn.resnet18(5, T, S, temporal="nope")
    with pytest.raises(UserError, match=r"stages \(5,\)"):
        tsn.resnet18(5, T, S, temporal="tsm", temporal_stages=(5,))
    with pytest.raises(UserError, match="without a temporal module"):
        tsn.resnet18(5, T, S, temporal_options={"fold_div": 4})
    with pytest.raises(UserError, match="num_classes"):
        tsn.resnet18(5, T, S, timm_kwargs={"num_classes": 3})
    assert tsn.resnet18(5, T, S, temporal="none").temporal_paths == []
    for options in ({"temporal": "tsm"}, {"temporal_stages": (3,)}):
        with pytest.raises(UserError) as err:
            tsn.vit_b16(5, T, S, timm_kwargs=TINY_VIT, **options)
        assert str(err.value) == tsn.VIT_NO_TEMPORAL


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints


def _save(tmp_path, obj, name="weights.pth") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def test_timm_and_torchvision_resnet_load_with_a_report(tmp_path):
    timm_state = timm.create_model("resnet18", pretrained=False).state_dict()
    tv_state = torchvision.models.resnet18(weights=None).state_dict()
    # The original torchvision ImageNet files predate BatchNorm's num_batches_tracked.
    old_tv = {k: v for k, v in tv_state.items() if not k.endswith("num_batches_tracked")}
    for state, wrap in ((timm_state, lambda sd: sd), (tv_state, lambda sd: {"state_dict": sd}), (old_tv, dict)):
        path = _save(tmp_path, wrap(state))
        model = tsn.resnet18(1000, T, S)
        report = tsn.init_tsn_from(model, path)
        assert "ImageNet ResNet" in report and f"loaded: {len(state)} tensors" in report
        assert ("set to 0: 20 BatchNorm num_batches_tracked" in report) == (state is old_tv)
        for key, value in state.items():
            torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0)

    path = _save(tmp_path, timm_state)
    with pytest.raises(UserError, match="1000 classes, the model 10; pass --reset-head"):
        tsn.init_tsn_from(tsn.resnet18(10, T, S), path)
    model = tsn.resnet18(10, T, S, temporal="atr", temporal_options=CHEAP_OPTIONS["atr"])
    fc_before = model.fc.weight.clone()
    report = tsn.init_tsn_from(model, path, reset_head=True)
    assert "dropped: fc.* (2 tensors)" in report and "initialised fresh: fc.*" in report
    assert "6 modules layer2.0.temporal.* ... layer4.1.temporal.*" in report
    assert torch.equal(model.fc.weight, fc_before)
    torch.testing.assert_close(model.conv1.weight, timm_state["conv1.weight"], atol=0, rtol=0)


def test_resnet_files_that_do_not_fit_are_refused(tmp_path):
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    extra = {"model": {**state, "layer9.extra": torch.ones(1)}}
    with pytest.raises(UserError, match="unexpected layer9.extra"):
        tsn.init_tsn_from(tsn.resnet18(1000, T, S), _save(tmp_path, extra))
    bad = {**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}
    with pytest.raises(UserError, match=r"conv1.weight has shape \(64, 3, 3, 3\) in the file but \(64, 3, 7, 7\)"):
        tsn.init_tsn_from(tsn.resnet18(1000, T, S), _save(tmp_path, bad))
    with pytest.raises(UserError, match=r"missing layer1.0.bn3.bias.*\(2, 2, 2, 2\) blocks per stage, the model "
                                        r"\(3, 4, 6, 3\)"):
        tsn.init_tsn_from(tsn.resnet50(1000, T, S), _save(tmp_path, state))
    with pytest.raises(UserError, match="it is a ResNet"):
        tsn.init_tsn_from(_build("vit_b16", num_classes=1000), _save(tmp_path, state))
    with pytest.raises(UserError, match="not a recognised TSN checkpoint"):
        tsn.init_tsn_from(tsn.resnet18(1000, T, S), _save(tmp_path, {"encoder.blocks.0.x": torch.ones(1)}))


def test_our_best_pth_round_trips_and_fills_a_temporal_model(tmp_path):
    trained = tsn.resnet18(7, T, S, temporal="trm")
    _perturb(trained)
    path = _save(tmp_path, {"model": trained.state_dict(), "config": {"model": "resnet18"}, "top1": 0.5})
    assert tsn.detect_tsn_source({"model": trained.state_dict(), "config": {}}) == "timemae_best"
    assert tsn.detect_tsn_source(trained.state_dict()) == "timemae_best"
    model = tsn.resnet18(7, T, S, temporal="trm")
    report = tsn.init_tsn_from(model, path)
    assert "timemae fine-tuned" in report and "fresh" not in report
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0)

    # TRM's recipe: a plain TSN trained first, the modules inserted afterwards.
    plain = tsn.resnet18(7, T, S)
    report = tsn.init_tsn_from(model, _save(tmp_path, {"model": plain.state_dict(), "config": {}}, "plain.pth"))
    assert "4 modules layer3.0.temporal.* ... layer4.1.temporal.*" in report
    with pytest.raises(UserError, match="unexpected layer3.0.temporal"):
        tsn.init_tsn_from(tsn.resnet18(7, T, S), path)


def test_timm_vit_at_another_size_loads_with_pos_embed_resized(tmp_path):
    source = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64, **TINY_VIT)
    state = source.state_dict()
    path = _save(tmp_path, state)
    assert tsn.detect_tsn_source(state) == "imagenet_vit"
    model = _build("vit_b16", num_classes=1000)
    report = tsn.init_tsn_from(model, path)
    assert "resized: pos_embed (1, 17, 64) -> (1, 5, 64)" in report and "4x4 patch grid to the model's 2x2" in report
    expected = resample_abs_pos_embed(state["pos_embed"], [2, 2], [4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.data, expected, atol=0, rtol=0)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"], atol=0, rtol=0)

    with pytest.raises(UserError, match="1000 classes, the model 10; pass --reset-head"):
        tsn.init_tsn_from(_build("vit_b16", num_classes=10), path)
    report = tsn.init_tsn_from(_build("vit_b16", num_classes=10), path, reset_head=True)
    assert "dropped: head.* (2 tensors)" in report
    with pytest.raises(UserError, match="it is a ViT"):
        tsn.init_tsn_from(tsn.resnet18(1000, T, S), path)
    with pytest.raises(UserError, match="unexpected extra_token"):
        tsn.init_tsn_from(_build("vit_b16", num_classes=1000), _save(tmp_path, {**state, "extra_token": torch.ones(1)}))


@pytest.mark.slow
@pytest.mark.parametrize("temporal", ["none", *TEMPORAL_MODULES])
def test_compile_matches_eager_with_every_temporal_module(temporal):
    """``--compile`` (`launch.loop.compile_in_place`) on the frame-level backbones: the same outputs and gradients
    as eager (aot_eager on CPU: torch's graph capture and autograd, no code generation)."""
    from launch.loop import compile_in_place

    torch.manual_seed(0)
    eager = tsn.resnet18(5, 4, 64, temporal=None if temporal == "none" else temporal)
    compiled = copy.deepcopy(eager)
    compile_in_place(compiled, backend="aot_eager")
    x = torch.randn(2, 3, 4, 64, 64)
    outs = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # the same dropout mask
        outs.append(model(x))
        outs[-1].square().sum().backward()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
