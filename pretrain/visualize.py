"""Reconstructions of a clip for tensorboard: original, what the encoder saw, and what the decoder filled in."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from models.videomae import patchify_target


def reconstruction_image(model, x: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, *,
                         normalize_target: bool = True, max_columns: int = 8) -> np.ndarray:
    """One image with three rows: original frames, masked input (hidden patches grey), reconstruction.

    Args:
        model: the pretraining model (its ``patch_size``, ``tubelet_size``, ``token_grid`` define the patches).
        x: (1, 3, T, H, W) normalised clip.
        mask: (1, L) bool, True = masked.
        pred: (1, L_masked, P) the decoder's predictions of the masked tokens (raster order).
        normalize_target: whether ``pred`` is in norm-pix space; the hidden patch's own mean and std map it back,
            as the official visualisation does (the model never sees them).
        max_columns: frames shown (the first frame of evenly spaced tubelets).

    Returns:
        (3 H, columns W, 3) uint8.
    """
    ts, ps = model.tubelet_size, model.patch_size
    t, h, w = model.token_grid
    pixels = patchify_target(x, ps, ts, normalize=False)[0]  # (L, P*3) in [0, 1]
    patches = rearrange(pixels, "l (p c) -> l p c", c=3)
    m = mask[0].to(patches.device)
    recon = rearrange(pred[0].detach().float(), "l (p c) -> l p c", c=3)
    if normalize_target:
        hidden = patches[m]
        mu = hidden.mean(dim=1, keepdim=True)
        sigma = hidden.var(dim=1, unbiased=True, keepdim=True).sqrt()
        recon = recon * (sigma + 1e-6) + mu
    filled = patches.clone()
    filled[m] = recon.clamp(0, 1)
    masked = patches.clone()
    masked[m] = 0.5

    def video(p: torch.Tensor) -> torch.Tensor:  # (L, P, 3) -> (T, H, W, 3)
        return rearrange(p, "(t h w) (p0 p1 p2) c -> (t p0) (h p1) (w p2) c", t=t, h=h, w=w, p0=ts, p1=ps, p2=ps)

    frames = torch.stack([video(patches), video(masked), video(filled)])  # (3, T, H, W, 3)
    cols = np.linspace(0, frames.shape[1] - 1, min(max_columns, frames.shape[1])).round().astype(int)
    grid = rearrange(frames[:, cols], "r k hh ww c -> (r hh) (k ww) c")
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
