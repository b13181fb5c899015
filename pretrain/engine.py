"""Pretraining's own parts of the trainer: AdamW groups, masks, the reconstruction loss, reconstructions, export.

The step loop, accumulation, the non-finite guard, checkpoints and resume are the shared trainer's
(`launch.trainer`); `PretrainStage` is what it calls. The mask of a micro-batch is seeded by its position (seed,
rank, step, micro-batch), so a resumed run masks the same tokens.
"""

from __future__ import annotations

import dataclasses
import io
import os

import torch

from data.clip import as_model_input
from launch import config as config_lib
from launch.loop import adamw
from launch.trainer import DTYPES, StageHooks
from pretrain.config import Derived, PretrainConfig
from pretrain.loss import reconstruction_loss
from pretrain.masking import random_mask, running_cell_mask, token_counts, tube_mask


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


class PretrainStage(StageHooks):
    """Pretraining's part of the trainer (`launch.trainer.Stage`): masks and the reconstruction loss, the
    reconstructions of a fixed clip, the encoder export after each checkpoint."""

    def __init__(self, cfg: PretrainConfig, d: Derived, dataset):
        self.cfg, self.d, self.dataset = cfg, d, dataset
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None  # the reconstructions' clip and mask
        # Validated once here; every step's masks have exactly these counts, so no step reads a mask back.
        self.counts = token_counts(cfg.mask_type, cfg.mask_ratio, cfg.decoder_mask_ratio, d.token_grid)

    def make_optimizer(self, model: torch.nn.Module, lr: float, device: torch.device):
        return make_optimizer(model, self.cfg, lr, device)

    def one_clip_loss(self, model: torch.nn.Module) -> torch.Tensor:
        """One clip's masked reconstruction loss on ``model`` (a meta copy, for `launch.flops`)."""
        x = torch.zeros(1, 3, model.num_frames, *model.img_size, device="meta")
        mask, decoder_mask = make_masks(self.cfg, 1, self.d.token_grid, self.cfg.seed)
        mask = mask.to("meta")
        decoder_mask = decoder_mask.to("meta") if decoder_mask is not None else None
        pred = model(x, mask, decoder_mask, counts=self.counts)
        return reconstruction_loss(pred, x, mask, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                                   normalize_target=self.cfg.norm_pix_loss, decoder_mask=decoder_mask,
                                   num_decoded=self.counts[1])

    def micro_loss(self, engine, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        # uint8 (B, T, H, W, 3) from the loader, normalised on the device -> (B, 3, T, H, W) fp32
        device = engine.device
        x = as_model_input(batch["clip"].to(device, non_blocking=True))
        mask, decoder_mask = make_masks(self.cfg, x.shape[0], self.d.token_grid, seed)
        mask = mask.to(device)
        decoder_mask = decoder_mask.to(device) if decoder_mask is not None else None
        pred = engine(x.to(DTYPES[self.d.precision]), mask, decoder_mask, counts=self.counts)
        module = engine.module
        # The target comes from the fp32 input, whatever the compute precision (spec: loss in fp32).
        loss = reconstruction_loss(pred, x, mask, patch_size=module.patch_size, tubelet_size=module.tubelet_size,
                                   normalize_target=self.cfg.norm_pix_loss, decoder_mask=decoder_mask,
                                   num_decoded=self.counts[1])
        return loss, {}

    def after_step(self, trainer, engine, step: int) -> None:
        every = self.cfg.recon_every
        if every and (step % every == 0 or step == 1):
            self.log_reconstruction(trainer, engine, step)

    def after_checkpoint(self, trainer, engine) -> str:
        """Write ``encoder.pth`` (official fine-tune key names + config) from the full weights."""
        from models.videomae_weights import save_encoder

        state = trainer.full_state_dict(engine)
        path = os.path.join(self.cfg.output_dir, "encoder.pth")
        if state is not None:
            save_encoder(state, path, config_lib.to_dict(self.cfg))
        return f"; encoder export {path}"

    def log_reconstruction(self, trainer, engine, step: int) -> None:
        """Reconstruct a fixed clip with a fixed mask; every rank runs it (ZeRO-3 gathers the weights)."""
        from pretrain.visualize import reconstruction_panel

        if self.fixed is None:
            mask, _ = make_masks(self.cfg, 1, self.d.token_grid, self.cfg.seed)
            self.fixed = (fixed_clip(self.dataset, trainer.device), mask.to(trainer.device))
        x, mask = self.fixed
        module = engine.module
        was_training = module.training
        module.eval()
        with torch.no_grad():
            pred = module(x.to(trainer.dtype), mask)
        module.train(was_training)
        panel = reconstruction_panel(module, x, mask, pred, normalize_target=self.cfg.norm_pix_loss,
                                     view=self.cfg.recon_view)
        view = self.cfg.recon_view if self.cfg.norm_pix_loss else "pixels"
        trainer.log.log_images(f"reconstruction/{view}", panel.image[None], step)
        if trainer.info.is_main:
            save_png(panel.image, os.path.join(self.cfg.output_dir, "reconstructions", f"step_{step:08d}_{view}.png"))


def fixed_clip(dataset, device: torch.device) -> torch.Tensor:
    """(1, 3, T, H, W): the first sample of the first shard, evaluation sampling; outside the training stream."""
    from data.stream import ShardDataset

    probe = ShardDataset(dataset.shards[:1], dataclasses.replace(dataset.spec, train=False, crop="center"),
                         mode="exact", shuffle_buffer=0, rank=0, world_size=1)
    return next(iter(probe))["clip"][None].to(device)


def save_png(image, path: str) -> None:
    """Write an (H, W, 3) uint8 image as PNG atomically (a reader never sees half a file)."""
    from PIL import Image

    from common.files import atomic_write_bytes

    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
