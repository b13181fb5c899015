"""Fine-tuning recipes by model family: the values a flag left unset (None) takes.

Every value is a flag (`finetune.config.FinetuneConfig`); a flag given on the command line or in ``--config`` wins
over the recipe. `resolve` returns the effective config (a new object) and the values the recipe filled in, which
the run logs in ``derived.json`` next to the flags.

* ``videomae`` (the VideoMAE ViTs): the official VideoMAE fine-tuning recipe (the release's scripts): AdamW, base
  lr 1e-3 per 256 clips, layer decay 0.75, weight decay 0.05, drop path 0.1, 5 warm-up epochs then cosine to 1e-6,
  label smoothing 0.1, mixup 0.8 / CutMix 1.0, RandAugment and random erasing 0.25, random resized crop.
* ``resnet`` (TSN ResNets, with or without a temporal module): the TSN recipe of the STW / TRM / ATR papers
  (their training sections): SGD with momentum 0.9, lr 0.01 per 64 clips (base 0.04 per 256), weight decay 5e-4,
  50 epochs with the lr divided by 10 at epochs 30, 40 and 45 (STW's schedule), no warm-up, dropout 0.5 before the
  fc, gradient-norm clip 20, multi-scale crop, no mixup, RandAugment, erasing or label smoothing.
* ``vit`` (the image ViT-B/16, TSN-style): the papers give no recipe for it. Decision: the VideoMAE fine-tuning
  recipe (AdamW with layer decay suits a pretrained ViT; SGD does not), with TSN's dropout 0.5 before the head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "videomae": {
        "optimizer": "adamw", "schedule": "cosine", "lr_steps": (), "epochs": 100, "base_lr": 1e-3, "min_lr": 1e-6,
        "warmup_epochs": 5.0, "weight_decay": 0.05, "layer_decay": 0.75, "drop_path": 0.1, "dropout": 0.0,
        "clip_grad": 0.0, "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
        "rand_augment": "rand-m7-n4-mstd0.5-inc1", "reprob": 0.25, "train_crop": "rrc",
    },
    "resnet": {
        "optimizer": "sgd", "schedule": "step", "lr_steps": (30.0, 40.0, 45.0), "epochs": 50, "base_lr": 0.04,
        "min_lr": 0.0, "warmup_epochs": 0.0, "weight_decay": 5e-4, "layer_decay": 1.0, "drop_path": 0.0,
        "dropout": 0.5, "clip_grad": 20.0, "label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "rand_augment": "",
        "reprob": 0.0, "train_crop": "multiscale",
    },
    "vit": {
        "optimizer": "adamw", "schedule": "cosine", "lr_steps": (), "epochs": 100, "base_lr": 1e-3, "min_lr": 1e-6,
        "warmup_epochs": 5.0, "weight_decay": 0.05, "layer_decay": 0.75, "drop_path": 0.1, "dropout": 0.5,
        "clip_grad": 0.0, "label_smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
        "rand_augment": "rand-m7-n4-mstd0.5-inc1", "reprob": 0.25, "train_crop": "rrc",
    },
}
RECIPE_FIELDS = tuple(RECIPES["videomae"])


def resolve(cfg: Any, family: str) -> tuple[Any, dict[str, Any]]:
    """(the config with every unset recipe field filled from ``family``'s recipe, {field: value filled in})."""
    recipe = RECIPES[family]
    filled = {name: recipe[name] for name in RECIPE_FIELDS if getattr(cfg, name) is None}
    return dataclasses.replace(cfg, **filled), filled
