"""Fine-tuning configuration: one flat dataclass, one flag per field (``layer_decay`` -> ``--layer-decay``).

Defaults follow the official VideoMAE fine-tuning recipe (shared/specs/videomae.md): AdamW, base lr 1e-3 per 256 clips,
layer-wise lr decay 0.75, weight decay 0.05, drop path 0.1, 5 warm-up epochs then cosine to 1e-6, label smoothing
0.1, mixup 0.8 / CutMix 1.0, RandAugment rand-m7-n4-mstd0.5-inc1 and random erasing 0.25 (both on the training
clips only, the same for every frame, `data.augment`), DeepSpeed ZeRO stage 0. The clip follows pretraining:
``--grid-n 2`` (the TIME paper's RGB choice) with segment sampling over the whole video.
"""

from __future__ import annotations

import dataclasses
import math

from launch.config import field


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    # model
    model: str = field("vit_base", "model preset: vit_tiny, vit_small, vit_base, vit_large, vit_huge")
    num_classes: int = field(0, "classes of the head; 0 = inferred from the shards' labels")
    init_from: str = field("", "initial weights: our encoder.pth or pretraining checkpoint, best.pth, or an official "
                               "VideoMAE pretraining / fine-tuning file")
    drop_path: float = field(0.1, "stochastic depth rate of the encoder")
    layer_decay: float = field(0.75, "layer-wise lr decay: block i of a depth-d encoder gets lr x decay^(d + 1 - i)")
    grad_checkpointing: bool = field(False, "recompute each block in the backward pass (less memory, ~30% slower)")
    # data
    data: str = field("", "training shards (folder, tar or brace pattern); empty = the embedded demo data")
    val_data: str = field("", "validation shards; empty = the demo val split when --data is empty, else no "
                              "evaluation; none = no evaluation")
    modality: str = field("rgb", "rgb or depth; must match the shards", choices=("rgb", "depth"))
    num_frames: int = field(16, "T*, frames per clip")
    input_size: int = field(224, "H* = W*, clip resolution")
    grid_n: int = field(2, "TIME grid side N (1 = no TIME grid)")
    grid_arrangement: str = field("spatial", "TIME block arrangement", choices=("spatial", "temporal"))
    sampling_rate: int = field(0, "0 = TIME segment sampling over the whole video; k > 0 = official VideoMAE "
                                  "sampling, every k-th frame (needs --grid-n 1)")
    train_crop: str = field("rrc", "training crop: rrc (random resized crop, the official fine-tuning) or multiscale",
                            choices=("rrc", "multiscale"))
    flip: bool = field(False, "random horizontal flip (off: it swaps left/right and cw/ccw motion classes)")
    num_workers: int = field(8, "data-loader worker processes per rank (evaluation: at most the val shards per rank)")
    shuffle_buffer: int = field(128, "samples held for shuffling in each worker")
    # augmentation and loss
    rand_augment: str = field("rand-m7-n4-mstd0.5-inc1", "timm RandAugment of the training clips, the same ops on "
                                                         "every frame (\"\" or none = off)")
    reprob: float = field(0.25, "random erasing probability: one box, the same on every frame (0 = off)")
    label_smoothing: float = field(0.1, "label smoothing of the cross-entropy target")
    mixup: float = field(0.8, "mixup Beta(alpha, alpha) (0 = off)")
    cutmix: float = field(1.0, "CutMix Beta(alpha, alpha), one box of every frame (0 = off)")
    mixup_switch_prob: float = field(0.5, "with both on: chance of CutMix instead of mixup for a batch")
    # evaluation
    eval_every: int = field(0, "evaluate every this many steps (0 = once per epoch); always at the end")
    test_clips: int = field(1, "temporal clips per validation video (softmax averaged over all views)")
    test_crops: int = field(1, "spatial crops per clip: 1 (centre) or 3 (along the long side)")
    eval_only: bool = field(False, "evaluate --init-from (or the resumed checkpoint) once and exit")
    # optimisation
    batch_size: int = field(8, "clips per GPU (per rank) per micro-step; also the evaluation batch")
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
    zero_stage: int = field(0, "DeepSpeed ZeRO stage (the official fine-tuning uses 0)", choices=(0, 1, 2, 3))
    ds_config: str = field("", "extra DeepSpeed JSON merged into the generated config (contradictions are errors)")
    max_bad_steps: int = field(10, "stop after this many consecutive steps with a non-finite loss")
    # run
    output_dir: str = field("runs/finetune", "run folder: config, logs, checkpoints, best.pth")
    resume: str = field("auto", "auto (last complete checkpoint in --output-dir), a checkpoint folder, or none")
    save_every: int = field(1000, "checkpoint every this many steps; also at the end")
    keep_last: int = field(2, "checkpoints kept (older ones are deleted after a newer one is complete)")
    log_every: int = field(10, "log a line every this many steps")
    seed: int = field(0, "seed of weights, sampling, augmentation, mixup and drop path")


@dataclasses.dataclass(frozen=True)
class Derived:
    """Values computed once from the config, the data and the world; logged, never written back.

    Field names match `pretrain.config.Derived` where they mean the same, so the schedule (`launch.loop.lr_at`)
    serves both stages.
    """

    world_size: int
    global_batch: int
    lr: float
    min_lr: float
    num_samples: int
    num_val_samples: int
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every: int
    num_views: int
    zero_stage: int
    precision: str
    token_grid: tuple[int, int, int]


def derive(cfg: FinetuneConfig, *, world_size: int, num_samples: int, num_val_samples: int, num_classes: int,
           precision: str, token_grid: tuple[int, int, int]) -> Derived:
    global_batch = cfg.batch_size * cfg.accum_steps * world_size
    steps_per_epoch = max(1, num_samples // global_batch)
    total = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    return Derived(
        world_size=world_size,
        global_batch=global_batch,
        lr=cfg.base_lr * global_batch / 256,
        min_lr=cfg.min_lr * global_batch / 256,
        num_samples=num_samples,
        num_val_samples=num_val_samples,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=min(total, math.ceil(cfg.warmup_epochs * steps_per_epoch)),
        eval_every=cfg.eval_every if cfg.eval_every > 0 else steps_per_epoch,
        num_views=cfg.test_clips * cfg.test_crops,
        zero_stage=cfg.zero_stage,
        precision=precision,
        token_grid=token_grid,
    )
