"""Model FLOPs utilisation: the FLOPs of one training clip, counted once per run, and the device's peak.

``mfu = training FLOPs per clip x clips/s per device / the device's dense peak FLOP/s`` at the run's precision.

Counting: torch's ``FlopCounterMode`` over one clip's forward, loss and backward on a ``meta`` copy of the model (shapes
only, no arithmetic: about a second for ViT-B). It counts 2 FLOPs per multiply-add, the convention of the peaks below
(and of MFU), and sees matrix products, convolutions and attention; elementwise work, norms and softmax are left out,
as MFU conventionally does. For VideoMAE ViT-B pretraining at 16 x 224 x 224 and mask 0.75 this gives 114.9 GFLOP
forward and 340.9 GFLOP per training clip.

Peaks: dense tensor-core FLOP/s from the vendors' data sheets, by a substring of ``torch.cuda.get_device_name``
(first match wins, so the longer names come first); ``--peak-tflops`` overrides, and an unlisted device logs no
``mfu`` unless given one. On CPU no ``mfu`` is logged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

# (name substring, {precision: dense TFLOP/s}); "fp32" is plain fp32 (TF32 off, torch's default for matmuls).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.5, "fp16": 756.5, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
)


@dataclass(frozen=True)
class ClipFlops:
    """FLOPs (2 per multiply-add) of one clip: ``forward`` (with the loss) and ``train`` (forward + backward)."""

    forward: float
    train: float


def count_clip_flops(model: torch.nn.Module, one_clip_loss: Callable[[torch.nn.Module], torch.Tensor | None]
                     ) -> ClipFlops | None:
    """Count one clip's forward and training FLOPs on a meta copy of ``model`` (the model itself is not touched).

    ``one_clip_loss(meta_model)`` runs the stage's forward and loss on one meta clip and returns the scalar loss, or
    None when the stage does not count (then so does this).
    """
    meta = copy.deepcopy(model).to("meta")
    meta.train()
    with FlopCounterMode(display=False) as counter:
        loss = one_clip_loss(meta)
        if loss is None:
            return None
        forward = counter.get_total_flops()
        loss.backward()
        train = counter.get_total_flops()
    return ClipFlops(float(forward), float(train))


def peak_tflops(device: torch.device, precision: str, override: float = 0.0) -> float | None:
    """The dense peak TFLOP/s of ``device`` at ``precision``: ``override`` when > 0, else the table's, else None
    (CPU, or a GPU not in the table)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks.get(precision)
    return None


def mfu(train_flops_per_clip: float, clips_per_s_per_device: float, peak: float) -> float:
    """Model FLOPs utilisation in [0, 1]: achieved training FLOP/s per device over the peak (TFLOP/s)."""
    return train_flops_per_clip * clips_per_s_per_device / (peak * 1e12)
