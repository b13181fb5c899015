"""Temporal modules for 2D ResNets: TSM, STW, TRM and ATR behind one constructor convention.

Every module sees the frames of a 2D network, ``x: (B*T, C, H, W)`` with the T frames of one clip adjacent (row
``b*T + t``), and returns the same shape. Each declares where it goes (``insertion``) and which ResNet stages get it
by default (``default_stages``, torchvision ``layer1..layer4`` -> 1..4):

* ``"before_conv1"``: at the start of a residual block's branch, before conv1; the shortcut takes the unmodified x.
* ``"after_last_bn"``: after the last BN of the residual branch (bn3 of a Bottleneck, bn2 of a BasicBlock), before
  the shortcut is added.

Every module starts as the identity or as its spec's fixed initial form, so step 0 reproduces the pretrained 2D
network up to that form: TSM is a fixed shift; STW starts as ``shift(x) + 0.5 x`` (see `STW`); TRM and ATR start as
the exact identity. Where a paper is silent or contradicts itself, the choice made here is an option with the
paper's reading as the alternative, and the class docstring says why.

Build with ``build_temporal(name, channels, num_frames, spatial_size=(H, W), **options)``; ``module_options(name)``
lists a module's options and their defaults.
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from common.errors import UserError

INSERTIONS = ("before_conv1", "after_last_bn")


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


def _shift_into(out: Tensor, x: Tensor, spans: tuple[tuple[int, int, int], ...]) -> None:
    """Write ``x`` (B, T, C, ...) into ``out`` with each span ``(c0, c1, s)`` of dim 2 shifted in time:
    ``out[:, t, c0:c1] = x[:, t - s, c0:c1]``, zero where ``t - s`` falls outside the clip. Dim 2 outside every span
    is copied unshifted. Spans do not overlap.
    """
    done = 0
    for c0, c1, s in sorted(spans):
        if done < c0:
            out[:, :, done:c0] = x[:, :, done:c0]
        if s == 0:
            out[:, :, c0:c1] = x[:, :, c0:c1]
        elif s > 0:
            out[:, s:, c0:c1] = x[:, :-s, c0:c1]
            out[:, :s, c0:c1] = 0
        else:
            out[:, :s, c0:c1] = x[:, -s:, c0:c1]
            out[:, s:, c0:c1] = 0
        done = c1
    if done < x.shape[2]:
        out[:, :, done:] = x[:, :, done:]


class _TimeShift(torch.autograd.Function):
    """Shift spans of dim 2 along time (dim 1), see `_shift_into`; the backward is the opposite shift of the gradient.

    One read and one write of the tensor each way. The same shift written as slices and ``torch.cat`` of zero frames
    costs a zero-filled full-size gradient per slice in the backward plus their sum: TSM's shift at ResNet-50's
    stage-1 size (2 clips x 8 frames x 256 x 56 x 56, 2 CPU threads, median of 15) took 80-91 ms forward + backward
    that way and 40-48 ms this way, with bitwise the same output and gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, spans: tuple[tuple[int, int, int], ...]) -> Tensor:  # type: ignore[override]
        ctx.spans = spans
        out = torch.empty_like(x)
        _shift_into(out, x, spans)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad_in = torch.empty_like(grad)
        _shift_into(grad_in, grad, tuple((c0, c1, -s) for c0, c1, s in ctx.spans))
        return grad_in, None


def time_shift(x: Tensor, spans: tuple[tuple[int, int, int], ...]) -> Tensor:
    """``x: (B, T, C, ...)`` with spans ``(c0, c1, s)`` of dim 2 shifted by ``s`` frames: ``out[:, t, c0:c1] =
    x[:, t - s, c0:c1]``, zero beyond the clip ends (spec Decision of every module here); other channels unchanged."""
    return _TimeShift.apply(x, tuple(spans))


def _from_previous(x: Tensor) -> Tensor:
    """``out[:, t] = x[:, t-1]`` along dim 1 (time), zero at t = 0."""
    return time_shift(x, ((0, x.shape[2], 1),))


def _from_next(x: Tensor) -> Tensor:
    """``out[:, t] = x[:, t+1]`` along dim 1 (time), zero at t = T-1."""
    return time_shift(x, ((0, x.shape[2], -1),))


def _next_minus_current(nxt: Tensor, cur: Tensor) -> Tensor:
    """``out[:, t] = nxt[:, t+1] - cur[:, t]`` along dim 1 (time), zero at t = T-1 (no next frame; spec Decision)."""
    return torch.cat([nxt[:, 1:] - cur[:, :-1], torch.zeros_like(cur[:, :1])], dim=1)


