"""Clip-consistent RandAugment and random erasing for fine-tuning, on whole uint8 clips.

The official VideoMAE fine-tuning recipe uses timm's RandAugment (``rand-m7-n4-mstd0.5-inc1``) and random erasing
(probability 0.25, "pixel" mode). The official loader applies one RandAugment draw to the whole list of frames and
erases the same box of every frame ("cube" mode); this module does the same on a ``(L, 3, H, W)`` uint8 tensor:

    parse_rand_augment("rand-m7-n4-mstd0.5-inc1") -> RandAugmentConfig
    draw_clip_augment(config, erase_prob, L, (H, W), rng, mean, std) -> ClipAugment    # all randomness, plain data
    apply_clip_augment(frames, augment) -> frames                                      # pure

Every op runs with the same parameters on every frame. The ops that depend on the image (AutoContrast, Equalize,
Contrast) use each frame's own statistics, as timm's PIL ops do when the official loader maps them over the frames,
so applying an op to the clip equals applying it to each frame separately (tested).

Magnitude -> argument mappings follow timm's ``auto_augment.py`` (level = magnitude / 10):

    Rotate             +-30 level degrees               ShearX / ShearY            +-0.3 level (x += f y / y += f x)
    TranslateXRel / Y  +-0.45 level of the width/height SolarizeAdd               +min(128, int(110 level)) below 128
    PosterizeIncreasing  keep 4 - int(4 level) bits     SolarizeIncreasing         invert >= 256 - int(256 level)
    Color / Contrast / Brightness / SharpnessIncreasing  factor max(0.1, 1 +- 0.9 level)
    AutoContrast, Equalize, Invert                      no argument

``inc0`` selects timm's original set instead (Posterize ``int(4 level)`` bits, Solarize at ``int(256 level)``,
enhancement factor ``1.8 level + 0.1``). Geometric ops use PIL's affine matrices as timm does, fill with gray 128 and
interpolate bilinearly (timm picks bilinear or bicubic at random; VideoMAE's loader asks for bicubic).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

from common.errors import UserError
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, Box

OFFICIAL = "rand-m7-n4-mstd0.5-inc1"
FILL = 128  # timm's gray fill of the geometric ops
LEVEL_DENOM = 10.0  # magnitudes are out of 10


# ---------------------------------------------------------------------------------------------------------------------
# Config string


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """A parsed timm RandAugment string; defaults are timm's for an absent section.

    Attributes:
        magnitude: ``m``, op strength out of 10.
        num_ops: ``n``, ops drawn per clip (uniformly, with replacement).
        prob: ``p``, chance that each drawn op is applied.
        magnitude_std: ``mstd``, std of the gaussian noise on the magnitude per op; ``inf`` (``mstd`` > 100 in the
            string) = uniform in [0, m].
        magnitude_max: ``mmax``, upper clamp of the noisy magnitude.
        increasing: ``inc1``, the op variants whose strength increases with the magnitude.
    """

    magnitude: float = 10.0
    num_ops: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    increasing: bool = False

    @property
    def op_names(self) -> tuple[str, ...]:
        return INCREASING_OPS if self.increasing else ORIGINAL_OPS


_SECTION = re.compile(r"([a-z]+)(\d+(?:\.\d*)?)")


@functools.lru_cache(maxsize=64)
def parse_rand_augment(text: str) -> RandAugmentConfig | None:
    """Parse ``rand-m7-n4-mstd0.5-inc1`` (sections after ``rand`` in any order: m, n, p, mstd, mmax, inc).

    Returns:
        The config, or None for "" / "none" (RandAugment off).

    Raises:
        UserError: a malformed string, an unknown or repeated section, or a value out of range.
    """
    text = text.strip()
    if text.lower() in ("", "none"):
        return None

    def bad(problem: str) -> UserError:
        return UserError(f"--rand-augment {text!r}: {problem}; use e.g. {OFFICIAL} (magnitude 7 of 10, 4 ops per "
                         "clip, magnitude std 0.5, increasing ops) or none")

    head, *sections = text.split("-")
    if head != "rand":
        raise bad("it must start with 'rand-'")
    values: dict[str, float] = {}
    for section in sections:
        match = _SECTION.fullmatch(section)
        if match is None:
            raise bad(f"cannot read the section {section!r} (a key m, n, p, mstd, mmax or inc, then a number)")
        key, value = match.group(1), float(match.group(2))
        if key not in ("m", "n", "p", "mstd", "mmax", "inc"):
            raise bad(f"unknown section {section!r} (transform sets 't...' are not supported)")
        if key in values:
            raise bad(f"section {key!r} given twice")
        values[key] = value
    num_ops = values.get("n", 2)
    if num_ops != int(num_ops) or num_ops < 1:
        raise bad("n (ops per clip) must be a whole number >= 1")
    if not 0 <= values.get("p", 0.5) <= 1:
        raise bad("p (chance of each op) must lie in [0, 1]")
    if values.get("inc", 0) not in (0, 1):
        raise bad("inc must be 0 or 1")
    if values.get("mmax", 1) <= 0:
        raise bad("mmax must be > 0")
    mstd = values.get("mstd", 0.0)
    return RandAugmentConfig(
        magnitude=values.get("m", 10.0),
        num_ops=int(num_ops),
        prob=values.get("p", 0.5),
        magnitude_std=math.inf if mstd > 100 else mstd,  # timm: mstd > 100 means uniform sampling
        magnitude_max=values.get("mmax", LEVEL_DENOM),
        increasing=bool(values.get("inc", 0)),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Ops: pure functions of (frames (L, 3, H, W) uint8, argument)


def _pil_affine(x: torch.Tensor, matrix: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, matrix)`` with bilinear sampling and gray fill, on every frame at once.

    ``matrix`` (a, b, c, d, e, f) maps an output point (x, y) to the input point (a x + b y + c, d x + e y + f), in
    PIL's coordinates (origin at the top-left corner, pixel centres at +0.5), so timm's matrices carry over as they are.
    One sampling grid serves all frames and channels (folded into one batch entry, faster than torchvision's
    per-frame affine); sampling ``x - 128`` with zero padding and adding 128 back blends the border with the gray fill.
    """
    a, b, c, d, e, f = matrix
    length, channels, height, width = x.shape
    gy, gx = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                            torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the outer edges of the border pixels.
    grid = torch.stack(((a * gx + b * gy + c) * (2 / width) - 1, (d * gx + e * gy + f) * (2 / height) - 1), dim=-1)
    shifted = x.reshape(1, length * channels, height, width).to(torch.float32).sub_(FILL)
    out = torch.nn.functional.grid_sample(shifted, grid[None].to(x.device), mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
    return out.add_(FILL).round_().clamp_(0, 255).to(torch.uint8).view(length, channels, height, width)


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counter-clockwise about the frame centre, as PIL's ``Image.rotate``."""
    if not degrees:
        return x
    height, width = x.shape[-2:]
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = width / 2, height / 2
    return _pil_affine(x, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy))


