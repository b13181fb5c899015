"""The DeepSpeed config, generated from the run's flags.

The flags are the single source of truth; ``--ds-config extra.json`` may add settings DeepSpeed has and the flags do
not (communication overlap, bucket sizes, offload, ...). A key that both set to different values is an error naming
both, never a silent winner.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from common.errors import UserError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def _native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes in bf16 natively (compute capability >= 8: A100, H100).

    Not ``torch.cuda.is_bf16_supported()``: by default it also says yes where bf16 is only emulated (V100), which
    trains several times slower than fp16 there.
    """
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(flag: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that have it (A100, H100), fp16 with dynamic loss scaling on older ones (V100), fp32 on
    CPU. An explicit choice the hardware cannot do is an error."""
    if flag not in PRECISIONS:
        raise UserError(f"--precision {flag!r} is unknown; use one of {PRECISIONS}")
    cuda = device.type == "cuda"
    if flag == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if _native_bf16(device) else "fp16"
    if flag in ("fp16", "bf16") and not cuda:
        raise UserError(f"--precision {flag} needs a CUDA GPU; on CPU use --precision fp32 (or auto)")
    if flag == "bf16" and not _native_bf16(device):
        raise UserError("--precision bf16 is not native on this GPU (compute capability < 8, e.g. V100); use "
                        "--precision fp16 (or auto)")
    return flag


def _bf16_has_overflow_check() -> bool:
    """Whether this DeepSpeed has the ``bf16.check_grad_overflow`` key (older releases have no bf16 overflow check)."""
    try:
        from deepspeed.runtime.precision_config import DeepSpeedBF16Config
    except ImportError:
        return False
    return "check_grad_overflow" in getattr(DeepSpeedBF16Config, "model_fields", {})


def make_ds_config(
    *, micro_batch: int, accum_steps: int, world_size: int, precision: str, zero_stage: int, clip_grad: float | None,
    bf16_overflow_check: bool = False,
) -> dict[str, Any]:
    """DeepSpeed JSON for one run. The optimizer and lr schedule are ours (passed to ``deepspeed.initialize``).

    ``bf16_overflow_check``: let DeepSpeed scan every gradient tensor for inf/NaN before each bf16 optimizer step and
    skip the step on one. Off by default, as in torch's own bf16 autocast (no grad scaler): bf16 has fp32's exponent
    range, so gradients do not overflow the way fp16 ones do, and a diverging run shows a non-finite loss, which the
    training step catches on every rank. The scan costs two reductions and several kernel launches per parameter
    tensor, which slows a ViT-B step on an H100 by about a quarter (README "On a GPU" has the figures).
    """
    if zero_stage not in (0, 1, 2, 3):
        raise UserError(f"--zero-stage {zero_stage} is unknown; use 0, 1, 2 or 3")
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum_steps,
        "train_batch_size": micro_batch * accum_steps * world_size,
        "gradient_clipping": float(clip_grad) if clip_grad else 0.0,
        "zero_optimization": {"stage": zero_stage},
        # Our torch.optim.AdamW is a client optimizer; ZeRO handles it correctly but calls it "untested".
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":
        # Dynamic loss scaling (V100): start at 2^16, halve on overflow, grow after 1000 clean steps.
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                       "hysteresis": 2, "min_loss_scale": 1}
    elif precision == "bf16":
        cfg["bf16"] = {"enabled": True}
        if _bf16_has_overflow_check():
            cfg["bf16"]["check_grad_overflow"] = bool(bf16_overflow_check)
        elif bf16_overflow_check:
            raise UserError("--bf16-overflow-check needs a DeepSpeed whose bf16 section has check_grad_overflow; "
                            "upgrade deepspeed or leave the flag off")
    if zero_stage == 3:
        # Gather the full fp32 weights into the checkpoint, so encoder export and rank-count changes always work.
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return cfg


def _merge(base: dict, extra: dict, path: str = "") -> dict:
    out = dict(base)
    for key, value in extra.items():
        where = f"{path}{key}"
        if key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, where + ".")
        elif key in out and out[key] != value:
            raise UserError(
                f"--ds-config sets {where}={json.dumps(value)} but the flags give {json.dumps(out[key])}; "
                "change the flag instead, or drop the key from the JSON"
            )
        else:
            out[key] = value
    return out


def merge_extra(cfg: dict, extra_path: str | None) -> dict:
    """Add the user's DeepSpeed JSON to the generated config; contradictions are errors."""
    if not extra_path:
        return cfg
    if not os.path.isfile(extra_path):
        raise UserError(f"--ds-config {extra_path} does not exist; give a DeepSpeed JSON file")
    try:
        with open(extra_path) as fh:
            extra = json.load(fh)
    except json.JSONDecodeError as err:
        raise UserError(f"--ds-config {extra_path} is not valid JSON ({err.msg}, line {err.lineno}); fix it") from None
    if not isinstance(extra, dict):
        raise UserError(f"--ds-config {extra_path} must hold a JSON object")
    return _merge(cfg, extra)
