"""Pretraining configuration: one flat dataclass, one flag per field (``mask_ratio`` -> ``--mask-ratio``).

Defaults follow the official VideoMAE pretraining recipe (the release's scripts) except where the TIME layer is
the point of this project: ``--grid-n 2`` with segment sampling over the whole video (the paper's RGB choice). The
mask ratio default is the official 0.9; the TIME paper finds lower ratios better with TIME on RGB (UCF101: 0.7-0.75),
so the choice is left to ``--mask-ratio``.
"""

from __future__ import annotations

import dataclasses

from launch.config import field
from launch.fields import ClipFields, ModelFields, OptimFields, RunFields, schedule_values


@dataclasses.dataclass(frozen=True)
class PretrainConfig(RunFields, OptimFields, ClipFields, ModelFields):  # fields in reverse order: model first
    """The shared groups (`launch.fields`) with pretraining's defaults, plus masking and the loss."""

    # model (ModelFields)
    model: str = field("vit_base", "model preset: vit_mini, vit_tiny, vit_small, vit_base, vit_large, vit_huge")
    init_from: str = field("", "initial weights: our checkpoint or encoder export, or an official VideoMAE file")
    # data (ClipFields)
    samples_per_decode: int = field(1, "clips cut from one decoded video (VideoMAE V2 repeated sampling)")
    # masking and loss
    mask_ratio: float = field(0.9, "fraction of tokens hidden from the encoder")
    mask_type: str = field("tube", "tube (VideoMAE) or random", choices=("tube", "random"))
    decoder_mask_ratio: float = field(0.0, "VideoMAE V2 running-cell decoder masking ratio (0 = off)")
    norm_pix_loss: bool = field(True, "normalise each target patch per channel (norm-pix loss)")
    # optimisation (OptimFields)
    epochs: int = field(800, "training length in epochs of the data (ignored when --max-steps is set)")
    base_lr: float = field(1.5e-4, "learning rate per 256 clips of global batch (lr = base x global batch / 256)")
    min_lr: float = field(1e-5, "final learning rate of the cosine schedule, per 256 clips like --base-lr")
    warmup_epochs: float = field(40, "linear warm-up length in epochs")
    betas: tuple[float, ...] = field((0.9, 0.95), "AdamW betas")
    zero_stage: int = field(2, "DeepSpeed ZeRO stage", choices=(0, 1, 2, 3))
    # run (RunFields)
    output_dir: str = field("runs/pretrain", "run folder: config, logs, checkpoints, encoder export")
    save_every: int = field(1000, "checkpoint (and encoder export) every this many steps; also at the end")
    recon_every: int = field(500, "reconstructions of a fixed clip (tensorboard and <output-dir>/reconstructions) "
                                  "every this many steps (0 = off)")
    recon_view: str = field("honest", "reconstructions with the norm-pix loss: honest (each hidden patch's mean/std "
                                      "from visible neighbours) or oracle (from the hidden patch itself, as the "
                                      "official visualisation)", choices=("honest", "oracle"))
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
    schedule: str = "cosine"
    lr_milestones: tuple[int, ...] = ()


def derive(cfg: PretrainConfig, *, world_size: int, num_samples: int, precision: str,
           token_grid: tuple[int, int, int]) -> Derived:
    return Derived(**schedule_values(cfg, world_size=world_size, num_samples=num_samples), precision=precision,
                   token_grid=token_grid)