def _shear(x: torch.Tensor, fx: float, fy: float) -> torch.Tensor:
    """timm's ShearX (x + f y) / ShearY (y + f x), about the top-left corner."""
    return _pil_affine(x, (1.0, fx, 0.0, fy, 1.0, 0.0)) if fx or fy else x


def _translate_rel(x: torch.Tensor, fx: float, fy: float) -> torch.Tensor:
    """timm's TranslateXRel / TranslateYRel: the output samples the input ``f x size`` pixels further on."""
    height, width = x.shape[-2:]
    return _pil_affine(x, (1.0, 0.0, fx * width, 0.0, 1.0, fy * height)) if fx or fy else x


@functools.lru_cache(maxsize=512)
def _table(kind: str, value: int) -> np.ndarray:
    i = np.arange(256)
    if kind == "solarize":  # pixels >= value are inverted
        return np.where(i >= value, 255 - i, i).astype(np.uint8)
    return np.where(i < 128, np.minimum(255, i + value), i).astype(np.uint8)  # solarize_add


def _lookup(x: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    # A 256-entry table through numpy: several times faster than torch.where on uint8 tensors on CPU.
    if x.device.type != "cpu":
        return torch.from_numpy(table).to(x.device)[x.long()]
    return torch.from_numpy(np.take(table, x.numpy()))


def _posterize(x: torch.Tensor, bits: float) -> torch.Tensor:
    return x if bits >= 8 else tvf.posterize(x, int(bits))


def _solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return x if threshold >= 256 else _lookup(x, _table("solarize", int(threshold)))


def _solarize_add(x: torch.Tensor, add: float) -> torch.Tensor:
    return _lookup(x, _table("solarize_add", int(add))) if add else x


def _autocontrast(x: torch.Tensor, _: float) -> torch.Tensor:
    return tvf.autocontrast(x.contiguous())  # its per-channel min / max are ~5x slower on channels-last frames


def _sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    # Its 3x3 depthwise convolution is ~10x faster on channels-last frames.
    return tvf.adjust_sharpness(x.contiguous(memory_format=torch.channels_last), factor) if factor != 1.0 else x


def _enhance(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Callable[[torch.Tensor, float], torch.Tensor]:
    return lambda x, factor: x if factor == 1.0 else fn(x, factor)


class _OpDef(NamedTuple):
    apply: Callable[[torch.Tensor, float], torch.Tensor]
    level_to_arg: Callable[[float], float]  # level = magnitude / 10 -> the op's argument (before the sign)
    signed: bool  # the argument's sign is drawn at random


def _enhance_increasing(level: float) -> float:
    return 0.9 * level  # factor 1 +- this, at least 0.1 (applied with the sign in `draw_rand_augment`)


_OPS: dict[str, _OpDef] = {
    "AutoContrast": _OpDef(_autocontrast, lambda level: 0.0, False),
    "Equalize": _OpDef(lambda x, _: tvf.equalize(x), lambda level: 0.0, False),
    "Invert": _OpDef(lambda x, _: tvf.invert(x), lambda level: 0.0, False),
    "Rotate": _OpDef(_rotate, lambda level: 30.0 * level, True),
    "PosterizeIncreasing": _OpDef(_posterize, lambda level: max(0, 4 - int(4 * level)), False),
    "Posterize": _OpDef(_posterize, lambda level: min(8, int(4 * level)), False),
    "SolarizeIncreasing": _OpDef(_solarize, lambda level: 256 - min(256, int(256 * level)), False),
    "Solarize": _OpDef(_solarize, lambda level: min(256, int(256 * level)), False),
    "SolarizeAdd": _OpDef(_solarize_add, lambda level: min(128, int(110 * level)), False),
    "ColorIncreasing": _OpDef(_enhance(tvf.adjust_saturation), _enhance_increasing, True),
    "ContrastIncreasing": _OpDef(_enhance(tvf.adjust_contrast), _enhance_increasing, True),
    "BrightnessIncreasing": _OpDef(_enhance(tvf.adjust_brightness), _enhance_increasing, True),
    "SharpnessIncreasing": _OpDef(_sharpness, _enhance_increasing, True),
    "Color": _OpDef(_enhance(tvf.adjust_saturation), lambda level: 1.8 * level + 0.1, False),
    "Contrast": _OpDef(_enhance(tvf.adjust_contrast), lambda level: 1.8 * level + 0.1, False),
    "Brightness": _OpDef(_enhance(tvf.adjust_brightness), lambda level: 1.8 * level + 0.1, False),
    "Sharpness": _OpDef(_sharpness, lambda level: 1.8 * level + 0.1, False),
    "ShearX": _OpDef(lambda x, f: _shear(x, f, 0.0), lambda level: 0.3 * level, True),
    "ShearY": _OpDef(lambda x, f: _shear(x, 0.0, f), lambda level: 0.3 * level, True),
    "TranslateXRel": _OpDef(lambda x, f: _translate_rel(x, f, 0.0), lambda level: 0.45 * level, True),
    "TranslateYRel": _OpDef(lambda x, f: _translate_rel(x, 0.0, f), lambda level: 0.45 * level, True),
}

# timm's _RAND_INCREASING_TRANSFORMS and _RAND_TRANSFORMS, in timm's order (the index drawn picks from this order).
INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                  "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
ORIGINAL_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


class Op(NamedTuple):
    """One drawn op: its timm name and its argument (degrees, bits, threshold, addend, factor or fraction)."""

    name: str
    arg: float


def op_arg(name: str, magnitude: float, negate: bool = False) -> float:
    """The argument of op ``name`` at ``magnitude`` (out of 10), with the sign of the signed ops flipped by ``negate``.

    The increasing enhancement ops' argument is the factor ``max(0.1, 1 +- 0.9 level)``.
    """
    op = _OPS[name]
    value = op.level_to_arg(magnitude / LEVEL_DENOM)
    if op.signed and negate:
        value = -value
    if op.level_to_arg is _enhance_increasing:
        value = max(0.1, 1.0 + value)
    return float(value)


def apply_op(frames: torch.Tensor, op: Op) -> torch.Tensor:
    """Apply one op to every frame: (L, 3, H, W) uint8 -> (L, 3, H, W) uint8, a new tensor or ``frames`` itself."""
    return _OPS[op.name].apply(frames, op.arg)


def draw_rand_augment(config: RandAugmentConfig, rng: np.random.Generator) -> tuple[Op, ...]:
    """One clip's RandAugment draw as timm makes it per image: the applied ops in order.

    ``n`` op indices uniformly with replacement; then for each, applied with probability ``p``; if applied, a
    magnitude ``N(m, mstd)`` (or ``U(0, m)`` for infinite mstd) clamped to [0, mmax], and for the signed ops a sign.
    """
    names = config.op_names
    chosen = rng.integers(len(names), size=config.num_ops)
    ops = []
    for index in chosen:
        if rng.random() >= config.prob:
            continue
        magnitude = config.magnitude
        if math.isinf(config.magnitude_std):
            magnitude = rng.uniform(0.0, magnitude)
        elif config.magnitude_std > 0:
            magnitude = rng.normal(magnitude, config.magnitude_std)
        magnitude = min(max(0.0, float(magnitude)), config.magnitude_max)
        name = names[int(index)]
        negate = bool(rng.random() < 0.5) if _OPS[name].signed else False
        ops.append(Op(name, op_arg(name, magnitude, negate)))
    return tuple(ops)


def apply_rand_augment(frames: torch.Tensor, ops: tuple[Op, ...]) -> torch.Tensor:
    """Apply the drawn ops in order to every frame of ``frames`` (L, 3, H, W) uint8."""
    for op in ops:
        frames = apply_op(frames, op)
    return frames


# ---------------------------------------------------------------------------------------------------------------------
# Random erasing


class Erase(NamedTuple):
    """One erased box, the same on every frame, and its fill: (L, 3, h, w) uint8, fresh noise for each frame."""

    box: Box  # (top, left, height, width)
    noise: torch.Tensor


def erase_box_params(height: int, width: int, rng: np.random.Generator, area: tuple[float, float] = (0.02, 1 / 3),
                     aspect: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 100) -> Box | None:
    """timm's RandomErasing box (one box): area fraction U(area), log-uniform aspect h / w, strictly inside the frame.

    VideoMAE's cube mode tries up to 100 times; None when every try misses (nothing is erased then).
    """
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(attempts):
        target = rng.uniform(*area) * height * width
        ratio = math.exp(rng.uniform(*log_aspect))
        h, w = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < h < height and 0 < w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def erase_noise(shape: tuple[int, int, int, int], rng: np.random.Generator, mean=IMAGENET_MEAN, std=IMAGENET_STD
                ) -> torch.Tensor:
    """Per-pixel noise for an erased box: (L, 3, h, w) uint8 that normalises to N(0, 1) per channel.

    timm fills the box with N(0, 1) in normalised space. The loaders output uint8 pixels (normalisation happens later,
    on the device), so the noise is drawn in pixel space as ``255 (mean + std z)``, rounded and clipped to [0, 255]:
    after normalisation it is timm's N(0, 1) except for the few percent of draws beyond the pixel range.
    """
    z = rng.standard_normal(shape, dtype=np.float32)
    scale = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1) * 255
    shift = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1) * 255
    return torch.from_numpy(np.clip(np.rint(z * scale + shift), 0, 255).astype(np.uint8))


