"""TIME grid arrangements on frames labelled by their index: each cell holds exactly the frame of Eqs. 1-5."""

import itertools

import numpy as np
import pytest
import torch

from data import time_grid


def labelled(num: int, h: int = 4, w: int = 6) -> torch.Tensor:
    """(num, 2, h, w) int64 frames whose every pixel holds the frame's 1-based index (two channels: base 256)."""
    idx = torch.arange(1, num + 1)
    return torch.stack([idx % 256, idx // 256], 1)[:, :, None, None].expand(num, 2, h, w).clone()


def cell_labels(grid: torch.Tensor, n: int) -> np.ndarray:
    """(T*, 2, N h, N w) -> (T*, N, N) 1-based frame index of each cell (asserting each cell is uniform)."""
    t, _, gh, gw = grid.shape
    h, w = gh // n, gw // n
    out = np.zeros((t, n, n), dtype=np.int64)
    for ti, r, c in itertools.product(range(t), range(n), range(n)):
        cell = grid[ti, :, r * h : (r + 1) * h, c * w : (c + 1) * w]
        assert (cell == cell[:, :1, :1]).all()
        out[ti, r, c] = int(cell[0, 0, 0]) + 256 * int(cell[1, 0, 0])
    return out


@pytest.mark.parametrize("n,t_star", [(1, 8), (2, 16), (2, 3), (3, 5), (4, 16), (7, 2)])
def test_spatial_arrangement_follows_eqs_1_2(n, t_star):
    grid = time_grid.to_grid(labelled(t_star * n * n), n, "spatial")
    assert grid.shape == (t_star, 2, 4 * n, 6 * n)
    got = cell_labels(grid, n)
    for t, r, c in itertools.product(range(1, t_star + 1), range(n), range(n)):
        i = r * n + c + 1  # Eq. 2: block T_i sits at row ceil(i/N), column ((i-1) mod N) + 1
        block = range((i - 1) * t_star + 1, i * t_star + 1)  # Eq. 1: T_i = frames (i-1)T*+1 .. iT*
        assert got[t - 1, r, c] == block[t - 1]


@pytest.mark.parametrize("n,t_star", [(1, 8), (2, 16), (2, 3), (3, 5), (4, 16), (7, 2)])
def test_temporal_arrangement_follows_eqs_3_5(n, t_star):
    grid = time_grid.to_grid(labelled(t_star * n * n), n, "temporal")
    got = cell_labels(grid, n)
    for j in range(1, t_star + 1):
        block = list(range((j - 1) * n * n + 1, j * n * n + 1))  # Eq. 3: S_j = frames (j-1)N^2+1 .. jN^2
        assert got[j - 1].reshape(-1).tolist() == block  # Eq. 4: r(S_j) fills the grid row-major


@pytest.mark.parametrize("arrangement", time_grid.ARRANGEMENTS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_source_index_agrees_with_grid(arrangement, n):
    t_star = 3
    got = cell_labels(time_grid.to_grid(labelled(t_star * n * n), n, arrangement), n)
    for t, r, c in itertools.product(range(t_star), range(n), range(n)):
        k = time_grid.source_index(t, r, c, grid_n=n, num_frames=t_star, arrangement=arrangement)
        assert got[t, r, c] == k + 1


@pytest.mark.parametrize("arrangement", time_grid.ARRANGEMENTS)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_from_grid_inverts_to_grid(arrangement, n):
    frames = torch.randint(0, 255, (4 * n * n, 3, 5, 7), dtype=torch.uint8)
    grid = time_grid.to_grid(frames, n, arrangement)
    assert torch.equal(time_grid.from_grid(grid, n, arrangement), frames)


def test_arrangements_differ_for_n_above_1():
    frames = labelled(2 * 4)
    assert not torch.equal(time_grid.to_grid(frames, 2, "spatial"), time_grid.to_grid(frames, 2, "temporal"))


def test_bad_inputs():
    with pytest.raises(ValueError, match="whole 2x2 grids"):
        time_grid.to_grid(labelled(7), 2)
    with pytest.raises(ValueError, match="unknown grid arrangement"):
        time_grid.to_grid(labelled(8), 2, "diagonal")


def test_cell_size_rounds_up():
    assert time_grid.cell_size((224, 224), 2) == (112, 112)
    assert time_grid.cell_size((224, 224), 3) == (75, 75)
    assert time_grid.cell_size((224, 160), 7) == (32, 23)
