"""Linear layers whose CPU float32 matrix products run through oneDNN.

PyTorch's CPU ``F.linear`` and its backward call MKL's ``sgemm``. MKL picks its AVX-512 kernels only on Intel
processors: on AMD EPYC (this project's development and CI machines) it runs AVX2 code at about half the machine's
fp32 rate. oneDNN, which PyTorch also ships, selects kernels by instruction set. The same products of a ViT-B
pretraining step (forward, input gradient and weight gradient) run about twice as fast through it there, fp32 in
and out (`timemae bench-step`; README "Training step" has the figures). Results are IEEE fp32 products like MKL's,
summed in a different order, so they agree to float rounding, not bitwise. They are deterministic run to run at a
fixed thread count, which is what bitwise resume needs.

Opt-in: ``TIMEMAE_CPU_LINEAR=onednn`` in the environment turns it on (``launch/quickstart.sh`` and the test runner
set it for their CPU runs); by default, and always on CUDA and under ``torch.compile``, every product is
``F.linear``, so a private operator never sits in a default path. When on, `linear` still uses oneDNN only where
it is known to help and to be safe; everything else is ``F.linear`` unchanged: CUDA, other dtypes, CPU autocast (its
casts belong to ``F.linear``), ZeRO-3 partitioned parameters (DeepSpeed manages their gathering around
``F.linear``), ``torch.compile`` tracing, and products below `MIN_MACS`, where oneDNN's per-call overhead outweighs
the gain. (The older switch ``TIMEMAE_ONEDNN_LINEAR=1`` / ``=0`` still turns it on / off.)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_MACS = 1 << 20
"""Smallest product (rows x in x out multiply-adds) sent to oneDNN; below it MKL's lower call overhead wins."""


ENV = "TIMEMAE_CPU_LINEAR"
"""The environment switch: ``onednn`` turns the oneDNN path on, anything else (or unset) leaves ``F.linear``."""


def requested() -> bool:
    """Whether the environment asks for the oneDNN path (`ENV` = onednn, or the older TIMEMAE_ONEDNN_LINEAR=1)."""
    legacy = os.environ.get("TIMEMAE_ONEDNN_LINEAR", "").strip().lower()
    if legacy in ("0", "false", "no", "off"):
        return False
    return os.environ.get(ENV, "").strip().lower() == "onednn" or legacy in ("1", "true", "yes", "on")


def _available() -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    # A private operator: check once that it still takes these arguments and computes a product, so that a torch
    # release that changes it falls back to F.linear instead of failing in the first forward.
    try:
        x, w = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "").item() == 11.0
    except (RuntimeError, TypeError):
        return False


AVAILABLE = _available()
"""Whether this torch build's private oneDNN linear operator works (checked once at import)."""
ENABLED = AVAILABLE and requested()
"""Whether `linear` may use oneDNN at all: available and asked for (set at import; tests may flip it)."""


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` through oneDNN; ``x (..., in)``, ``weight (out, in)``, any strides."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with oneDNN products in forward and backward; saves what ``F.linear``'s autograd saves."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # (..., out) @ (out, in): a linear layer with weight.T (in, out)
            grad_x = _onednn(grad, weight.t(), None)
        grad_2d = grad.reshape(-1, grad.shape[-1])  # (rows, out)
        if ctx.needs_input_grad[1]:  # (out, rows) @ (rows, in): a linear layer over the rows
            grad_w = _onednn(grad_2d.t(), x.reshape(-1, x.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b


def uses_onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether `linear` takes the oneDNN path for these arguments."""
    if not ENABLED or x.device.type != "cpu" or x.dim() < 2:
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or hasattr(weight, "ds_id"):
        return False
    rows = x.numel() // max(x.shape[-1], 1)
    return rows * weight.shape[0] * weight.shape[1] >= MIN_MACS


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x (..., in)``, ``weight (out, in)``, ``bias (out,)`` -> ``(..., out)``.

    CPU float32 products of useful size go through oneDNN (module docstring); everything else is ``F.linear``.
    """
    if uses_onednn(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, initialisation and state_dict keys) whose forward is `linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
