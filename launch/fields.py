"""The field groups both stage configs are made of, their shared checks, and the derived values both stages compute.

A stage config is a frozen dataclass composed of these groups plus its own fields (``class PretrainConfig(RunFields,
OptimFields, ClipFields, ModelFields)``: a dataclass lists its bases' fields in reverse order, so the model comes
first in ``--help``). Flags stay flat: field ``num_frames`` is flag ``--num-frames`` whichever group
holds it (`launch.config`). A stage whose default differs re-declares the field with its own default and help; the
field keeps its group's place in ``--help`` and ``config.yaml``.

The trainer (`launch.trainer`) reads only fields of these groups, so any config made of them can be trained.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

from common.errors import UserError
from common.memory import check_clips_fit
from launch.config import field, flag_name


@dataclasses.dataclass(frozen=True)
class ModelFields:
    model: str = field("vit_base", "model preset (see --help of the stage for the choices)")
    drop_path: float = field(0.0, "stochastic depth rate of the encoder")
    grad_checkpointing: bool = field(False, "recompute each block in the backward pass (less memory, ~30% slower)")
    init_from: str = field("", "initial weights (a file; nothing is downloaded)")
    compile: bool = field(False, "torch.compile the model in place (checkpoint keys unchanged; static shapes, so it "
                                 "compiles once per geometry)")


@dataclasses.dataclass(frozen=True)
class ClipFields:
    data: str = field("", "shard folder, tar file or brace pattern; empty = the embedded demo data (generated once)")
    modality: str = field("rgb", "rgb or depth; must match the shards", choices=("rgb", "depth"))
    num_frames: int = field(16, "T*, frames per clip")
    input_size: int = field(224, "H* = W*, clip resolution")
    grid_n: int = field(2, "TIME grid side N (1 = no TIME grid)")
    grid_arrangement: str = field("spatial", "TIME block arrangement", choices=("spatial", "temporal"))
    sampling: str = field("auto", "segment: TIME / TSN sampling, T* x N^2 frames spread over the whole video; stride: "
                                  "official VideoMAE sampling, T* frames every --sampling-rate frames (needs --grid-n "
                                  "1); auto: segment (stride when an older command gives --sampling-rate k alone)",
                          choices=("auto", "segment", "stride"))
    sampling_rate: int = field(0, "frame step of --sampling stride (0 = VideoMAE's 4)")
    data_mode: str = field("resampled", "training stream: resampled (shards drawn with replacement through a shuffle "
                                        "buffer) or exact (one pass over every video per epoch, a fresh seeded "
                                        "permutation each epoch)", choices=("exact", "resampled"))
    num_workers: int = field(8, "data-loader worker processes per rank")
    shuffle_buffer: int = field(128, "samples held for shuffling in each worker")


@dataclasses.dataclass(frozen=True)
class OptimFields:
    batch_size: int = field(32, "clips per GPU (per rank) per micro-step")
    accum_steps: int = field(1, "gradient accumulation micro-steps per optimizer step")
    epochs: int = field(100, "training length in epochs of the data (ignored when --max-steps is set)")
    max_steps: int = field(0, "training length in optimizer steps (0 = from --epochs)")
    base_lr: float = field(1e-3, "learning rate per 256 clips of global batch (lr = base x global batch / 256)")
    min_lr: float = field(1e-6, "final learning rate of the cosine schedule, per 256 clips like --base-lr")
    warmup_epochs: float = field(5, "linear warm-up length in epochs")
    weight_decay: float = field(0.05, "AdamW weight decay (not on biases, norms and tokens)")
    betas: tuple[float, ...] = field((0.9, 0.999), "AdamW betas")
    clip_grad: float = field(0.0, "gradient norm clipping (0 = off)")
    precision: str = field("auto", "auto: bf16 on A100/H100, fp16 on V100, fp32 on CPU",
                           choices=("auto", "fp32", "fp16", "bf16"))
    bf16_overflow_check: bool = field(False, "bf16: skip optimizer steps whose gradients hold inf/NaN (DeepSpeed "
                                             "scans every tensor; slower, see README)")
    zero_stage: int = field(0, "DeepSpeed ZeRO stage", choices=(0, 1, 2, 3))
    ds_config: str = field("", "extra DeepSpeed JSON merged into the generated config (contradictions are errors)")
    max_bad_steps: int = field(10, "stop (exit 1) after this many consecutive micro-batches with a non-finite loss, "
                                   "or optimizer steps skipped for inf / NaN gradients")


@dataclasses.dataclass(frozen=True)
class RunFields:
    output_dir: str = field("runs/run", "run folder: config, logs, checkpoints")
    resume: str = field("auto", "auto (last complete checkpoint in --output-dir), a checkpoint folder, or none")
    save_every: int = field(1000, "checkpoint every this many steps; also at the end")
    keep_last: int = field(2, "checkpoints kept (older ones are deleted after a newer one is complete)")
    log_every: int = field(10, "log a line every this many steps")
    peak_tflops: float = field(0.0, "the device's dense peak TFLOP/s at the run's precision, for the logged mfu (0 = "
                                    "from the table of known GPUs; no mfu on CPU)")
    seed: int = field(0, "seed of weights, sampling and augmentation")


def validate_common(cfg: Any) -> None:
    """The checks every stage's flags share (`UserError`: one line naming the flag and the fix)."""
    for name in ("batch_size", "accum_steps", "log_every", "save_every", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{flag_name(name)} {getattr(cfg, name)} is < 1; use 1 or more")
    if cfg.num_workers < 0:
        raise UserError(f"--num-workers {cfg.num_workers} is < 0; use 0 (load in the main process) or more")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise UserError(f"--betas {' '.join(map(str, cfg.betas))} must be two numbers in [0, 1), e.g. 0.9 0.999")
    if cfg.max_steps < 0 or cfg.epochs < 1:
        raise UserError("--epochs must be >= 1 and --max-steps >= 0 (0 = from --epochs)")
    if not cfg.base_lr > 0:
        raise UserError(f"--base-lr {cfg.base_lr} must be > 0; e.g. 1.5e-4 (pretraining) or 1e-3 (fine-tuning)")
    for name in ("min_lr", "warmup_epochs", "weight_decay", "clip_grad"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{flag_name(name)} {getattr(cfg, name)} is < 0; use 0 or more")
    if getattr(cfg, "samples_per_decode", 1) < 1:  # checked again by the stream; here before any demo is made
        raise UserError(f"--samples-per-decode {cfg.samples_per_decode} is < 1; use 1 (off) or e.g. 2 or 4")
    if cfg.resume not in ("auto", "none") and not os.path.isdir(cfg.resume):
        raise UserError(f"--resume {cfg.resume} is not a folder; use auto, none or a checkpoint folder")
    drop_path = getattr(cfg, "drop_path", 0.0)
    if drop_path is not None and not 0 <= drop_path < 1:
        raise UserError(f"--drop-path {drop_path} is outside [0, 1); use e.g. 0.1 (0 = off)")
    check_seed(cfg.seed)
    check_sampling(cfg)
    check_clips_fit(cfg.batch_size, cfg.num_frames, cfg.input_size)  # a micro-batch no machine here can hold


# Seeds above this leave no room for the per-rank seed (seed + rank) under numpy's 2**32 - 1.
MAX_SEED = 2**31 - 1


def check_seed(seed: int) -> None:
    """`UserError` for a ``--seed`` outside [0, `MAX_SEED`]."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is outside [0, {MAX_SEED}]; use e.g. 0, 1, 2")


def check_sampling(cfg: Any) -> None:
    """``--sampling`` / ``--sampling-rate``: refuse a frame step without stride sampling; name the older spelling.

    Before ``--sampling`` existed, ``--sampling-rate 0`` meant segment sampling and ``--sampling-rate k`` stride
    sampling; ``--sampling-rate k`` alone still means the latter, with one deprecation line (from rank 0).
    """
    if cfg.sampling_rate < 0:
        raise UserError(f"--sampling-rate {cfg.sampling_rate} is < 0; give a frame step >= 1 with --sampling stride")
    if cfg.sampling == "segment" and cfg.sampling_rate:
        raise UserError(f"--sampling-rate {cfg.sampling_rate} is the frame step of --sampling stride; segment sampling "
                        "spreads the frames over the whole video: drop --sampling-rate, or use --sampling stride")
    if cfg.sampling == "auto" and cfg.sampling_rate and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: --sampling-rate {cfg.sampling_rate} alone is the older spelling of --sampling stride "
              f"--sampling-rate {cfg.sampling_rate}; it still works, but write that instead", file=sys.stderr)


def schedule_values(cfg: Any, *, world_size: int, num_samples: int) -> dict[str, Any]:
    """The values both stages derive alike: global batch, scaled lrs, steps per epoch, total and warm-up steps.

    The lr scales linearly with the global batch: ``lr = base_lr x global batch / 256`` (VideoMAE's rule; the TSN
    recipes' "0.01 per 64 clips" is base 0.04 per 256).
    """
    global_batch = cfg.batch_size * cfg.accum_steps * world_size
    steps_per_epoch = max(1, num_samples // global_batch)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    return {
        "world_size": world_size,
        "global_batch": global_batch,
        "lr": cfg.base_lr * global_batch / 256,
        "min_lr": cfg.min_lr * global_batch / 256,
        "num_samples": num_samples,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "warmup_steps": min(total, math.ceil(cfg.warmup_epochs * steps_per_epoch)),
    }
