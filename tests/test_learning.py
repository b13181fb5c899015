"""Pretraining learns: the norm-pix loss on demo clips falls below what predicting zeros or the visible mean costs.

The model, the tube masks, the norm-pix target, the loss and the optimizer are the pretraining ones; the model is a
shallow ``vit_tiny`` (2 encoder blocks, 1 decoder block) at 64 x 64, N = 2, T* = 4, so that a few hundred steps take
seconds. The clips are 16 demo training videos, each decoded once (centre crop), and the loss is measured on those
same clips under a fixed mask the training never drew: the test shows the pipeline fits what it is shown. (On
held-out videos such short runs stay near 1.0; README "Demo data" has the figures.)
"""

import math

import numpy as np
import pytest
import torch

from data.clip import ClipSpec, load_clip
from data.decode import open_video
from data.manifest import read_manifest
from models import build_pretrain
from models.videomae import patchify_target
from pretrain.engine import param_groups
from pretrain.loss import reconstruction_loss
from pretrain.masking import token_counts, tube_mask

STEPS, BATCH, LR = 400, 8, 2e-3


@pytest.mark.slow
def test_norm_pix_loss_falls_below_the_zero_and_visible_mean_baselines(demo_dir):
    torch.manual_seed(0)
    spec = ClipSpec(num_frames=4, grid_n=2, input_size=64, train=False, crop="center")
    records = read_manifest(demo_dir / "train.csv")[::4][:16]  # two videos of each class
    x = torch.stack([load_clip(open_video(r.path, short_side=spec.decode_short_side()), spec, None) for r in records])
    model = build_pretrain("vit_tiny", img_size=64, num_frames=4, encoder_depth=2, decoder_depth=1)
    grid = model.token_grid
    counts = token_counts("tube", 0.75, 0.0, grid)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)

    def loss_of(clips, mask):
        pred = model(clips, mask, counts=counts)
        return reconstruction_loss(pred, clips, mask, patch_size=16, tubelet_size=2, num_decoded=counts[1])

    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        index = torch.randint(0, len(x), (BATCH,), generator=gen)
        loss = loss_of(x[index], tube_mask(BATCH, grid, 0.75, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    mask = tube_mask(len(x), grid, 0.75, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        learned = float(loss_of(x, mask))
    target = patchify_target(x)
    hidden = target[mask].view(len(x), -1, target.shape[-1])
    visible = target[~mask].view(len(x), -1, target.shape[-1])
    zeros = float(hidden.pow(2).mean())
    visible_mean = float((hidden - visible.mean(1, keepdim=True)).pow(2).mean())
    floor = 0.8
    assert zeros > 0.95 and visible_mean > 0.9, (zeros, visible_mean)  # neither baseline reaches the floor
    assert learned < floor, (learned, zeros, visible_mean)
    assert np.isfinite(learned)
