"""The TIME layer's grid arrangements as pure tensor functions (TIME paper, Sec. 3.1, Eqs. 1-5).

The L = T* x N^2 source frames (already resized to one cell) are tiled into T* frames of N x N cells:

- spatial arrangement (Eqs. 1-2, the paper's default): the L frames form N^2 temporal blocks of T* consecutive frames;
  output frame t shows, in cell (r, c), frame ``(r N + c) T* + t`` of the sequence (0-based). Each cell plays one part
  of the video; all cells of one output frame are at the same relative time within their block.
- temporal arrangement (Eqs. 3-5): the L frames form T* blocks of N^2 consecutive frames; output frame t is block t in
  row-major order: cell (r, c) holds frame ``t N^2 + r N + c``.

N = 1 is the identity (ordinary frame sampling). No file access and no randomness here.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

ARRANGEMENTS = ("spatial", "temporal")

# Source frames are (L, C, h, w) with L ordered as (block, index-within-block). Spatial: blocks are the N^2 cells
# (r c) and the index within a block is the output time t. Temporal: blocks are the output times t, and the index
# within a block is the cell (r c).
_TO_GRID = {
    "spatial": "(r c t) ch h w -> t ch (r h) (c w)",
    "temporal": "(t r c) ch h w -> t ch (r h) (c w)",
}
_FROM_GRID = {
    "spatial": "t ch (r h) (c w) -> (r c t) ch h w",
    "temporal": "t ch (r h) (c w) -> (t r c) ch h w",
}


def _check_arrangement(arrangement: str) -> None:
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"unknown grid arrangement {arrangement!r}; use one of {ARRANGEMENTS}")


def cell_size(size: tuple[int, int], grid_n: int) -> tuple[int, int]:
    """Cell (height, width) for an output of ``size`` = (H*, W*): ``ceil(H*/N) x ceil(W*/N)``.

    Spec decision: when N does not divide H* the grid is built from ceil-sized cells and the assembled grid is resized
    to H* x W* (the paper resizes structured frames to the model's input size).
    """
    return math.ceil(size[0] / grid_n), math.ceil(size[1] / grid_n)


def source_index(t: int, r: int, c: int, *, grid_n: int, num_frames: int, arrangement: str) -> int:
    """0-based index into the L source frames of the frame in output frame ``t``, cell row ``r``, column ``c``."""
    _check_arrangement(arrangement)
    if arrangement == "spatial":
        return (r * grid_n + c) * num_frames + t
    return t * grid_n * grid_n + r * grid_n + c


def to_grid(frames: torch.Tensor, grid_n: int, arrangement: str = "spatial") -> torch.Tensor:
    """Tile source frames into TIME frames.

    Args:
        frames: (L, C, h, w), L = T* x N^2 frames of one cell each, in temporal order.
        grid_n: N >= 1.
        arrangement: "spatial" or "temporal".

    Returns:
        (T*, C, N h, N w).
    """
    _check_arrangement(arrangement)
    cells = grid_n * grid_n
    if frames.shape[0] % cells:
        raise ValueError(f"{frames.shape[0]} frames do not fill whole {grid_n}x{grid_n} grids")
    if grid_n == 1:
        return frames
    return rearrange(frames, _TO_GRID[arrangement], r=grid_n, c=grid_n)


def from_grid(grid: torch.Tensor, grid_n: int, arrangement: str = "spatial") -> torch.Tensor:
    """Inverse of `to_grid` (for visualisation): (T*, C, N h, N w) -> (L, C, h, w) in temporal order."""
    _check_arrangement(arrangement)
    if grid.shape[-2] % grid_n or grid.shape[-1] % grid_n:
        raise ValueError(f"grid of {tuple(grid.shape[-2:])} pixels is not divisible into {grid_n}x{grid_n} cells")
    if grid_n == 1:
        return grid
    return rearrange(grid, _FROM_GRID[arrangement], r=grid_n, c=grid_n)
