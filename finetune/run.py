"""Fine-tune a classifier (VideoMAE ViT, TSN ResNet with TSM / STW / TRM / ATR, image ViT) on TIME grid clips.

    deepspeed finetune/run.py --init-from runs/pretrain/encoder.pth        # all GPUs of this node (or 1 CPU process)
    deepspeed finetune/run.py --model resnet50 --temporal trm --init-from resnet50.pth --reset-head
    deepspeed --num_gpus 2 finetune/run.py --model vit_tiny ...           # (CPU: --num_gpus counts processes)
    torchrun --nproc-per-node 8 finetune/run.py ...;  srun python finetune/run.py ...;  python finetune/run.py ...

Flags come from `finetune.config.FinetuneConfig` (``--help``); ``--config run.yaml`` sets defaults. With no ``--data``
it fine-tunes on the embedded demo shards (train split, generated once under runs/demo) and evaluates on the demo val
split.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: import the packages, not this folder's modules, by top-level name
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from common.cpu import prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch is imported (common/cpu.py: idle OpenMP threads leave the cores to the loader)

import json  # noqa: E402

from common.errors import UserError  # noqa: E402
from common.files import atomic_write_text  # noqa: E402
from data.clip import ClipSpec  # noqa: E402
from finetune import recipes  # noqa: E402
from finetune.build import (  # noqa: E402
    build_model,
    class_names,
    describe,
    hold_out,
    init_weights,
    resolve_data,
    resolve_num_classes,
    val_loaders,
    validate,
)
from finetune.config import FinetuneConfig, derive  # noqa: E402
from finetune.engine import EvalSet, FinetuneStage, run_eval  # noqa: E402
from launch import config as config_lib  # noqa: E402
from launch.trainer import Trainer, entry  # noqa: E402
from models import get_entry  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    flags = config_lib.parse(FinetuneConfig, argv, prog="finetune/run.py", description=__doc__.split("\n")[0])
    family = get_entry(flags.model).family
    cfg, recipe = recipes.resolve(flags, family)  # the effective config: unset fields from the family's recipe
    validate(cfg, family)
    trainer = Trainer(cfg)
    cfg = trainer.cfg  # --num-workers capped at this rank's cores
    spec = ClipSpec.from_config(cfg, train=True, crop=cfg.train_crop, flip=cfg.flip, rand_augment=cfg.rand_augment,
                                erase_prob=cfg.reprob)
    trainer.start(data={"--data": cfg.data, "--val-data": "" if cfg.val_data == "none" else cfg.val_data},
                  files={"--init-from": cfg.init_from})
    train_src, val_src = resolve_data(cfg, trainer)
    holdout = hold_out(cfg, train_src)  # --select-on val: a val split out of the training shards; else None
    dataset = trainer.train_dataset(train_src, spec, keep=holdout.train_filter if holdout else None)
    sources = [(train_src, dataset, "--data")]
    names = {**class_names([src for src in (train_src, val_src) if src]), **(holdout.class_names if holdout else {})}
    evals, val_set = [], None
    if holdout:
        evals.append(EvalSet("val", val_loaders(train_src, spec, cfg, trainer, holdout.val_filter)[0],
                             holdout.num_val, names))
    if val_src:  # the test partition: evaluated for its curves and the report, never to choose weights
        loaders, val_set = val_loaders(val_src, spec, cfg, trainer)
        sources.append((val_src, val_set, "--val-data"))
        evals.append(EvalSet("test", loaders, val_set.num_samples, names))
    elif cfg.eval_only:
        raise UserError("--eval-only needs validation data; pass --val-data")
    num_classes = resolve_num_classes(cfg, sources)
    if num_classes < 2:  # trains (a test may want it), but learns nothing: the softmax of one class is always 1
        trainer.log.info("warning: one class only (every label is 0): the loss is 0 whatever the weights, so nothing "
                         "is learned; check the manifest's labels, or pass --num-classes N")

    trainer.seed()
    model = build_model(cfg, family, num_classes)
    held = holdout.num_val if holdout else 0
    d = derive(cfg, world_size=trainer.info.world_size, num_samples=dataset.num_samples - held,
               num_val_samples=val_set.num_samples if val_set else 0, num_classes=num_classes,
               precision=trainer.precision, token_grid=getattr(model, "token_grid", None), family=family,
               recipe=recipe, num_holdout=held)
    if cfg.eval_only:
        return evaluate_only(cfg, trainer, model, evals[0], d)
    init_weights(trainer, model, cfg, family, resumed=bool(trainer.checkpoints().find(cfg.resume)))
    return trainer.fit(FinetuneStage(cfg, d, evals), model, dataset, d, describe(cfg, d, bool(evals)))


def evaluate_only(cfg: FinetuneConfig, trainer: Trainer, model, evalset: EvalSet, d) -> int:
    """``--eval-only``: the resumed checkpoint's weights (else ``--init-from``) evaluated once: ``eval.json`` and the
    reports (`finetune.report`) in the run folder."""
    resumed = trainer.load_for_eval(model)
    init_weights(trainer, model, cfg, d.family, resumed=bool(resumed))
    model.to(device=trainer.device, dtype=trainer.dtype)
    weights = resumed or cfg.init_from or "the initialisation (no --init-from, no checkpoint)"
    metrics = run_eval(model, evalset, trainer, d, 0, folder=cfg.output_dir,
                       extra={"checkpoint": weights, "selected_on": "given"})
    if trainer.info.is_main:
        atomic_write_text(os.path.join(cfg.output_dir, "eval.json"), json.dumps(metrics, indent=2) + "\n")
    trainer.log.close()
    return 0


if __name__ == "__main__":
    entry(main, "finetune/run.py")
