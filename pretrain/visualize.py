"""Reconstructions of a clip: original, what the encoder saw, the target and the prediction, and the filled-in clip.

Under the norm-pix loss the decoder predicts each hidden patch normalised by its own mean and standard deviation, so
a prediction alone has no brightness or contrast. Showing it in pixels needs a mean and a std per hidden patch:

- ``view="honest"`` (default): the prediction and its target side by side in norm-pix space, where nothing is
  borrowed from the hidden patch, and a reconstruction in pixels that takes each hidden patch's mean and std from
  the *visible* patches nearest to it (same tubelet, the smallest square neighbourhood that holds a visible patch).
  What the model could know is all that is shown.
- ``view="oracle"``: the reconstruction de-normalises each prediction with the hidden patch's own mean and std (what
  the official VideoMAE visualisation does). It looks much better than what the model knows, because the hidden
  patch's brightness and contrast come from the answer; the row is labelled so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from models.videomae import patchify_target

VIEWS = ("honest", "oracle")
LABEL_WIDTH = 150  # pixels of the row-label column
Z_RANGE = 3.0  # norm-pix values in [-Z_RANGE, Z_RANGE] are drawn from black to white
ERROR_WHITE = 2.0  # per-patch error drawn white (predicting zeros under norm-pix costs about 1)


@dataclasses.dataclass
class Panel:
    """A reconstruction figure and the numbers behind it.

    Attributes:
        image: (H, W, 3) uint8, one row of frames per entry of ``rows`` (labelled on the left when asked).
        rows: what each row shows, top to bottom.
        masked_error: mean squared error over the hidden patches in the loss's target space (norm-pix or pixels).
    """

    image: np.ndarray
    rows: list[str]
    masked_error: float


def neighbour_stats(mu: torch.Tensor, sigma: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token mean and std taken from visible tokens only.

    Each token gets the average (per channel) of the means and of the stds of the visible tokens of its own tubelet
    within the smallest square neighbourhood (radius 1, 2, ...) that holds one; a tubelet with no visible token
    takes the clip's visible average.

    Args:
        mu, sigma: (t, h, w, C) statistics of every token.
        visible: (t, h, w) bool.

    Returns:
        (t, h, w, C) mean and std for every token, none of them computed from a hidden token.
    """
    v = visible.float()[:, None]  # (t, 1, h, w)
    stats = torch.cat([mu, sigma], dim=-1).permute(0, 3, 1, 2) * v  # (t, 2C, h, w), hidden tokens zeroed
    out = torch.zeros_like(stats)
    done = torch.zeros_like(v, dtype=torch.bool)
    t, _, h, w = v.shape
    for r in range(1, max(h, w)):
        k = 2 * r + 1
        count = F.avg_pool2d(v, k, stride=1, padding=r, count_include_pad=True)
        total = F.avg_pool2d(stats, k, stride=1, padding=r, count_include_pad=True)
        found = (count > 0) & ~done
        out = torch.where(found, total / count.clamp_min(1e-12), out)
        done |= found
        if bool(done.all()):
            break
    if not bool(done.all()) and bool(visible.any()):  # tubelets without a visible token
        clip = stats.sum(dim=(0, 2, 3)) / v.sum()
        out = torch.where(done, out, clip.view(1, -1, 1, 1))
    out = out.permute(0, 2, 3, 1)
    c = mu.shape[-1]
    return out[..., :c], out[..., c:]


