"""The embedded demo dataset: small labelled videos whose classes differ only in motion.

``timemae demo --out DIR`` renders a textured background with one striped object on it and moves the object in one
of eight ways (`CLASSES`): it slides left / right / up / down, turns clockwise / counter-clockwise (as seen on
screen), or approaches (grows, comes nearer in depth) / recedes (shrinks, goes away). Every video is rendered twice,
as RGB and as a depth map of the same scene, and encoded as H.264 mp4 (libx264, yuv420p) through PyAV.

No single frame tells the class. What a frame shows -- object shape, colours, stripe texture, background, object
position, size and angle -- has the same distribution in every class: appearance is drawn from one distribution for
all classes, the angle is uniform, and position and size follow the same law whether the object moves along that
axis or not. Along its motion axis the object ramps over a random fraction of a fixed range; along the other axes it
stays at the value such a ramp has at a uniformly random frame. So a frame picked at a random time from a video of
any class is distributed the same; only the change from frame to frame carries the label. (At a *fixed* frame index
the position is weakly informative -- a left-mover starts right of centre -- which is why clips should be sampled
over the whole video, as segment sampling does.) Horizontal flips or rotations as augmentation would change the
labels (flip swaps left/right and clockwise/counter-clockwise); leave them off for this data.

Decisions:

- Size 160x120 at 25 fps, 64 frames (2.56 s): a TIME clip with N = 2 and T* = 16 takes 64 frames by segment
  sampling. Object radius 8-20 % of the frame height; translations and size changes cover 40-70 % of their range
  over the video whatever its length; rotation is 3-6 degrees per frame.
- Depth is stored as 8-bit gray H.264 video (yuv420p, chroma flat), already scaled to 8 bits with one fixed
  linear map for every video: metric depth ``DEPTH_RANGE_M`` = 0.5 .. 5.5 m maps to 1 .. 255 (near = dark, far =
  bright, 0 unused: the conventions of `data.decode.depth_to_uint8`, which stretches each clip's range on read).
  The object is 0.75-2.5 m away (depth ~ 1 / apparent size), the background a tilted plane 2.9-5.3 m away. A fixed
  map (no per-video min/max) keeps the stored frames uninformative one at a time.
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
- Defaults: 8 train + 4 val videos per class (96 videos, 192 with depth); a few seconds on 2 cores.
- `make_demo` always (re)generates; `ensure_demo` (``timemae demo --if-missing``) returns the existing demo when
  ``demo.json`` says it is complete and was made with the same parameters. A folder is only ever cleared when it
  holds a demo stamp; any other non-empty folder is refused.
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

import av
import numpy as np

from data.errors import UserError
from data.manifest import Record, read_manifest, write_manifest

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
STAMP_FORMAT = "timemae-demo-1"
DEPTH_RANGE_M = (0.5, 5.5)  # metric depth encoded as 1 (near) .. 255 (far); 0 would read as "no reading"

# Scene ranges (Decision: big enough motion to be seen at 160x120, small enough to keep the object in the frame).
RADIUS_FRAC = (0.08, 0.20)  # circumradius / frame height
TRAVEL_FRAC = (0.4, 0.7)  # part of the position / log-size range covered by a ramp over the whole video
SPIN_DEG_PER_FRAME = (3.0, 6.0)
SHAPE_SIDES = (0, 3, 4, 5, 6)  # 0 = disc
GOP = 16  # keyframe interval, as data.shards.DEFAULT_GOP
X264_CRF = 20
OBJECT_DEPTH_M = 1.0  # depth of the object at the largest radius; depth ~ 1 / radius (pinhole camera)
OBJECT_BULGE_M = 0.25  # the object is a dome this much nearer at its centre than at its rim
# Shards per split (minimum); see the module docstring.
MIN_SHARDS = {"train": 8, "val": 4}


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """Everything the generated files depend on (``workers`` and progress output do not change them).

    Attributes:
        seed: base seed; see the module docstring for how each video derives its own.
        per_class: training videos per class.
        val_per_class: validation videos per class.
        num_frames: frames per video.
        width, height: frame size in pixels (even, for yuv420p).
        fps: frame rate written into the mp4.
        depth: also render and encode the depth videos, manifests and shards.
        shards: also write webdataset shards.
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

    def __post_init__(self) -> None:
        if self.per_class < 1 or self.val_per_class < 1:
            raise UserError(
                f"demo needs at least one video per class in each split, got --per-class {self.per_class} and "
                f"--val-per-class {self.val_per_class}; pass values >= 1"
            )
        if self.num_frames < 2:
            raise UserError(f"demo videos need motion, got --num-frames {self.num_frames}; pass a value >= 2")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 32 or self.width < 0.6 * self.height:
            raise UserError(
                f"demo frame size {self.width}x{self.height} must be even, at least 32x32 and no taller than wide "
                "by more than 5:3; pass e.g. --size 160x120"
            )
        if self.fps < 1:
            raise UserError(f"demo frame rate must be positive, got --fps {self.fps}; pass e.g. --fps 25")


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """One video's random draw; the video is a pure function of it (see `render_scene`).

    Attributes:
        label: class index into `CLASSES`.
        sides: object outline, 0 = disc, else a regular polygon with that many sides.
        colours: (2, 3) float in [0, 1], the two stripe colours of the object.
        stripe_freq: stripe cycles per object radius (the stripes turn and scale with the object).
        stripe_phase: stripe phase in radians.
        background: (H, W, 3) float32 in [0, 1], static textured background.
        background_depth: (H, W) float32, metres.
        cx, cy: (T,) float, object centre in pixels (x right, y down).
        radius: (T,) float, circumradius in pixels.
        angle: (T,) float, radians; increasing = clockwise on screen.
    """

    label: int
    sides: int
    colours: np.ndarray
    stripe_freq: float
    stripe_phase: float
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


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of (h, w, C) to (height, width, C), corners aligned."""
    h, w = grid.shape[:2]
    ys = np.linspace(0.0, h - 1.0, height)
    xs = np.linspace(0.0, w - 1.0, width)
    y0 = np.minimum(ys.astype(int), h - 2)
    x0 = np.minimum(xs.astype(int), w - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A static textured background: a muted base colour, three colour gratings and smooth colour noise.

    Returns:
        rgb: (H, W, 3) float32 in [0, 1]; depth: (H, W) float32 metres, a tilted plane (lower rows nearer, as a
        floor or wall seen from a standing camera).
    """
    ys = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / width  # both axes in units of the frame width
    xs = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    rgb = np.broadcast_to(_hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.35, 0.65)), (height, width, 3))
    rgb = rgb.copy()
    for _ in range(3):
        theta = rng.uniform(0.0, math.pi)
        freq = rng.uniform(1.0, 6.0)
        wave = np.sin(2 * math.pi * freq * (xs * math.cos(theta) + ys * math.sin(theta)) + rng.uniform(0, 2 * math.pi))
        rgb += rng.uniform(0.04, 0.10) * wave[..., None] * rng.uniform(0.5, 1.0, 3)
    rgb += _upsample(rng.normal(0.0, 0.06, (height // 8 + 2, width // 8 + 2, 3)), height, width)
    yn = (np.arange(height)[:, None] + 0.5) / height - 0.5
    xn = (np.arange(width)[None, :] + 0.5) / width - 0.5
    depth = rng.uniform(3.8, 4.4) + rng.uniform(-1.2, -0.4) * yn + rng.uniform(-0.4, 0.4) * xn
    return np.clip(rgb, 0.0, 1.0).astype(np.float32), depth.astype(np.float32)


def _ramp(rng: np.random.Generator, lo: float, hi: float, num_frames: int, direction: int) -> np.ndarray:
    """A linear path over a random 40-70 % of [lo, hi], inside it, run forwards (+1) or backwards (-1). (T,) float."""
    travel = rng.uniform(*TRAVEL_FRAC) * (hi - lo)
    start = rng.uniform(lo, hi - travel)
    path = start + travel * np.linspace(0.0, 1.0, num_frames)
    return path if direction > 0 else (lo + hi) - path


def _channel(rng: np.random.Generator, lo: float, hi: float, num_frames: int, direction: int) -> np.ndarray:
    """One state channel: a ramp if it moves (direction +-1), else constant at a ramp's value at a random frame.

    The constant case is what makes single frames uninformative: pooled over frames, a held value has the same
    distribution as a moving one, for every class.
    """
    if direction:
        return _ramp(rng, lo, hi, num_frames, direction)
    path = _ramp(rng, lo, hi, num_frames, 1)  # the ramp's law is symmetric under reversal, so +1 is no loss
    return np.full(num_frames, path[rng.integers(num_frames)])


def sample_scene(label: int, rng: np.random.Generator, *, num_frames: int, width: int, height: int) -> Scene:
    """Draw one video of class ``label``: appearance from one law for all classes, motion from the class.

    Args:
        label: index into `CLASSES`.
        rng: the video's generator (`video_rng`).
        num_frames: T.
        width, height: frame size in pixels.
    """
    moving, direction = MOTIONS[CLASSES[label]]
    sides = int(rng.choice(SHAPE_SIDES))
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0))
    colours = np.stack([colour, colour * rng.uniform(0.25, 0.55)])
    stripe_freq = rng.uniform(0.6, 1.2)
    stripe_phase = rng.uniform(0.0, 2 * math.pi)
    background, background_depth = _background(rng, height, width)

    r_min, r_max = RADIUS_FRAC[0] * height, RADIUS_FRAC[1] * height
    margin = r_max + 1.0  # the object never leaves the frame
    steps = {name: (direction if name == moving else 0) for name in ("x", "y", "size", "angle")}
    cx = _channel(rng, margin, width - margin, num_frames, steps["x"])
    cy = _channel(rng, margin, height - margin, num_frames, steps["y"])
    radius = np.exp(_channel(rng, math.log(r_min), math.log(r_max), num_frames, steps["size"]))
    spin = math.radians(rng.uniform(*SPIN_DEG_PER_FRAME)) * steps["angle"]
    angle = rng.uniform(0.0, 2 * math.pi) + spin * np.arange(num_frames)
    return Scene(label, sides, colours, stripe_freq, stripe_phase, background, background_depth, cx, cy, radius, angle)


def depth_to_gray(depth_m: np.ndarray) -> np.ndarray:
    """Metric depth to the stored 8-bit value: `DEPTH_RANGE_M` maps linearly to 1 (near) .. 255 (far). uint8.

    The direction and the unused 0 match `data.decode.depth_to_uint8` (near = dark, 0 = no reading), so its per-clip
    rescaling on read is a linear stretch of this map.
    """
    near, far = DEPTH_RANGE_M
    return np.round(1.0 + np.clip((depth_m - near) / (far - near), 0.0, 1.0) * 254.0).astype(np.uint8)


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a scene.

    Returns:
        rgb: (T, H, W, 3) uint8; depth: (T, H, W) uint8 (see `depth_to_gray`); alpha: (T, H, W) float32 object
        coverage in [0, 1] (the ground-truth mask, for tests and previews).
    """
    height, width = scene.background.shape[:2]
    num_frames = len(scene.cx)
    # Only a square window around the object changes from the background; it is drawn for all frames at once.
    side = min(2 * math.ceil(float(scene.radius.max())) + 4, height, width)
    top = np.clip(np.floor(scene.cy - side / 2), 0, height - side).astype(np.int64)
    left = np.clip(np.floor(scene.cx - side / 2), 0, width - side).astype(np.int64)
    rows = top[:, None, None] + np.arange(side)[None, :, None]  # (T, S, 1)
    cols = left[:, None, None] + np.arange(side)[None, None, :]  # (T, 1, S)
    frame = np.arange(num_frames)[:, None, None]  # (T, 1, 1)

    cx, cy, r, angle = (np.asarray(a, dtype=np.float32)[:, None, None] for a in
                        (scene.cx, scene.cy, scene.radius, scene.angle))
    dx, dy = (cols + 0.5).astype(np.float32) - cx, (rows + 0.5).astype(np.float32) - cy  # pixel centres, (T, S, S)
    cos, sin = np.cos(angle), np.sin(angle)
    # Object coordinates in units of the radius; the object's +u axis points at angle `angle` from image +x towards
    # image +y (down), so a growing angle turns it clockwise on screen.
    u = (cos * dx + sin * dy) / r
    v = (-sin * dx + cos * dy) / r
    if scene.sides == 0:
        rho, apothem = np.hypot(u, v), 1.0
    else:
        # Gauge of a regular polygon with circumradius 1: largest projection on an edge normal over the apothem.
        apothem = math.cos(math.pi / scene.sides)
        normals = [(2 * k + 1) * math.pi / scene.sides for k in range(scene.sides)]
        rho = np.max([u * math.cos(a) + v * math.sin(a) for a in normals], axis=0) / apothem
    # (1 - rho) * apothem * r is the distance to the nearest edge in pixels: one pixel of anti-aliasing.
    alpha = np.clip(0.5 + (1.0 - rho) * apothem * r, 0.0, 1.0)  # (T, S, S)
    dome = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
    stripes = (0.5 + 0.5 * np.sin(2 * math.pi * scene.stripe_freq * u + scene.stripe_phase))[..., None]
    colours = scene.colours.astype(np.float32)
    fg = (colours[0] * stripes + colours[1] * (1.0 - stripes)) * (0.75 + 0.25 * dome[..., None])
    a3 = alpha[..., None]
    window_rgb = scene.background[rows, cols] * (1.0 - a3) + fg * a3  # (T, S, S, 3)
    object_depth = OBJECT_DEPTH_M * RADIUS_FRAC[1] * height / r - OBJECT_BULGE_M * dome
    window_depth = scene.background_depth[rows, cols] * (1.0 - alpha) + object_depth * alpha

    rgb = np.repeat(_to_uint8(scene.background)[None], num_frames, axis=0)
    rgb[frame, rows, cols] = _to_uint8(window_rgb)
    depth = np.repeat(depth_to_gray(scene.background_depth)[None], num_frames, axis=0)
    depth[frame, rows, cols] = depth_to_gray(window_depth)
    coverage = np.zeros((num_frames, height, width), dtype=np.float32)
    coverage[frame, rows, cols] = alpha
    return rgb, depth, coverage


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint8, rounded."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 mp4 (libx264, yuv420p) of (T, H, W, 3) RGB or (T, H, W) gray uint8 frames.

    The settings follow `data.shards.encode_h264` (no B-frames, a keyframe exactly every `GOP` frames), so demo
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
        height=params.height,
    )
    rgb, depth, _ = render_scene(scene)
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
    tmp = root / (STAMP + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(tmp, root / STAMP)


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
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Generate the demo dataset into ``out_dir`` (replacing an earlier demo there).

    Args:
        out_dir: new or empty folder, or one holding an earlier demo (its demo files are replaced).
        seed: base seed; the same seed gives byte-identical videos.
        per_class, val_per_class: videos per class in the train and val splits.
        num_frames: frames per video.
        size: (width, height) in pixels, both even.
        fps: frame rate.
        depth: also write depth videos, manifests and shards.
        shards: also write webdataset shards (with `data.shards.write_shards`).
        workers: processes for rendering; None = all cores (at most 8).
        progress: print progress to stderr.

    Returns:
        ``{"root", "classes" (names), "classes_file", "manifests": {key: csv}, "shards": {key: folder},
        "params"}`` with absolute paths; keys are ``train``, ``val`` and, with depth, ``depth_train``,
        ``depth_val``. ``shards`` is empty when ``shards=False``.

    Raises:
        UserError: bad parameters, or ``out_dir`` is a file or a non-empty folder that holds no demo.
    """
    params = DemoParams(seed, per_class, val_per_class, num_frames, size[0], size[1], fps, depth, shards)
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(1, workers)
    root = Path(out_dir).resolve()
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


def _write_shards(records: list[Record], out_dir: Path, shard_samples: int, workers: int, progress: bool) -> None:
    # Imported here: the shard writer pulls in webdataset, which `--no-shards` runs do not need.
    from data.shards import write_shards

    write_shards(records, out_dir, shard_samples=shard_samples, workers=workers, progress=progress)


def ensure_demo(
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
    workers: int | None = None,
    progress: bool = False,
    reuse_any: bool = False,
) -> dict:
    """`make_demo` unless ``out_dir`` already holds a complete demo made with the same parameters.

    Used by the quickstart, the training scripts and the tests. Arguments and result as for `make_demo`, plus
    ``reuse_any``: take a complete demo with shards whatever its parameters (the training scripts: a demo the user made
    with other settings, e.g. ``timemae demo --per-class 32``, is used, not overwritten).
    """
    params = DemoParams(seed, per_class, val_per_class, num_frames, size[0], size[1], fps, depth, shards)
    root = Path(out_dir).resolve()
    stamp = _read_stamp(root)
    same = stamp is not None and stamp.get("params") == dataclasses.asdict(params)
    other = reuse_any and stamp is not None and bool(stamp.get("params", {}).get("shards"))
    if stamp and stamp.get("complete") and (same or other):
        if not same:
            params = DemoParams(**stamp["params"])
        result = _absolute(root, stamp["outputs"], params)
        paths = [result["classes_file"], *result["manifests"].values(), *result["shards"].values()]
        if all(os.path.exists(p) for p in paths):
            return result
    return make_demo(
        root, seed=seed, per_class=per_class, val_per_class=val_per_class, num_frames=num_frames, size=size, fps=fps,
        depth=depth, shards=shards, workers=workers, progress=progress,
    )


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
    parser.add_argument("--per-class", type=int, default=defaults.per_class, help="training videos per class")
    parser.add_argument("--val-per-class", type=int, default=defaults.val_per_class, help="validation videos per class")
    parser.add_argument("--num-frames", type=int, default=defaults.num_frames, help="frames per video")
    parser.add_argument("--size", type=_parse_size, default=(defaults.width, defaults.height),
                        help="frame size WIDTHxHEIGHT, both even (default 160x120)")
    parser.add_argument("--fps", type=int, default=defaults.fps, help="frame rate")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base seed; same seed, same bytes")
    parser.add_argument("--no-depth", action="store_true", help="RGB only: no depth videos, manifests or shards")
    parser.add_argument("--no-shards", action="store_true", help="videos and manifests only")
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
        shards=not args.no_shards, workers=args.workers, progress=True,
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
