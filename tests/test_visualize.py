"""Reconstruction panels: the honest view borrows nothing from the hidden patches; the oracle view is labelled."""

import types

import pytest
import torch

from models.videomae import patchify_target
from pretrain.masking import tube_mask
from pretrain.visualize import neighbour_stats, reconstruction_panel

GEOMETRY = types.SimpleNamespace(patch_size=8, tubelet_size=2, token_grid=(2, 4, 4))  # what the panel asks of a model


def _clip_and_mask(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 4, 32, 32, generator=gen)
    mask = tube_mask(1, GEOMETRY.token_grid, 0.75, gen)
    return x, mask


def _perfect_prediction(x, mask):
    target = patchify_target(x, GEOMETRY.patch_size, GEOMETRY.tubelet_size, normalize=True)
    return target[mask].view(1, -1, target.shape[-1])


def test_the_oracle_view_of_a_perfect_prediction_is_the_original_and_says_so():
    x, mask = _clip_and_mask()
    panel = reconstruction_panel(GEOMETRY, x, mask, _perfect_prediction(x, mask), view="oracle", labels=False)
    rows = panel.image.reshape(5, 32, -1, 3)
    assert panel.rows[-1].startswith("ORACLE") and len(panel.rows) == 5
    assert abs(rows[-1].astype(int) - rows[0].astype(int)).max() <= 1
    assert panel.masked_error < 1e-6
    assert (rows[2] == rows[3]).all()  # target and prediction rows agree


def test_the_honest_view_takes_nothing_from_the_hidden_patches():
    x, mask = _clip_and_mask(1)
    pred = _perfect_prediction(x, mask)
    honest = reconstruction_panel(GEOMETRY, x, mask, pred, labels=False)
    # Change every hidden patch's brightness and contrast; the prediction stays what it was.
    pixels = x.clone()
    hidden = mask.view(2, 4, 4).repeat_interleave(2, 0).repeat_interleave(8, 1).repeat_interleave(8, 2)  # (T, H, W)
    pixels[:, :, hidden] = pixels[:, :, hidden] * 3.0 + 1.0
    changed = reconstruction_panel(GEOMETRY, pixels, mask, pred, labels=False)
    rows_a, rows_b = honest.image.reshape(5, 32, -1, 3), changed.image.reshape(5, 32, -1, 3)
    assert (rows_a[-1] == rows_b[-1]).all()  # the honest reconstruction did not move
    oracle_a = reconstruction_panel(GEOMETRY, x, mask, pred, view="oracle", labels=False).image
    oracle_b = reconstruction_panel(GEOMETRY, pixels, mask, pred, view="oracle", labels=False).image
    assert not (oracle_a == oracle_b).all()  # the oracle view did: it reads the hidden patches
    labelled = reconstruction_panel(GEOMETRY, x, mask, pred)
    assert labelled.image.shape[1] > honest.image.shape[1] and labelled.rows[-1] == "recon: visible mean/std"


def test_neighbour_stats_use_the_nearest_visible_tokens_only():
    mu = torch.arange(9, dtype=torch.float32).view(1, 3, 3, 1)
    sigma = torch.ones(1, 3, 3, 1)
    visible = torch.zeros(1, 3, 3, dtype=torch.bool)
    visible[0, 0, 0] = visible[0, 2, 2] = True
    m, s = neighbour_stats(mu, sigma, visible)
    assert m[0, 0, 1, 0] == 0 and m[0, 1, 2, 0] == 8  # one visible token within radius 1
    assert m[0, 1, 1, 0] == pytest.approx(4.0)  # both at radius 1: their average
    assert (s == 1).all()
