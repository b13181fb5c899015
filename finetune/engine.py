"""Fine-tuning's own parts of the trainer: layer-wise lr decay, mixup / CutMix, cross-entropy, multi-view accuracy.

The step loop, accumulation, the non-finite guard, checkpoints and resume are the shared trainer's
(`launch.trainer`); `FinetuneStage` is what it calls. Mixup draws from a generator seeded by the micro-batch's
position, so a resumed run mixes the same.

Evaluation reads every validation video once per temporal clip (``exact`` shard mode: each video on exactly one
rank), sums the softmax over the video's views (clips x crops), gathers the per-video sums from every rank and
merges them by video key, so every video is counted exactly once however the shards fall on ranks and workers.
Each evaluation writes its reports (`finetune.report`); ``best.pth`` is chosen as ``--select-on`` says, never on
the test partition (`FinetuneStage`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.dist import is_distributed
from data.clip import as_model_input
from finetune import report
from finetune.config import Derived, FinetuneConfig
from launch import config as config_lib
from launch.loop import adamw, average_norm_statistics, sgd
from launch.trainer import DTYPES, StageHooks

__all__ = ["EvalSet", "FinetuneStage", "evaluate", "evaluate_videos", "layer_decay_groups", "make_optimizer",
           "mix_batch", "soft_cross_entropy"]


def layer_decay_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Optimizer groups with layer-wise lr decay (BEiT / official VideoMAE fine-tuning) and per-parameter multipliers.

    Layer ids come from the model (``get_layer_id``: for a ViT, patch embedding 0, block i -> i + 1, head and norms
    after the last block ``num_layer_ids - 1``; for a TSN ResNet, stem 0, layer1-4 -> 1-4, fc 5); a parameter of
    layer id j gets ``lr_scale = layer_decay ** (num_layer_ids - 1 - j)``, times the model's own multiplier for it
    (``lr_scales()``, e.g. TRM's offset predictor), which the training step multiplies into the lr. No weight decay on
    biases, norms (1-D tensors) and the model's ``no_weight_decay`` names.

    Returns:
        One group per (layer id, decay or not, multiplier) with ``params``, ``weight_decay`` and ``lr_scale``.
    """
    skip = set(model.no_weight_decay())
    own = model.lr_scales() if hasattr(model, "lr_scales") else {}
    top = model.num_layer_ids - 1
    groups: dict[tuple[int, bool, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = model.get_layer_id(name)
        no_decay = p.ndim <= 1 or name in skip or name.split(".")[-1] in skip
        mult = float(own.get(name, 1.0))
        group = groups.setdefault((layer, no_decay, mult), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (top - layer) * mult,
        })  # fmt: skip
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, lr: float, device: torch.device):
    """AdamW (fused on CUDA, see `launch.loop.adamw`) or SGD with momentum over `layer_decay_groups`.

    ``cfg`` is the effective config (recipe resolved).
    """
    groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if cfg.optimizer == "sgd":
        return sgd(groups, lr, cfg.momentum)
    return adamw(groups, lr, cfg.betas, device)


