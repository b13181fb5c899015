"""Temporal modules (models/temporal.py) against shared/specs/{stw,trm,atr}.md, on tiny CPU tensors."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from data.errors import UserError
from models.temporal import (
    ATR,
    STW,
    TEMPORAL_MODULES,
    TRM,
    TSM,
    EfficientReasoner,
    GraphReasoner,
    _ActionPooling,
    _grouped_layout,
    _PointwiseProduct,
    bn_of_separable,
    build_temporal,
    module_options,
    relocate,
    time_shift,
)

C, HW = 16, (4, 4)

# A few option combinations per module; ATR's reduction 4 keeps four channels in ARL at C = 16.
COMBOS = [
    ("tsm", {}),
    ("tsm", {"fold_div": 4}),
    ("stw", {}),
    ("stw", {"stfm_mode": "dense", "order": "stfm_twm"}),
    ("stw", {"order": "twm_stfm", "ratio": "16:8/7:16"}),
    ("trm", {}),
    ("trm", {"variant": "strm", "offset_lr_mult": 0.1}),
    ("trm", {"variant": "ttrm", "spatial_agnostic": True, "relocate_ratio": 0.5, "kernel_size": 5}),
    ("atr", {"reduction": 4}),
    ("atr", {"reduction": 4, "afd": "scaling", "reasoner": "gr", "er_channel_mode": "bottleneck"}),
    ("atr", {"reduction": 4, "afd": "uniform", "motion_order": "tea", "er_channel_mode": "depthwise"}),
    ("atr", {"motion": False, "appearance": False, "num_reasoners": 3}),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def frames(b: int, t: int, c: int = C, hw: tuple[int, int] = HW, seed: int = 0) -> torch.Tensor:
    """(B*T, C, H, W) random frames, clips adjacent."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b * t, c, *hw, generator=g)


