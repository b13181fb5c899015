"""Clip-consistent transforms on whole uint8 tensors.

Every function takes a clip of frames ``(L, C, H, W)`` uint8 and applies the *same* parameters to every frame
(TIME paper: augmentations act on the original frames identically across the clip, before the frames are resized
into grid cells). Parameters are drawn from an explicit ``numpy.random.Generator`` by the ``*_params`` functions and
applied by pure functions, so a test can fix them.

Speed: frames decoded as (L, H, W, 3) numpy arrays become (L, 3, H, W) tensors by ``permute`` — a channels-last view,
no copy — and crops are slices. The pixel work is one uint8 copy of the crops into the TIME grid's arrangement (done
by the decoder itself on the training path: `data.decode.Video.get_crops`), one antialiased resize (torch's native
uint8 kernel, fastest on channels-last, whose two separable passes `data.clip` runs on the grid) and the
normalisation, one multiply-add per channel from uint8 to float32. No per-frame PIL.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as tvf

from common.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401 - re-exported: the clip code's defaults

# A crop box: (top, left, height, width) in source pixels.
Box = tuple[int, int, int, int]


# The 13 crop corners of the multi-scale crop, in steps of a quarter of the free room: (row step, column step).
_MULTISCALE_OFFSETS = (
    (0, 0), (0, 4), (4, 0), (4, 4), (2, 2),  # corners and centre
    (2, 0), (2, 4), (4, 2), (0, 2),  # edge midpoints
    (1, 1), (1, 3), (3, 1), (3, 3),  # quarter points
)


def multiscale_crop_params(
    height: int, width: int, rng: np.random.Generator, scales=(1.0, 0.875, 0.75, 0.66), max_distort: int = 1
) -> Box:
    """VideoMAE's multi-scale crop (GroupMultiScaleCrop with fix_crop and more_fix_crop).

    Crop sides are ``scale x short side`` for each scale; height and width scales are drawn as a pair whose positions
    in ``scales`` differ by at most ``max_distort``; the crop's corner is one of 13 fixed positions (corners, centre,
    edge midpoints and quarter points), as in the official loader.
    """
    return multiscale_crop_box(height, width, rng.random(), scales, max_distort)


def multiscale_crop_box(
    height: int, width: int, u: float, scales=(1.0, 0.875, 0.75, 0.66), max_distort: int = 1
) -> Box:
    """`multiscale_crop_params` given its one uniform ``u`` in [0, 1) (drawn before the frame size is known)."""
    pairs = _multiscale_pairs(min(height, width), tuple(scales), max_distort)
    # One draw picks the (size pair, corner) combination: the same distribution as two draws. ``floor(u * n)`` of one
    # uniform rather than ``rng.integers(n)``, whose argument handling cost ~20-40 us per clip in a loader worker
    # (caches cold after a decode); with 53-bit uniforms the n outcomes are equally likely to within 2^-45 here.
    count = len(pairs) * len(_MULTISCALE_OFFSETS)
    pair, corner = divmod(min(int(u * count), count - 1), len(_MULTISCALE_OFFSETS))
    crop_h, crop_w = pairs[pair]
    oh, ow = _MULTISCALE_OFFSETS[corner]
    return oh * ((height - crop_h) // 4), ow * ((width - crop_w) // 4), crop_h, crop_w


@functools.lru_cache(maxsize=256)
def _multiscale_pairs(base: int, scales: tuple[float, ...], max_distort: int) -> tuple[tuple[int, int], ...]:
    """The (crop height, crop width) pairs of `multiscale_crop_params`; memoised, as videos share frame sizes."""
    sizes = [int(base * s) for s in scales]
    return tuple((h, w) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_distort)


def random_resized_crop_params(
    height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> Box:
    """Inception-style random resized crop: area fraction in ``scale``, log-uniform aspect ratio in ``ratio``.

    Falls back to the largest centred crop of an in-range aspect ratio after 10 failed draws, as torchvision does.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_params(height: int, width: int, aspect: float = 1.0) -> Box:
    """The largest centred crop of ``aspect`` = width / height (evaluation; same as short-side resize + centre crop)."""
    h, w = (height, min(width, round(height * aspect))) if width / height >= aspect else (round(width / aspect), width)
    return (height - h) // 2, (width - w) // 2, h, w


def three_crop_params(height: int, width: int, aspect: float = 1.0) -> list[Box]:
    """Three crops of ``aspect`` along the long side (start, centre, end): VideoMAE's multi-view test crops."""
    top, left, h, w = center_crop_params(height, width, aspect)
    if width - w >= height - h:
        return [(top, x, h, w) for x in (0, left, width - w)]
    return [(y, left, h, w) for y in (0, top, height - h)]


def crop(frames: torch.Tensor, box: Box) -> torch.Tensor:
    """(L, C, H, W) -> (L, C, h, w); a view."""
    top, left, h, w = box
    return frames[..., top : top + h, left : left + w]


def resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of every frame: (L, C, H, W) uint8 -> (L, C, *size) uint8.

    Batches of CPU uint8 or float frames go straight to ``interpolate``, the kernel torchvision's ``resize`` ends in
    (same pixels): its layers of argument handling are a noticeable share of a loader worker's time per clip, where the
    caches are cold after each decode. Other inputs take torchvision's path.
    """
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    native = frames.is_floating_point() or (frames.dtype == torch.uint8 and frames.device.type == "cpu")
    if frames.ndim == 4 and native:
        return F.interpolate(frames, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return tvf.resize(frames, list(size), antialias=True)


def short_side_resize(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize so that the shorter side is ``short_side``, keeping the aspect ratio."""
    h, w = frames.shape[-2:]
    scale = short_side / min(h, w)
    return resize(frames, (max(1, round(h * scale)), max(1, round(w * scale))))


def hflip(frames: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right."""
    return frames.flip(-1)


def rotate(frames: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every frame by ``degrees`` (counter-clockwise) about its centre; corners fill with 0."""
    if degrees == 0:
        return frames
    return tvf.rotate(frames, degrees, interpolation=tvf.InterpolationMode.BILINEAR)


def normalize(frames: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, in one pass over the pixels.

    Computed as ``x * (1 / (255 std)) + (-mean / std)``, one fused multiply-add per channel that reads uint8 and
    writes float32 (the float output is most of the memory traffic of building a clip). The output keeps the input's
    memory layout, so a permuted view of channel-first data gives channel-first floats without a further copy.
    """
    if frames.shape[-3] != len(mean) or len(mean) != len(std):
        raise ValueError(f"{len(mean)} means / {len(std)} stds for frames of {frames.shape[-3]} channels")
    out = torch.empty_like(frames, dtype=torch.float32)
    for c, (m, s) in enumerate(zip(mean, std, strict=True)):
        bias = torch.tensor(-m / s, dtype=torch.float32)
        torch.add(bias, frames[..., c, :, :], alpha=1.0 / (255.0 * s), out=out[..., c, :, :])
    return out


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Inverse of `normalize`: float (..., C, H, W) -> uint8 (rounded, clamped)."""
    shape = (-1, 1, 1)
    m = torch.tensor(mean, dtype=x.dtype).view(shape)
    s = torch.tensor(std, dtype=x.dtype).view(shape)
    return (x * s + m).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
