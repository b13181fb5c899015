"""The embedded demo dataset: small labelled videos whose classes differ only in motion.

``timemae demo --out DIR`` renders two or three striped objects over a shaded background and moves every object
the same one of eight ways (`CLASSES`): they slide left / right / up / down, turn clockwise / counter-clockwise (each
about its own centre, as seen on screen), or approach (grow, come nearer in depth) / recede (shrink, go away). Every
video is rendered twice, as RGB and as a depth map of the same scene, and encoded as H.264 mp4 (libx264, yuv420p)
through PyAV.

Structure at patch scale: VideoMAE reconstructs masked 16x16 patches, each normalised by its own mean and std
(norm-pix), from the visible ones. A flat patch normalises to encoder noise, which nothing predicts, so on flat
surfaces the loss stays at what predicting zeros costs (~1.0). The default background (``shaded``) is one light ramp
across the whole frame -- from a dark to a light tone of one hue, in a random direction, like light falling on a wall
-- steep enough that every 16x16 patch of a TIME clip has contrast (`test_demo.py` checks that at least 95 % of the
patches of every default TIME clip have a per-channel std of at least 8 gray levels), and the objects add sharp
outlines and stripes 4-20 px apart. A masked background patch is then the continuation of the ramp its visible
neighbours show, which a small ViT learns to predict within minutes on a CPU (the quickstart's loss falls by about
half). ``--background textured`` paints the background as 2-4 Voronoi regions of periodic textures (gratings,
checkerboards, bricks, plaids, periods of 8-24 px) instead: every patch carries contrast there too, but a texture's
phase inside a patch is a fine detail that short runs do not learn: the loss stayed near 1.0 in CPU runs of up to
1,000 steps. ``--background plain`` paints one flat colour per video (for frame-level classifiers trained from scratch,
which memorise a textured background instead of learning the motion).

No single frame tells the class. What a frame shows -- number of objects, their shapes, colours, stripes, positions,
sizes and angles, and the background -- has the same distribution in every class: appearance is drawn from one
distribution for all classes, angles are uniform, and positions and sizes follow the same law whether the objects
move along that axis or not. Along the motion axis each object ramps over a fixed range, all objects by the same
random amount; along the other axes they stay at the values such ramps have at one uniformly random frame, shared by
the objects. So a frame picked at a random time from a video of any class is distributed the same (the objects'
joint layout included); only the change from frame to frame carries the label. (At a *fixed* frame index the
positions are weakly informative -- left-movers start right of centre -- which is why clips should be sampled over
the whole video, as segment sampling does.) Horizontal flips or rotations as augmentation would change the labels
(flip swaps left/right and clockwise/counter-clockwise); leave them off for this data.

Decisions:

- Size 160x120 at 25 fps, 64 frames (2.56 s): a TIME clip with N = 2 and T* = 16 takes 64 frames by segment
  sampling. Object radius 8-20 % of the frame height; translations and size changes cover 40-70 % of their range
  over the video whatever its length; rotation is 3-6 degrees per frame.
- All objects move the class's way (rather than one labelled object among distractors moving otherwise), so the
  label stays "the motion in the video", with no object to single out, and every object is evidence for it.
- Camera pan (``--pan``, off by default): the background slides under the objects at 0.1-0.4 px per frame in a
  uniformly random direction, the same law for every class. Off by default because the label is the objects'
  on-screen motion: with a pan, a model must separate object from background motion (an object sliding left over a
  background sliding left looks, locally, like a still object), a harder benchmark than the quickstart's small runs
  need; and rendering the background once instead of every frame keeps generation fast.
- Depth is stored as 8-bit gray H.264 video (yuv420p, chroma flat), already scaled to 8 bits with one fixed
  linear map for every video: metric depth ``DEPTH_RANGE_M`` = 0.5 .. 5.5 m maps to 1 .. 255 (near = dark, far =
  bright, 0 unused: the conventions of `data.depth.depth_to_uint8`, which stretches each clip's range on read).
  The objects are 0.75-2.5 m away (depth ~ 1 / apparent size), the background a tilted plane 2.9-5.3 m away
  (shading and texture are paint on it: no relief). A bigger object is nearer and covers a smaller one; all objects of a
  video scale by the same factor, so their depth order holds for the whole video. A fixed map (no per-video
  min/max) keeps the stored frames uninformative one at a time.
- Determinism: video ``i`` of class ``c`` in split ``s`` draws from ``numpy.random.default_rng([seed, s, c, i])``,
  so it does not depend on how many videos there are or on ``workers``; libx264 runs with one thread and the mp4
  muxer in bitexact mode, so the same seed gives byte-identical files (with the same FFmpeg/x264 build).
- Layout of DIR::

      demo.json                              parameters and outputs; written first, completed last
      classes.txt                            one class name a line, line i = label i
      train.csv, val.csv                     RGB manifests (paths relative to DIR)
      depth_train.csv, depth_val.csv         depth manifests
      videos/{rgb,depth}/{split}/{class}_{i:03d}.mp4
      shards/{train,val,depth_train,depth_val}/shard-*.tar

  Train shards hold ``n // 8`` samples each and val shards ``n // 4`` (at least one), so there are at least 8 train
  and 4 val shards: enough for exact evaluation on 2 ranks x 2 loader workers.
- Defaults: 8 train + 4 val videos per class (96 videos, 192 with depth); ``--videos-per-class`` (alias
  ``--per-class``) and ``--val-per-class`` make larger sets. Seconds on 2 cores.
- `make_demo` always (re)generates; `ensure_demo` (``timemae demo --if-missing``) returns the existing demo when
  ``demo.json`` says it is complete, is of this `STAMP_FORMAT` and was made with the same parameters. A demo of
  another format (an older renderer) is regenerated, also for ``reuse_any`` callers. A folder is only ever cleared
  when it holds a demo stamp; any other non-empty folder is refused.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from common.errors import UserError
from common.files import atomic_write_text
from data.prep.manifest import Record, read_manifest, write_manifest

CLASSES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "approach",
    "recede",
)
# class -> (state channel that moves, direction). Image y points down, so "up" is -1 on y, and an increasing angle
# turns the object clockwise on screen (see `render_scene`).
MOTIONS: dict[str, tuple[str, int]] = {
    "move_left": ("x", -1),
    "move_right": ("x", +1),
    "move_up": ("y", -1),
    "move_down": ("y", +1),
    "rotate_cw": ("angle", +1),
    "rotate_ccw": ("angle", -1),
    "approach": ("size", +1),
    "recede": ("size", -1),
}
SPLITS: tuple[str, ...] = ("train", "val")
STAMP = "demo.json"
# Bumped whenever the same parameters render other videos, so that `ensure_demo` regenerates older demos.
STAMP_FORMAT = "timemae-demo-3"
DEPTH_RANGE_M = (0.5, 5.5)  # metric depth encoded as 1 (near) .. 255 (far); 0 would read as "no reading"

# Scene ranges (Decision: big enough motion to be seen at 160x120, small enough to keep the objects in the frame).
NUM_OBJECTS = (2, 3)
RADIUS_FRAC = (0.08, 0.20)  # circumradius / frame height
TRAVEL_FRAC = (0.4, 0.7)  # part of the position / log-size range covered by a ramp over the whole video
SPIN_DEG_PER_FRAME = (3.0, 6.0)
SHAPE_SIDES = (0, 3, 4, 5, 6)  # 0 = disc
STRIPES_PER_RADIUS = (1.2, 2.2)  # stripe cycles per radius: 4-20 px apart at 160x120, whatever the object's size
CROSS_STRIPES = 0.7  # cross-stripe frequency / stripe frequency
# Background textures (Decision: periods of 8-24 px put one to two cycles into a 16x16 patch at the stored size and
# still about one into a TIME clip's 16x16 patch at N = 2 and 112 px; the tones of a region differ by 0.4-0.8 in
# value, so every colour channel of a patch has a std of tens of gray levels).
TEXTURES = ("grating", "checker", "bricks", "plaid")
TEXTURE_PERIOD_PX = (8.0, 24.0)
NUM_REGIONS = (2, 4)
PAN_PX_PER_FRAME = (0.1, 0.4)  # with --pan
BACKGROUNDS = ("shaded", "textured", "plain")
# The shaded background (Decision: a light ramp steep enough that every 16x16 patch of a TIME clip has contrast, in
# tones of low saturation so that every colour channel ramps): dark and light value at the two ends of the frame.
SHADE_VALUE = ((0.04, 0.10), (0.90, 0.96))
SHADE_SATURATION = (0.05, 0.2)
GOP = 16  # keyframe interval, as data.prep.shards.DEFAULT_GOP
X264_CRF = 20
OBJECT_DEPTH_M = 1.0  # depth of an object at the largest radius; depth ~ 1 / radius (pinhole camera)
OBJECT_BULGE_M = 0.25  # an object is a dome this much nearer at its centre than at its rim
# Shards per split (minimum); see the module docstring.
MIN_SHARDS = {"train": 8, "val": 4}


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """Everything the generated files depend on (``workers`` and progress output do not change them).

    Attributes:
        seed: base seed; see the module docstring for how each video derives its own.
        per_class: training videos per class (``--videos-per-class``).
        val_per_class: validation videos per class.
        num_frames: frames per video.
        width, height: frame size in pixels (even, for yuv420p).
        fps: frame rate written into the mp4.
        depth: also render and encode the depth videos, manifests and shards.
        shards: also write webdataset shards.
        pan: slide the background under the objects (a slow camera pan; see the module docstring).
        background: "shaded" (default: a light ramp, contrast in every patch that masked pretraining learns to
            predict), "textured" (periodic textures) or "plain" (one flat colour per video, for frame-level
            classifiers trained from scratch); see the module docstring.
    """

    seed: int = 0
    per_class: int = 8
    val_per_class: int = 4
    num_frames: int = 64
    width: int = 160
    height: int = 120
    fps: int = 25
    depth: bool = True
    shards: bool = True
    pan: bool = False
    background: str = "shaded"

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise UserError(f"demo background {self.background!r} is not one of {', '.join(BACKGROUNDS)}")
        if self.per_class < 1 or self.val_per_class < 1:
            raise UserError(
                f"demo needs at least one video per class in each split, got --videos-per-class {self.per_class} and "
                f"--val-per-class {self.val_per_class}; pass values >= 1"
            )
        if self.num_frames < 2:
            raise UserError(f"demo videos need motion, got --num-frames {self.num_frames}; pass a value >= 2")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 32 or self.width < 0.6 * self.height:
            raise UserError(
                f"demo frame size {self.width}x{self.height} must be even, at least 32x32 and no taller than wide "
                "by more than 5:3; pass e.g. --size 160x120"
            )
        if self.seed < 0:
            raise UserError(f"demo seed must be >= 0, got --seed {self.seed}; pass e.g. --seed 0")
        if self.fps < 1:
            raise UserError(f"demo frame rate must be positive, got --fps {self.fps}; pass e.g. --fps 25")


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """One video's random draw; the video is a pure function of it (see `render_scene`).

    K objects, listed far to near (the order they are painted in); F = 1 background frame without a pan, else T.

    Attributes:
        label: class index into `CLASSES`.
        sides: (K,) int, object outline, 0 = disc, else a regular polygon with that many sides.
        colours: (K, 2, 3) float in [0, 1], the two stripe colours of each object.
        stripe_freq: (K,) float, stripe cycles per object radius (the stripes turn and scale with the object).
        stripe_phase: (K,) float, stripe phase in radians.
        background: (F, H, W, 3) float32 in [0, 1], the background of every frame.
        background_depth: (F, H, W) float32, metres.
        cx, cy: (K, T) float, object centres in pixels (x right, y down).
        radius: (K, T) float, circumradii in pixels.
        angle: (K, T) float, radians; increasing = clockwise on screen.
    """

    label: int
    sides: np.ndarray
    colours: np.ndarray
    stripe_freq: np.ndarray
    stripe_phase: np.ndarray
    background: np.ndarray
    background_depth: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray


def video_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    """The generator of one video: independent of how many videos there are and of the order they are made in."""
    return np.random.default_rng([seed, SPLITS.index(split), label, index])


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) to (3,) RGB."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _Region:
    """One background region's texture: a pattern in [0, 1] mapped between a dark and a light colour."""

    texture: str
    period: float  # px
    theta: float  # orientation, radians
    phase: tuple[float, float]  # radians, along and across the orientation
    dark: np.ndarray  # (3,)
    light: np.ndarray  # (3,)


