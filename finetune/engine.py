"""Fine-tuning's own parts of the trainer: layer-wise lr decay, mixup / CutMix, cross-entropy, multi-view accuracy.

The step loop, accumulation, the non-finite guard, checkpoints and resume are the shared trainer's
(`launch.trainer`); `FinetuneStage` is what it calls. Mixup draws from a generator seeded by the micro-batch's
position, so a resumed run mixes the same.

Evaluation reads every validation video once per temporal clip (``exact`` shard mode: each video on exactly one
rank), sums the softmax over the video's views (clips x crops), gathers the per-video sums from every rank and
merges them by video key, so every video is counted exactly once however the shards fall on ranks and workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.clip import as_model_input
from finetune.config import Derived, FinetuneConfig
from launch import config as config_lib
from launch.loop import adamw, sgd
from launch.trainer import DTYPES, StageHooks

__all__ = ["FinetuneStage", "evaluate", "layer_decay_groups", "make_optimizer", "mix_batch", "soft_cross_entropy"]


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


class FinetuneStage(StageHooks):
    """Fine-tuning's part of the trainer (`launch.trainer.Stage`): mixup / CutMix and the cross-entropy, evaluation
    after the flagged steps, ``best.pth`` whenever the top-1 improves."""

    def __init__(self, cfg: FinetuneConfig, d: Derived, loaders: Callable[[], Iterator] | None):
        self.cfg, self.d, self.loaders = cfg, d, loaders
        self.best = {"top1": -1.0, "step": 0}

    def make_optimizer(self, model: torch.nn.Module, lr: float, device: torch.device):
        return make_optimizer(model, self.cfg, lr, device)

    def micro_loss(self, engine, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, device = self.cfg, engine.device
        x = model_input(batch["clip"], device)  # (B, 3, T, H, W) fp32
        labels = batch["label"].to(device)
        x, target = mix_batch(x, labels, self.d.num_classes, smoothing=cfg.label_smoothing, mixup=cfg.mixup,
                              cutmix=cfg.cutmix, switch_prob=cfg.mixup_switch_prob, rng=np.random.default_rng(seed))
        logits = engine(x.to(DTYPES[self.d.precision]))
        correct = int((logits.detach().argmax(-1) == labels).sum())
        return soft_cross_entropy(logits, target), {"correct": correct, "seen": labels.numel()}

    def step_values(self, sums: dict[str, float]) -> dict:
        """``train_top1``: the batch accuracy against the unmixed labels."""
        return {"train_top1": sums.get("correct", 0.0) / max(sums.get("seen", 0.0), 1.0)}

    def after_step(self, trainer, engine, step: int) -> None:
        if self.loaders and (step % self.d.eval_every == 0 or step == self.d.total_steps):
            metrics = run_eval(engine.module, self.loaders, trainer, self.d, step)
            if metrics["top1"] > self.best["top1"]:
                self.best.update(top1=metrics["top1"], step=step)
                save_best(trainer.full_state_dict(engine), self.cfg, metrics, step)

    def client_state(self) -> dict:
        return {"best": dict(self.best)}

    def load_client_state(self, state: dict) -> str:
        self.best.update(state.get("best", {}))
        return f" (best top-1 so far {self.best['top1']:.4f})"

    def summary(self) -> str:
        return f"; best top-1 {self.best['top1']:.4f} at step {self.best['step']}"


def run_eval(module, loaders, trainer, d: Derived, step: int) -> dict:
    """Evaluate on every rank (collective), log the record under ``eval/``; the training RNG is left untouched."""
    device, log = trainer.device, trainer.log
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        metrics = evaluate(module, loaders(), device=device, dtype=trainer.dtype, num_classes=d.num_classes)
    metrics["eval_time_s"] = time.perf_counter() - t0
    log.log_step(step, metrics, console=False, prefix="eval")
    log.info(f"eval step {step}: top1 {metrics['top1']:.4f}  top5 {metrics['top5']:.4f}  on {metrics['num_videos']} "
             f"videos x {d.num_views} views ({metrics['eval_time_s']:.1f} s)")
    if metrics["num_videos"] != d.num_val_samples:
        log.info(f"warning: {metrics['num_videos']} of {d.num_val_samples} validation videos were evaluated "
                 "(the others failed to decode; see the warnings above)")
    return metrics


def save_best(state: dict | None, cfg: FinetuneConfig, metrics: dict, step: int) -> None:
    """``best.pth`` (the classifier's fp32 state dict, loadable with --init-from) and ``best.json``, atomically;
    rank 0 only (the others pass ``state=None``)."""
    from launch.checkpoint import atomic_write_text
    from models.checkpoint import atomic_save

    if state is None:
        return
    summary = {"step": step, **{k: metrics[k] for k in ("top1", "top5", "num_videos", "num_views")}}
    atomic_save({"model": state, "config": config_lib.to_dict(cfg), **summary},
                os.path.join(cfg.output_dir, "best.pth"))
    atomic_write_text(os.path.join(cfg.output_dir, "best.json"),
                      json.dumps({**summary, "weights": "best.pth"}, indent=2) + "\n")


def _gather(obj: Any) -> list[Any]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def evaluate(module: torch.nn.Module, loaders: Iterable[Iterable[dict]], *, device: torch.device,
             dtype: torch.dtype, num_classes: int) -> dict:
    """Multi-view accuracy over the validation videos of all ranks; collective (every rank calls it).

    Args:
        module: the classifier; put in eval mode for the pass and restored after.
        loaders: one loader per temporal clip (``exact`` mode); a batch's clip is ``(B, [3 crops,] ...)``.
        device, dtype: where and in which precision the forward runs.
        num_classes: C.

    Returns:
        ``top1`` / ``top5`` of the softmax averaged over each video's views, ``view_top1`` (single views),
        ``loss`` (mean cross-entropy of single views, no smoothing), ``num_videos`` (distinct videos over all
        ranks), ``num_views`` (views per video), ``duplicate_videos`` (videos seen on more than one rank; 0).
    """
    was_training = module.training
    module.eval()
    # video id -> [label, summed softmax (C,), views, correct single views, summed cross-entropy]
    mine: dict[str, list] = {}
    with torch.no_grad():
        for loader in loaders:
            for batch in loader:
                x = model_input(batch["clip"], device, dtype)  # (B, 3, T, H, W) or (B, V, 3, T, H, W)
                b, views = x.shape[0], (x.shape[1] if x.dim() == 6 else 1)
                logits = module(x.reshape(-1, *x.shape[-4:])).float().view(b, views, -1).cpu()
                labels = batch["label"].cpu()
                ce = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(views), reduction="none")
                right = (logits.argmax(-1) == labels[:, None]).sum(1)
                probs = logits.softmax(-1).sum(1)  # (B, C)
                for i, (shard, key) in enumerate(zip(batch["meta"]["shard"], batch["meta"]["key"], strict=True)):
                    entry = mine.setdefault(f"{shard}/{key}", [int(labels[i]), np.zeros(num_classes), 0, 0, 0.0])
                    entry[1] += probs[i].numpy()
                    entry[2] += views
                    entry[3] += int(right[i])
                    entry[4] += float(ce[i * views : (i + 1) * views].sum())
    module.train(was_training)

    merged: dict[str, list] = {}
    duplicates = 0
    for part in _gather(mine):
        for vid, entry in part.items():
            if vid in merged:  # the same video on two ranks: exact mode never does this; counted, not hidden
                duplicates += 1
                continue
            merged[vid] = entry
    n = len(merged)
    if n == 0:
        return {"kind": "eval", "num_videos": 0, "top1": 0.0, "top5": 0.0}
    labels = np.array([e[0] for e in merged.values()])
    scores = np.stack([e[1] / e[2] for e in merged.values()])  # (N, C) mean softmax over views
    k = min(5, num_classes)
    topk = np.argsort(-scores, axis=1)[:, :k]
    views = sum(e[2] for e in merged.values())
    return {
        "kind": "eval",
        "top1": float(np.mean(topk[:, 0] == labels)),
        "top5": float(np.mean((topk == labels[:, None]).any(1))),
        "view_top1": sum(e[3] for e in merged.values()) / views,
        "loss": sum(e[4] for e in merged.values()) / views,
        "num_videos": n,
        "num_views": views / n,
        "duplicate_videos": duplicates,
    }