def reconstruction_panel(model, x: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, *,
                         normalize_target: bool = True, view: str = "honest", max_columns: int = 8,
                         labels: bool = True, error_row: bool = False) -> Panel:
    """The reconstruction figure of one clip.

    Args:
        model: the pretraining model (its ``patch_size``, ``tubelet_size``, ``token_grid`` define the patches).
        x: (1, 3, T, H, W) normalised clip.
        mask: (1, L) bool, True = masked.
        pred: (1, L_masked, P) the decoder's predictions of the masked tokens (raster order).
        normalize_target: whether ``pred`` is in norm-pix space (the loss's target).
        view: "honest" or "oracle" (see the module docstring); only matters with ``normalize_target``.
        max_columns: frames shown (evenly spaced).
        labels: draw the row names in a column on the left.
        error_row: add a row with each hidden patch's mean squared error in the target space, from black (0) through
            red and yellow to white (`ERROR_WHITE` and above); visible patches dark blue.

    Rows: original; masked input (hidden patches grey); then with norm-pix the target and the prediction of the
    hidden patches in norm-pix space (visible ones grey); then the reconstruction in pixels (visible patches as
    they are). Without norm-pix: original, masked input, reconstruction.
    """
    if view not in VIEWS:
        raise ValueError(f"view {view!r} is not one of {VIEWS}")
    ts, ps = model.tubelet_size, model.patch_size
    t, h, w = model.token_grid
    pixels = patchify_target(x, ps, ts, normalize=False)[0]  # (L, P*3) in [0, 1]
    patches = rearrange(pixels, "l (p c) -> l p c", c=3)
    m = mask[0].to(patches.device)
    guess = rearrange(pred[0].detach().float(), "l (p c) -> l p c", c=3)
    grey = torch.full_like(patches, 0.5)
    masked = patches.clone()
    masked[m] = 0.5
    rows, names = [patches, masked], ["original", "masked input"]
    filled = patches.clone()
    if normalize_target:
        mu = patches.mean(dim=1)  # (L, 3)
        sigma = patches.var(dim=1, unbiased=True).sqrt()
        target = (patches[m] - mu[m][:, None]) / (sigma[m][:, None] + 1e-6)
        per_patch = ((guess - target) ** 2).mean(dim=(1, 2))
        rows += [_z_row(grey, m, target), _z_row(grey, m, guess)]
        names += ["target (norm-pix)", "prediction (norm-pix)"]
        if view == "oracle":
            mu_h, sigma_h = mu[m], sigma[m]
            names.append("ORACLE: hidden patch's mean/std")
        else:
            grid = "(t h w) c -> t h w c"
            mu_n, sigma_n = neighbour_stats(rearrange(mu, grid, t=t, h=h, w=w), rearrange(sigma, grid, t=t, h=h, w=w),
                                            rearrange(~m, "(t h w) -> t h w", t=t, h=h, w=w))
            mu_h = rearrange(mu_n, "t h w c -> (t h w) c")[m]
            sigma_h = rearrange(sigma_n, "t h w c -> (t h w) c")[m]
            names.append("recon: visible mean/std")
        filled[m] = (guess * (sigma_h[:, None] + 1e-6) + mu_h[:, None]).clamp(0, 1)
    else:
        per_patch = ((guess - patches[m]) ** 2).mean(dim=(1, 2))
        filled[m] = guess.clamp(0, 1)
        names.append("reconstruction")
    rows.append(filled)
    if error_row:
        v = (per_patch / ERROR_WHITE).clamp(0, 1)[:, None]
        heat = torch.tensor([0.15, 0.15, 0.35], device=patches.device).expand_as(patches).clone()
        heat[m] = torch.cat([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)], dim=1)[:, None]
        rows.append(heat)
        names.append(f"error: 0 black, {ERROR_WHITE:g} white")
    error = float(per_patch.mean())

    def video(p: torch.Tensor) -> torch.Tensor:  # (L, P, 3) -> (T, H, W, 3)
        return rearrange(p, "(t h w) (p0 p1 p2) c -> (t p0) (h p1) (w p2) c", t=t, h=h, w=w, p0=ts, p1=ps, p2=ps)

    frames = torch.stack([video(r) for r in rows])  # (R, T, H, W, 3)
    cols = np.linspace(0, frames.shape[1] - 1, min(max_columns, frames.shape[1])).round().astype(int)
    grid_image = rearrange(frames[:, cols], "r k hh ww c -> (r hh) (k ww) c")
    image = (grid_image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if labels:
        image = _with_labels(image, names)
    return Panel(image, names, error)


def _z_row(grey: torch.Tensor, m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Norm-pix values of the hidden patches drawn in grey levels; visible patches mid-grey."""
    row = grey.clone()
    row[m] = (0.5 + z / (2 * Z_RANGE)).clamp(0, 1)
    return row


def _with_labels(image: np.ndarray, names: list[str]) -> np.ndarray:
    """``image`` with a white column on the left naming each of its equal-height rows."""
    from PIL import Image, ImageDraw

    height = image.shape[0] // len(names)
    canvas = Image.new("RGB", (LABEL_WIDTH + image.shape[1], image.shape[0]), "white")
    canvas.paste(Image.fromarray(image), (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        draw.text((4, i * height + max(0, height // 2 - 6)), name, fill=(0, 0, 0))
    return np.asarray(canvas)