@dataclasses.dataclass(frozen=True)
class _Shade:
    """The shaded background: a light ramp from ``dark`` to ``light`` along ``theta`` across the frame.

    Beyond the frame (under a pan) the ramp reflects (a triangle wave), so that no part of the scene is flat.
    """

    theta: float  # direction of increasing light, radians from image +x towards +y
    span: tuple[float, float]  # the ramp's coordinate along theta at its dark and its light end, px
    dark: np.ndarray  # (3,)
    light: np.ndarray  # (3,)

    def paint(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = (math.cos(self.theta) * x + math.sin(self.theta) * y - self.span[0]) / (self.span[1] - self.span[0])
        p = 1.0 - np.abs(np.mod(u + 1.0, 2.0) - 1.0)  # 0 at the dark end, 1 at the light end, reflected beyond
        return (self.dark + p[..., None] * (self.light - self.dark)).astype(np.float32)


def _draw_shade(rng: np.random.Generator, height: int, width: int) -> _Shade:
    """Draw the shaded background: a random direction; the ramp spans the frame's extent along it."""
    theta = float(rng.uniform(0.0, 2 * math.pi))
    corners = [math.cos(theta) * x + math.sin(theta) * y for x in (0, width) for y in (0, height)]
    hue, saturation = rng.random(), rng.uniform(*SHADE_SATURATION)
    dark, light = rng.uniform(*SHADE_VALUE[0]), rng.uniform(*SHADE_VALUE[1])
    return _Shade(theta, (min(corners), max(corners)), _hsv_to_rgb(hue, saturation, dark),
                  _hsv_to_rgb(hue, saturation, light))


@dataclasses.dataclass(frozen=True)
class _Backdrop:
    """The background as a function of scene coordinates (pixels at pan 0), so a pan can sample it anywhere."""

    seeds: np.ndarray  # (R, 2) Voronoi sites (x, y)
    regions: tuple[_Region, ...]
    shading: tuple[float, float]  # brightness slope along x and y, per frame width
    depth: tuple[float, float, float]  # plane: metres at the centre, slope along y and x (per frame size)


def _soft_square(wave: np.ndarray) -> np.ndarray:
    """A sine wave squared off (steep, not aliased steps): (-1, 1) -> (-1, 1)."""
    return np.tanh(3.0 * wave) / np.tanh(3.0)


def _pattern(region: _Region, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The region's texture in [0, 1] at scene points (x, y) in pixels (any equal shapes)."""
    cos, sin = math.cos(region.theta), math.sin(region.theta)
    u, v = cos * x + sin * y, -sin * x + cos * y
    k = 2 * math.pi / region.period
    if region.texture == "grating":
        return 0.5 + 0.5 * _soft_square(np.sin(k * u + region.phase[0]))
    if region.texture == "checker":
        return 0.5 + 0.5 * _soft_square(2.0 * np.sin(k * u + region.phase[0]) * np.sin(k * v + region.phase[1]))
    if region.texture == "plaid":
        return 0.5 + 0.25 * (_soft_square(np.sin(k * u + region.phase[0])) + _soft_square(np.sin(k * v * 0.75)))
    # Bricks: courses half a period high, bricks a period long, every other course shifted by half a brick; 1.5 px
    # mortar lines, and each brick's tone varied a little by a hash of its (course, column).
    height = region.period / 2
    v = v + region.phase[1] / (2 * math.pi) * height
    course = np.floor(v / height)
    u = u + region.phase[0] / (2 * math.pi) * region.period + (course % 2) * region.period / 2
    column = np.floor(u / region.period)
    mortar = (v - course * height < 1.5) | (u - column * region.period < 1.5)
    tone = 0.8 + 0.2 * np.modf(np.abs(np.sin(course * 12.9898 + column * 78.233) * 43758.5453))[0]
    return np.where(mortar, 0.0, tone)


def _draw_backdrop(rng: np.random.Generator, height: int, width: int) -> _Backdrop:
    """Draw the background: 2-4 Voronoi regions, each a texture in a dark and a light tone of one hue."""
    count = int(rng.integers(NUM_REGIONS[0], NUM_REGIONS[1] + 1))
    seeds = rng.uniform((0.0, 0.0), (width, height), (count, 2))
    regions = []
    for _ in range(count):
        hue, saturation = rng.random(), rng.uniform(0.15, 0.5)
        low = rng.uniform(0.12, 0.35)
        high = min(low + rng.uniform(0.4, 0.8), 0.95)
        regions.append(_Region(
            texture=str(rng.choice(TEXTURES)), period=float(rng.uniform(*TEXTURE_PERIOD_PX)),
            theta=float(rng.uniform(0.0, math.pi)), phase=(float(rng.uniform(0, 2 * math.pi)),
                                                           float(rng.uniform(0, 2 * math.pi))),
            dark=_hsv_to_rgb(hue, saturation, low), light=_hsv_to_rgb(hue, saturation, high),
        ))
    shading = (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08)))
    depth = (float(rng.uniform(3.8, 4.4)), float(rng.uniform(-1.2, -0.4)), float(rng.uniform(-0.4, 0.4)))
    return _Backdrop(seeds, tuple(regions), shading, depth)


