"""Fine-tuning configuration: one flat dataclass, one flag per field (``layer_decay`` -> ``--layer-decay``).

The optimisation and augmentation fields left unset (None) take the model family's recipe (`finetune.recipes`: the
official VideoMAE fine-tuning for the VideoMAE ViTs, the TSN recipe of the STW / TRM / ATR papers for the ResNets);
the run resolves them once (`finetune.recipes.resolve`) and logs the values it filled in. DeepSpeed ZeRO stage 0
(the official fine-tuning's). The clip follows pretraining:
``--grid-n 2`` (the TIME paper's RGB choice) with segment sampling over the whole video.
"""

from __future__ import annotations

import dataclasses

from launch.config import field
from launch.fields import ClipFields, ModelFields, OptimFields, RunFields, schedule_values

RECIPE = "; None = the model family's recipe (finetune/recipes.py)"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(RunFields, OptimFields, ClipFields, ModelFields):  # fields in reverse order: model first
    """The shared groups (`launch.fields`) with fine-tuning's defaults, plus the head, augmentation and evaluation."""

    # model (ModelFields)
    model: str = field("vit_base", "classifier: vit_mini, vit_tiny, vit_small, vit_base, vit_large, vit_huge "
                                   "(VideoMAE), resnet18, resnet50, resnet101 (TSN), vit_b16 (image ViT-B/16, TSN)")
    temporal: str = field("none", "temporal module inserted into every block of the ResNet stages (TSN ResNets only)",
                          choices=("none", "tsm", "stw", "trm", "atr"))
    temporal_stages: tuple[int, ...] = field((), "ResNet stages (1-4 = layer1-layer4) that get the module; empty = "
                                                 "the paper's (tsm / stw 1-4, trm 3 4, atr 2-4)")
    temporal_options: tuple[str, ...] = field((), "module options as key=value, e.g. variant=strm relocate_ratio=0.25 "
                                                  "(README lists each module's options)")
    reset_head: bool = field(False, "--init-from: drop the file's classifier and train a new one (another class set)")
    init_from: str = field("", "initial weights from a local file: our encoder.pth, pretraining checkpoint or "
                               "best.pth, an official VideoMAE file, or a timm / torchvision ImageNet state_dict")
    drop_path: float | None = field(None, "stochastic depth rate" + RECIPE)
    dropout: float | None = field(None, "dropout before the classifier (TSN models; 0.5 in the TSN recipe)" + RECIPE)
    num_classes: int = field(0, "classes of the head; 0 = inferred from the shards' labels")
    layer_decay: float | None = field(None, "layer-wise lr decay: block i of a depth-d encoder gets lr x "
                                            "decay^(d + 1 - i); 1 = off" + RECIPE)
    # data (ClipFields)
    data: str = field("", "training shards (folder, tar or brace pattern); empty = the embedded demo data")
    val_data: str = field("", "validation shards; empty = the demo val split when --data is empty, else no "
                              "evaluation; none = no evaluation")
    data_mode: str = field("exact", "training stream: exact (one pass over every video per epoch, a fresh seeded "
                                    "permutation each epoch) or resampled (shards drawn with replacement through a "
                                    "shuffle buffer)", choices=("exact", "resampled"))
    num_workers: int = field(8, "data-loader worker processes per rank (evaluation: at most the val shards per rank)")
    train_crop: str | None = field(None, "training crop: rrc (random resized crop, the official fine-tuning) or "
                                         "multiscale (TSN)" + RECIPE, choices=("rrc", "multiscale"))
    flip: bool = field(False, "random horizontal flip (off: it swaps left/right and cw/ccw motion classes)")
    # augmentation and loss
    rand_augment: str | None = field(None, "timm RandAugment of the training clips, the same ops on every frame, e.g. "
                                           "rand-m7-n4-mstd0.5-inc1 (\"\" or none = off)" + RECIPE)
    reprob: float | None = field(None, "random erasing probability: one box, the same on every frame (0 = off)"
                                       + RECIPE)
    label_smoothing: float | None = field(None, "label smoothing of the cross-entropy target" + RECIPE)
    mixup: float | None = field(None, "mixup Beta(alpha, alpha) (0 = off)" + RECIPE)
    cutmix: float | None = field(None, "CutMix Beta(alpha, alpha), one box of every frame (0 = off)" + RECIPE)
    mixup_switch_prob: float = field(0.5, "with both on: chance of CutMix instead of mixup for a batch")
    # evaluation
    eval_every: int = field(0, "evaluate every this many steps (0 = once per epoch); always at the end")
    test_clips: int = field(1, "temporal clips per validation video (softmax averaged over all views)")
    test_crops: int = field(1, "spatial crops per clip: 1 (centre) or 3 (along the long side)")
    eval_only: bool = field(False, "evaluate --init-from (or the resumed checkpoint) once and exit")
    select_on: str = field("last", "which weights best.pth and metrics.json report: last (the final ones, as the "
                                   "papers report) or val (best top-1 on a split held out of the training shards, "
                                   "--val-fraction); --val-data never chooses", choices=("last", "val"))
    val_fraction: float = field(0.1, "--select-on val: share of each class's training videos held out (by video, "
                                     "seeded by --seed)")
    # optimisation (OptimFields)
    batch_size: int = field(8, "clips per GPU (per rank) per micro-step; also the evaluation batch")
    optimizer: str | None = field(None, "adamw or sgd" + RECIPE, choices=("adamw", "sgd"))
    momentum: float = field(0.9, "SGD momentum")
    schedule: str | None = field(None, "cosine (to --min-lr) or step (lr / 10 at each of --lr-steps)" + RECIPE,
                                 choices=("cosine", "step"))
    lr_steps: tuple[float, ...] | None = field(None, "step schedule: the epochs at which the lr drops tenfold" + RECIPE)
    epochs: int | None = field(None, "training length in epochs of the data (ignored when --max-steps is set)" + RECIPE)
    base_lr: float | None = field(None, "learning rate per 256 clips of global batch (lr = base x global batch / 256)"
                                        + RECIPE)
    min_lr: float | None = field(None, "final learning rate of the cosine schedule, per 256 clips like --base-lr"
                                       + RECIPE)
    warmup_epochs: float | None = field(None, "linear warm-up length in epochs" + RECIPE)
    weight_decay: float | None = field(None, "weight decay (not on biases, norms and tokens)" + RECIPE)
    clip_grad: float | None = field(None, "gradient norm clipping (0 = off)" + RECIPE)
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
    token_grid: tuple[int, int, int] | None  # VideoMAE only
    family: str = "videomae"
    schedule: str = "cosine"
    lr_milestones: tuple[int, ...] = ()
    recipe: dict = dataclasses.field(default_factory=dict)
    num_holdout: int = 0  # training videos held out as the val split (--select-on val), not trained on


def derive(cfg: FinetuneConfig, *, world_size: int, num_samples: int, num_val_samples: int, num_classes: int,
           precision: str, token_grid: tuple[int, int, int] | None, family: str, recipe: dict,
           num_holdout: int = 0) -> Derived:
    """``cfg`` is the effective config (`finetune.recipes.resolve`); ``recipe`` the values the recipe filled in;
    ``num_samples`` the training videos (without the ``num_holdout`` held out)."""
    common = schedule_values(cfg, world_size=world_size, num_samples=num_samples)
    return Derived(
        **common,
        num_val_samples=num_val_samples,
        num_holdout=num_holdout,
        num_classes=num_classes,
        eval_every=cfg.eval_every if cfg.eval_every > 0 else common["steps_per_epoch"],
        num_views=cfg.test_clips * cfg.test_crops,
        zero_stage=cfg.zero_stage,
        precision=precision,
        token_grid=token_grid,
        family=family,
        schedule=cfg.schedule,
        lr_milestones=tuple(round(e * common["steps_per_epoch"]) for e in cfg.lr_steps),
        recipe=recipe,
    )
