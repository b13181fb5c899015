"""Pretraining configuration: one flat dataclass, one flag per field (``mask_ratio`` -> ``--mask-ratio``).

Defaults follow the official VideoMAE pretraining recipe (shared/specs/videomae.md) except where the TIME layer is
the point of this project: ``--grid-n 2`` with segment sampling over the whole video (the paper's RGB choice). The
mask ratio default is the official 0.9; the TIME paper finds lower ratios better with TIME on RGB (UCF101: 0.7-0.75),
so the choice is left to ``--mask-ratio``.
"""

from __future__ import annotations

import dataclasses
import math

from launch.config import field


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    # model
    model: str = field("vit_base", "model preset: vit_tiny, vit_small, vit_base, vit_large, vit_huge")
    drop_path: float = field(0.0, "stochastic depth rate of the encoder")
    grad_checkpointing: bool = field(False, "recompute each block in the backward pass (less memory, ~30% slower)")
    init_from: str = field("", "initial weights: our checkpoint or encoder export, or an official VideoMAE file")
    # data
    data: str = field("", "shard folder, tar file or brace pattern; empty = the embedded demo data (generated once)")
    modality: str = field("rgb", "rgb or depth; must match the shards", choices=("rgb", "depth"))
    num_frames: int = field(16, "T*, frames per clip")
    input_size: int = field(224, "H* = W*, clip resolution")
    grid_n: int = field(2, "TIME grid side N (1 = no TIME grid)")
    grid_arrangement: str = field("spatial", "TIME block arrangement", choices=("spatial", "temporal"))
    sampling_rate: int = field(0, "0 = TIME segment sampling over the whole video; k > 0 = official VideoMAE "
                                  "sampling, every k-th frame (needs --grid-n 1)")
    samples_per_decode: int = field(1, "clips cut from one decoded video (VideoMAE V2 repeated sampling)")
    num_workers: int = field(8, "data-loader worker processes per rank")
    shuffle_buffer: int = field(128, "samples held for shuffling in each worker")
    # masking and loss
    mask_ratio: float = field(0.9, "fraction of tokens hidden from the encoder")
    mask_type: str = field("tube", "tube (VideoMAE) or random", choices=("tube", "random"))
    decoder_mask_ratio: float = field(0.0, "VideoMAE V2 running-cell decoder masking ratio (0 = off)")
    norm_pix_loss: bool = field(True, "normalise each target patch per channel (norm-pix loss)")
    # optimisation
    batch_size: int = field(32, "clips per GPU (per rank) per micro-step")
    accum_steps: int = field(1, "gradient accumulation micro-steps per optimizer step")
    epochs: int = field(800, "training length in epochs of the data (ignored when --max-steps is set)")
    max_steps: int = field(0, "training length in optimizer steps (0 = from --epochs)")
    base_lr: float = field(1.5e-4, "learning rate per 256 clips of global batch (lr = base x global batch / 256)")
    min_lr: float = field(1e-5, "final learning rate of the cosine schedule, per 256 clips like --base-lr")
    warmup_epochs: float = field(40, "linear warm-up length in epochs")
    weight_decay: float = field(0.05, "AdamW weight decay (not on biases, norms and tokens)")
    betas: tuple[float, ...] = field((0.9, 0.95), "AdamW betas")
    clip_grad: float = field(0.0, "gradient norm clipping (0 = off)")
    precision: str = field("auto", "auto: bf16 on A100/H100, fp16 on V100, fp32 on CPU",
                           choices=("auto", "fp32", "fp16", "bf16"))
    bf16_overflow_check: bool = field(False, "bf16: skip optimizer steps whose gradients hold inf/NaN (DeepSpeed "
                                             "scans every tensor; slower, see README)")
    zero_stage: int = field(2, "DeepSpeed ZeRO stage", choices=(0, 1, 2, 3))
    ds_config: str = field("", "extra DeepSpeed JSON merged into the generated config (contradictions are errors)")
    max_bad_steps: int = field(10, "stop after this many consecutive steps with a non-finite loss")
    # run
    output_dir: str = field("runs/pretrain", "run folder: config, logs, checkpoints, encoder export")
    resume: str = field("auto", "auto (last complete checkpoint in --output-dir), a checkpoint folder, or none")
    save_every: int = field(1000, "checkpoint (and encoder export) every this many steps; also at the end")
    keep_last: int = field(2, "checkpoints kept (older ones are deleted after a newer one is complete)")
    log_every: int = field(10, "log a line every this many steps")
    recon_every: int = field(500, "reconstructions of a fixed clip to tensorboard every this many steps (0 = off)")
    seed: int = field(0, "seed of weights, masks, sampling and augmentation")


@dataclasses.dataclass(frozen=True)
class Derived:
    """Values computed once from the config and the world; logged next to the config, never written back."""

    world_size: int
    global_batch: int
    lr: float
    min_lr: float
    num_samples: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    precision: str
    token_grid: tuple[int, int, int]


def derive(cfg: PretrainConfig, *, world_size: int, num_samples: int, precision: str,
           token_grid: tuple[int, int, int]) -> Derived:
    global_batch = cfg.batch_size * cfg.accum_steps * world_size
    steps_per_epoch = max(1, num_samples // global_batch)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    return Derived(
        world_size=world_size,
        global_batch=global_batch,
        lr=cfg.base_lr * global_batch / 256,
        min_lr=cfg.min_lr * global_batch / 256,
        num_samples=num_samples,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=min(total, math.ceil(cfg.warmup_epochs * steps_per_epoch)),
        precision=precision,
        token_grid=token_grid,
    )
