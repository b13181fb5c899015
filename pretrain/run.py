"""Pretrain a tube-masked VideoMAE on TIME grid clips.

    deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2            # all GPUs of this node (or 1 CPU process)
    deepspeed --num_gpus 2 pretrain/run.py --model vit_tiny ...        # (CPU: --num_gpus counts processes)
    torchrun --nproc-per-node 8 pretrain/run.py ...;  srun python pretrain/run.py ...;  python pretrain/run.py ...

Flags come from `pretrain.config.PretrainConfig` (``--help``); ``--config run.yaml`` sets defaults. With no
``--data`` it trains on the embedded demo shards (generated once under runs/demo).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: import the packages, not this folder's modules, by top-level name
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from common.cpu import prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch is imported (common/cpu.py: idle OpenMP threads leave the cores to the loader)

from data.clip import ClipSpec  # noqa: E402
from launch import config as config_lib  # noqa: E402
from launch.fields import validate_common  # noqa: E402
from launch.trainer import Trainer, entry  # noqa: E402
from pretrain.config import PretrainConfig, derive  # noqa: E402
from pretrain.engine import PretrainStage  # noqa: E402


def build_model(cfg: PretrainConfig):
    from models import build_pretrain, check_input
    from models.registry import get_size

    get_size(cfg.model)  # an unknown name lists the VideoMAE sizes, the models pretraining can build
    check_input(cfg.model, cfg.num_frames, cfg.input_size)
    model = build_pretrain(cfg.model, img_size=cfg.input_size, num_frames=cfg.num_frames,
                           drop_path_rate=cfg.drop_path)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def validate_masks(cfg: PretrainConfig, grid: tuple[int, int, int]) -> None:
    from pretrain.masking import validate_mask_ratio

    validate_mask_ratio(cfg.mask_ratio, grid, "random" if cfg.mask_type == "random" else "tube")
    if cfg.decoder_mask_ratio:
        validate_mask_ratio(cfg.decoder_mask_ratio, grid, "running_cell")


def main(argv: list[str] | None = None) -> int:
    cfg = config_lib.parse(PretrainConfig, argv, prog="pretrain/run.py", description=__doc__.split("\n")[0])
    trainer = Trainer(cfg)
    cfg = trainer.cfg  # --num-workers capped at this rank's cores
    validate_common(cfg)  # before the seed is used and the model built (sizes a machine cannot hold stop here)
    spec = ClipSpec.from_config(cfg, train=True, crop="multiscale", flip=False)
    trainer.seed()
    model = build_model(cfg)
    validate_masks(cfg, model.token_grid)
    trainer.start(data={"--data": cfg.data}, files={"--init-from": cfg.init_from})
    dataset = trainer.train_dataset(cfg.data or trainer.demo_shards("train"), spec,
                                    samples_per_decode=cfg.samples_per_decode)
    d = derive(cfg, world_size=trainer.info.world_size, num_samples=dataset.num_samples,
               precision=trainer.precision, token_grid=model.token_grid)
    if cfg.init_from:
        from models.videomae_weights import init_pretrain_from

        trainer.log.info(init_pretrain_from(model, cfg.init_from))
    summary = (f"global batch {d.global_batch} = {cfg.batch_size} x {cfg.accum_steps} accum x {d.world_size} ranks; "
               f"lr {d.lr:.3e} (base {cfg.base_lr:.3e} x {d.global_batch}/256), min lr {d.min_lr:.3e}; "
               f"{d.total_steps} steps ({d.steps_per_epoch}/epoch, warm-up {d.warmup_steps}); precision "
               f"{d.precision}; ZeRO-{cfg.zero_stage}; tokens {d.token_grid}")
    return trainer.fit(PretrainStage(cfg, d, dataset), model, dataset, d, summary)


if __name__ == "__main__":
    entry(main, "pretrain/run.py")