def _check_choice(module: str, option: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{module}: {option}={value!r} is not valid; choose one of {', '.join(choices)}")
    return value


def _check_bool(module: str, option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{module}: {option}={value!r} must be True or False")
    return value


def _check_int(module: str, option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{module}: {option}={value!r} must be an integer >= {minimum}")
    return value


def _check_float(module: str, option: str, value: Any, low: float, high: float) -> float:
    """A number in the half-open interval ``(low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise UserError(f"{module}: {option}={value!r} must be a number in ({low}, {high}]")
    return float(value)


class TemporalModule(nn.Module):
    """The contract every temporal module keeps (see the module docstring).

    Args:
        channels: C of the feature map the module sees.
        num_frames: T, frames per clip; the batch dimension of ``forward``'s input must be a multiple of it.
    """

    name: ClassVar[str]
    insertion: ClassVar[str]
    default_stages: ClassVar[tuple[int, ...]]

    def __init__(self, channels: int, num_frames: int) -> None:
        super().__init__()
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise UserError(f"temporal module {self.name} needs --num-frames >= 2 (got {num_frames!r})")
        _check_int(self.name, "channels", channels, 1)
        self.channels = channels
        self.num_frames = num_frames

    def lr_scales(self) -> dict[str, float]:
        """``{local parameter name: lr multiplier}`` for the parameters whose multiplier is not 1."""
        return {}

    def _num_clips(self, x: Tensor) -> int:
        """B for ``x: (B*T, C, H, W)``; ValueError naming expected and actual sizes otherwise."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{self.name} expects (B*T, {self.channels}, H, W) input, got {tuple(x.shape)}")
        if x.shape[0] % self.num_frames:
            raise ValueError(f"{self.name} was built for {self.num_frames} frames per clip, but the input has "
                             f"{x.shape[0]} rows, not a multiple of {self.num_frames}")
        return x.shape[0] // self.num_frames

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_frames={self.num_frames}"


# ---------------------------------------------------------------------------------------------------------------------
# TSM


class TSM(TemporalModule):
    """Temporal Shift Module (Lin et al., ICCV 2019), residual shift placed before conv1.

    With ``f = C // fold_div``: channels ``[0, f)`` take the NEXT frame (``out[:, t] = x[:, t+1]``), channels
    ``[f, 2f)`` the PREVIOUS frame (``out[:, t] = x[:, t-1]``), the rest are unchanged; zero padding at the clip
    ends. No parameters.

    Args:
        fold_div: 1 / fold_div of the channels is shifted each way.
    """

    name = "tsm"
    insertion = "before_conv1"
    default_stages = (1, 2, 3, 4)

    def __init__(self, channels: int, num_frames: int, *, spatial_size: tuple[int, int], fold_div: int = 8) -> None:
        super().__init__(channels, num_frames)
        self.fold_div = _check_int(self.name, "fold_div", fold_div, 2)
        self.fold = channels // fold_div
        if self.fold < 1:
            raise UserError(f"tsm: fold_div={fold_div} shifts no channel of a {channels}-channel map; "
                            f"use fold_div <= {channels}")

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*T, C, H, W) -> (B*T, C, H, W)."""
        b, f = self._num_clips(x), self.fold
        x5 = x.view(b, self.num_frames, *x.shape[1:])  # (B, T, C, H, W)
        return time_shift(x5, ((0, f, -1), (f, 2 * f, 1))).view_as(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fold_div={self.fold_div}"


# ---------------------------------------------------------------------------------------------------------------------
# STW: STFM (Eqs. 1-2) + TWM (Eqs. 3-6)


def _parse_ratio(ratio: Any) -> tuple[Fraction, Fraction, Fraction]:
    """alpha:beta:gamma as exact fractions, from ``(4, 2, 4)``, ``(16, 8 / 7, 16)`` or ``"16:8/7:16"``."""
    parts = ratio.split(":") if isinstance(ratio, str) else ratio
    try:
        if len(parts) != 3:
            raise ValueError
        fracs = tuple(Fraction(p) if isinstance(p, (str, int)) else Fraction(p).limit_denominator(1000) for p in parts)
    except (TypeError, ValueError, ZeroDivisionError):
        raise UserError(f"stw: ratio={ratio!r} must be three numbers alpha:beta:gamma, e.g. (4, 2, 4)") from None
    if any(f <= 1 for f in fracs) or sum(1 / f for f in fracs) != 1:
        raise UserError(f"stw: ratio={ratio!r} needs 1/alpha + 1/beta + 1/gamma = 1 with each > 1, e.g. (4, 2, 4)")
    return fracs  # type: ignore[return-value]


def _grouped_layout(channels: int, n_out: int, start: int) -> tuple[int, Tensor]:
    """Groups and input-channel order of a grouped 1x1 conv whose output ``j`` can start as a copy of input ``start+j``.

    ``groups = gcd(C, n_out)``: each output mixes ``C / groups`` inputs (alpha inputs for a C/alpha branch). A plain
    contiguous grouping puts input ``start + j`` outside output ``j``'s group, so the inputs are reordered: group g
    reads first the inputs its outputs copy, then an equal share of the channels this branch does not copy, so every
    input channel reaches the branch once. Output ``j`` copies position ``j % (n_out / groups)`` of its group.
    """
    groups = math.gcd(channels, n_out)
    per_in, per_out = channels // groups, n_out // groups
    # on the CPU even while a model is built on the meta device: the layout is read back as Python ints
    copied = (start + torch.arange(n_out, device="cpu")) % channels  # (n_out,)
    rest = (start + n_out + torch.arange(channels - n_out, device="cpu")) % channels  # (C - n_out,)
    order = torch.cat([copied.view(groups, per_out), rest.view(groups, per_in - per_out)], dim=1).reshape(-1)
    return groups, order


def _runs(values: list[int]) -> list[tuple[int, int, int, int]]:
    """``values`` cut into maximal increasing arithmetic runs ``(i0, i1, first, step)``: ``values[i0:i1]`` is
    ``first, first + step, ...``; a value that starts no run of two or more is a run of one with step 1."""
    runs, i0, n = [], 0, len(values)
    while i0 < n:
        i1 = i0 + 1
        step = values[i1] - values[i0] if i1 < n else 1
        if step <= 0:
            step = 1
        else:
            while i1 < n and values[i1] - values[i1 - 1] == step:
                i1 += 1
        runs.append((i0, i1, values[i0], step))
        i0 = i1
    return runs


class _MixTerm(NamedTuple):
    """One strided piece of a grouped 1x1 conv: groups ``[g0, g1)`` of branch ``branch`` take their input ``k``
    from channels ``first, first + step, ...``, shifted ``shift`` frames in time, into output channels
    ``offset + g0 * per_out`` onwards of the module's output."""

    branch: int
    offset: int
    shift: int
    g0: int
    g1: int
    per_out: int
    first: int
    step: int
    k: int

    def channels(self) -> slice:
        return slice(self.first, self.first + self.step * (self.g1 - self.g0 - 1) + 1, self.step)

    def outputs(self) -> slice:
        return slice(self.offset + self.g0 * self.per_out, self.offset + self.g1 * self.per_out)


def _in_time(x5: Tensor, shift: int, source: bool) -> Tensor:
    """The frames of ``x5`` (B, T, ...) that a shift by ``shift`` reads (``source``) or writes."""
    if shift == 0:
        return x5
    if (shift > 0) == source:
        return x5[:, :-abs(shift)]
    return x5[:, abs(shift):]


class _GroupedMix(torch.autograd.Function):
    """``base += `` STFM's three grouped 1x1 convs with their time shifts, in place, as strided multiply-adds.

    A grouped conv whose groups read reordered input channels needs a reordered copy of its whole input per branch,
    and its backward scatters the gradient back; here each input ``k`` of a run of groups is a strided channel view
    of ``x`` (see `_MixTerm`), so nothing of ``x``'s size is copied: forward, one multiply-add per term into the
    output; backward, one into the input's gradient and one dot product per term for the weights. ``base`` (the
    TWM gate's output in the parallel STW, zeros otherwise) is updated in place and receives the gradient as is.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, base: Tensor, terms: tuple[_MixTerm, ...], num_frames: int,  # type: ignore[override]
                *weights: Tensor) -> Tensor:
        x5, out5 = x.unflatten(0, (-1, num_frames)), base.unflatten(0, (-1, num_frames))
        for term in terms:
            w = _term_weight(weights, term).to(x.dtype)
            xs = _in_time(x5, term.shift, True)[:, :, term.channels()]
            out = _in_time(out5, term.shift, False)[:, :, term.outputs()]
            if term.per_out == 1:
                out.addcmul_(xs, w.view(-1, *([1] * (x.dim() - 2))))
            else:
                out.unflatten(2, (-1, term.per_out)).addcmul_(xs.unsqueeze(3), w.view(*w.shape, *([1] * (x.dim() - 2))))
        ctx.mark_dirty(base)
        ctx.save_for_backward(x, *weights)
        ctx.terms, ctx.num_frames = terms, num_frames
        return base

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, *weights = ctx.saved_tensors
        x5, grad5 = x.unflatten(0, (-1, ctx.num_frames)), grad.unflatten(0, (-1, ctx.num_frames))
        grad_x = torch.zeros_like(x)
        gx5 = grad_x.unflatten(0, (-1, ctx.num_frames))
        acc = torch.promote_types(weights[0].dtype, torch.float32)
        grad_w = [torch.zeros(w.shape, dtype=acc, device=w.device) for w in weights]
        for term in ctx.terms:
            w = _term_weight(weights, term).to(x.dtype)
            xs = _in_time(x5, term.shift, True)[:, :, term.channels()]  # (B, T', n, H, W)
            gxs = _in_time(gx5, term.shift, True)[:, :, term.channels()]
            g = _in_time(grad5, term.shift, False)[:, :, term.outputs()]
            spatial = [1] * (x.dim() - 2)
            if term.per_out == 1:
                gxs.addcmul_(g, w.view(-1, *spatial))
                dot = torch.linalg.vecdot(g.flatten(3), xs.flatten(3)).sum(dim=(0, 1), dtype=acc)  # (n,)
            else:
                g = g.unflatten(2, (-1, term.per_out))  # (B, T', n, per_out, H, W)
                gxs.add_((g * w.view(*w.shape, *spatial)).sum(3))
                dot = torch.linalg.vecdot(g.flatten(4), xs.unsqueeze(3).flatten(4)).sum(dim=(0, 1), dtype=acc)
            _term_weight(grad_w, term).add_(dot.view(_term_weight(grad_w, term).shape))
        return (grad_x, grad, None, None, *(g.to(w.dtype) for g, w in zip(grad_w, weights, strict=True)))


def _term_weight(weights: list[Tensor] | tuple[Tensor, ...], term: _MixTerm) -> Tensor:
    """The weights of ``term``: ``(n, per_out)``, or ``(n,)`` when each group has one output."""
    w = weights[term.branch]  # (n_out, per_in, 1, 1)
    w = w.view(-1, term.per_out, w.shape[1])[term.g0:term.g1, :, term.k]
    return w.view(-1) if term.per_out == 1 else w


class STFM(nn.Module):
    """Spatio-Temporal Fusion Module, STW paper Eqs. 1-2, batched over frames.

    ``y_t = cat(conv_prev(x_{t-1}), conv_cur(x_t), conv_next(x_{t+1}))`` with C/alpha, C/beta, C/gamma output
    channels, zero frames beyond the clip ends (spec Decision). 1x1 convs, no bias, no BN, no activation.

    The paper writes plain 2D convs; the spec wins with the grouped default, because full 1x1 convs cost ~24.8
    GMACs at 8 frames and cannot match the paper's own "33 -> 33.5 GFLOPs" (spec "Cost contradiction").
    ``mode="grouped"`` (spec Decision, default): each branch is a grouped 1x1 conv in which every output mixes
    alpha (beta, gamma) inputs, 3C parameters at 4:2:4; this is what fits the paper's "<2% extra GFLOPs" claim.
    ``mode="dense"``: full 1x1 convs, C^2 parameters (~15.9M extra on ResNet-50).
    Both start as the TSM-style shift of the spec: the prev branch copies input channels ``[0, C/alpha)``, the
    current one the next C/beta channels, the next branch the last C/gamma channels, so a pretrained conv1 still
    sees each channel where it expects it.

    The grouped branches keep ``nn.Conv2d`` weights (``groups`` and shapes as a grouped conv, see
    `_grouped_layout` for which inputs each group reads) but run as strided multiply-adds (`_GroupedMix`), the same
    function without a reordered copy of the input per branch (with `_TemporalGate`, STW at ResNet-50's stage-1 size
    runs in half its former time; README "FLOPs and speed").
    """

    def __init__(self, channels: int, num_frames: int, ratio: tuple[Fraction, Fraction, Fraction], mode: str) -> None:
        super().__init__()
        self.num_frames, self.mode = num_frames, mode
        sizes = [channels / r for r in ratio]
        if any(s.denominator != 1 for s in sizes):
            raise UserError(f"stw: ratio {':'.join(map(str, ratio))} splits {channels} channels into non-integer "
                            f"parts {', '.join(map(str, sizes))}; choose a ratio whose parts divide {channels}")
        self.sizes = [int(s) for s in sizes]
        starts = [0, self.sizes[0], self.sizes[0] + self.sizes[1]]
        convs, terms = [], []
        for i, (n_out, start, shift) in enumerate(zip(self.sizes, starts, (1, 0, -1), strict=True)):
            if mode == "grouped":
                groups, order = _grouped_layout(channels, n_out, start)
                conv = nn.Conv2d(channels, n_out, 1, groups=groups, bias=False)
                copy_from = torch.arange(n_out) % (n_out // groups)
                per_in, per_out = channels // groups, n_out // groups
                for k in range(per_in):
                    for g0, g1, first, step in _runs(order.view(groups, per_in)[:, k].tolist()):
                        terms.append(_MixTerm(i, start, shift, g0, g1, per_out, first, step, k))
            else:
                conv = nn.Conv2d(channels, n_out, 1, bias=False)
                copy_from = start + torch.arange(n_out)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[torch.arange(n_out), copy_from, 0, 0] = 1.0
            convs.append(conv)
        self.conv_prev, self.conv_cur, self.conv_next = convs
        self.terms = tuple(terms)

    def grouped_macs(self, x: Tensor) -> int:
        """Multiply-adds of the grouped branches on ``x`` (B*T, C, H, W), counted as 1x1 convolutions count them
        (every frame, the clip ends included); 0 in dense mode, whose convolutions a FLOP counter sees itself."""
        if self.mode != "grouped":
            return 0
        per_pixel = sum(c.weight.shape[0] * c.weight.shape[1] for c in (self.conv_prev, self.conv_cur, self.conv_next))
        return x.shape[0] * x.shape[2] * x.shape[3] * per_pixel

    def _branch(self, x: Tensor, conv: nn.Conv2d) -> Tensor:
        out = conv(x)  # (B*T, n_i, H, W)
        return out.view(-1, self.num_frames, *out.shape[1:])  # (B, T, n_i, H, W)

    def forward(self, x: Tensor, base: Tensor | None = None) -> Tensor:
        """x: (B*T, C, H, W) -> (B*T, C, H, W); ``base + STFM(x)`` when ``base`` is given (the grouped mode adds
        into ``base`` in place: pass a fresh tensor, such as TWM's output)."""
        if self.mode == "grouped":
            base = torch.zeros_like(x) if base is None else base
            weights = (self.conv_prev.weight, self.conv_cur.weight, self.conv_next.weight)
            return _GroupedMix.apply(x, base, self.terms, self.num_frames, *weights)
        # A 1x1 conv commutes with the time shift, so each branch convolves every frame and shifts its smaller output.
        prev = _from_previous(self._branch(x, self.conv_prev))
        cur = self._branch(x, self.conv_cur)
        nxt = _from_next(self._branch(x, self.conv_next))
        out = torch.cat([prev, cur, nxt], dim=2).view_as(x)
        return out if base is None else base + out


def _frame_product(w: Tensor, x: Tensor) -> Tensor:
    """``(R, C) @ (C, H*W)`` for every frame of ``x`` (N, C, H, W): ``(N, R, H*W)``, one batched product."""
    return torch.bmm(w.to(x.dtype).expand(x.shape[0], *w.shape), x.flatten(2))


def _frame_product_weight_grad(grad: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """The gradient of `_frame_product`'s ``w`` (R, C) from its output's gradient ``grad`` (N, R, H*W)."""
    return torch.bmm(grad, x.flatten(2).transpose(1, 2)).sum(0, dtype=dtype)


class _TemporalGate(torch.autograd.Function):
    """TWM's ``x * sigmoid(-u)`` with ``u = sum_k w_k . x_{t+k-1} + b`` (the C -> 1 temporal conv, see `TWM`).

    The three taps are one batched product ``(3, C) @ (C, H*W)`` per frame, and the backward is written out: one
    pass over ``x`` and the gradient for the gate's input, one batched product each for the weights and for the
    taps' share of ``x``'s gradient (added in place). The same layer as ``conv2d`` + autograd in under half its time
    at ResNet-50's stage-1 size on the CPU, where a C -> 3 convolution's backward is slow.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, num_frames: int) -> Tensor:  # type: ignore[override]
        n, c = x.shape[:2]
        w = weight.view(c, 3).t()  # Conv3d (1, C, 3, 1, 1) -> (3, C); tap k reads frame t + k - 1
        acc = torch.promote_types(x.dtype, torch.float32)  # the gate in float32 at least
        taps = _frame_product(w, x).to(acc).unflatten(0, (-1, num_frames))  # (B, T, 3, H*W)
        u = taps[:, :, 1] + bias.to(acc)
        u[:, 1:] += taps[:, :-1, 0]  # tap 0 at frame t reads frame t - 1, zero before the clip
        u[:, :-1] += taps[:, 1:, 2]  # tap 2 reads frame t + 1, zero after it
        gate = torch.sigmoid(-u).flatten(0, 1)  # (B*T, H*W)
        ctx.save_for_backward(x, weight, gate)
        ctx.num_frames = num_frames
        return x * gate.to(x.dtype).view(n, 1, *x.shape[2:])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, gate = ctx.saved_tensors
        n, c = x.shape[:2]
        xf, gf = x.flatten(2), grad.flatten(2)
        grad_x = grad * gate.to(x.dtype).view(n, 1, *x.shape[2:])
        # d gate / d u = -gate (1 - gate)
        grad_u = -(torch.linalg.vecdot(gf, xf, dim=1).to(gate.dtype) * gate * (1 - gate))  # (B*T, H*W)
        gu = grad_u.unflatten(0, (-1, ctx.num_frames))
        grad_taps = gu.new_zeros(*gu.shape[:2], 3, gu.shape[-1])
        grad_taps[:, :-1, 0] = gu[:, 1:]
        grad_taps[:, :, 1] = gu
        grad_taps[:, 1:, 2] = gu[:, :-1]
        grad_taps = grad_taps.flatten(0, 1).to(x.dtype)  # (B*T, 3, H*W)
        w = weight.view(c, 3).to(x.dtype)  # (C, 3)
        grad_x.view(n, c, -1).baddbmm_(w.expand(n, c, 3), grad_taps)  # a view (also channels-last): in place
        grad_w = _frame_product_weight_grad(grad_taps, x, gate.dtype)  # (3, C)
        return grad_x, grad_w.t().reshape(weight.shape).to(weight.dtype), grad_u.sum().view(1).to(weight.dtype), None


class TWM(nn.Module):
    """Temporal-Wise Module, STW paper Eqs. 3-6: a spatio-temporal gate shared by all channels.

    The paper calls Eq. 3 a reshape; the spec wins and makes it a permute, because a reshape of T x C x H x W memory
    into C x T x H x W would mix frames and channels instead of swapping the two axes.

    ``X~ = permute(X)`` (T, C -> C, T); ``U = Conv3d(C -> 1, (3, 1, 1), padding (1, 0, 0))(X~)``; ``S = sigmoid(U)``;
    ``Z = X~ - X~ * S``, computed as ``X~ * sigmoid(-U)``. The Conv3d is computed as the spec's equivalent: a C -> 3
    product on the frames (one output per temporal tap), taps shifted in time and summed, which avoids the permuted
    copy of the whole feature map (`_TemporalGate`).
    Weight and bias start at zero (spec Decision), so S = 0.5 and ``Z = 0.5 X`` at init.
    """

    def __init__(self, channels: int, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.conv = nn.Conv3d(channels, 1, (3, 1, 1), padding=(1, 0, 0))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*T, C, H, W) -> (B*T, C, H, W)."""
        # Eq. 6, Z = X~ - X~ * S, is X~ * sigmoid(-U) (1 - sigmoid(u) = sigmoid(-u)): one pass over the feature map
        # forward and two backward instead of the literal form's two and five, the same values to rounding; the
        # output keeps x's dtype, so that autocast does not promote it.
        return _TemporalGate.apply(x, self.conv.weight, self.conv.bias, self.num_frames)


class STW(TemporalModule):
    """Spatio-Temporal-Wise block (STW paper, Section III): ``STW(x) = STFM(x) + TWM(x)``.

    Placed before conv1 of every bottleneck, where TSM puts its shift. Implemented literally as the spec says, which
    means it is NOT the identity at init: with STFM starting as the shift and TWM as the 0.5 gate,
    ``STW(x) = shift(x) + 0.5 x`` in the parallel order, ``0.5 shift(x)`` in both serial orders.

    Args:
        stfm_mode: "grouped" (default) or "dense" 1x1 convs in STFM (spec Decision; see `STFM`).
        ratio: alpha:beta:gamma channel split of STFM, 1/alpha + 1/beta + 1/gamma = 1; (4, 2, 4) by default,
            the paper's ablations are (16, 8/7, 16) and (8, 4/3, 8) (also given as the string "16:8/7:16").
        order: "parallel" (STFM + TWM, default), "stfm_twm" (TWM after STFM) or "twm_stfm" (STFM after TWM).
    """

    name = "stw"
    insertion = "before_conv1"
    default_stages = (1, 2, 3, 4)
    ORDERS = ("parallel", "stfm_twm", "twm_stfm")

    def __init__(self, channels: int, num_frames: int, *, spatial_size: tuple[int, int], stfm_mode: str = "grouped",
                 ratio: tuple[float, float, float] | str = (4, 2, 4), order: str = "parallel") -> None:
        super().__init__(channels, num_frames)
        self.stfm_mode = _check_choice(self.name, "stfm_mode", stfm_mode, ("grouped", "dense"))
        self.order = _check_choice(self.name, "order", order, self.ORDERS)
        self.ratio = _parse_ratio(ratio)
        self.stfm = STFM(channels, num_frames, self.ratio, stfm_mode)
        self.twm = TWM(channels, num_frames)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*T, C, H, W) -> (B*T, C, H, W)."""
        self._num_clips(x)
        if self.order == "parallel":
            return self.stfm(x, base=self.twm(x))  # the gate's fresh output takes STFM's terms in place
        if self.order == "stfm_twm":
            return self.twm(self.stfm(x))
        return self.stfm(self.twm(x))

    def extra_repr(self) -> str:
        ratio = ":".join(map(str, self.ratio))
        return f"{super().extra_repr()}, stfm_mode={self.stfm_mode}, ratio={ratio}, order={self.order}"


# ---------------------------------------------------------------------------------------------------------------------
# TRM


def relocate(x: Tensor, offsets: Tensor) -> Tensor:
    """Re-sample every element along time at a fractional offset (TRM spec step 5, gather semantics).

    ``y[b, c, t0, h, w] = sum_t max(0, 1 - |t - (t0 + R)|) * x[b, c, t, h, w]`` with ``R = offsets[b, c, t0, h, w]``:
    linear interpolation between frames ``floor(t0 + R)`` and ``floor(t0 + R) + 1``, frames outside ``[0, T-1]``
    are zero. The gradient w.r.t. R is ``x[floor + 1] - x[floor]``, non-zero at R = 0: ``floor`` carries no
    gradient, the weight ``pos - floor`` does.

    Args:
        x: (B, C', T, H, W).
        offsets: (B, C', T, H, W) in frames, or any shape broadcastable to x (e.g. (B, C', T, 1, 1)).

    Returns:
        (B, C', T, H, W), same dtype as x.
    """
    if x.dim() != 5:
        raise ValueError(f"relocate expects x of shape (B, C', T, H, W), got {tuple(x.shape)}")
    offsets = offsets.expand_as(x)
    t = x.shape[2]
    frame = torch.arange(t, device=x.device, dtype=torch.float32).view(1, 1, t, 1, 1)
    pos = frame + offsets.float()  # float32 even under autocast: a bf16 position near 15 is off by up to 1/16
    low = torch.floor(pos).detach()
    w_high = (pos - low).to(x.dtype)
    idx_low = low.long()

    def take(idx: Tensor) -> Tensor:
        inside = (idx >= 0) & (idx <= t - 1)
        return x.gather(2, idx.clamp(0, t - 1)) * inside.to(x.dtype)

    return (1 - w_high) * take(idx_low) + w_high * take(idx_low + 1)


class TRM(TemporalModule):
    """Temporal Relocation Module (TRM spec): relocate the first C' channels along time at learned offsets.

    ``x (B*T, C, H, W) -> X (B, C, T, H, W)``; ``X_r = X[:, :C']`` with ``C' = int(C * relocate_ratio)``; offsets
    ``R = tanh(predictor(X_r)) * T`` of shape (B, C', T, H, W); ``Y_r = relocate(X_r, R)``; ``cat(Y_r, X[:, C':])``.
    No internal residual: the block's shortcut takes the un-relocated x.

    Offset predictors (spec; kernel sizes are the spec Decision, ``kernel_size`` = k):

    * ``ttrm``: Conv3d(C', C', (k, 1, 1)), "same" padding;
    * ``strm``: Conv3d(C', C', (k, k, k)), "same" padding;
    * ``ctrm`` (default): the H*W positions are the conv channels, the kernel slides over the (channel, time) plane:
      ``X_r -> (B, H*W, C', T)``, Conv2d(H*W, H*W, (k, k)), "same" padding. Its weights depend on H*W, so the module
      is tied to ``spatial_size``, the feature map size at the training resolution.

    The predictor's weight and bias start at zero (spec Decision), so R = 0 and TRM is the exact identity at init;
    the gradient still reaches them (see `relocate`).

    Args:
        variant: "ctrm", "strm" or "ttrm".
        relocate_ratio: fraction of the channels relocated (C' = C // 4 by default).
        spatial_agnostic: average R over H and W and broadcast it (the paper's ablation).
        offset_lr_mult: learning-rate multiplier of the predictor, reported by `lr_scales` (0.1 if unstable).
        kernel_size: odd k of the predictor's kernel, see above.
    """

    name = "trm"
    insertion = "before_conv1"
    default_stages = (3, 4)
    VARIANTS = ("ctrm", "strm", "ttrm")

    def __init__(self, channels: int, num_frames: int, *, spatial_size: tuple[int, int], variant: str = "ctrm",
                 relocate_ratio: float = 0.25, spatial_agnostic: bool = False, offset_lr_mult: float = 1.0,
                 kernel_size: int = 3) -> None:
        super().__init__(channels, num_frames)
        self.variant = _check_choice(self.name, "variant", variant, self.VARIANTS)
        self.relocate_ratio = _check_float(self.name, "relocate_ratio", relocate_ratio, 0.0, 1.0)
        self.spatial_agnostic = _check_bool(self.name, "spatial_agnostic", spatial_agnostic)
        self.offset_lr_mult = _check_float(self.name, "offset_lr_mult", offset_lr_mult, 0.0, math.inf)
        k = _check_int(self.name, "kernel_size", kernel_size, 1)
        if k % 2 == 0:
            raise UserError(f"trm: kernel_size={k} must be odd so that the offsets keep the (channel, time) grid")
        self.relocated = int(channels * self.relocate_ratio)
        if self.relocated < 1:
            raise UserError(f"trm: relocate_ratio={relocate_ratio} relocates no channel of a {channels}-channel map; "
                            f"use relocate_ratio >= {1 / channels:.3g}")
        cr = self.relocated
        if variant == "ctrm":
            if (not isinstance(spatial_size, (tuple, list)) or len(spatial_size) != 2
                    or not all(isinstance(s, int) and s > 0 for s in spatial_size)):
                raise UserError(f"trm: variant ctrm needs spatial_size=(H, W) of positive integers, "
                                f"got {spatial_size!r}")
            self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
            hw = self.spatial_size[0] * self.spatial_size[1]
            self.offset = nn.Conv2d(hw, hw, k, padding=k // 2)
        elif variant == "strm":
            self.offset = nn.Conv3d(cr, cr, k, padding=k // 2)
        else:
            self.offset = nn.Conv3d(cr, cr, (k, 1, 1), padding=(k // 2, 0, 0))
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def lr_scales(self) -> dict[str, float]:
        if self.offset_lr_mult == 1.0:
            return {}
        return {f"offset.{n}": self.offset_lr_mult for n, _ in self.offset.named_parameters()}

    def offsets(self, xr: Tensor) -> Tensor:
        """Offsets in frames, ``(B, C', T, H, W)`` (``(B, C', T, 1, 1)`` when spatial-agnostic), from ``xr`` of the
        same layout."""
        if self.variant == "ctrm":
            h, w = xr.shape[-2:]
            if (h, w) != self.spatial_size:
                raise ValueError(f"ctrm was built for {self.spatial_size[0]}x{self.spatial_size[1]} feature maps "
                                 f"(its offset conv has H*W channels), got {h}x{w}")
            raw = self.offset(rearrange(xr, "b c t h w -> b (h w) c t"))
            raw = rearrange(raw, "b (h w) c t -> b c t h w", h=h)
        else:
            raw = self.offset(xr)
        r = torch.tanh(raw) * self.num_frames  # R in (-T, T)
        if self.spatial_agnostic:
            r = r.mean(dim=(3, 4), keepdim=True)
        return r

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*T, C, H, W) -> (B*T, C, H, W)."""
        b, cr = self._num_clips(x), self.relocated
        x5 = x.view(b, self.num_frames, *x.shape[1:])  # (B, T, C, H, W)
        xr = x5[:, :, :cr].transpose(1, 2)  # (B, C', T, H, W), a view
        yr = relocate(xr, self.offsets(xr)).transpose(1, 2)  # (B, T, C', H, W)
        return torch.cat([yr, x5[:, :, cr:]], dim=2).view_as(x)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, variant={self.variant}, relocated={self.relocated}, "
                f"spatial_agnostic={self.spatial_agnostic}, offset_lr_mult={self.offset_lr_mult}")


# ---------------------------------------------------------------------------------------------------------------------
# ATR: ARL + EAR (AFA, reasoner, AFD)


class ChannelMap(nn.Module):
    """The reasoner's channel transform W on ``(..., C)`` (ATR spec "Cost"): dense ``C x C``, a ``C -> C/4 -> C``
    bottleneck (low rank, no activation), or depthwise (one scale per channel, starting at 1)."""

    MODES = ("dense", "bottleneck", "depthwise")

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "dense":
            self.map = nn.Linear(channels, channels, bias=False)
        elif mode == "bottleneck":
            mid = max(channels // 4, 1)
            self.map = nn.Sequential(nn.Linear(channels, mid, bias=False), nn.Linear(mid, channels, bias=False))
        else:
            self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, s: Tensor) -> Tensor:
        return s * self.scale if self.mode == "depthwise" else self.map(s)


class EfficientReasoner(nn.Module):
    """ER (ATR paper, efficient reasoner): ``Y_t = (sum_{d=-k..k} alpha_d s_{t+d}) W``.

    k = 1; the alphas are scalars shared over time and channels, starting at 1/(2k+1); zero padding at the clip ends.

    Args:
        channels: C.
        channel_mode: W's form, see `ChannelMap`.
    """

    def __init__(self, channels: int, channel_mode: str, k: int = 1) -> None:
        super().__init__()
        self.k = k
        self.alpha = nn.Parameter(torch.full((2 * k + 1,), 1.0 / (2 * k + 1)))  # alpha[i] weighs s_{t + i - k}
        self.proj = ChannelMap(channels, channel_mode)

    def forward(self, s: Tensor) -> Tensor:
        """s: (N, T, C) -> (N, T, C)."""
        t = s.shape[1]
        padded = F.pad(s, (0, 0, self.k, self.k))  # (N, T + 2k, C)
        mixed = sum(self.alpha[i] * padded[:, i:i + t] for i in range(2 * self.k + 1))  # loop over the 3 taps only
        return self.proj(mixed)


class GraphReasoner(nn.Module):
    """GR (ATR paper ablation, after Wang & Gupta 2018): ``Y = W_graph S W`` with
    ``w_pq = softmax_q(phi(s_p)^T phi'(s_q))``; phi, phi' are C x C linear maps without bias (their shape is lost
    from the paper's text; C x C as in the graph model it follows), no scaling of the dot product.
    """

    def __init__(self, channels: int, channel_mode: str) -> None:
        super().__init__()
        self.phi = nn.Linear(channels, channels, bias=False)
        self.phi2 = nn.Linear(channels, channels, bias=False)
        self.proj = ChannelMap(channels, channel_mode)

    def forward(self, s: Tensor) -> Tensor:
        """s: (N, T, C) -> (N, T, C)."""
        graph = torch.softmax(self.phi(s) @ self.phi2(s).transpose(1, 2), dim=-1)  # (N, T, T), rows p sum to 1
        return self.proj(graph @ s)


class _PointwiseProduct(torch.autograd.Function):
    """A 1x1 convolution without bias, ``(N, C, H, W) -> (N, R, H, W)``, as one batched product ``(R, C) @ (C, H*W)``
    per frame, with the backward written as two more: the same layer, for a narrow output (ARL's C -> C/16) in about
    two thirds of the convolution's forward + backward time on the CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return _frame_product(weight.view(weight.shape[0], -1), x).view(x.shape[0], -1, *x.shape[2:])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        w = weight.view(weight.shape[0], c).to(x.dtype)
        g = grad.flatten(2).to(x.dtype)  # (N, R, H*W)
        grad_x = torch.bmm(w.t().expand(n, c, w.shape[0]), g).view(x.shape)
        grad_w = _frame_product_weight_grad(g, x, torch.promote_types(weight.dtype, torch.float32))  # (R, C)
        return grad_x, grad_w.view(weight.shape).to(weight.dtype)


class _ActionPooling(torch.autograd.Function):
    """AFA's pooling ``s[n, c] = sum_p x[n, c, p] a[n, p]`` with its backward written out: a dot product per
    channel forward, an outer product and a vector-matrix product backward, where ``bmm`` with a one-column
    operand was several times slower on the CPU."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, attn: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, attn)
        return torch.linalg.vecdot(x.flatten(2), attn.unsqueeze(1))  # (N, C)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, attn = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = (grad.unsqueeze(2) * attn.unsqueeze(1)).view(x.shape)
        grad_attn = torch.bmm(grad.unsqueeze(1), x.flatten(2)).squeeze(1)  # (N, H*W)
        return grad_x, grad_attn


class ARL(nn.Module):
    """Action-related Region Locator (ATR spec): actionness logits ``M = Ap + Mo`` from motion and appearance.

    ``Xr = BN(Conv1x1(C -> C/r))(x)``; ``Mo_t = g(h_mo(Xr_{t+1} - Xr_t))`` (``"diff_then_h"``) or
    ``g(h_mo(Xr_{t+1}) - Xr_t)`` (``"tea"``), zero difference at t = T-1; ``Ap_t = g(h_app(Xr_t))``. ``h_mo``,
    ``h_app``: depth-wise 3x3 convs without bias; ``g``: Conv1x1(C/r -> 1) with bias, shared by both cues.
    """

    def __init__(self, channels: int, num_frames: int, reduced: int, motion: bool, appearance: bool,
                 motion_order: str) -> None:
        super().__init__()
        self.num_frames, self.motion, self.appearance, self.motion_order = num_frames, motion, appearance, motion_order
        self.reduce = nn.Sequential(nn.Conv2d(channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced))
        if motion:
            self.h_mo = nn.Conv2d(reduced, reduced, 3, padding=1, groups=reduced, bias=False)
        if appearance:
            self.h_app = nn.Conv2d(reduced, reduced, 3, padding=1, groups=reduced, bias=False)
        self.g = nn.Conv2d(reduced, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*T, C, H, W) -> M: (B*T, 1, H, W) raw logits."""
        xr = self.reduce[1](_PointwiseProduct.apply(x, self.reduce[0].weight))  # (B*T, C/r, H, W): BN(Conv1x1(x))
        m = torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=xr.dtype)
        if self.appearance:
            m = m + self.g(self.h_app(xr))
        if self.motion:
            xr5 = xr.view(-1, self.num_frames, *xr.shape[1:])  # (B, T, C/r, H, W)
            if self.motion_order == "diff_then_h":
                mo = self.h_mo(_next_minus_current(xr5, xr5).view_as(xr))
            else:
                mo = _next_minus_current(self.h_mo(xr).view_as(xr5), xr5).view_as(xr)
            m = m + self.g(mo)
        return m


def bn_of_separable(x: Tensor, bn: nn.BatchNorm2d, p: Tensor | None, q: Tensor | None, r: Tensor | None) -> Tensor:
    """``x + bn(z)`` for ``z[n, c, h, w] = p[n, c] + q[n, c] * r[n, 0, h, w]`` (``q`` None: 1; ``p`` None: 0; ``r``
    None: no second term), without ever building ``z``.

    ATR's Z is such a sum (Y per frame and channel, M per frame and position), so BN's statistics per channel follow
    from per-frame means of ``r`` and ``r^2``, and ``x + bn(z) = x + U + V r`` with ``U``, ``V`` per (frame, channel):
    one batched matrix product over the feature map instead of building Z, BN's passes over it and the sum. BN's
    semantics are kept: batch statistics (biased variance) in training and the running ones (updated with the unbiased
    variance and ``bn.momentum``) in evaluation. x: (N, C, H, W); p, q: (N, C); r: (N, 1, H, W).
    """
    n, c, h, w = x.shape
    stats = torch.float32  # the small statistics in fp32, whatever the compute precision
    p32 = p.to(stats) if p is not None else torch.zeros(n, c, device=x.device, dtype=stats)
    if r is not None:
        r32 = r.reshape(n, h * w).to(stats)
        r_mean, r_sq = r32.mean(1, keepdim=True), (r32 * r32).mean(1, keepdim=True)  # (N, 1)
        q32 = q.to(stats) if q is not None else torch.ones_like(p32)
    if bn.training or bn.running_mean is None:
        mean = p32.mean(0) if r is None else (p32 + q32 * r_mean).mean(0)  # (C,)
        dev = p32 - mean
        var = (dev * dev).mean(0) if r is None else (dev * dev + 2 * dev * q32 * r_mean + q32 * q32 * r_sq).mean(0)
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            count = n * h * w
            with torch.no_grad():
                bn.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                bn.running_var.mul_(1 - factor).add_(var.detach() * (count / max(count - 1, 1)), alpha=factor)
    else:
        mean, var = bn.running_mean.to(stats), bn.running_var.to(stats)
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.to(stats)
    shift = (bn.bias.to(stats) if bn.affine else 0.0) - scale * mean  # (C,)
    u = (p32 * scale + shift).to(x.dtype)  # (N, C)
    if r is None:
        return x + u.view(n, c, 1, 1)
    v = (q32 * scale).to(x.dtype)  # (N, C)
    a = torch.stack([u, v], dim=2)  # (N, C, 2)
    b = torch.stack([torch.ones_like(r32), r32], dim=1).to(x.dtype)  # (N, 2, H*W)
    return torch.baddbmm(x.reshape(n, c, h * w), a, b).view(n, c, h, w)


class ATR(TemporalModule):
    """Action-centric Temporal-relational Reasoning block (ATR spec): ``out = x + Z``, placed after the last BN.

    1. ARL: actionness logits M (B*T, 1, H, W), see `ARL` (only when a cue is on).
    2. AFA: ``s_t = sum_ij softmax_ij(M_t) X_t(:, i, j)`` -> S (B, T, C); with both cues off (ATR_sim), global
       average pooling.
    3. Reasoners: ``Y = R_n(ReLU(LN(... R_1(S))))``, R = `EfficientReasoner` or `GraphReasoner`.
    4. AFD, then ``Z = BN_C(...)``: "adding" ``BN(Y + M)`` (Y broadcast over H, W, M over C); "scaling"
       ``BN(sigmoid(M) * Y)``; "uniform" ``BN(Y)`` broadcast over H, W. With both cues off there is no M, and "adding"
       is "uniform" (M contributes nothing), which gives the ATR_sim ablation.

    The spec writes the BN only for the adding form; here every form ends with the same BN, whose gamma starts at
    zero so the block is the exact identity at init in every configuration (the house rule for modules inserted into
    a pretrained network takes precedence).

    Args:
        reasoner: "er" (efficient reasoner) or "gr" (graph reasoner ablation).
        num_reasoners: n stacked reasoners.
        afd: "adding", "scaling" or "uniform".
        motion, appearance: the two actionness cues.
        er_channel_mode: W of each reasoner: "dense", "bottleneck" or "depthwise" (`ChannelMap`).
        reduction: r of ARL's channel reduction C -> C / r (at least one channel).
        motion_order: "diff_then_h" (the spec's formula) or "tea" (see `ARL`).
    """

    name = "atr"
    insertion = "after_last_bn"
    default_stages = (2, 3, 4)
    REASONERS = {"er": EfficientReasoner, "gr": GraphReasoner}
    AFDS = ("adding", "scaling", "uniform")

    def __init__(self, channels: int, num_frames: int, *, spatial_size: tuple[int, int], reasoner: str = "er",
                 num_reasoners: int = 2, afd: str = "adding", motion: bool = True, appearance: bool = True,
                 er_channel_mode: str = "dense", reduction: int = 16, motion_order: str = "diff_then_h") -> None:
        super().__init__(channels, num_frames)
        self.reasoner = _check_choice(self.name, "reasoner", reasoner, tuple(self.REASONERS))
        self.num_reasoners = _check_int(self.name, "num_reasoners", num_reasoners, 1)
        self.afd = _check_choice(self.name, "afd", afd, self.AFDS)
        self.motion = _check_bool(self.name, "motion", motion)
        self.appearance = _check_bool(self.name, "appearance", appearance)
        self.er_channel_mode = _check_choice(self.name, "er_channel_mode", er_channel_mode, ChannelMap.MODES)
        self.reduction = _check_int(self.name, "reduction", reduction, 1)
        self.motion_order = _check_choice(self.name, "motion_order", motion_order, ("diff_then_h", "tea"))
        self.action_centric = motion or appearance
        if afd == "scaling" and not self.action_centric:
            raise UserError("atr: afd='scaling' needs an actionness map; turn motion or appearance on, "
                            "or use afd='uniform' for ATR_sim")
        if self.action_centric:
            self.arl = ARL(channels, num_frames, max(channels // reduction, 1), motion, appearance, motion_order)
        self.reasoners = nn.ModuleList(self.REASONERS[reasoner](channels, er_channel_mode)
                                       for _ in range(num_reasoners))
        self.links = nn.ModuleList(nn.LayerNorm(channels) for _ in range(num_reasoners - 1))
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)  # Z = 0: the block starts as the identity

    def pooling_macs(self, x: Tensor) -> int:
        """Multiply-adds of AFA's attention pooling on ``x`` (B*T, C, H, W), one per element (a matrix-vector product
        per frame), which a FLOP counter does not see in `_ActionPooling`'s dot products; 0 for ATR_sim's average."""
        return x.numel() if self.action_centric else 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (B*T, C, H, W) -> (B*T, C, H, W)."""
        b = self._num_clips(x)
        if self.action_centric:
            m = self.arl(x)  # (B*T, 1, H, W)
            attn = torch.softmax(m.flatten(1), dim=-1).to(x.dtype)  # (B*T, H*W), softmax over positions
            s = _ActionPooling.apply(x, attn)  # (B*T, C)
        else:
            s = x.mean(dim=(2, 3))  # (B*T, C)
        y = s.view(b, self.num_frames, -1)  # (B, T, C)
        y = self.reasoners[0](y)
        for link, reasoner in zip(self.links, self.reasoners[1:], strict=True):
            y = reasoner(F.relu(link(y)))
        y = y.reshape(x.shape[0], -1)  # (B*T, C)
        # Z = BN(P + Q R) with P, Q per (frame, channel) and R per (frame, position); see `bn_of_separable`.
        if self.afd == "adding" and self.action_centric:
            return bn_of_separable(x, self.bn, y, None, m)  # Y + M
        if self.afd == "scaling":
            return bn_of_separable(x, self.bn, None, y, torch.sigmoid(m))  # sigmoid(M) * Y
        return bn_of_separable(x, self.bn, y, None, None)  # Y broadcast over H, W

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, reasoner={self.reasoner}x{self.num_reasoners}, afd={self.afd}, "
                f"motion={self.motion}, appearance={self.appearance}, er_channel_mode={self.er_channel_mode}")


# ---------------------------------------------------------------------------------------------------------------------
# Registry and builder


TEMPORAL_MODULES: dict[str, type[nn.Module]] = {"tsm": TSM, "stw": STW, "trm": TRM, "atr": ATR}


def _lookup(name: str) -> type[nn.Module]:
    if name not in TEMPORAL_MODULES:
        raise UserError(f"unknown temporal module {name!r}; choose one of {', '.join(TEMPORAL_MODULES)}")
    return TEMPORAL_MODULES[name]


def module_options(name: str) -> dict[str, Any]:
    """The options temporal module ``name`` accepts, with their defaults, e.g. ``{"fold_div": 8}`` for tsm."""
    params = inspect.signature(_lookup(name).__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "spatial_size"}


def build_temporal(name: str, channels: int, num_frames: int, *, spatial_size: tuple[int, int],
                   **options: Any) -> nn.Module:
    """Temporal module ``name`` for a ``channels``-wide feature map of ``spatial_size`` (H, W) at the training
    resolution, in clips of ``num_frames`` frames, e.g. ``build_temporal("trm", 1024, 8, spatial_size=(14, 14))``.

    UserError for an unknown name or option, a bad option value, or num_frames < 2.
    """
    allowed = module_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for temporal module {name!r}; "
                        f"its options are: {', '.join(allowed) or '(none)'}")
    return _lookup(name)(channels, num_frames, spatial_size=spatial_size, **options)
