"""The TIME layer's grid arrangements as pure tensor functions (TIME paper, Sec. 3.1, Eqs. 1-5).

The L = T* x N^2 source frames (already resized to one cell) are tiled into T* frames of N x N cells:

- spatial arrangement (Eqs. 1-2, the paper's default): the L frames form N^2 temporal blocks of T* consecutive frames;
  output frame t shows, in cell (r, c), frame ``(r N + c) T* + t`` of the sequence (0-based). Each cell plays one part
  of the video; all cells of one output frame are at the same relative time within their block.
- temporal arrangement (Eqs. 3-5): the L frames form T* blocks of N^2 consecutive frames; output frame t is block t in
  row-major order: cell (r, c) holds frame ``t N^2 + r N + c``.

N = 1 is the identity (ordinary frame sampling). No file access and no randomness here.

One implementation serves the tests and the loaders: `source_view` says where each source frame sits in a grid
buffer, and both `to_grid` (tensors, for tests and tools) and the loaders' copy into a grid buffer
(`data.clip.grid_buffer`, `data.decode.Video.get_crops`) fill that view.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ARRANGEMENTS = ("spatial", "temporal")

# A grid buffer is held as (T*, N, h, N, w, ...): output time, cell row, pixel row, cell column, pixel column, then
# any trailing axes (channels). Under this order of its first five axes, its leading three read in C order count the
# L source frames: spatial, frame (r N + c) T* + t is axes (r, c, t); temporal, frame t N^2 + r N + c is (t, r, c).
_SOURCE_AXES = {
    "spatial": (1, 3, 0, 2, 4),
    "temporal": (0, 1, 3, 2, 4),
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


def source_view(grid, arrangement: str):
    """A (T*, N, h, N, w, ...) grid buffer (numpy array or tensor) seen in source-frame order: a view of shape
    (N, N, T*, h, w, ...) (spatial) or (T*, N, N, h, w, ...) (temporal) whose leading three axes, read in C order,
    are the L = T* N^2 source frames. Writing the frames into it builds the grid (Eqs. 1-5); reading it inverts."""
    _check_arrangement(arrangement)
    axes = (*_SOURCE_AXES[arrangement], *range(5, grid.ndim))
    return grid.transpose(axes) if isinstance(grid, np.ndarray) else grid.permute(axes)


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
    length, channels, h, w = frames.shape
    out = frames.new_empty((length // cells, grid_n, h, grid_n, w, channels))  # channel-last grid buffer
    view = source_view(out, arrangement)
    view.copy_(frames.permute(0, 2, 3, 1).reshape(view.shape))
    return out.view(length // cells, grid_n * h, grid_n * w, channels).permute(0, 3, 1, 2).contiguous()


def from_grid(grid: torch.Tensor, grid_n: int, arrangement: str = "spatial") -> torch.Tensor:
    """Inverse of `to_grid` (for visualisation): (T*, C, N h, N w) -> (L, C, h, w) in temporal order."""
    _check_arrangement(arrangement)
    if grid.shape[-2] % grid_n or grid.shape[-1] % grid_n:
        raise ValueError(f"grid of {tuple(grid.shape[-2:])} pixels is not divisible into {grid_n}x{grid_n} cells")
    if grid_n == 1:
        return grid
    t, channels, height, width = grid.shape
    cells = grid.permute(0, 2, 3, 1).reshape(t, grid_n, height // grid_n, grid_n, width // grid_n, channels)
    frames = source_view(cells, arrangement).reshape(t * grid_n * grid_n, height // grid_n, width // grid_n, channels)
    return frames.permute(0, 3, 1, 2).contiguous()
