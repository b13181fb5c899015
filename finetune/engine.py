"""The fine-tuning step and evaluation: layer-wise lr decay, mixup / CutMix, cross-entropy, multi-view accuracy.

One optimizer step = ``accum_steps`` micro-batches; DeepSpeed counts micro-steps and applies the optimizer at the
accumulation boundary (as in pretraining). The lr schedule, the per-position seeds and the loop state are
shared with pretraining (`launch.loop`), so both stages warm up, decay and resume the same way.

Evaluation reads every validation video once per temporal clip (``exact`` shard mode: each video on exactly one
rank), sums the softmax over the video's views (clips x crops), gathers the per-video sums from every rank and
merges them by video key, so every video is counted exactly once however the shards fall on ranks and workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from data.clip import as_model_input
from finetune.config import Derived, FinetuneConfig
from launch.loop import LoopState, adamw, lr_at, step_seed

__all__ = ["evaluate", "layer_decay_groups", "make_optimizer", "mix_batch", "soft_cross_entropy", "train_step"]


def layer_decay_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with layer-wise lr decay (BEiT / official VideoMAE fine-tuning).

    Layer ids come from the model (``get_layer_id``: patch embedding 0, block i -> i + 1, head and norms after the
    last block ``num_layer_ids - 1``); a parameter of layer id j gets ``lr_scale = layer_decay ** (num_layer_ids - 1 -
    j)``, which the training step multiplies into the lr. No weight decay on biases, norms (1-D tensors) and the
    model's ``no_weight_decay`` names.

    Returns:
        One group per (layer id, decay or not) with ``params``, ``weight_decay`` and ``lr_scale``.
    """
    skip = set(model.no_weight_decay())
    top = model.num_layer_ids - 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = model.get_layer_id(name)
        no_decay = p.ndim <= 1 or name in skip or name.split(".")[-1] in skip
        group = groups.setdefault((layer, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": layer_decay ** (top - layer),
        })  # fmt: skip
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, lr: float, device: torch.device):
    """AdamW over `layer_decay_groups` (fused on CUDA, see `launch.loop.adamw`)."""
    groups = layer_decay_groups(model, cfg.weight_decay, cfg.layer_decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
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


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def model_input(clips: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A loader batch (uint8 pixels or normalised floats) -> the normalised model input on ``device``."""
    return as_model_input(clips.to(device, non_blocking=True), dtype=dtype)


def train_step(engine, batches: Iterator[dict], cfg: FinetuneConfig, d: Derived, state: LoopState, *,
               rank: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One optimizer step over ``accum_steps`` good micro-batches. Returns the values to log.

    A micro-batch whose loss is not finite on any rank is skipped by every rank and counted, as in pretraining;
    `NonFiniteLoss` after ``cfg.max_bad_steps`` in a row. The logged ``lr`` is the head's (scale 1); lower layers get
    ``lr x lr_scale``. ``train_top1`` is the batch accuracy against the unmixed labels.
    """
    lr = lr_at(state.step, d)
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    losses, wait, skipped, correct, seen, own_norm = [], 0.0, 0, 0, 0, None
    while len(losses) < cfg.accum_steps:
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        micro = len(losses) + skipped
        state.micro_batches += 1
        x = model_input(batch["clip"], device)  # (B, 3, T, H, W) fp32
        labels = batch["label"].to(device)
        rng = np.random.default_rng(step_seed(cfg.seed, rank, state.step, micro))
        x, target = mix_batch(x, labels, d.num_classes, smoothing=cfg.label_smoothing, mixup=cfg.mixup,
                              cutmix=cfg.cutmix, switch_prob=cfg.mixup_switch_prob, rng=rng)
        logits = engine(x.to(dtype))
        loss = soft_cross_entropy(logits, target)
        if not state.loss_is_finite(loss, cfg.max_bad_steps):
            skipped += 1
            continue
        engine.backward(loss)
        if engine.is_gradient_accumulation_boundary():
            own_norm = _grad_norm(engine.module) if d.zero_stage == 0 and d.precision == "fp32" else None
        engine.step()
        losses.append(float(loss.detach()))
        correct += int((logits.detach().argmax(-1) == labels).sum())
        seen += labels.numel()
    state.step += 1
    loss_sum, correct_sum, seen_sum = _all_reduce_sum([float(np.mean(losses)), correct, seen], device)
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is None:  # DeepSpeed computes it in its fp16 / bf16 / ZeRO optimizers only
        grad_norm = own_norm
    return {
        "kind": "train",
        "loss": loss_sum / _world_size(),  # mean over ranks
        "lr": lr,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "data_wait_s": wait,
        "train_top1": correct_sum / max(seen_sum, 1.0),
        "skipped_micro_batches": skipped,
    }


def _grad_norm(module: torch.nn.Module) -> float:
    """L2 norm of all gradients (before clipping; ZeRO 0 has averaged them over ranks in the backward pass)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


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