def mix_batch(x: torch.Tensor, labels: torch.Tensor, num_classes: int, *, smoothing: float, mixup: float,
              cutmix: float, switch_prob: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix of a batch with its reverse (timm's "batch" mode), and the smoothed soft targets.

    timm's `Mixup` cuts its CutMix box out of the last two axes but pastes it through ``x[:, :, y0:y1, x0:x1]``, which
    on a video ``(B, C, T, H, W)`` slices time and height; here the box is cut from H x W of every frame.

    Args:
        x: ``(B, C, T, H, W)`` float, normalised.
        labels: ``(B,)`` int64.
        num_classes: C of the targets.
        smoothing: label smoothing (the target is ``(1 - s) one_hot + s / C``).
        mixup, cutmix: Beta(alpha, alpha) parameters; 0 turns each off.
        switch_prob: with both on, the chance of CutMix for this batch.
        rng: source of all random choices (seeded per micro-batch position, so a resumed run mixes the same).

    Returns:
        (mixed x, soft targets ``(B, num_classes)`` float32).
    """
    off = smoothing / num_classes
    target = torch.full((x.shape[0], num_classes), off, device=x.device)
    target.scatter_(1, labels[:, None], 1.0 - smoothing + off)
    if mixup <= 0 and cutmix <= 0:
        return x, target
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < switch_prob)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    if use_cutmix:
        h, w = x.shape[-2:]
        cut = np.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
        x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)  # the label weight follows the area really pasted
    else:
        x = x * lam + x.flip(0) * (1.0 - lam)
    return x, target * lam + target.flip(0) * (1.0 - lam)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum(target * log_softmax(logits))``, in fp32."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def model_input(clips: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A loader batch (uint8 pixels or normalised floats) -> the normalised model input on ``device``."""
    return as_model_input(clips.to(device, non_blocking=True), dtype=dtype)


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One evaluation stream of the run.

    ``split`` is ``test`` (``--val-data``: never used to choose weights, its curves are for reading) or ``val`` (the
    split held out of the training shards, `finetune.holdout`, which picks ``best.pth`` under ``--select-on val``).
    ``loaders`` builds one loader per temporal clip (`finetune.build.val_loaders`); ``num_videos`` is how many
    videos it holds; ``class_names`` maps labels to the records' names where known.
    """

    split: str
    loaders: Callable[[], Iterator]
    num_videos: int
    class_names: dict[int, str] = dataclasses.field(default_factory=dict)


class FinetuneStage(StageHooks):
    """Fine-tuning's part of the trainer (`launch.trainer.Stage`): mixup / CutMix and the cross-entropy, evaluation
    and its reports after the flagged steps, and the choice of ``best.pth``.

    ``--select-on last``: ``best.pth`` is the final weights, written after the last evaluation; no evaluation takes
    part in the choice. ``--select-on val``: ``best.pth`` is rewritten whenever the top-1 on the held-out ``val``
    split beats the best so far. Either way, the ``test`` split's record at the chosen step is what the run reports
    (``metrics.json``).
    """

    def __init__(self, cfg: FinetuneConfig, d: Derived, evals: list[EvalSet]):
        self.cfg, self.d, self.evals = cfg, d, evals
        self.criterion = "val" if cfg.select_on == "val" else "test"
        # the chosen step: its criterion top-1 and every split's summary there (part of every checkpoint)
        self.best: dict[str, Any] = {"top1": -1.0, "step": 0, "evaluations": {}}

    def make_optimizer(self, model: torch.nn.Module, lr: float, device: torch.device):
        return make_optimizer(model, self.cfg, lr, device)

    def one_clip_loss(self, model: torch.nn.Module) -> torch.Tensor:
        """One clip's cross-entropy on ``model`` (a meta copy, for `launch.flops`); the clip is the run's geometry."""
        size = self.cfg.input_size
        x = torch.zeros(1, 3, self.cfg.num_frames, size, size, device="meta")
        target = torch.zeros(1, self.d.num_classes, device="meta")
        return soft_cross_entropy(model(x), target)

    def micro_loss(self, engine, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, device = self.cfg, engine.device
        x = model_input(batch["clip"], device)  # (B, 3, T, H, W) fp32
        labels = batch["label"].to(device)
        x, target = mix_batch(x, labels, self.d.num_classes, smoothing=cfg.label_smoothing, mixup=cfg.mixup,
                              cutmix=cfg.cutmix, switch_prob=cfg.mixup_switch_prob, rng=np.random.default_rng(seed))
        logits = engine(x.to(DTYPES[self.d.precision]))
        correct = (logits.detach().argmax(-1) == labels).sum()  # left on the device: read at log steps only
        return soft_cross_entropy(logits, target), {"correct": correct, "seen": labels.numel()}

    def step_values(self, sums: dict[str, float]) -> dict:
        """``train_top1``: the batch accuracy against the unmixed labels."""
        return {"train_top1": sums.get("correct", 0.0) / max(sums.get("seen", 0.0), 1.0)}

    def after_step(self, trainer, engine, step: int) -> None:
        final = step == self.d.total_steps
        if not self.evals:
            if final and self.criterion == "test":  # --select-on last without evaluation data: the final weights
                self.best = {"top1": -1.0, "step": step, "evaluations": {}}
                save_best(trainer.full_state_dict(engine), self.cfg, self.best)
                if trainer.info.is_main:
                    write_final(self.cfg, self.best)
            return
        if not (step % self.d.eval_every == 0 or final):
            return
        average_norm_statistics(engine.module)  # every rank evaluates with the statistics the checkpoint holds
        results = {e.split: run_eval(engine.module, e, trainer, self.d, step) for e in self.evals}
        # The same decision on every rank (the metrics come from the gathered results): full_state_dict is collective.
        if self.criterion == "val":
            chosen = results["val"]["top1"] > self.best["top1"]
        else:
            chosen = final
        if chosen:
            self.best = {"top1": results[self.criterion]["top1"], "step": step,
                         "evaluations": {split: brief(m) for split, m in results.items()}}
            save_best(trainer.full_state_dict(engine), self.cfg, self.best)
        if final and trainer.info.is_main:
            write_final(self.cfg, self.best)

    def client_state(self) -> dict:
        return {"best": dict(self.best), "selection": selection_flags(self.cfg)}

    def load_client_state(self, state: dict) -> str:
        from common.errors import UserError

        saved = state.get("selection")
        if saved is not None and saved != selection_flags(self.cfg):
            raise UserError(f"cannot resume with other model-selection flags ({saved} in the checkpoint, "
                            f"{selection_flags(self.cfg)} now): they change the training data; resume with the "
                            "checkpoint's values, or start afresh with another --output-dir")
        self.best.update(state.get("best", {}))
        if self.criterion == "val":
            return f" (best val top-1 so far {self.best['top1']:.4f})"
        return ""

    def summary(self) -> str:
        if not self.best["evaluations"]:
            step = self.best["step"]
            return f"; best.pth: the final weights (step {step}), not evaluated" if step else ""
        reported = reported_split(self.best)
        return (f"; reported ({SELECTION[self.cfg.select_on]}): step {self.best['step']}, {reported} top-1 "
                f"{self.best['evaluations'][reported]['top1']:.4f}")


SELECTION = {"last": "the final weights", "val": "best held-out val top-1"}
BRIEF = ("top1", "top5", "mean_class_acc", "num_videos", "num_views")


def brief(metrics: dict) -> dict:
    """The numbers of an evaluation that ``best.json`` / ``metrics.json`` carry."""
    return {k: metrics[k] for k in BRIEF if k in metrics}


def selection_flags(cfg: FinetuneConfig) -> dict:
    """The flags that decide the training data and the choice of weights (fixed over a resume)."""
    return {"select_on": cfg.select_on, "val_fraction": cfg.val_fraction if cfg.select_on == "val" else None}


def reported_split(best: dict) -> str:
    """``test`` when the run evaluated the test partition, else ``val`` (the selection split itself)."""
    return "test" if "test" in best["evaluations"] else "val"


def report_folder(step: int, split: str) -> str:
    """Where the report files of one evaluation go, relative to the run folder."""
    return os.path.join("reports", f"step_{step:08d}", split)


def run_eval(module, evalset: EvalSet, trainer, d: Derived, step: int, folder: str | None = None,
             extra: dict | None = None) -> dict:
    """Evaluate ``evalset`` on every rank (collective), log its record (``eval`` kind, ``split`` field, tensorboard
    ``{split}/``) and write its reports (`finetune.report`, ``extra`` added to ``metrics.json``) into ``folder``
    (default: the run folder's `report_folder`); the training RNG is left untouched."""
    device, log = trainer.device, trainer.log
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        videos = evaluate_videos(module, evalset.loaders(), device=device, dtype=trainer.dtype,
                                 num_classes=d.num_classes)
    metrics = {**report.summarise(videos), "split": evalset.split, "eval_time_s": time.perf_counter() - t0}
    log.log_step(step, metrics, console=False, prefix=evalset.split)
    log.info(f"eval step {step}: top1 {metrics['top1']:.4f}  top5 {metrics['top5']:.4f}  mean class "
             f"{metrics['mean_class_acc']:.4f}  on {metrics['num_videos']} {evalset.split} videos x {d.num_views} "
             f"views ({metrics['eval_time_s']:.1f} s)")
    if metrics["num_videos"] != evalset.num_videos:
        log.info(f"warning: {metrics['num_videos']} of {evalset.num_videos} {evalset.split} videos were evaluated "
                 "(the others failed to decode; see the warnings above)")
    if trainer.info.is_main:
        names = report.class_labels(d.num_classes, {**evalset.class_names, **videos.class_names})
        folder = folder or os.path.join(trainer.cfg.output_dir, report_folder(step, evalset.split))
        report.write_reports(folder, videos, {"step": step, **metrics, **(extra or {})}, names)
    return metrics


def save_best(state: dict | None, cfg: FinetuneConfig, best: dict) -> None:
    """``best.pth`` (the classifier's fp32 state dict, loadable with --init-from) and ``best.json``, atomically;
    rank 0 only (the others pass ``state=None``). ``best``: the chosen step's record (`FinetuneStage.best`)."""
    from common.files import atomic_save, atomic_write_text

    if state is None:
        return
    criterion = "val" if cfg.select_on == "val" else "test"
    summary = {"step": best["step"], "selected_on": cfg.select_on, "split": criterion,
               **best["evaluations"].get(criterion, {})}
    atomic_save({"model": state, "config": config_lib.to_dict(cfg), **summary},
                os.path.join(cfg.output_dir, "best.pth"))
    atomic_write_text(os.path.join(cfg.output_dir, "best.json"),
                      json.dumps({**summary, "weights": "best.pth", "evaluations": best["evaluations"]}, indent=2)
                      + "\n")


def write_final(cfg: FinetuneConfig, best: dict) -> None:
    """The run's result, ``metrics.json``: the reported split's numbers at the chosen step, which weights they are
    and how they were chosen (rank 0, after the last evaluation)."""
    from common.files import atomic_write_text

    if not best["evaluations"]:  # --val-data none: the final weights, and no numbers to report
        out = {"split": None, "step": best["step"], "checkpoint": "best.pth", "checkpoint_step": best["step"],
               "selected_on": cfg.select_on, "selection": "the final weights (--select-on last)", "evaluations": {},
               "note": "no evaluation data (--val-data none); evaluate best.pth with --eval-only --init-from"}
        atomic_write_text(os.path.join(cfg.output_dir, "metrics.json"), json.dumps(out, indent=2) + "\n")
        return
    split, step = reported_split(best), best["step"]
    if cfg.select_on == "val":
        how = (f"the evaluation with the highest top-1 on the val split held out of the training shards "
               f"(--select-on val: {cfg.val_fraction:g} of each class's videos, seed {cfg.seed}); the test "
               "partition took no part in the choice")
    else:
        how = "the final weights (--select-on last); no evaluation took part in the choice"
    out = {"split": split, "step": step, **best["evaluations"][split], "checkpoint": "best.pth",
           "checkpoint_step": step, "selected_on": cfg.select_on, "selection": how,
           "reports": report_folder(step, split), "evaluations": best["evaluations"]}
    if split == "val":
        out["note"] = "no test data (--val-data): these are the selection split's own numbers, biased upwards"
    atomic_write_text(os.path.join(cfg.output_dir, "metrics.json"), json.dumps(out, indent=2) + "\n")


def _gather(obj: Any) -> list[Any]:
    if is_distributed():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def evaluate_videos(module: torch.nn.Module, loaders: Iterable[Iterable[dict]], *, device: torch.device,
                    dtype: torch.dtype, num_classes: int) -> report.VideoScores:
    """Multi-view scores of the validation videos of all ranks; collective (every rank calls it).

    Args:
        module: the classifier; put in eval mode for the pass and restored after.
        loaders: one loader per temporal clip (``exact`` mode); a batch's clip is ``(B, [3 crops,] ...)``.
        device, dtype: where and in which precision the forward runs.
        num_classes: C.

    Returns:
        One row per distinct video over all ranks (`finetune.report.VideoScores`), the same on every rank.
    """
    was_training = module.training
    module.eval()
    # video id -> [label, summed softmax (C,), views, correct single views, summed cross-entropy,
    #              single-view predictions per class (C,), class name]
    mine: dict[str, list] = {}
    with torch.no_grad():
        for loader in loaders:
            for batch in loader:
                x = model_input(batch["clip"], device, dtype)  # (B, 3, T, H, W) or (B, V, 3, T, H, W)
                b, views = x.shape[0], (x.shape[1] if x.dim() == 6 else 1)
                logits = module(x.reshape(-1, *x.shape[-4:])).float().view(b, views, -1).cpu()
                labels = batch["label"].cpu()
                ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(views), reduction="none")
                view_pred = logits.argmax(-1)  # (B, V)
                right = (view_pred == labels[:, None]).sum(1)
                probs = logits.softmax(-1).sum(1)  # (B, C)
                names = batch["meta"].get("class_name", [""] * b)
                for i, (shard, key) in enumerate(zip(batch["meta"]["shard"], batch["meta"]["key"], strict=True)):
                    entry = mine.setdefault(f"{shard}/{key}", [int(labels[i]), np.zeros(num_classes), 0, 0, 0.0,
                                                               np.zeros(num_classes, dtype=np.int64), names[i]])
                    entry[1] += probs[i].numpy()
                    entry[2] += views
                    entry[3] += int(right[i])
                    entry[4] += float(ce[i * views : (i + 1) * views].sum())
                    np.add.at(entry[5], view_pred[i].numpy(), 1)
    module.train(was_training)

    merged: dict[str, list] = {}
    duplicates = 0
    for part in _gather(mine):
        for vid, entry in part.items():
            if vid in merged:  # the same video on two ranks: exact mode never does this; counted, not hidden
                duplicates += 1
                continue
            merged[vid] = entry
    entries = list(merged.values())
    scores = (np.stack([e[1] / e[2] for e in entries]) if entries  # (N, C) mean softmax over views
              else np.zeros((0, num_classes)))
    videos = report.VideoScores(
        keys=list(merged), labels=np.array([e[0] for e in entries], dtype=np.int64), scores=scores,
        view_agreement=np.zeros(len(entries)), views=np.array([e[2] for e in entries], dtype=np.int64),
        view_correct=sum(e[3] for e in entries), loss_sum=sum(e[4] for e in entries), duplicates=duplicates,
        class_names={e[0]: e[6] for e in entries if isinstance(e[6], str) and e[6]},
    )
    predicted = videos.ranked(1)[:, 0] if entries else np.zeros(0, dtype=np.int64)
    videos.view_agreement = np.array([e[5][p] / e[2] for e, p in zip(entries, predicted, strict=True)])
    return videos


def evaluate(module: torch.nn.Module, loaders: Iterable[Iterable[dict]], *, device: torch.device,
             dtype: torch.dtype, num_classes: int) -> dict:
    """`evaluate_videos` summarised (`finetune.report.summarise`): ``top1`` / ``top5`` of the softmax averaged over
    each video's views, ``mean_class_acc``, ``view_top1`` (single views), ``loss`` (mean cross-entropy of single
    views, no smoothing), ``num_videos`` (distinct videos over all ranks), ``num_views`` (views per video),
    ``duplicate_videos`` (videos seen on more than one rank; 0)."""
    return report.summarise(evaluate_videos(module, loaders, device=device, dtype=dtype, num_classes=num_classes))
