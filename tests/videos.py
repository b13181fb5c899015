"""Generators of small test videos whose frames say which frame they are.

Every generated frame ``k`` carries ``k`` in its pixels as a grid of black/white cells (one bit per cell, most
significant bit top-left), so a test decodes any index list and checks with `read_index` that it got exactly those
frames. The cells are a fixed fraction of the frame (``CELL_COLS`` x ``CELL_ROWS``), so the code survives lossy
H.264 and decoding at a smaller size (a 64x48 frame has 16x16 px cells; at short side 24 still 8x8).

Public API (reused by other tests; keep it small and stable):
    write_index_video, write_index_frames, write_depth_pngs, write_msr_bin, msr_bin_bytes, index_frame, index_depth,
    read_index, write_tinted_video. Import it as `from videos import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
from PIL import Image

CELL_COLS = 4
CELL_ROWS = 3
MAX_FRAMES = 2 ** (CELL_COLS * CELL_ROWS)  # 4096 distinct indices

# Pixel formats the PyAV encoders accept for 8-bit 4:2:0 content (mjpeg wants the full-range variant).
_PIX_FMT = {"mjpeg": "yuvj420p"}


def _bit_grid(index: int) -> np.ndarray:
    """(CELL_ROWS, CELL_COLS) bool: the bits of ``index``, most significant first, row-major."""
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"frame index {index} outside 0..{MAX_FRAMES - 1}")
    bits = [(index >> (CELL_ROWS * CELL_COLS - 1 - b)) & 1 for b in range(CELL_ROWS * CELL_COLS)]
    return np.array(bits, dtype=bool).reshape(CELL_ROWS, CELL_COLS)


def _cell_edges(size: int, cells: int) -> list[int]:
    return [round(i * size / cells) for i in range(cells + 1)]


def index_frame(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """One frame carrying ``index``.

    Args:
        index: frame number, 0 <= index < MAX_FRAMES.
        width: frame width in px (>= 2 * CELL_COLS * 4 keeps cells decodable after 4:2:0 chroma subsampling).
        height: frame height in px.

    Returns:
        frame: (height, width, 3) uint8, cells 0 or 255 (gray, so channel order does not matter).
    """
    grid = _bit_grid(index)
    ys, xs = _cell_edges(height, CELL_ROWS), _cell_edges(width, CELL_COLS)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for r in range(CELL_ROWS):
        for c in range(CELL_COLS):
            if grid[r, c]:
                frame[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = 255
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of `index_frame`, for a frame at any size.

    Args:
        frame: (H, W, 3) or (H, W) uint8.

    Returns:
        The index encoded in the frame; each cell is read from its central half so that blurred edges (lossy codecs,
        resizing) do not matter.
    """
    gray = frame.astype(np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    h, w = gray.shape
    ys, xs = _cell_edges(h, CELL_ROWS), _cell_edges(w, CELL_COLS)
    value = 0
    for r in range(CELL_ROWS):
        for c in range(CELL_COLS):
            y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
            qy, qx = (y1 - y0) // 4, (x1 - x0) // 4
            cell = gray[y0 + qy : y1 - qy, x0 + qx : x1 - qx]
            value = (value << 1) | int(cell.mean() > 127.5)
    return value


def write_index_video(
    path: str | os.PathLike,
    num_frames: int,
    width: int = 64,
    height: int = 48,
    fps: int = 25,
    codec: str = "libx264",
    gop: int | None = None,
) -> str:
    """Write a video whose frame ``k`` shows ``index_frame(k)``; the container follows the file extension.

    Args:
        path: output file (.mp4, .avi, .mkv, ...).
        num_frames: frames to write (<= MAX_FRAMES).
        width, height: frame size in px (even, for 4:2:0).
        fps: frame rate.
        codec: any PyAV encoder, e.g. "libx264" (default, with B-frames), "mpeg4", "mjpeg", "ffv1".
        gop: keyframe interval; None keeps the encoder default (250 for libx264, i.e. one keyframe in short videos).

    Returns:
        ``str(path)``.
    """
    path = str(path)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = _PIX_FMT.get(codec, "yuv420p")
        if gop is not None:
            stream.codec_context.gop_size = gop
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(k, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_index_frames(
    folder: str | os.PathLike, num_frames: int, width: int = 64, height: int = 48, ext: str = "png"
) -> str:
    """Write a frame folder ``img_00001.<ext>`` ... (1-based names, as in UCF101 / Kinetics frame dumps).

    Args:
        folder: created if missing.
        num_frames: frames to write.
        width, height: frame size in px.
        ext: "png" (lossless) or "jpg".

    Returns:
        ``str(folder)``.
    """
    os.makedirs(folder, exist_ok=True)
    for k in range(num_frames):
        Image.fromarray(index_frame(k, width, height)).save(os.path.join(folder, f"img_{k + 1:05d}.{ext}"))
    return str(folder)


def index_depth(num_frames: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Depth frames carrying their index, with invalid pixels.

    Cells with bit 1 are near (1000 + 10 k mm), cells with bit 0 far (3000 + 10 k mm); the first pixel row is 0
    (invalid, as Kinect reports missing depth).

    Returns:
        depth: (num_frames, height, width) uint16, millimetres.
    """
    out = np.empty((num_frames, height, width), dtype=np.uint16)
    for k in range(num_frames):
        bits = index_frame(k, width, height)[..., 0] > 0
        out[k] = np.where(bits, 1000 + 10 * k, 3000 + 10 * k)
    out[:, 0, :] = 0
    return out


def write_depth_pngs(
    folder: str | os.PathLike,
    num_frames: int,
    width: int = 64,
    height: int = 48,
    depth: np.ndarray | None = None,
) -> str:
    """Write 16-bit depth PNGs named like NTU RGB+D masked depth: ``MDepth-00000001.png`` ....

    Args:
        folder: created if missing.
        num_frames: frames to write (ignored when ``depth`` is given).
        width, height: frame size in px (ignored when ``depth`` is given).
        depth: (T, H, W) uint16 to write; default ``index_depth(num_frames, width, height)``.

    Returns:
        ``str(folder)``.
    """
    if depth is None:
        depth = index_depth(num_frames, width, height)
    os.makedirs(folder, exist_ok=True)
    for k, frame in enumerate(np.asarray(depth, dtype=np.uint16)):
        Image.fromarray(frame).save(os.path.join(folder, f"MDepth-{k + 1:08d}.png"))
    return str(folder)


def msr_bin_bytes(depth: np.ndarray) -> bytes:
    """MSRAction3D ``.bin`` bytes: int32 LE header (frames, width, height), then (T, H, W) int32 LE row-major.

    Args:
        depth: (T, H, W) integer depth.
    """
    depth = np.asarray(depth)
    t, h, w = depth.shape
    return np.array([t, w, h], dtype="<i4").tobytes() + depth.astype("<i4").tobytes()


def write_msr_bin(path: str | os.PathLike, depth: np.ndarray) -> str:
    """Write ``depth`` (T, H, W) as an MSRAction3D ``.bin`` file (see `msr_bin_bytes`); returns ``str(path)``."""
    with open(path, "wb") as f:
        f.write(msr_bin_bytes(depth))
    return str(path)


def write_tinted_video(path: str | os.PathLike, colour: tuple[int, int, int], rng: np.random.Generator, *,
                       frames: int = 8, size: tuple[int, int] = (32, 32), noise: float = 30.0,
                       brightness: tuple[float, float] = (0.7, 1.0), codec: str = "mpeg4") -> str:
    """A clip tinted ``colour`` with a per-video brightness and per-frame noise: any frame tells its class (for tests
    where a model must learn, or a probe must find, a signal it can see). ``size`` is (width, height)."""
    width, height = size
    tint = np.array(colour, dtype=np.float32) * rng.uniform(*brightness)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            pixels = np.clip(tint + rng.normal(0, noise, (height, width, 3)), 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)
