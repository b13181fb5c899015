"""Fine-tuning configuration: one flat dataclass, one flag per field (``layer_decay`` -> ``--layer-decay``).

Defaults follow the official VideoMAE fine-tuning recipe (shared/specs/videomae.md): AdamW, base lr 1e-3 per 256 clips,
layer-wise lr decay 0.75, weight decay 0.05, drop path 0.1, 5 warm-up epochs then cosine to 1e-6, label smoothing
0.1, mixup 0.8 / CutMix 1.0, RandAugment rand-m7-n4-mstd0.5-inc1 and random erasing 0.25 (both on the training
clips only, the same for every frame, `data.augment`), DeepSpeed ZeRO stage 0. The clip follows pretraining:
``--grid-n 2`` (the TIME paper's RGB choice) with segment sampling over the whole video.
"""

from __future__ import annotations

import dataclasses

from launch.config import field
from launch.fields import ClipFields, ModelFields, OptimFields, RunFields, schedule_values


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(RunFields, OptimFields, ClipFields, ModelFields):  # fields in reverse order: model first
    """The shared groups (`launch.fields`) with fine-tuning's defaults, plus the head, augmentation and evaluation."""

    # model (ModelFields)
    model: str = field("vit_base", "model preset: vit_tiny, vit_small, vit_base, vit_large, vit_huge")
    init_from: str = field("", "initial weights: our encoder.pth or pretraining checkpoint, best.pth, or an official "
                               "VideoMAE pretraining / fine-tuning file")
    drop_path: float = field(0.1, "stochastic depth rate of the encoder")
    num_classes: int = field(0, "classes of the head; 0 = inferred from the shards' labels")
    layer_decay: float = field(0.75, "layer-wise lr decay: block i of a depth-d encoder gets lr x decay^(d + 1 - i)")
    # data (ClipFields)
    data: str = field("", "training shards (folder, tar or brace pattern); empty = the embedded demo data")
    val_data: str = field("", "validation shards; empty = the demo val split when --data is empty, else no "
                              "evaluation; none = no evaluation")
    num_workers: int = field(8, "data-loader worker processes per rank (evaluation: at most the val shards per rank)")
    train_crop: str = field("rrc", "training crop: rrc (random resized crop, the official fine-tuning) or multiscale",
                            choices=("rrc", "multiscale"))
    flip: bool = field(False, "random horizontal flip (off: it swaps left/right and cw/ccw motion classes)")
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
    # optimisation (OptimFields)
    batch_size: int = field(8, "clips per GPU (per rank) per micro-step; also the evaluation batch")
    zero_stage: int = field(0, "DeepSpeed ZeRO stage (the official fine-tuning uses 0)", choices=(0, 1, 2, 3))
    # run (RunFields)
    output_dir: str = field("runs/finetune", "run folder: config, logs, checkpoints, best.pth")
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
    common = schedule_values(cfg, world_size=world_size, num_samples=num_samples)
    return Derived(
        **common,
        num_val_samples=num_val_samples,
        num_classes=num_classes,
        eval_every=cfg.eval_every if cfg.eval_every > 0 else common["steps_per_epoch"],
        num_views=cfg.test_clips * cfg.test_crops,
        zero_stage=cfg.zero_stage,
        precision=precision,
        token_grid=token_grid,
    )