def apply_erase(frames: torch.Tensor, erase: Erase) -> torch.Tensor:
    """Write ``erase.noise`` into ``erase.box`` of every frame; returns a copy ((L, 3, H, W) uint8)."""
    top, left, h, w = erase.box
    out = frames.clone(memory_format=torch.preserve_format)  # ``frames`` may be a view of the decoded frames
    out[..., top : top + h, left : left + w] = erase.noise
    return out


# ---------------------------------------------------------------------------------------------------------------------
# One clip


@dataclasses.dataclass(frozen=True)
class ClipAugment:
    """Everything drawn for one clip: RandAugment ops (applied in order), then an optional erased box."""

    ops: tuple[Op, ...] = ()
    erase: Erase | None = None


def draw_clip_augment(rand_augment: str, erase_prob: float, num_frames: int, size: tuple[int, int],
                      rng: np.random.Generator, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> ClipAugment:
    """Draw one clip's RandAugment ops and erasing, in that order, from ``rng``.

    Args:
        rand_augment: a timm RandAugment string, "" or "none" = off.
        erase_prob: chance of erasing one box (0 = off; no draw at all then).
        num_frames: L, frames the augmentation is applied to (the erasing noise is drawn per frame).
        size: (H, W) of the frames.
        rng: the clip's generator.
        mean, std: the normalisation the clip will get (the erasing noise normalises to N(0, 1)).
    """
    config = parse_rand_augment(rand_augment)
    ops = draw_rand_augment(config, rng) if config is not None else ()
    erase = None
    if erase_prob > 0 and rng.random() < erase_prob:
        box = erase_box_params(size[0], size[1], rng)
        if box is not None:
            erase = Erase(box, erase_noise((num_frames, 3, box[2], box[3]), rng, mean, std))
    return ClipAugment(ops, erase)


def apply_clip_augment(frames: torch.Tensor, augment: ClipAugment) -> torch.Tensor:
    """(L, 3, H, W) uint8 -> (L, 3, H, W) uint8 with ``augment``'s ops and erasing, the same on every frame."""
    frames = apply_rand_augment(frames, augment.ops)
    return apply_erase(frames, augment.erase) if augment.erase is not None else frames