def to_clips(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, T, C, H, W)."""
    return x.view(-1, t, *x.shape[1:])


def shift_reference(x5: torch.Tensor, fold: int) -> torch.Tensor:
    """TSM's residual shift written as in the TRM spec: ``out[:, :-1, :fold] = x[:, 1:, :fold]`` etc."""
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x5[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x5[:, :, 2 * fold:]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Registry, builder, errors


def test_registry_placement_and_options():
    assert TEMPORAL_MODULES == {"tsm": TSM, "stw": STW, "trm": TRM, "atr": ATR}
    placement = {name: (cls.insertion, cls.default_stages) for name, cls in TEMPORAL_MODULES.items()}
    assert placement == {"tsm": ("before_conv1", (1, 2, 3, 4)), "stw": ("before_conv1", (1, 2, 3, 4)),
                         "trm": ("before_conv1", (3, 4)), "atr": ("after_last_bn", (2, 3, 4))}
    assert module_options("tsm") == {"fold_div": 8}
    assert module_options("stw") == {"stfm_mode": "grouped", "ratio": (4, 2, 4), "order": "parallel"}
    assert module_options("trm") == {"variant": "ctrm", "relocate_ratio": 0.25, "spatial_agnostic": False,
                                     "offset_lr_mult": 1.0, "kernel_size": 3}
    assert module_options("atr") == {"reasoner": "er", "num_reasoners": 2, "afd": "adding", "motion": True,
                                     "appearance": True, "er_channel_mode": "dense", "reduction": 16,
                                     "motion_order": "diff_then_h"}


@pytest.mark.parametrize("name, kwargs, match", [
    ("nope", {}, "unknown temporal module 'nope'; choose one of tsm, stw, trm, atr"),
    ("tsm", {"fold": 8}, "unknown option 'fold' for temporal module 'tsm'; its options are: fold_div"),
    ("trm", {"variant": "xtrm"}, "variant='xtrm' is not valid; choose one of ctrm, strm, ttrm"),
    ("trm", {"kernel_size": 2}, "kernel_size=2 must be odd"),
    ("stw", {"ratio": (4, 4, 4)}, "1/alpha"),
    ("stw", {"ratio": (32, 16 / 15, 32)}, "non-integer"),
    ("atr", {"afd": "scaling", "motion": False, "appearance": False}, "needs an actionness map"),
    ("atr", {"motion": 1}, "motion=1 must be True or False"),
])
def test_build_errors(name, kwargs, match):
    with pytest.raises(UserError, match=match):
        build_temporal(name, C, 4, spatial_size=HW, **kwargs)


@pytest.mark.parametrize("name", list(TEMPORAL_MODULES))
def test_one_frame_is_a_user_error(name):
    with pytest.raises(UserError, match=f"temporal module {name} needs --num-frames >= 2"):
        build_temporal(name, C, 1, spatial_size=HW)


@pytest.mark.parametrize("name", list(TEMPORAL_MODULES))
def test_wrong_frame_count_is_a_value_error(name):
    module = build_temporal(name, C, 4, spatial_size=HW)
    with pytest.raises(ValueError, match="built for 4 frames per clip, but the input has 6 rows"):
        module(torch.randn(6, C, *HW))


def test_ctrm_is_tied_to_its_spatial_size():
    module = build_temporal("trm", C, 2, spatial_size=HW)
    with pytest.raises(ValueError, match="built for 4x4 feature maps .* got 5x5"):
        module(torch.randn(4, C, 5, 5))
    for variant in ("strm", "ttrm"):  # the other predictors take any resolution
        assert build_temporal("trm", C, 2, spatial_size=HW, variant=variant)(torch.randn(4, C, 5, 5)).shape[-1] == 5


# ---------------------------------------------------------------------------------------------------------------------
# Generic: every module x a few options, T in {2, 3, 8}, batch 1 and 3


@pytest.mark.parametrize("name, options", COMBOS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in COMBOS])
def test_forward_shapes_and_gradients(name, options):
    for t, b in itertools.product((2, 3, 8), (1, 3)):
        torch.manual_seed(t * 10 + b)
        module = build_temporal(name, C, t, spatial_size=HW, **options)
        with torch.no_grad():  # move the zero-initialised gates / offsets / BN gamma off zero so gradients flow
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = frames(b, t, seed=t + b).requires_grad_()
        y = module(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        (y * torch.randn_like(y)).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        for n, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (n, t, b)
            # g's bias shifts M uniformly over positions: the spatial softmax and the per-channel BN of Z both cancel
            # it, so it only learns through "scaling".
            if not (n == "arl.g.bias" and options.get("afd", "adding") != "scaling"):
                assert p.grad.abs().sum() > 0, (n, t, b)


# ---------------------------------------------------------------------------------------------------------------------
# TSM and TRM


def test_tsm_follows_the_standard_convention():
    t = 5
    x = frames(2, t)
    expected = shift_reference(to_clips(x, t), C // 8).view_as(x)
    assert torch.equal(TSM(C, t, spatial_size=HW)(x), expected)
    # channel 0 of frame 0 holds frame 1's value: the first fold reads the NEXT frame
    assert torch.equal(TSM(C, t, spatial_size=HW)(x)[0, 0], x[1, 0])


@pytest.mark.parametrize("spans", [((0, 2, -1), (2, 4, 1)), ((0, C, 1),), ((3, 5, 1), (0, 2, 0), (9, 16, -1))])
def test_time_shift_is_the_sliced_shift_and_its_backward_is_the_adjoint(spans):
    t = 4
    x5 = to_clips(frames(2, t), t).double().requires_grad_(True)
    expected = x5.detach().clone()
    for c0, c1, s in spans:
        expected[:, :, c0:c1] = 0
        src = x5.detach()[:, :, c0:c1]
        if s > 0:
            expected[:, s:, c0:c1] = src[:, :-s]
        elif s < 0:
            expected[:, :s, c0:c1] = src[:, -s:]
        else:
            expected[:, :, c0:c1] = src
    assert torch.equal(time_shift(x5, spans), expected)
    assert torch.autograd.gradcheck(lambda v: time_shift(v, spans), (x5,))
    # a channels-last feature map keeps its layout, so the caller's view back to (B*T, C, H, W) still works
    x = frames(2, t).contiguous(memory_format=torch.channels_last)
    y = TSM(C, t, spatial_size=HW)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, TSM(C, t, spatial_size=HW)(x.contiguous()))


def test_trm_with_fixed_offsets_reproduces_tsm():
    t, fold = 5, C // 8
    x = frames(2, t)
    x5 = to_clips(x, t).transpose(1, 2)  # (B, C, T, H, W)
    offsets = torch.zeros_like(x5)
    offsets[:, :fold] = 1.0  # the first 1/8 reads frame t + 1
    offsets[:, fold:2 * fold] = -1.0  # the next 1/8 reads frame t - 1
    y = relocate(x5, offsets).transpose(1, 2).reshape_as(x)
    assert (y - TSM(C, t, spatial_size=HW)(x)).abs().max() <= 1e-6


def test_relocate_interpolates_linearly_with_zero_outside_the_clip():
    t = 4
    x = torch.randn(1, 2, t, 3, 3)
    y = relocate(x, torch.full_like(x, 0.25))
    expected = 0.75 * x + 0.25 * torch.cat([x[:, :, 1:], torch.zeros_like(x[:, :, :1])], dim=2)
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.equal(relocate(x, torch.full_like(x, -float(t))), torch.zeros_like(x))
    # offsets broadcast over H, W (the spatial-agnostic form)
    assert torch.allclose(relocate(x, torch.full((1, 2, t, 1, 1), 0.25)), expected, atol=1e-6)


def test_relocate_gradient_at_zero_offset_is_the_frame_difference():
    x = torch.randn(2, 3, 5, 2, 2)
    offsets = torch.zeros_like(x, requires_grad=True)
    relocate(x, offsets).sum().backward()
    nxt = torch.cat([x[:, :, 1:], torch.zeros_like(x[:, :, :1])], dim=2)  # x[floor + 1], zero past the clip
    assert torch.allclose(offsets.grad, nxt - x)


@pytest.mark.parametrize("variant", TRM.VARIANTS)
@pytest.mark.parametrize("spatial_agnostic", [False, True])
def test_trm_identity_at_init_and_offsets_get_gradients(variant, spatial_agnostic):
    t = 3
    module = TRM(C, t, spatial_size=HW, variant=variant, spatial_agnostic=spatial_agnostic)
    x = frames(2, t)
    y = module(x)
    assert (y - x).abs().max() <= 1e-6
    (y * torch.randn_like(y)).sum().backward()
    assert module.offset.weight.grad.abs().sum() > 0
    assert module.offset.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", TRM.VARIANTS)
def test_trm_constant_offset_moves_the_relocated_channels(variant):
    t = 4
    module = TRM(C, t, spatial_size=HW, variant=variant)
    with torch.no_grad():
        module.offset.bias.fill_(torch.atanh(torch.tensor(1.0 / t)))  # tanh(bias) * T = +1 frame everywhere
    x = frames(2, t)
    x5, y5 = to_clips(x, t), to_clips(module(x), t)
    cr = C // 4
    expected = torch.cat([x5[:, 1:, :cr], torch.zeros_like(x5[:, :1, :cr])], dim=1)
    assert torch.allclose(y5[:, :, :cr], expected, atol=1e-5)
    assert torch.equal(y5[:, :, cr:], x5[:, :, cr:])


def test_trm_lr_scales_name_the_offset_predictor():
    assert TRM(C, 2, spatial_size=HW).lr_scales() == {}
    module = TRM(C, 2, spatial_size=HW, variant="ttrm", offset_lr_mult=0.1)
    scales = module.lr_scales()
    assert scales == {"offset.weight": 0.1, "offset.bias": 0.1}
    assert set(scales) <= dict(module.named_parameters()).keys()
    assert all(build_temporal(n, C, 2, spatial_size=HW).lr_scales() == {} for n in ("tsm", "stw", "atr"))


# ---------------------------------------------------------------------------------------------------------------------
# STW


def stfm_shift_reference(x5: torch.Tensor) -> torch.Tensor:
    """STFM at init (spec): [0, C/4) from frame t-1, [C/4, 3C/4) from frame t, [3C/4, C) from frame t+1."""
    c = x5.shape[2]
    out = torch.zeros_like(x5)
    out[:, 1:, :c // 4] = x5[:, :-1, :c // 4]
    out[:, :, c // 4:3 * c // 4] = x5[:, :, c // 4:3 * c // 4]
    out[:, :-1, 3 * c // 4:] = x5[:, 1:, 3 * c // 4:]
    return out


@pytest.mark.parametrize("stfm_mode", ["grouped", "dense"])
@pytest.mark.parametrize("order", STW.ORDERS)
def test_stw_at_init_is_the_spec_form(stfm_mode, order):
    t = 3
    x = frames(2, t)
    shift = stfm_shift_reference(to_clips(x, t)).view_as(x)
    # TWM starts as the 0.5 gate, so parallel = shift + 0.5 x, and both serial orders = 0.5 shift
    expected = {"parallel": shift + 0.5 * x, "stfm_twm": 0.5 * shift, "twm_stfm": 0.5 * shift}[order]
    y = STW(C, t, spatial_size=HW, stfm_mode=stfm_mode, order=order)(x)
    assert (y - expected).abs().max() <= 1e-6


def test_stfm_grouped_is_a_grouped_conv_over_all_inputs():
    stfm = STW(C, 2, spatial_size=HW).stfm
    assert [conv.groups for conv in (stfm.conv_prev, stfm.conv_cur, stfm.conv_next)] == [C // 4, C // 2, C // 4]
    assert [conv.weight.shape[1] for conv in (stfm.conv_prev, stfm.conv_cur, stfm.conv_next)] == [4, 2, 4]
    for n_out, start in ((C // 4, 0), (C // 2, C // 4), (C // 4, 3 * C // 4), (14, 1)):
        groups, order = _grouped_layout(C, n_out, start)
        assert sorted(order.tolist()) == list(range(C))  # every input channel reaches the branch exactly once
        per_in, per_out = C // groups, n_out // groups
        copied = order.view(groups, per_in)[:, :per_out].reshape(-1)
        assert copied.tolist() == [(start + j) % C for j in range(n_out)]  # output j's group holds input start + j


def stfm_conv_reference(stfm, x: torch.Tensor) -> torch.Tensor:
    """STFM as three 1x1 convs (grouped: on the input reordered by `_grouped_layout`), shifted and concatenated."""
    starts = [0, stfm.sizes[0], stfm.sizes[0] + stfm.sizes[1]]
    outs = []
    for conv, n_out, start in zip((stfm.conv_prev, stfm.conv_cur, stfm.conv_next), stfm.sizes, starts, strict=True):
        inp = x.index_select(1, _grouped_layout(x.shape[1], n_out, start)[1]) if stfm.mode == "grouped" else x
        outs.append(to_clips(F.conv2d(inp, conv.weight, groups=conv.groups), stfm.num_frames))
    prev, cur, nxt = outs
    prev = torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], dim=1)
    nxt = torch.cat([nxt[:, 1:], torch.zeros_like(nxt[:, :1])], dim=1)
    return torch.cat([prev, cur, nxt], dim=2).view_as(x)


def twm_conv3d_reference(twm, x: torch.Tensor) -> torch.Tensor:
    """TWM literally (spec Eqs. 3-6): permute, Conv3d C -> 1 over (t-1, t, t+1), sigmoid, X - X S, permute back."""
    xt = to_clips(x, twm.num_frames).permute(0, 2, 1, 3, 4)
    s = torch.sigmoid(F.conv3d(xt, twm.conv.weight, twm.conv.bias, padding=(1, 0, 0)))
    return (xt - xt * s).permute(0, 2, 1, 3, 4).reshape_as(x)


def stw_conv_reference(module: STW, x: torch.Tensor) -> torch.Tensor:
    """STW from the two references above, in the module's order."""
    if module.order == "parallel":
        return stfm_conv_reference(module.stfm, x) + twm_conv3d_reference(module.twm, x)
    if module.order == "stfm_twm":
        return twm_conv3d_reference(module.twm, stfm_conv_reference(module.stfm, x))
    return stfm_conv_reference(module.stfm, twm_conv3d_reference(module.twm, x))


@pytest.mark.parametrize("ratio", ["4:2:4", "8:4/3:8", "16:8/7:16"])
@pytest.mark.parametrize("order", STW.ORDERS)
def test_stw_equals_its_convolution_form_with_gradients(ratio, order):
    """The grouped STFM runs as strided multiply-adds and TWM's gate as batched products, both with hand-written
    backwards: output and every gradient equal the convolution form (grouped convs on the reordered input, the
    literal Conv3d), for every ratio (one and several outputs per group) and order, in both memory layouts
    (`gradcheck` below)."""
    c, t = 32, 3
    for mode, channels_last in (("grouped", False), ("grouped", True), ("dense", False)):
        torch.manual_seed(0)
        module = STW(c, t, spatial_size=(5, 5), stfm_mode=mode, ratio=ratio, order=order).double()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.3 * torch.randn_like(p))
        x = frames(2, t, c=c, hw=(5, 5)).double()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        grad = torch.randn_like(x)
        got, want = [], []
        for fn, into in ((module, got), (stw_conv_reference, want)):
            module.zero_grad()
            x.grad = None
            y = fn(x) if fn is module else fn(module, x)
            y.backward(grad)
            into += [y.detach(), x.grad, *(p.grad for p in module.parameters())]
        for a, b in zip(got, want, strict=True):
            assert (a - b).abs().max() < 1e-10, (mode, channels_last)


@pytest.mark.parametrize("ratio", ["4:2:4", "8:4/3:8"])
def test_stw_written_out_backwards_pass_gradcheck(ratio):
    """Small (gradcheck perturbs every input element): the input and every parameter of the grouped STW."""
    torch.manual_seed(0)
    module = STW(8, 2, spatial_size=(2, 3), ratio=ratio).double()
    params = [p.detach().clone().add_(0.3 * torch.randn_like(p)).requires_grad_() for p in module.parameters()]
    names = [n for n, _ in module.named_parameters()]
    x = frames(1, 2, c=8, hw=(2, 3)).double().requires_grad_()
    call = lambda v, *ps: torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (v,))  # noqa: E731
    assert torch.autograd.gradcheck(call, (x, *params))


def test_twm_is_the_channel_shared_gate():
    t = 3
    module = STW(C, t, spatial_size=HW)
    twm = module.twm
    assert tuple(twm.conv.weight.shape) == (1, C, 3, 1, 1)
    with torch.no_grad():
        twm.conv.weight.normal_(0.0, 0.3)
        twm.conv.bias.fill_(0.2)
    x = frames(2, t)
    xt = to_clips(x, t).permute(0, 2, 1, 3, 4)  # Eq. 3: (B, T, C, H, W) -> (B, C, T, H, W)
    s = torch.sigmoid(F.conv3d(xt, twm.conv.weight, twm.conv.bias, padding=(1, 0, 0)))  # Eqs. 4-5, (B, 1, T, H, W)
    z = xt - xt * s  # Eq. 6
    expected = z.permute(0, 2, 1, 3, 4).reshape_as(x)
    assert torch.allclose(twm(x), expected, atol=1e-5)
    assert torch.allclose(module(x), module.stfm(x) + expected, atol=1e-5)


def test_stw_parameter_cost_matches_the_spec():
    c = 256
    grouped, dense = STW(c, 8, spatial_size=HW), STW(c, 8, spatial_size=HW, stfm_mode="dense")
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(grouped.stfm) == 3 * c  # each output mixes alpha (beta, gamma) inputs
    assert count(dense.stfm) == c * c  # a full 1x1 conv C -> C
    assert count(grouped.twm) == count(dense.twm) == 3 * c + 1
    # Over the 16 bottlenecks of ResNet-50 (block input widths): ~39k grouped vs ~15.9M dense (spec "Cost").
    widths = [64, 256, 256, 256, 512, 512, 512, 512, 1024, 1024, 1024, 1024, 1024, 1024, 2048, 2048]
    assert sum(count(STW(w, 8, spatial_size=HW).stfm) for w in widths) == 39_360
    assert sum(w * w for w in widths) == 15_929_344


def test_default_placements_cost_what_the_specs_say():
    """ResNet-50 at 224 (meta tensors: shapes only): 9 cTRMs ~7.65M parameters, 13 ATRs ~41M (specs, "Placement"
    and "Cost"); each entry is (block input width, conv1's feature map side)."""
    trm_blocks = [(512, 28)] + [(1024, 14)] * 6 + [(2048, 7)] * 2
    atr_blocks = [(512, 28)] * 4 + [(1024, 14)] * 6 + [(2048, 7)] * 3
    with torch.device("meta"):
        trm = [build_temporal("trm", c, 8, spatial_size=(s, s)) for c, s in trm_blocks]
        atr = [build_temporal("atr", c, 8, spatial_size=(s, s)) for c, s in atr_blocks]
    assert sum(p.numel() for m in trm for p in m.parameters()) == 7_651_644
    assert sum(p.numel() for m in atr for p in m.parameters()) == 41_167_323


# ---------------------------------------------------------------------------------------------------------------------
# ATR


def test_atr_is_the_identity_at_init_for_every_option():
    t = 3
    x = frames(2, t)
    choices = itertools.product(("er", "gr"), (1, 2), ATR.AFDS, (True, False), (True, False),
                                ("dense", "bottleneck", "depthwise"), ("diff_then_h", "tea"))
    checked = 0
    for reasoner, n, afd, motion, appearance, mode, order in choices:
        if afd == "scaling" and not (motion or appearance):
            continue
        module = ATR(C, t, spatial_size=HW, reasoner=reasoner, num_reasoners=n, afd=afd, motion=motion,
                     appearance=appearance, er_channel_mode=mode, reduction=4, motion_order=order)
        assert (module(x) - x).abs().max() <= 1e-6
        checked += 1
    assert checked == 2 * 2 * 3 * 4 * 3 * 2 - 2 * 3 * 2 * 2
    assert (ATR(C, t, spatial_size=HW).eval()(x) - x).abs().max() <= 1e-6


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("afd", ["adding", "scaling", "uniform"])
def test_the_bn_of_z_without_z_is_bn_of_z(afd, momentum):
    """``bn_of_separable`` (Z never built) against ``x + bn(z)`` with Z built and torch's BatchNorm2d: outputs, every
    gradient and the running statistics, in training and evaluation."""
    n, c, h, w = 6, C, 5, 3
    g = torch.Generator().manual_seed(1)
    bn = torch.nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.normal_(generator=g), bn.bias.normal_(generator=g)
    ref = torch.nn.BatchNorm2d(c, momentum=momentum)
    ref.load_state_dict(bn.state_dict())
    for training in (True, True, False):
        bn.train(training), ref.train(training)
        leaves = [torch.randn(shape, generator=g).requires_grad_() for shape in ((n, c, h, w), (n, c), (n, 1, h, w))]
        x, y, m = leaves
        twins = [t.detach().clone().requires_grad_() for t in leaves]
        if afd == "adding":
            out, z = bn_of_separable(x, bn, y, None, m), twins[1][:, :, None, None] + twins[2]
        elif afd == "scaling":
            out = bn_of_separable(x, bn, None, y, torch.sigmoid(m))
            z = torch.sigmoid(twins[2]) * twins[1][:, :, None, None]
        else:
            out, z = bn_of_separable(x, bn, y, None, None), twins[1][:, :, None, None].expand(n, c, h, w)
        expected = twins[0] + ref(z)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        grad = torch.randn(out.shape, generator=g)
        out.backward(grad), expected.backward(grad)
        for a, b in zip([*leaves, bn.weight, bn.bias], [*twins, ref.weight, ref.bias], strict=True):
            if afd == "uniform" and a is m:
                assert a.grad is None and b.grad is None
                continue
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
        bn.weight.grad = bn.bias.grad = ref.weight.grad = ref.bias.grad = None
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(bn, name), getattr(ref, name), rtol=1e-6, atol=1e-7)


def test_atr_products_with_written_backwards_are_their_torch_forms():
    """ARL's C -> C/r reduction (`_PointwiseProduct`) is the 1x1 convolution and AFA's pooling (`_ActionPooling`) the
    attention-weighted sum over positions: outputs and gradients, in both memory layouts, and gradcheck."""
    g = torch.Generator().manual_seed(3)
    for channels_last in (False, True):
        x = torch.randn(4, C, 5, 3, generator=g, dtype=torch.double)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(6, C, 1, 1, generator=g, dtype=torch.double)
        attn = torch.softmax(torch.randn(4, 15, generator=g, dtype=torch.double), dim=-1)
        cases = ((_PointwiseProduct.apply, lambda a, b: F.conv2d(a, b), (x, weight)),
                 (_ActionPooling.apply, lambda a, b: (a.flatten(2) * b.unsqueeze(1)).sum(-1), (x, attn)))
        for fn, reference, inputs in cases:
            leaves = [t.clone().requires_grad_() for t in inputs]
            twins = [t.clone().requires_grad_() for t in inputs]
            out, expected = fn(*leaves), reference(*twins)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
            grad = torch.randn(out.shape, generator=g, dtype=torch.double)
            out.backward(grad), expected.backward(grad)
            for a, b in zip(leaves, twins, strict=True):
                torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)
            assert torch.autograd.gradcheck(fn, [t.detach().requires_grad_() for t in inputs])


def test_efficient_reasoner_is_the_temporal_convolution():
    n, t = 2, 5
    er = EfficientReasoner(C, "dense")
    with torch.no_grad():
        er.alpha.copy_(torch.tensor([0.2, -0.7, 1.3]))
    s = torch.randn(n, t, C)
    w = er.proj.map.weight  # Linear: y = s W with W = weight^T
    expected = torch.zeros(n, t, C)
    for i in range(t):
        for j, d in enumerate((-1, 0, 1)):
            if 0 <= i + d < t:
                expected[:, i] += er.alpha[j] * s[:, i + d]
    expected = expected @ w.t()
    assert torch.allclose(er(s), expected, atol=1e-5)


def test_graph_reasoner_matches_its_formula():
    gr = GraphReasoner(C, "dense")
    s = torch.randn(2, 4, C)
    a, b = s @ gr.phi.weight.t(), s @ gr.phi2.weight.t()
    w_graph = torch.softmax(torch.einsum("npc,nqc->npq", a, b), dim=-1)  # softmax over q
    assert torch.allclose(gr(s), w_graph @ s @ gr.proj.map.weight.t(), atol=1e-5)


def test_atr_sim_pools_globally_and_adds_nothing_spatial():
    """With both cues off, "adding" has no M to add: it is the uniform ATR_sim form."""
    t = 3
    x = frames(2, t)
    adding = ATR(C, t, spatial_size=HW, motion=False, appearance=False)
    with torch.no_grad():
        adding.bn.weight.fill_(1.0)
    uniform = ATR(C, t, spatial_size=HW, motion=False, appearance=False, afd="uniform")
    uniform.load_state_dict(adding.state_dict())
    adding.eval(), uniform.eval()
    assert torch.equal(adding(x), uniform(x))
    # ATR_sim written out: GAP -> ER -> ReLU(LN) -> ER -> BN, broadcast over H, W
    s = x.mean(dim=(2, 3)).view(2, t, C)
    y = adding.reasoners[1](F.relu(adding.links[0](adding.reasoners[0](s))))
    expected = x + adding.bn(y.reshape(2 * t, C, 1, 1)).expand_as(x)
    assert torch.allclose(adding(x), expected, atol=1e-6)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
@pytest.mark.parametrize("name", ["stw", "atr"])
def test_written_out_backwards_under_bf16_autocast_follow_float32(name, device):
    """STW's and ATR's products with written-out backwards under bf16 autocast (the GPU default; on the CPU too):
    outputs keep the input's dtype, every gradient reaches its parameter in float32, and all follow the float32
    module within bf16's precision."""
    torch.manual_seed(0)
    t = 4
    module = build_temporal(name, 64, t, spatial_size=(6, 6), **({"reduction": 4} if name == "atr" else {}))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
    module = module.to(device)
    x = torch.randn(2 * t, 64, 6, 6, device=device)
    grad = torch.randn_like(x)
    results = []
    for autocast in (False, True):
        module.zero_grad()
        xb = (x.bfloat16() if autocast else x.clone()).requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            y = module(xb)
        assert y.dtype == xb.dtype
        y.backward(grad.to(y.dtype))
        results.append((y.float(), xb.grad.float(), {n: p.grad.clone() for n, p in module.named_parameters()}))
    (y32, gx32, gp32), (y16, gx16, gp16) = results
    relative = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    assert relative(y16, y32) < 3e-2 and relative(gx16, gx32) < 5e-2
    for n, g in gp16.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all(), n
        if gp32[n].norm() > 1e-3 * max(v.norm() for v in gp32.values()):  # sums that cancel to ~0 are only noise
            assert relative(g, gp32[n]) < 0.15, n
