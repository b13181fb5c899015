"""The pretraining step and loop: masks, loss, DeepSpeed backward/step, logging, checkpoints.

One optimizer step = ``accum_steps`` micro-batches. DeepSpeed counts micro-steps and applies the optimizer at the
accumulation boundary; the loss it receives is divided by ``accum_steps`` inside ``engine.backward``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from data.clip import as_model_input
from launch.loop import LoopState, adamw, lr_at, step_seed
from pretrain.config import Derived, PretrainConfig
from pretrain.loss import reconstruction_loss
from pretrain.masking import random_mask, running_cell_mask, tube_mask


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms (1-D tensors) and the model's ``no_weight_decay`` names."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.split(".")[-1] in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, lr: float, device: torch.device):
    """AdamW over `param_groups` (fused on CUDA, see `launch.loop.adamw`)."""
    return adamw(param_groups(model, cfg.weight_decay), lr, cfg.betas, device)


def make_masks(cfg: PretrainConfig, batch: int, grid: tuple[int, int, int], seed: int
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encoder mask (B, L) and optional decoder mask; True = masked (hidden from the encoder / not decoded)."""
    gen = torch.Generator().manual_seed(seed)
    make = tube_mask if cfg.mask_type == "tube" else random_mask
    mask = make(batch, grid, cfg.mask_ratio, gen)
    decoder_mask = running_cell_mask(batch, grid, cfg.decoder_mask_ratio, gen) if cfg.decoder_mask_ratio else None
    return mask, decoder_mask


def train_step(engine, batches: Iterator[dict], cfg: PretrainConfig, d: Derived, state: LoopState, *,
               rank: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One optimizer step over ``accum_steps`` good micro-batches. Returns the values to log.

    A micro-batch whose loss is not finite on any rank is skipped by every rank (no backward, no step, so ranks and
    DeepSpeed's micro-step counter stay in step) and counted; the next micro-batch takes its place. After
    ``cfg.max_bad_steps`` in a row, `NonFiniteLoss` stops the run. DeepSpeed's fp16 loss scaler separately skips
    optimizer steps whose gradients overflow.
    """
    lr = lr_at(state.step, d)
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    losses, wait, skipped = [], 0.0, 0
    while len(losses) < cfg.accum_steps:
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        micro = len(losses) + skipped
        state.micro_batches += 1
        # uint8 (B, T, H, W, 3) from the loader, normalised on the device -> (B, 3, T, H, W) fp32
        x = as_model_input(batch["clip"].to(device, non_blocking=True))
        mask, decoder_mask = make_masks(cfg, x.shape[0], d.token_grid, step_seed(cfg.seed, rank, state.step, micro))
        mask = mask.to(device)
        decoder_mask = decoder_mask.to(device) if decoder_mask is not None else None
        pred = engine(x.to(dtype), mask, decoder_mask)
        module = engine.module
        # The target comes from the fp32 input, whatever the compute precision (spec: loss in fp32).
        loss = reconstruction_loss(pred, x, mask, patch_size=module.patch_size, tubelet_size=module.tubelet_size,
                                   normalize_target=cfg.norm_pix_loss, decoder_mask=decoder_mask)
        if not state.loss_is_finite(loss, cfg.max_bad_steps):
            skipped += 1
            continue
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    state.step += 1
    mean_loss = torch.tensor([float(np.mean(losses))])
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # log the mean over ranks
        mean_loss = mean_loss.to(device)
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= torch.distributed.get_world_size()
    grad_norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
    out = {
        "loss": float(mean_loss.item()),
        "lr": lr,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "data_wait_s": wait,
        "skipped_micro_batches": skipped,
    }
    if d.precision == "fp16" and hasattr(engine.optimizer, "cur_scale"):
        out["loss_scale"] = float(engine.optimizer.cur_scale)
    return out
