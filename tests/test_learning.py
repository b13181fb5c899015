"""Pretraining learns: the norm-pix loss on held-out demo clips falls below what predicting zeros or the visible mean
costs.

The model, the tube masks, the norm-pix target, the loss and the optimizer are the pretraining ones, with the
quickstart's model and recipe (`vit_mini`, N = 2, mask 0.75, batch 8, AdamW at 1.6e-3 after a short warm-up) at
112 x 112 and T* = 8. At this size a TIME cell is 3.5 patches wide, so many patches straddle two cells and the
visible tokens' mean is a weak baseline (~0.8), which makes the test strict. At the quickstart's 128 px every ramp
patch lies inside one cell and normalises to nearly the same pattern, so the visible mean alone already costs ~0.4.
Training clips are cut from the demo's training videos with pretraining's multi-scale crop, a new crop and new
sampling offsets every time; the loss is measured on the validation videos (never trained on) under a
fixed mask. Both baselines are computed on those same clips and masks.
"""

import math

import numpy as np
import pytest
import torch

from data.clip import ClipSpec, make_clip, sample_indices
from data.decode import open_video
from data.manifest import read_manifest
from models import build_pretrain
from models.videomae import patchify_target
from pretrain.engine import param_groups
from pretrain.loss import reconstruction_loss
from pretrain.masking import token_counts, tube_mask

STEPS, WARMUP, BATCH, LR = 600, 50, 8, 5e-2 * 8 / 256


def _frames(records):
    return [open_video(r.path).get_batch(np.arange(64)) for r in records]


@pytest.mark.slow
def test_norm_pix_loss_falls_below_the_zero_and_visible_mean_baselines(demo_dir):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train_spec = ClipSpec(num_frames=8, grid_n=2, input_size=112, train=True, crop="multiscale", flip=False)
    eval_spec = ClipSpec(num_frames=8, grid_n=2, input_size=112, train=False)
    train = _frames(read_manifest(demo_dir / "train.csv"))
    val = torch.stack([make_clip(f[sample_indices(len(f), eval_spec, None)], eval_spec, None)
                       for f in _frames(read_manifest(demo_dir / "val.csv"))])
    model = build_pretrain("vit_mini", img_size=112, num_frames=8)
    grid = model.token_grid
    counts = token_counts("tube", 0.75, 0.0, grid)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)

    def loss_of(clips, mask):
        pred = model(clips, mask, counts=counts)
        return reconstruction_loss(pred, clips, mask, patch_size=16, tubelet_size=2, num_decoded=counts[1])

    for step in range(STEPS):
        warm = (step + 1) / WARMUP if step < WARMUP else 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / STEPS))
        for group in optimizer.param_groups:
            group["lr"] = LR * warm
        frames = [train[i] for i in rng.integers(len(train), size=BATCH)]
        x = torch.stack([make_clip(f[sample_indices(len(f), train_spec, rng)], train_spec, rng) for f in frames])
        loss = loss_of(x, tube_mask(BATCH, grid, 0.75, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    mask = tube_mask(len(val), grid, 0.75, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        learned = float(loss_of(val, mask))
    target = patchify_target(val)
    hidden = target[mask].view(len(val), -1, target.shape[-1])
    visible = target[~mask].view(len(val), -1, target.shape[-1])
    zeros = float(hidden.pow(2).mean())
    visible_mean = float((hidden - visible.mean(1, keepdim=True)).pow(2).mean())
    floor = min(zeros, visible_mean) - 0.1  # neither baseline reaches it
    assert np.isfinite(learned) and learned < floor, (learned, zeros, visible_mean)
    assert learned < 0.75 * zeros, (learned, zeros)  # a quarter below predicting zeros, as the quickstart's target


def test_demo_loss_split_marks_the_object_patches(demo_dir):
    # tools.demo_loss_split redraws each validation video from its seed to know where the objects are: the redrawn
    # frames are the decoded ones (up to the codec), and the split covers every hidden patch once.
    import io

    from data.prep.demo import render_scene
    from tools.demo_loss_split import _load, _object_coverage, demo_params, measure, scene_of

    params = demo_params(demo_dir)
    path, frames = _load(demo_dir, "val", 1)[0]
    covered = _object_coverage(path, params, "val")[..., 0] > 0  # (T, H, W)
    assert covered.shape == frames.shape[:3] and 0.02 < covered.mean() < 0.6
    # An object pixel differs from the background behind it; the redraw places the objects where the video has them.
    rgb, _, _ = render_scene(scene_of(path, params, "val"), coverage=False)
    assert np.abs(rgb.astype(np.int16) - frames.astype(np.int16)).mean() < 3.0

    out = io.StringIO()
    rows = measure(demo_dir, steps=2, eval_every=1, val_limit=8, out=out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert abs(row["object"]["share"] + row["background"]["share"] - 1.0) < 1e-6
        assert 0.05 < row["object"]["share"] < 0.8
        for name in ("all", "object", "background"):
            assert 0.9 < row[name]["zeros"] < 1.1  # norm-pix: predicting zeros costs ~1 on any patch set
    assert "background" in out.getvalue()
