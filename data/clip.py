"""From decoded frames to the model's input clip: sampling, clip-consistent augmentation, TIME grid, normalisation.

    video (T frames) --sample_indices--> L = T* x N^2 indices --decode--> (L, H, W, 3) uint8
      --crop/flip/rotate at source resolution (same parameters for the whole clip)
      --resize every frame into one cell (ceil(H*/N) x ceil(W*/N))
      --RandAugment, random erasing (fine-tuning; same parameters for the whole clip, at cell resolution)
      --TIME grid (spatial or temporal arrangement) -> (T*, N ceil(H*/N), N ceil(W*/N), 3)
      --resize to H* x W* if N does not divide it--> (T*, H*, W*, 3) uint8          `make_frames` (data loaders)
      --normalise (on the training device)--> (3, T*, H*, W*) float                 `normalize_clip`

Without RandAugment and random erasing, `make_frames` resizes and builds the grid in one go (`_resize_into_grid`,
the same pixels). A clip that needs nothing but a crop and a flip (`draw_crop`: pretraining's multi-scale crop,
evaluation's centre crop) goes: crops copied into a grid buffer of crop-sized cells in source-frame order
(`grid_buffer`), then `finish_grid`; a decoder can do that copy as it converts each frame
(`data.decode.Video.get_crops`, used by `data.stream.decode_clips`), so the box is drawn before the frame size is
known. All randomness comes in through the ``rng`` argument; `ClipSpec` holds no state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from data import augment, sampling, time_grid, transforms

CROPS = ("multiscale", "rrc", "center", "three")
SAMPLINGS = ("segment", "stride")
DEFAULT_STRIDE = 4  # official VideoMAE frame step


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
        view: ``(k, K)``: in evaluation, temporal clip k of K per video (multi-clip testing); ignored in training.
        rand_augment: timm RandAugment string applied in training, e.g. ``rand-m7-n4-mstd0.5-inc1``; "" = off.
        erase_prob: chance of random erasing in training (one box, the same on every frame); 0 = off.
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
    view: tuple[int, int] = (0, 1)
    rand_augment: str = ""
    erase_prob: float = 0.0

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
                "stride sampling (--sampling stride) is the official VideoMAE recipe and needs --grid-n 1; "
                "TIME grids (N > 1) use segment sampling over the whole video"
            )
        if self.sampling_rate < 1:
            raise UserError(f"--sampling-rate {self.sampling_rate} is < 1; use a frame step >= 1 (VideoMAE: 4)")
        if self.crop not in CROPS:
            raise UserError(f"crop {self.crop!r} is unknown; use one of {CROPS}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise UserError(f"crop scales {self.scales} must lie in (0, 1]")
        if len(self.view) != 2 or not 0 <= self.view[0] < self.view[1]:
            raise UserError(f"evaluation view {self.view} must be (k, K) with 0 <= k < K; use e.g. --test-clips 5")
        augment.parse_rand_augment(self.rand_augment)  # a bad string raises UserError naming --rand-augment
        if not 0 <= self.erase_prob <= 1:
            raise UserError(f"--reprob {self.erase_prob} is outside [0, 1]; use e.g. 0.25 (the official fine-tuning) "
                            "or 0 (off)")

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> ClipSpec:
        """The clip a run's flags describe: any object with the clip fields (``num_frames``, ``grid_n``,
        ``input_size``, ``grid_arrangement``, ``sampling``, ``sampling_rate``; `launch.fields.ClipFields`), plus
        ``overrides``.

        ``sampling`` "auto" (or absent) is segment sampling unless ``sampling_rate`` > 0 (the older spelling of
        stride sampling); a stride without a rate takes VideoMAE's 4. Evaluation views of a training spec are
        ``dataclasses.replace(spec, train=False, crop=..., view=...)``.
        """
        sampling = getattr(cfg, "sampling", "auto")
        if sampling == "auto":
            sampling = "stride" if cfg.sampling_rate else "segment"
        base = dict(num_frames=cfg.num_frames, grid_n=cfg.grid_n, input_size=cfg.input_size,
                    arrangement=cfg.grid_arrangement, sampling=sampling,
                    sampling_rate=cfg.sampling_rate or DEFAULT_STRIDE)
        return cls(**{**base, **overrides})

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


def sample_indices(num_video_frames: int, spec: ClipSpec, rng: sampling.Random | None) -> np.ndarray:
    """Sorted source-frame indices for one clip: (L,) int64 (see `data.sampling`).

    ``rng`` is a generator, or `sampling_uniforms` drawn in advance for this clip.
    """
    if spec.sampling == "stride":
        return sampling.stride_indices(
            num_video_frames, spec.num_frames, spec.sampling_rate, train=spec.train, rng=rng, view=spec.view
        )
    return sampling.segment_indices(num_video_frames, spec.num_source_frames, train=spec.train, rng=rng, view=spec.view)


def sampling_uniforms(spec: ClipSpec, rng: np.random.Generator | None, count: int) -> np.ndarray | None:
    """The randomness of ``count`` `sample_indices` calls drawn now: (count, n) uniforms in [0, 1), row k for call k.

    None when the spec samples deterministically (evaluation), which draws nothing.
    """
    if not spec.train:
        return None
    per_call = spec.num_source_frames if spec.sampling == "segment" else 1  # stride sampling draws only its start
    return rng.random((count, per_call))


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


def make_frames(frames: np.ndarray | torch.Tensor, spec: ClipSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """Build the clip from the decoded source frames of one clip, as uint8 pixels (the data loaders' output).

    Everything a clip needs except normalisation, which `normalize_clip` does after the batch reaches its device:
    a uint8 clip is a quarter of the bytes of a float one to write, to hand from a loader worker to the trainer and
    to copy to the GPU, and normalising there costs next to nothing. Channel-last layout throughout: the resize
    writes channel-last pixels, and the TIME grid then moves whole cell rows (w x 3 bytes) instead of single bytes.
    Decoded numpy frames stay numpy up to the grid copy: a loader worker runs this with its caches cold from decoding,
    where every torch call skipped saves tens of microseconds.

    Args:
        frames: (L, H, W, 3) uint8, the frames at `sample_indices` in order.
        spec: the clip to build.
        rng: augmentation randomness (may be None when ``spec.train`` is False).

    Returns:
        (T*, H*, W*, 3) uint8; for ``crop="three"``, (3 views, T*, H*, W*, 3).
    """
    uint8 = frames.dtype == (np.uint8 if isinstance(frames, np.ndarray) else torch.uint8)
    if not uint8 or frames.ndim != 4:
        raise ValueError(f"expected (L, H, W, C) uint8 frames, got {tuple(frames.shape)} {frames.dtype}")
    expected = spec.num_frames if spec.sampling == "stride" else spec.num_source_frames
    if frames.shape[0] != expected:
        raise ValueError(f"got {frames.shape[0]} frames, the clip spec needs {expected}")
    crop = draw_crop(spec, rng)
    if crop is not None:  # the route decoders take too (`data.stream.decode_clips`), with this copy done by numpy
        top, left, height, width = box = crop.box(spec, frames.shape[1], frames.shape[2])
        grid, slots = grid_buffer(spec, box, frames.shape[3])
        src = frames.numpy() if isinstance(frames, torch.Tensor) else frames
        np.copyto(slots, src[:, top : top + height, left : left + width].reshape(slots.shape))
        return finish_grid(grid, spec, crop.flip)
    train = spec.train and rng is not None
    pixels = frames  # (L, H, W, 3), numpy or torch
    if train and spec.rotation:
        angle = float(rng.uniform(-spec.rotation, spec.rotation))
        pixels = transforms.rotate(to_frames_tensor(frames), angle).permute(0, 2, 3, 1)
    flip = train and spec.flip and rng.random() < 0.5
    boxes = _boxes(pixels.shape[1], pixels.shape[2], spec, rng if train else None)
    cell_aug = None
    if train and (spec.rand_augment or spec.erase_prob):  # drawn after the crop: turning it on keeps the crops
        cell_aug = augment.draw_clip_augment(spec.rand_augment, spec.erase_prob, frames.shape[0], spec.cell, rng,
                                             spec.mean, spec.std)
    views = []
    for top, left, height, width in boxes:
        crop = pixels[:, top : top + height, left : left + width]  # a view
        if cell_aug is None and spec.grid_n > 1:  # else: the augmentation needs the cells apart, N = 1 has no grid
            g = _resize_into_grid(crop, spec)
            if flip:
                g = _flip_cells(g, spec.grid_n)
        else:
            v = transforms.resize(to_frames_tensor(crop), spec.cell)  # (L, 3, h, w), one cell per frame
            if flip:
                v = transforms.hflip(v)
            if cell_aug is not None:
                # On the cells, not the source frames: a fraction of the pixels to process (1/N^2 of the output area
                # per frame), and the same transformation for the photometric ops and for the geometric ones, whose
                # angles, shears and translations are relative to the frame size (only the 3x3 sharpness kernel is
                # per pixel). Back to channels-last (the ops may return channel-first): the grid copy then moves
                # whole cell rows.
                v = augment.apply_clip_augment(v, cell_aug).contiguous(memory_format=torch.channels_last)
            g = _grid_channels_last(v.permute(0, 2, 3, 1), spec.grid_n, spec.num_frames, spec.arrangement)
        if tuple(g.shape[1:3]) != spec.size:  # N does not divide H* / W*: one more resize of the whole grid
            g = transforms.resize(g.permute(0, 3, 1, 2), spec.size).permute(0, 2, 3, 1)
        views.append(g)  # (T*, H*, W*, 3)
    return views[0].contiguous() if spec.crop != "three" else torch.stack(views)


def _resize_into_grid(crops: np.ndarray | torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """`transforms.resize` into the cells and `_grid_channels_last`, the same pixels for one copy less.

    The antialiased resize is separable: torch resizes every row (horizontal pass), then every column of that result
    (vertical pass), with uint8 pixels in between, and each output row or column depends only on its own input row or
    column. So the cropped frames are copied into the grid arrangement first (at their own size), the horizontal
    pass runs on all cell rows at once, seen as one image of rows w' pixels wide, and the vertical pass on the grid's
    rows of N cells side by side, seen as T* N images of h' x N w pixels: it writes the finished grid, where resizing
    first would write the cells and then copy them into the grid.

    Args:
        crops: (L, h', w', C) uint8, any strides (the frames cropped: a view).
        spec: the clip, with N > 1.

    Returns:
        (T*, N h, N w, C) uint8, contiguous: the grid of the resized cells.
    """
    return _resize_cells(_grid_channels_last(crops, spec.grid_n, spec.num_frames, spec.arrangement), spec)


def _resize_cells(grid: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Resize every cell of a contiguous (T*, N h', N w', C) uint8 grid to the spec's cell: (T*, N h, N w, C).

    The two passes of `_resize_into_grid`'s docstring; N = 1 works the same (one cell per frame).
    """
    n, t, c = spec.grid_n, spec.num_frames, grid.shape[-1]
    (h, w), src_h, src_w = spec.cell, grid.shape[1] // n, grid.shape[2] // n
    g = grid
    if src_w != w:
        rows = g.view(1, t * n * src_h * n, src_w, c).permute(0, 3, 1, 2)  # every cell row, as one image
        g = transforms.resize(rows, (rows.shape[2], w)).permute(0, 2, 3, 1).reshape(t, n * src_h, n * w, c)
    if src_h != h:
        images = g.reshape(t * n, src_h, n * w, c).permute(0, 3, 1, 2)  # one row of the grid, N cells wide
        g = transforms.resize(images, (h, n * w)).permute(0, 2, 3, 1).reshape(t, n * h, n * w, c)
    return g


def _flip_cells(grid: torch.Tensor, grid_n: int) -> torch.Tensor:
    """Mirror every cell of a (T*, N h, N w, C) grid left-right, each in its place (`transforms.hflip` on the cells)."""
    t, height, width, c = grid.shape
    n = grid_n
    return grid.view(t, n, height // n, n, width // n, c).flip(4).view(t, height, width, c)


def _grid_channels_last(
    cells: np.ndarray | torch.Tensor, grid_n: int, num_frames: int, arrangement: str
) -> torch.Tensor:
    """The TIME grid (`time_grid.source_view`) of channel-last pixels: (L, h, w, C) -> (T*, N h, N w, C) uint8.

    The innermost run of the copy is a whole cell row (w x C contiguous bytes); numpy's strided copy measured faster
    than torch's for this pattern. N = 1 is a view.
    """
    n, t = grid_n, num_frames
    _, h, w, c = cells.shape
    if n == 1:
        return cells if isinstance(cells, torch.Tensor) else torch.from_numpy(cells)
    src = cells.numpy() if isinstance(cells, torch.Tensor) else cells
    out = np.empty((t, n, h, n, w, c), dtype=src.dtype)
    dst = time_grid.source_view(out, arrangement)
    np.copyto(dst, src.reshape(dst.shape))
    return torch.from_numpy(out.reshape(t, n * h, n * w, c))


@dataclasses.dataclass(frozen=True)
class CropDraw:
    """A clip's crop and flip, drawn before its frames are decoded (`draw_crop`)."""

    flip: bool
    u: float | None  # the multi-scale crop's one uniform (`transforms.multiscale_crop_box`); None: the centre crop

    def box(self, spec: ClipSpec, height: int, width: int) -> transforms.Box:
        """The crop box in (height, width) frames."""
        if self.u is None:
            return transforms.center_crop_params(height, width, spec.size[1] / spec.size[0])
        return transforms.multiscale_crop_box(height, width, self.u, spec.scales)


def draw_crop(spec: ClipSpec, rng: np.random.Generator | None) -> CropDraw | None:
    """The randomness of a clip that needs nothing from its frames but one crop: a flip and the crop box.

    Such a clip is the crop of every frame, copied into the grid buffer (`grid_buffer`) in source-frame order, and
    `finish_grid`. The copy can happen in the decoder (`data.decode.Video.get_crops`), so the box is drawn before the
    frame size is known, as one uniform: the same draws, in the same order, as `make_frames` makes from ``rng``, which
    takes this route itself. None for the clips that need more (`make_frames`' general path): a rotation, RandAugment
    or random erasing, three crops, or a random resized crop in training.
    """
    train = spec.train and rng is not None
    needs_more = spec.rotation or spec.rand_augment or spec.erase_prob or spec.crop == "rrc"
    if spec.crop == "three" or (train and needs_more):
        return None
    flip = bool(train and spec.flip and rng.random() < 0.5)
    return CropDraw(flip, float(rng.random()) if train and spec.crop == "multiscale" else None)


def grid_buffer(spec: ClipSpec, box: transforms.Box, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An empty grid of crop-sized cells: (T*, N, h', N, w', C) uint8, and its `time_grid.source_view` to fill."""
    n, (_, _, h, w) = spec.grid_n, box
    grid = np.empty((spec.num_frames, n, h, n, w, channels), dtype=np.uint8)
    return grid, time_grid.source_view(grid, spec.arrangement)


def finish_grid(grid: np.ndarray, spec: ClipSpec, flip: bool) -> torch.Tensor:
    """A filled `grid_buffer` -> the clip, (T*, H*, W*, 3) uint8 contiguous: every cell resized (`_resize_cells`),
    mirrored if ``flip``, and the whole grid resized when N does not divide H* or W*."""
    t, n, h, _, w, c = grid.shape
    g = _resize_cells(torch.from_numpy(grid.reshape(t, n * h, n * w, c)), spec)
    if flip:
        g = _flip_cells(g, n)
    if tuple(g.shape[1:3]) != spec.size:
        g = transforms.resize(g.permute(0, 3, 1, 2), spec.size).permute(0, 2, 3, 1)
    return g.contiguous()


def normalize_clip(frames: torch.Tensor, mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 clips from `make_frames` -> the model's normalised input, on whatever device ``frames`` is on.

    Args:
        frames: (..., T, H, W, 3) uint8.
        mean, std: per-channel statistics of pixels scaled to [0, 1].
        dtype: output dtype.

    Returns:
        (..., 3, T, H, W) ``(x / 255 - mean) / std``, contiguous.
    """
    if frames.dtype != torch.uint8 or frames.ndim < 4 or frames.shape[-1] != len(mean):
        raise ValueError(f"expected (..., T, H, W, {len(mean)}) uint8 clips, got {tuple(frames.shape)} {frames.dtype}")
    # Move the channel axis in uint8 (a quarter of the bytes of a float copy), then one multiply-add per element.
    x = frames.movedim(-1, -4).contiguous().to(dtype)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=dtype, device=x.device).view(-1, 1, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], dtype=dtype, device=x.device)
    return x.mul_(scale).add_(shift.view(-1, 1, 1, 1))


def as_model_input(clips: torch.Tensor, mean=transforms.IMAGENET_MEAN, std=transforms.IMAGENET_STD,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A batch from either loader output -> (B, 3, T, H, W) normalised: uint8 clips are normalised, float passes."""
    if clips.dtype == torch.uint8:
        return normalize_clip(clips, mean, std, dtype)
    return clips.to(dtype)


def make_clip(frames: np.ndarray | torch.Tensor, spec: ClipSpec, rng: np.random.Generator | None) -> torch.Tensor:
    """`make_frames` + `normalize_clip`: the normalised float clip.

    Returns:
        (3, T*, H*, W*) float32 normalised; for ``crop="three"``, (3 views, 3, T*, H*, W*).
    """
    return normalize_clip(make_frames(frames, spec, rng), spec.mean, spec.std)


def load_clip(video, spec: ClipSpec, rng: np.random.Generator | None, *, uint8: bool = False) -> torch.Tensor:
    """Sample, decode (one batch call) and build one clip from an opened `data.decode.Video`.

    Returns `make_clip`'s normalised float clip, or `make_frames`' uint8 clip when ``uint8``.
    """
    idx = sample_indices(video.num_frames, spec, rng)
    frames = video.get_batch(idx)
    return make_frames(frames, spec, rng) if uint8 else make_clip(frames, spec, rng)


def clip_to_uint8_frames(clip: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """(3, T*, H*, W*) normalised clip -> (T*, H*, W*, 3) uint8 RGB, for previews and reconstructions."""
    frames = transforms.denormalize(clip.permute(1, 0, 2, 3), spec.mean, spec.std)  # (T*, 3, H*, W*)
    return frames.permute(0, 2, 3, 1).contiguous()