def _paint_backdrop(backdrop: _Backdrop, x: np.ndarray, y: np.ndarray, height: int, width: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The background at scene points (x, y) (pixel centres, any equal shapes S).

    Returns:
        rgb: (*S, 3) float32 in [0, 1]; depth: (*S,) float32 metres, a tilted plane (lower rows nearer, as a floor or
        wall seen from a standing camera).
    """
    distance = [(x - sx) ** 2 + (y - sy) ** 2 for sx, sy in backdrop.seeds]
    owner = np.argmin(distance, axis=0)
    rgb = np.zeros((*x.shape, 3), dtype=np.float32)
    for index, region in enumerate(backdrop.regions):
        inside = owner == index
        p = _pattern(region, x[inside], y[inside])[:, None]
        rgb[inside] = region.dark + p * (region.light - region.dark)
    rgb *= (1.0 + backdrop.shading[0] * (x / width - 0.5) + backdrop.shading[1] * (y / width - 0.5))[..., None]
    return np.clip(rgb, 0.0, 1.0), _backdrop_depth(backdrop, x, y, height, width)


def _backdrop_depth(backdrop: _Backdrop, x: np.ndarray, y: np.ndarray, height: int, width: int) -> np.ndarray:
    """The background's depth at scene points (x, y): a tilted plane in metres, float32, every background kind's."""
    centre, slope_y, slope_x = backdrop.depth
    return (centre + slope_y * (y / height - 0.5) + slope_x * (x / width - 0.5)).astype(np.float32)


def _background(rng: np.random.Generator, num_frames: int, height: int, width: int, pan: bool,
                kind: str = "shaded") -> tuple[np.ndarray, np.ndarray]:
    """Draw and paint the background: (F, H, W, 3) float32 RGB and (F, H, W) float32 depth, F = T with a pan, else 1.

    Every kind makes the same draws in the same order (the textured backdrop, whose depth plane every kind uses,
    then the shade), so the objects and the depth video are the same whatever the kind. The pan is drawn last and
    only with ``pan``, so switching it on changes nothing else in a video. ``plain`` paints the RGB background in the
    mean colour of the textured one.
    """
    backdrop = _draw_backdrop(rng, height, width)
    shade = _draw_shade(rng, height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    if pan:
        direction = rng.uniform(0.0, 2 * math.pi)
        shift = rng.uniform(*PAN_PX_PER_FRAME) * (np.arange(num_frames, dtype=np.float32) - (num_frames - 1) / 2)
        # The camera moves by +shift along `direction`, so the scene point under pixel (x, y) is (x, y) + that shift.
        xs = xs[None] + (shift * math.cos(direction))[:, None, None]
        ys = ys[None] + (shift * math.sin(direction))[:, None, None]
    if kind == "shaded":  # the texture is not painted, only the plane's depth
        rgb, depth = shade.paint(xs, ys), _backdrop_depth(backdrop, xs, ys, height, width)
    else:
        rgb, depth = _paint_backdrop(backdrop, xs, ys, height, width)
    if kind == "plain":  # one colour for the whole video (a pan over it shows nothing)
        axes = tuple(range(rgb.ndim - 1))
        rgb = np.broadcast_to(rgb.mean(axis=axes, keepdims=True), rgb.shape).copy()
    return (rgb, depth) if pan else (rgb[None], depth[None])


def _ramps(rng: np.random.Generator, lo: float, hi: float, num_frames: int, direction: int, count: int) -> np.ndarray:
    """One state channel of ``count`` objects: (count, T) float.

    All objects share one travel (a random 40-70 % of [lo, hi]) and each starts at its own uniform place inside
    [lo, hi - travel]. Moving (direction +-1): linear paths over the video, forwards or backwards. Held (0): each
    object constant at the value its forward path has at one uniformly random frame, the same frame for all. So,
    pooled over frames, a held channel has the same joint law over the objects as a moving one (a reversed path is
    a forward path from the mirrored start, whose law is the same): single frames tell no class.
    """
    travel = rng.uniform(*TRAVEL_FRAC) * (hi - lo)
    start = rng.uniform(lo, hi - travel, count)[:, None]
    if direction:
        path = start + travel * np.linspace(0.0, 1.0, num_frames)[None]
        return path if direction > 0 else (lo + hi) - path
    progress = rng.integers(num_frames) / (num_frames - 1)
    return np.repeat(start + travel * progress, num_frames, axis=1)


def sample_scene(label: int, rng: np.random.Generator, *, num_frames: int, width: int, height: int,
                 pan: bool = False, background: str = "shaded") -> Scene:
    """Draw one video of class ``label``: appearance from one law for all classes, motion from the class.

    Args:
        label: index into `CLASSES`.
        rng: the video's generator (`video_rng`).
        num_frames: T.
        width, height: frame size in pixels.
        pan: slide the background (a camera pan, the same law for every class).
        background: "shaded", "textured" or "plain" (`DemoParams.background`).
    """
    moving, direction = MOTIONS[CLASSES[label]]
    count = int(rng.integers(NUM_OBJECTS[0], NUM_OBJECTS[1] + 1))
    sides = rng.choice(SHAPE_SIDES, count)
    colours = []
    for _ in range(count):
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.0))
        colours.append(np.stack([colour, colour * rng.uniform(0.15, 0.4)]))
    stripe_freq = rng.uniform(*STRIPES_PER_RADIUS, count)
    stripe_phase = rng.uniform(0.0, 2 * math.pi, count)

    r_min, r_max = RADIUS_FRAC[0] * height, RADIUS_FRAC[1] * height
    margin = r_max + 1.0  # no object ever leaves the frame
    steps = {name: (direction if name == moving else 0) for name in ("x", "y", "size", "angle")}
    cx = _ramps(rng, margin, width - margin, num_frames, steps["x"], count)
    cy = _ramps(rng, margin, height - margin, num_frames, steps["y"], count)
    radius = np.exp(_ramps(rng, math.log(r_min), math.log(r_max), num_frames, steps["size"], count))
    spin = math.radians(rng.uniform(*SPIN_DEG_PER_FRAME)) * steps["angle"]
    angle = rng.uniform(0.0, 2 * math.pi, count)[:, None] + spin * np.arange(num_frames)[None]
    background, background_depth = _background(rng, num_frames, height, width, pan, background)
    # Far to near = small to large (depth ~ 1 / radius); all radii scale alike, so the order holds in every frame.
    order = np.argsort(radius[:, 0], kind="stable")
    return Scene(label, sides[order], np.stack(colours)[order], stripe_freq[order], stripe_phase[order], background,
                 background_depth, cx[order], cy[order], radius[order], angle[order])


def depth_to_gray(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth to the stored 8-bit value: `DEPTH_RANGE_M` maps linearly to 1 (near) .. 255 (far). uint8.

    The direction and the unused 0 match `data.depth.depth_to_uint8` (near = dark, 0 = no reading), so its per-clip
    rescaling on read is a linear stretch of this map.
    """
    near, far = DEPTH_RANGE_M
    return np.round(1.0 + np.clip((depth_m - near) / (far - near), 0.0, 1.0) * 254.0).astype(np.uint8)


def render_scene(scene: Scene, *, coverage: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Render a scene.

    Args:
        scene: the video's draw (`sample_scene`).
        coverage: also return the objects' ground-truth masks (the files need only the frames).

    Returns:
        rgb: (T, H, W, 3) uint8; depth: (T, H, W) uint8 (see `depth_to_gray`); coverage: (K, T, H, W) float32, the
        visible part of each object in [0, 1] (its alpha times what nearer objects leave uncovered; for tests and
        previews), or None without ``coverage``.
    """
    num_objects, num_frames = scene.cx.shape
    height, width = scene.background.shape[1:3]
    # The frames are composited in 8 bits: only the objects' windows are blended, in float, and depth is blended in
    # stored gray levels, which `depth_to_gray` maps linearly from metres over the whole scene's range.
    rgb = np.broadcast_to(_to_uint8(scene.background), (num_frames, height, width, 3)).copy()
    depth = np.broadcast_to(depth_to_gray(scene.background_depth), (num_frames, height, width)).copy()
    masks = np.zeros((num_objects, num_frames, height, width), dtype=np.float32) if coverage else None
    frame = np.arange(num_frames)[:, None, None]  # (T, 1, 1)
    for k in range(num_objects):  # far to near: a nearer object is painted over a farther one
        # Only a square window around the object changes; it is drawn for all frames at once.
        side = min(2 * math.ceil(float(scene.radius[k].max())) + 4, height, width)
        top = np.clip(np.floor(scene.cy[k] - side / 2), 0, height - side).astype(np.int64)
        left = np.clip(np.floor(scene.cx[k] - side / 2), 0, width - side).astype(np.int64)
        rows = top[:, None, None] + np.arange(side)[None, :, None]  # (T, S, 1)
        cols = left[:, None, None] + np.arange(side)[None, None, :]  # (T, 1, S)

        cx, cy, r, angle = (np.asarray(a[k], dtype=np.float32)[:, None, None] for a in
                            (scene.cx, scene.cy, scene.radius, scene.angle))
        dx, dy = (cols + 0.5).astype(np.float32) - cx, (rows + 0.5).astype(np.float32) - cy  # pixel centres, (T, S, S)
        cos, sin = np.cos(angle), np.sin(angle)
        # Object coordinates in units of the radius; the object's +u axis points at angle `angle` from image +x
        # towards image +y (down), so a growing angle turns it clockwise on screen.
        u = (cos * dx + sin * dy) / r
        v = (-sin * dx + cos * dy) / r
        sides = int(scene.sides[k])
        if sides == 0:
            rho, apothem = np.hypot(u, v), 1.0
        else:
            # Gauge of a regular polygon with circumradius 1: largest projection on an edge normal over the apothem.
            apothem = math.cos(math.pi / sides)
            normals = [(2 * j + 1) * math.pi / sides for j in range(sides)]
            rho = np.max([u * math.cos(a) + v * math.sin(a) for a in normals], axis=0) / apothem
        # (1 - rho) * apothem * r is the distance to the nearest edge in pixels: one pixel of anti-aliasing.
        alpha = np.clip(0.5 + (1.0 - rho) * apothem * r, 0.0, 1.0)  # (T, S, S)
        dome = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
        wave = np.sin(2 * math.pi * scene.stripe_freq[k] * u + scene.stripe_phase[k])
        stripes = (0.5 + 0.5 * _soft_square(wave))[..., None]
        # Fainter cross-stripes give the surface texture in both directions, so that all of its motion shows (on
        # plain stripes, motion along them is invisible).
        cross = 0.8 + 0.2 * _soft_square(np.sin(2 * math.pi * CROSS_STRIPES * scene.stripe_freq[k] * v))[..., None]
        colours = scene.colours[k].astype(np.float32)
        fg = (colours[0] * stripes + colours[1] * (1.0 - stripes)) * cross * (0.75 + 0.25 * dome[..., None])
        a3 = alpha[..., None]
        rgb[frame, rows, cols] = _to_uint8(rgb[frame, rows, cols] * ((1.0 - a3) / 255.0) + fg * a3)
        object_gray = depth_to_gray(OBJECT_DEPTH_M * RADIUS_FRAC[1] * height / r - OBJECT_BULGE_M * dome)
        depth[frame, rows, cols] = np.round(depth[frame, rows, cols] * (1.0 - alpha) + object_gray * alpha)
        if masks is not None:
            masks[:k, frame, rows, cols] *= 1.0 - alpha
            masks[k, frame, rows, cols] = alpha
    return rgb, depth, masks


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint8, rounded."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 mp4 (libx264, yuv420p) of (T, H, W, 3) RGB or (T, H, W) gray uint8 frames.

    The settings follow `data.prep.shards.encode_h264` (no B-frames, a keyframe exactly every `GOP` frames), so demo
    videos cost what re-encoded shard videos cost to seek into. One encoder thread and a bitexact muxer make the bytes
    a function of the frames alone: x264's threaded decisions and the muxer's version tag are the run-to-run
    differences otherwise.
    """
    gray = frames.ndim == 3
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.options = {
            "crf": str(X264_CRF),
            "preset": "veryfast",
            "threads": "1",
            "bf": "0",
            "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0",
        }
        for index, frame in enumerate(frames):
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray" if gray else "rgb24")
            image.pts = index
            container.mux(stream.encode(image))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def video_relpath(modality: str, split: str, label: int, index: int) -> str:
    """Path of one video relative to the demo folder."""
    return f"videos/{modality}/{split}/{CLASSES[label]}_{index:03d}.mp4"


def _make_video(job: tuple[str, DemoParams, str, int, int]) -> None:
    """Render and write the RGB (and depth) video of one (split, label, index); a process-pool task."""
    root, params, split, label, index = job
    scene = sample_scene(
        label, video_rng(params.seed, split, label, index), num_frames=params.num_frames, width=params.width,
        height=params.height, pan=params.pan, background=params.background,
    )
    rgb, depth, _ = render_scene(scene, coverage=False)
    outputs = [("rgb", rgb)] + ([("depth", depth)] if params.depth else [])
    for modality, frames in outputs:
        path = Path(root) / video_relpath(modality, split, label, index)
        path.write_bytes(encode_mp4(frames, params.fps))


def _jobs(params: DemoParams) -> list[tuple[str, int, int]]:
    counts = {"train": params.per_class, "val": params.val_per_class}
    return [(split, label, i) for split in SPLITS for label in range(len(CLASSES)) for i in range(counts[split])]


def _split_key(modality: str, split: str) -> str:
    """Name of a manifest / shard folder: ``train``, ``val``, ``depth_train``, ``depth_val``."""
    return split if modality == "rgb" else f"{modality}_{split}"


def _outputs(root: Path, params: DemoParams) -> dict:
    """The files a demo folder holds, relative to it (as stored in the stamp)."""
    modalities = ["rgb"] + (["depth"] if params.depth else [])
    keys = [_split_key(m, s) for m in modalities for s in SPLITS]
    return {
        "classes": "classes.txt",
        "manifests": {key: f"{key}.csv" for key in keys},
        "shards": {key: f"shards/{key}" for key in keys} if params.shards else {},
    }


def _absolute(root: Path, outputs: dict, params: DemoParams) -> dict:
    """The result of `make_demo` / `ensure_demo`: the stored relative paths made absolute."""
    return {
        "root": str(root),
        "classes": list(CLASSES),
        "classes_file": str(root / outputs["classes"]),
        "manifests": {key: str(root / rel) for key, rel in outputs["manifests"].items()},
        "shards": {key: str(root / rel) for key, rel in outputs["shards"].items()},
        "params": dataclasses.asdict(params),
    }


def _read_stamp(root: Path) -> dict | None:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else None


def _has_any_stamp(root: Path) -> bool:
    """Whether ``root`` holds a demo of any stamp format, older ones included (they are regenerated, not refused)."""
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and "format" in stamp and "params" in stamp


def _write_stamp(root: Path, stamp: dict) -> None:
    atomic_write_text(root / STAMP, json.dumps(stamp, indent=2) + "\n")


def _prepare_out_dir(root: Path) -> None:
    """Make ``root`` ready for a fresh demo: create it, or clear what an earlier demo wrote there.

    Raises:
        UserError: ``root`` is a file, or a non-empty folder that holds no demo (never delete what is not ours).
    """
    if root.exists() and not root.is_dir():
        raise UserError(f"demo output {root} is a file; choose an empty or new folder with --out")
    if root.is_dir() and any(root.iterdir()):
        if not _has_any_stamp(root):
            raise UserError(
                f"demo output {root} is not empty and holds no demo dataset (no {STAMP}); "
                "choose an empty or new folder with --out"
            )
        for name in ("videos", "shards"):
            shutil.rmtree(root / name, ignore_errors=True)
        for name in ["classes.txt"] + [f"{_split_key(m, s)}.csv" for m in ("rgb", "depth") for s in SPLITS]:
            (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _records(params: DemoParams, modality: str, split: str) -> list[Record]:
    count = params.per_class if split == "train" else params.val_per_class
    return [
        Record(
            path=video_relpath(modality, split, label, i), label=label, class_name=CLASSES[label], episode=i,
            split=split, modality=modality,
        )
        for label in range(len(CLASSES))
        for i in range(count)
    ]


def make_demo(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    per_class: int = 8,
    val_per_class: int = 4,
    num_frames: int = 64,
    size: tuple[int, int] = (160, 120),
    fps: int = 25,
    depth: bool = True,
    shards: bool = True,
    pan: bool = False,
    background: str = "shaded",
    workers: int | None = None,
    progress: bool = False,
    reuse: str = "never",
) -> dict:
    """Generate the demo dataset into ``out_dir`` (replacing an earlier demo there, unless ``reuse`` takes it).

    Args:
        out_dir: new or empty folder, or one holding an earlier demo (its demo files are replaced).
        seed: base seed; the same seed gives byte-identical videos.
        per_class, val_per_class: videos per class in the train and val splits.
        num_frames: frames per video.
        size: (width, height) in pixels, both even.
        fps: frame rate.
        depth: also write depth videos, manifests and shards.
        shards: also write webdataset shards (with `data.prep.shards.write_shards`).
        pan: slide the background under the objects (a slow camera pan, off by default; see the module docstring).
        background: "shaded" (default), "textured" or "plain" (`DemoParams.background`).
        workers: processes for rendering; None = all cores (at most 8).
        progress: print progress to stderr.
        reuse: ``"never"`` (generate), ``"same"`` (keep a complete demo made with the same parameters) or ``"any"``
            (keep a complete demo with shards whatever its parameters). A demo of another `STAMP_FORMAT` is never
            kept: it is regenerated, with the parameters asked for.

    Returns:
        ``{"root", "classes" (names), "classes_file", "manifests": {key: csv}, "shards": {key: folder},
        "params"}`` with absolute paths; keys are ``train``, ``val`` and, with depth, ``depth_train``,
        ``depth_val``. ``shards`` is empty when ``shards=False``.

    Raises:
        UserError: bad parameters, or ``out_dir`` is a file or a non-empty folder that holds no demo.
    """
    params = DemoParams(seed, per_class, val_per_class, num_frames, size[0], size[1], fps, depth, shards, pan,
                        background)
    root = Path(out_dir).resolve()
    if reuse not in ("never", "same", "any"):
        raise ValueError(f"reuse={reuse!r}: choose never, same or any")
    if reuse != "never":
        found = _reusable(root, params, any_params=reuse == "any")
        if found is not None:
            return found
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, workers)
    _check_room(params, root, min(workers, len(CLASSES) * (params.per_class + params.val_per_class)))
    _prepare_out_dir(root)
    outputs = _outputs(root, params)
    # Written first so that an interrupted run is still recognised as ours (and replaced) next time.
    stamp = {"format": STAMP_FORMAT, "complete": False, "params": dataclasses.asdict(params), "outputs": outputs}
    _write_stamp(root, stamp)

    start = time.perf_counter()
    jobs = _jobs(params)
    for modality in ["rgb"] + (["depth"] if depth else []):
        for split in SPLITS:
            (root / "videos" / modality / split).mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), params, split, label, i) for split, label, i in jobs]
    if workers == 1:
        for task in tasks:
            _make_video(task)
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            list(pool.map(_make_video, tasks, chunksize=4))
    if progress:
        print(f"demo: {len(jobs)} scenes rendered in {time.perf_counter() - start:.1f} s", flush=True)

    (root / outputs["classes"]).write_text("".join(f"{name}\n" for name in CLASSES))
    for key, rel in outputs["manifests"].items():
        modality, split = key.split("_") if "_" in key else ("rgb", key)
        write_manifest(_records(params, modality, split), root / rel)
    for key, rel in outputs["shards"].items():
        split = key.split("_")[-1]
        records = read_manifest(root / outputs["manifests"][key])  # resolves the relative video paths
        # One process: the shard writer's spawn pool takes seconds to start, longer than checking these small videos.
        _write_shards(records, root / rel, max(1, len(records) // MIN_SHARDS[split]), 1, progress)
    if progress and shards:
        print(f"demo: done in {time.perf_counter() - start:.1f} s", flush=True)

    _write_stamp(root, {**stamp, "complete": True})
    return _absolute(root, outputs, params)


# What a demo video costs at the least, for the checks before anything is written: H.264 at CRF 20 spends about
# 0.011 bytes per pixel of a frame on these scenes at 160x120 (14 KB for 64 frames); a third of that is a floor.
MIN_VIDEO_BYTES_PER_PIXEL = 0.004
# Rendering and encoding one video peaks at 17-19 bytes of memory per pixel of a frame (float intermediates, the
# uint8 RGB and depth frames, the encoder; measured at 160x120 with 64 and 512 frames): 16 is the floor checked.
RENDER_BYTES_PER_PIXEL = 16


def _check_room(params: DemoParams, root: Path, workers: int) -> None:
    """`UserError` when the demo asked for cannot fit: a video's frames in the memory free (each worker renders one),
    or the files on the disk under ``root``."""
    from common.memory import GIB, check_fits

    pixels = params.num_frames * params.width * params.height
    check_fits(workers * pixels * RENDER_BYTES_PER_PIXEL,
               f"rendering {workers} demo videos at once (--workers) of --num-frames {params.num_frames} at --size "
               f"{params.width}x{params.height}", "lower --num-frames, --size or --workers")
    videos = len(CLASSES) * (params.per_class + params.val_per_class)
    copies = (2 if params.depth else 1) * (2 if params.shards else 1)  # videos and their copies in the shards
    need = int(videos * copies * max(1024, MIN_VIDEO_BYTES_PER_PIXEL * pixels))
    parent = root
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if need > free:
        raise UserError(f"the demo of {len(CLASSES)} x ({params.per_class} + {params.val_per_class}) videos of "
                        f"{params.num_frames} frames at {params.width}x{params.height} needs at least "
                        f"{need / GIB:,.1f} GiB under {root}, more than the {free / GIB:,.1f} GiB free there; lower "
                        "--videos-per-class, --val-per-class, --num-frames or --size, or write it elsewhere (--out)")


def _write_shards(records: list[Record], out_dir: Path, shard_samples: int, workers: int, progress: bool) -> None:
    # Imported here: the shard writer pulls in webdataset, which `--no-shards` runs do not need.
    from data.prep.shards import write_shards

    write_shards(records, out_dir, shard_samples=shard_samples, workers=workers, progress=progress)


def ensure_demo(out_dir: str | os.PathLike, *, reuse_any: bool = False, **options: Any) -> dict:
    """`make_demo` (same keywords and result) unless ``out_dir`` already holds a complete demo made with the same
    parameters.

    Used by the quickstart, the training scripts and the tests. ``reuse_any``: take a complete demo with shards
    whatever its parameters (the training scripts: a demo the user made with other settings, e.g. ``timemae demo
    --videos-per-class 32``, is used, not overwritten).
    """
    return make_demo(out_dir, reuse="any" if reuse_any else "same", **options)


def _reusable(root: Path, params: DemoParams, *, any_params: bool) -> dict | None:
    """The result of the complete demo in ``root`` when it may be kept (`make_demo`'s ``reuse``), else None."""
    stamp = _read_stamp(root)
    saved = _stamp_params(stamp)
    same = saved is not None and saved == params
    other = any_params and saved is not None and saved.shards
    if not (stamp and stamp.get("complete") and (same or other)):
        return None
    result = _absolute(root, stamp["outputs"], params if same else saved)
    paths = [result["classes_file"], *result["manifests"].values(), *result["shards"].values()]
    return result if all(os.path.exists(p) for p in paths) else None


def _stamp_params(stamp: dict | None) -> DemoParams | None:
    """The parameters a demo stamp records (a field added since it was written takes its default), or None."""
    try:
        return DemoParams(**stamp["params"])
    except (TypeError, KeyError, UserError):
        return None


def demo_shards(demo: dict, split: str, modality: str) -> str:
    """The shard folder of one split ("train" / "val") and modality of an `ensure_demo` result.

    Raises:
        UserError: the demo was made without that modality (``--no-depth``).
    """
    key = split if modality == "rgb" else f"{modality}_{split}"
    if key not in demo["shards"]:
        raise UserError(
            f"the demo data in {demo['root']} has no {modality} shards; regenerate it with `timemae demo --out "
            f"{demo['root']}` (without --no-depth) or pass --data"
        )
    return demo["shards"][key]


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 160x120, got {text!r}") from None
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``timemae demo``."""
    defaults = DemoParams()
    parser.add_argument("--out", default="demo_data", help="output folder: new, empty, or an earlier demo")
    parser.add_argument("--videos-per-class", "--per-class", dest="per_class", type=int, default=defaults.per_class,
                        help="training videos per class (--per-class is the same flag)")
    parser.add_argument("--val-per-class", type=int, default=defaults.val_per_class, help="validation videos per class")
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames, help="frames per video")
    parser.add_argument("--size", type=_parse_size, default=(defaults.width, defaults.height),
                        help="frame size WIDTHxHEIGHT, both even (default 160x120)")
    parser.add_argument("--fps", type=int, default=defaults.fps, help="frame rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed; same seed, same bytes")
    parser.add_argument("--no-depth", action="store_true", help="RGB only: no depth videos, manifests or shards")
    parser.add_argument("--no-shards", action="store_true", help="videos and manifests only")
    parser.add_argument("--pan", action="store_true",
                        help="slide the background under the objects (a slow camera pan in a random direction, the "
                             "same for every class): object motion must then be told from background motion")
    parser.add_argument("--background", choices=BACKGROUNDS, default=defaults.background,
                        help="shaded (default: a light ramp across the frame, contrast in every 16x16 patch that "
                             "masked pretraining learns to predict), textured (periodic textures in regions) or plain "
                             "(one flat colour per video: frame-level classifiers from scratch cannot memorise it)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores, at most 8)")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing if --out already holds a complete demo with the same settings")


def run(args: argparse.Namespace) -> int:
    """``timemae demo``: generate (or, with ``--if-missing``, reuse) the demo and print where everything is."""
    start = time.perf_counter()
    build = ensure_demo if args.if_missing else make_demo
    result = build(
        args.out, seed=args.seed, per_class=args.per_class, val_per_class=args.val_per_class,
        num_frames=args.num_frames, size=args.size, fps=args.fps, depth=not args.no_depth,
        shards=not args.no_shards, pan=args.pan, background=args.background, workers=args.workers, progress=True,
    )
    params = result["params"]
    print(
        f"demo: {len(CLASSES)} classes x ({params['per_class']} train + {params['val_per_class']} val) videos, "
        f"{params['num_frames']} frames {params['width']}x{params['height']} in {result['root']} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    for key, path in result["manifests"].items():
        print(f"  manifest {key:<12}{path}")
    for key, path in result["shards"].items():
        print(f"  shards   {key:<12}{path}")
    return 0


CLI = {"demo": (add_arguments, run)}
