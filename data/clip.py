"""From decoded frames to the model's input clip: sampling, clip-consistent augmentation, TIME grid, normalisation.

    video (T frames) --sample_indices--> L = T* x N^2 indices --decode--> (L, H, W, 3) uint8
      --crop/flip/rotate at source resolution (same parameters for the whole clip)
      --resize every frame into one cell (ceil(H*/N) x ceil(W*/N))
      --TIME grid (spatial or temporal arrangement) -> (T*, 3, N ceil(H*/N), N ceil(W*/N))
      --resize to H* x W* if N does not divide it --normalise--> (3, T*, H*, W*) float32

All randomness comes in through the ``rng`` argument; `ClipSpec` holds no state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from data import sampling, time_grid, transforms
from data.errors import UserError

CROPS = ("multiscale", "rrc", "center", "three")
SAMPLINGS = ("segment", "stride")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What clip to build. Validated on construction (`UserError` names the bad field and the fix).

    Attributes:
        num_frames: T*, frames per output clip.
        grid_n: N, TIME grid side; 1 = ordinary sampling without TIME.
        input_size: H* (= W*) or (H*, W*), output resolution.
        arrangement: "spatial" (TIME default) or "temporal".
        sampling: "segment" (TIME/TSN over the whole video) or "stride" (official VideoMAE; N = 1 only).
        sampling_rate: frame step for "stride" sampling.
        train: random sampling offsets and augmentation (True) or deterministic evaluation (False).
        crop: "multiscale" (VideoMAE pretraining), "rrc" (random resized crop), "center" or "three" (evaluation).
        scales: multi-scale crop scales, relative to the short side.
        rrc_scale: area range of the random resized crop.
        flip: random horizontal flip with p = 0.5 (off by default: some datasets have left/right classes).
        rotation: maximum random rotation in degrees (0 = off).
        mean, std: normalisation statistics (ImageNet by default; also used for depth, see the TIME spec).
    """

    num_frames: int = 16
    grid_n: int = 1
    input_size: int | tuple[int, int] = 224
    arrangement: str = "spatial"
    sampling: str = "segment"
    sampling_rate: int = 4
    train: bool = True
    crop: str = "multiscale"
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = False
    rotation: float = 0.0
    mean: tuple[float, float, float] = transforms.IMAGENET_MEAN
    std: tuple[float, float, float] = transforms.IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.input_size, Sequence):
            object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.num_frames < 1:
            raise UserError(f"--num-frames {self.num_frames} is < 1; give the number of output frames, e.g. 16")
        if self.grid_n < 1:
            raise UserError(f"--grid-n {self.grid_n} is < 1; use N >= 1 (1 = no TIME grid, 2 = the paper's RGB choice)")
        if min(self.size) < self.grid_n:
            raise UserError(
                f"--input-size {self.input_size} is smaller than --grid-n {self.grid_n}; every grid cell needs at "
                "least one pixel: raise the input size or lower N"
            )
        if self.arrangement not in time_grid.ARRANGEMENTS:
            raise UserError(f"--grid-arrangement {self.arrangement!r} is unknown; use one of {time_grid.ARRANGEMENTS}")
        if self.sampling not in SAMPLINGS:
            raise UserError(f"sampling {self.sampling!r} is unknown; use one of {SAMPLINGS}")
        if self.sampling == "stride" and self.grid_n != 1:
            raise UserError(
                "stride sampling (--sampling-rate) is the official VideoMAE recipe and needs --grid-n 1; "
                "TIME grids (N > 1) use segment sampling over the whole video"
            )
        if self.sampling_rate < 1:
            raise UserError(f"--sampling-rate {self.sampling_rate} is < 1; use a frame step >= 1 (VideoMAE: 4)")
        if self.crop not in CROPS:
            raise UserError(f"crop {self.crop!r} is unknown; use one of {CROPS}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise UserError(f"crop scales {self.scales} must lie in (0, 1]")

    @property
    def size(self) -> tuple[int, int]:
        """(H*, W*)."""
        s = self.input_size
        return (s, s) if isinstance(s, int) else s

    @property
    def num_source_frames(self) -> int:
        """L = T* x N^2 for segment sampling; T* for stride sampling (N = 1)."""
        return self.num_frames * self.grid_n**2

    @property
    def cell(self) -> tuple[int, int]:
        """(h, w) of one grid cell."""
        return time_grid.cell_size(self.size, self.grid_n)

    def decode_short_side(self) -> int:
        """The short side worth decoding at: enough that the smallest training crop still covers one cell.

        Decoding bigger only costs time, since every frame ends up as one cell (spec: decode at about the cell size).
        """
        cell = max(self.cell)
        if not self.train or self.crop in ("center", "three"):
            need = cell
        elif self.crop == "multiscale":
            need = cell / min(self.scales)
        else:  # rrc: a crop of area fraction a has sides ~sqrt(a); decode for crops down to a quarter of the area
            need = 2 * cell
        return 2 * math.ceil(need / 2)


def sample_indices(num_video_frames: int, spec: ClipSpec, rng: np.random.Generator | None) -> np.ndarray:
    """Sorted source-frame indices for one clip: (L,) int64 (see `data.sampling`)."""
    if spec.sampling == "stride":
        return sampling.stride_indices(
            num_video_frames, spec.num_frames, spec.sampling_rate, train=spec.train, rng=rng
        )
    return sampling.segment_indices(num_video_frames, spec.num_source_frames, train=spec.train, rng=rng)


def _boxes(height: int, width: int, spec: ClipSpec, rng: np.random.Generator | None) -> list[transforms.Box]:
    aspect = spec.size[1] / spec.size[0]
    if spec.crop == "center" or (spec.crop in ("multiscale", "rrc") and not spec.train):
        return [transforms.center_crop_params(height, width, aspect)]
    if spec.crop == "three":
        return transforms.three_crop_params(height, width, aspect)
    if spec.crop == "multiscale":
        return [transforms.multiscale_crop_params(height, width, rng, spec.scales)]
    return [transforms.random_resized_crop_params(height, width, rng, spec.rrc_scale)]


def to_frames_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(L, H, W, C) uint8 array -> (L, C, H, W) uint8 tensor (a channels-last view, no copy)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"expected (L, H, W, C) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    return frames.permute(0, 3, 1, 2)


def make_clip(frames: np.ndarray | torch.Tensor, spec: ClipSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """Build the model input from the decoded source frames of one clip.

    Args:
        frames: (L, H, W, 3) uint8, the frames at `sample_indices` in order.
        spec: the clip to build.
        rng: augmentation randomness (may be None when ``spec.train`` is False).

    Returns:
        (3, T*, H*, W*) float32 normalised; for ``crop="three"``, (3 views, 3, T*, H*, W*).
    """
    x = to_frames_tensor(frames)
    expected = spec.num_frames if spec.sampling == "stride" else spec.num_source_frames
    if x.shape[0] != expected:
        raise ValueError(f"got {x.shape[0]} frames, the clip spec needs {expected}")
    train = spec.train and rng is not None
    if train and spec.rotation:
        x = transforms.rotate(x, float(rng.uniform(-spec.rotation, spec.rotation)))
    flip = train and spec.flip and rng.random() < 0.5
    views = []
    for box in _boxes(x.shape[-2], x.shape[-1], spec, rng if train else None):
        v = transforms.resize(transforms.crop(x, box), spec.cell)  # (L, 3, h, w), one cell per frame
        if flip:
            v = transforms.hflip(v)
        if spec.sampling == "segment" and tuple(n * spec.grid_n for n in spec.cell) == spec.size:
            g = _grid_channels_first(v, spec.grid_n, spec.num_frames, spec.arrangement)  # (3, T*, H*, W*) uint8
            views.append(transforms.normalize(g.transpose(0, 1), spec.mean, spec.std).transpose(0, 1))
            continue
        v = time_grid.to_grid(v, spec.grid_n, spec.arrangement)  # (T*, 3, N h, N w)
        v = transforms.resize(v, spec.size)  # only when N does not divide H* / W*
        views.append(transforms.normalize(v, spec.mean, spec.std).permute(1, 0, 2, 3))  # (3, T*, H*, W*)
    return views[0].contiguous() if spec.crop != "three" else torch.stack(views).contiguous()


def _grid_channels_first(cells: torch.Tensor, grid_n: int, num_frames: int, arrangement: str) -> torch.Tensor:
    """`time_grid.to_grid` written straight into channel-first order: (L, C, h, w) -> (C, T*, N h, N w) uint8.

    The clip leaves as (C, T*, H*, W*), so the channel-last pixels of the resized cells have to be split into planes
    once; doing it in this one uint8 copy, instead of a float copy after normalising, moves a quarter of the bytes.
    The copy goes through numpy, whose strided copy measured 1.7x faster than torch's for this pattern.
    """
    n, t = grid_n, num_frames
    _, c, h, w = cells.shape
    out = torch.empty((c, t, n, h, n, w), dtype=cells.dtype)
    if arrangement == "spatial":  # source frame (r N + c) T* + t, as time_grid._TO_GRID["spatial"]
        src, dst = cells.reshape(n, n, t, c, h, w), out.permute(2, 4, 1, 0, 3, 5)
    else:  # temporal: source frame t N^2 + r N + c
        src, dst = cells.reshape(t, n, n, c, h, w), out.permute(1, 2, 4, 0, 3, 5)
    np.copyto(dst.numpy(), src.numpy())
    return out.view(c, t, n * h, n * w)


def load_clip(video, spec: ClipSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """Sample, decode (one batch call) and build one clip from an opened `data.decode.Video`."""
    idx = sample_indices(video.num_frames, spec, rng)
    return make_clip(video.get_batch(idx), spec, rng)


def clip_to_uint8_frames(clip: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """(3, T*, H*, W*) normalised clip -> (T*, H*, W*, 3) uint8 RGB, for previews and reconstructions."""
    frames = transforms.denormalize(clip.permute(1, 0, 2, 3), spec.mean, spec.std)  # (T*, 3, H*, W*)
    return frames.permute(0, 2, 3, 1).contiguous()
