"""Decoding videos, frame folders and depth files into (T, H, W, 3) uint8 RGB frames.

One entry point, `open_video`, reads every source the datasets come in: a video file or its bytes, a folder of
JPEG/PNG frames, a folder of 16-bit depth PNGs, an MSRAction3D ``.bin`` depth file, or a depth video. Depth becomes
3-channel uint8 (`depth_to_uint8`), so every sample leaves here in the same form.

Backend decisions (``backend="auto"``):

- decord decodes, because one batch call seeks to the keyframe before each run of indices; PyAV decodes whatever
  decord cannot read or cannot be trusted with. PyAV decodes from the start of the stream and counts frames, which is
  frame-exact in every container, at the cost of decoding everything before the last wanted frame.
- decord returns the wrong frames, silently, for some files it opens: MPEG-TS/PS and FLV (timestamp seeking lands
  off by a GOP), AVI whose packets carry no timestamps, and open-GOP streams (H.264 ``open-gop``, MPEG-4 Part 2 with
  B-frames), where its keyframe indices are decode-order positions. So before decord is used, PyAV demuxes the
  container (no decoding; about as costly as opening it with decord) and decord is trusted only if the container is
  MP4/MOV, Matroska/WebM or AVI, every packet has a timestamp, decord's frame count equals the packet count, its frame
  timestamps increase, and its keyframe indices are the keyframes' positions in display order.
- Containers lie about their length (a truncated file keeps its header). ``Video.num_frames`` starts as the number of
  packets the container really holds; when a decode runs off the end (decord raises or returns too few frames, PyAV
  reaches the end of the stream early) the video switches to PyAV, ``num_frames`` becomes the number of frames that
  decoded, and indices past that point are clamped to the last frame that decoded.
- Intra-only H.264 (every packet a keyframe, timestamps in decode order; what `timemae shards` writes by default)
  decodes with `_IntraReader`: only the packets of the wanted frames go to the decoder, so a clip costs its own frames
  and nothing else, wherever they lie in the video (decord seeks before every frame of such a stream, and PyAV would
  decode everything up to the last wanted frame; README "Clip loading" has the figures). Other intra-only codecs keep
  decord.
- ``short_side`` decodes at about that short side (both backends resize while converting to RGB): never upscaled,
  aspect ratio kept, both sides even. decord2 cannot produce frames of a few widths (`_decord_width_fails`): a resize
  target width moves by 2 px off them, and a video that is natively that wide decodes with PyAV.
- ``backend="decord"`` skips the trust checks and the fallback (for benchmarks); ``backend="pyav"`` never uses decord.

Public API: `open_video`, `Video`, `depth_to_uint8`, `read_msr_bin`, `read_depth`, `decode_with_timeout`,
`set_thread_budget`, `thread_budget`, `keep_freed_memory`, `freeze_inherited_objects`, `worker_init`.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import io
import logging
import math
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image

from common.constants import IMAGE_EXTENSIONS, MODALITIES
from common.errors import DecodeError, UserError
from data.transforms import Box


def _import_decord() -> Any:
    """``import decord`` with the ``nvidia`` package hidden from it.

    decord2 dlopens, when imported, every library of the nvidia-* pip packages (installed with CUDA torch) with
    RTLD_GLOBAL, libnvblas among them; libnvblas then takes over the process's BLAS symbols and torch's CPU matrix
    products crash ("[NVBLAS] CPU Blas library need to be provided", then a segmentation fault). CPU decoding needs
    none of those libraries, and decord skips them when ``importlib.util.find_spec("nvidia")`` finds nothing, which a
    None entry in ``sys.modules`` makes it do.
    """
    if "decord" in sys.modules:
        return sys.modules["decord"]
    saved = sys.modules.get("nvidia", _NOT_IMPORTED)
    sys.modules["nvidia"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("decord")
    finally:
        if saved is _NOT_IMPORTED:
            del sys.modules["nvidia"]
        else:
            sys.modules["nvidia"] = saved


_NOT_IMPORTED = object()
decord = _import_decord()

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
# Frame folders and .bin files carry no frame rate; the Kinect cameras behind the depth datasets record at 30 fps.
ASSUMED_FPS = 30.0
# PyAV format names of the containers in which decord's seeking was checked frame-exact (given the checks above).
DECORD_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})
# Codecs whose intra-only streams `_IntraReader` decodes packet by packet (IDR frames decode on their own).
INTRA_CODECS = frozenset({"h264"})
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
WORKER_THREADS_ENV = "TIMEMAE_WORKER_THREADS"
MMAP_THRESHOLD = 64 << 20  # bytes; see keep_freed_memory
TRIM_THRESHOLD = 256 << 20

# What the decoder libraries raise for bad input (decord: DECORDError, RuntimeError and an AssertionError for a zero
# frame count; PyAV: FFmpegError subclasses, some of which are also OSError/ValueError).
_DECORD_ERRORS = (decord.DECORDError, RuntimeError, AssertionError, ValueError, OSError)
_PYAV_ERRORS = (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError)

_DECORD_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")

_thread_budget = 1

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------------
# Depth


def depth_to_uint8(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """Depth frames as 3-channel uint8 images (spec, Modalities).

    Spec decision, in three steps:

    1. Valid range: a value is valid when it is > 0 (0, or anything negative, is "no reading" on Kinect-style
       sensors); valid values above ``max_depth`` (when given) are clipped to ``max_depth``.
    2. Per-video scaling: the smallest valid value maps to 1 and the largest to 255, linearly (near = dark,
       far = bright); invalid pixels are 0, so "no reading" stays distinguishable from the nearest surface. If all
       valid values are equal they map to 255; with no valid value at all the output is all 0. "Per video" means over
       all frames passed in one call: `data.shards` passes the whole video; `Video.get_batch` on a depth source
       passes the frames it decoded (the sampled clip), since a reader that decodes a few frames has no more.
    3. The gray image is replicated to 3 channels so RGB-pretrained models apply unchanged.

    Args:
        depth: (T, H, W) depth, any integer or float dtype (uint16 millimetres, int32 from ``.bin``, uint8 gray).
        max_depth: optional upper clip, in the units of ``depth``.

    Returns:
        (T, H, W, 3) uint8.
    """
    d = np.asarray(depth)
    if d.ndim != 3:
        raise ValueError(f"depth must be (T, H, W), got shape {d.shape}")
    d = d.astype(np.float64)
    valid = d > 0
    if max_depth is not None:
        d = np.minimum(d, float(max_depth))
    gray = np.zeros(d.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = d[valid].min(), d[valid].max()
        if hi > lo:
            gray[valid] = np.rint(1.0 + (d[valid] - lo) * (254.0 / (hi - lo))).astype(np.uint8)
        else:
            gray[valid] = 255
    return np.repeat(gray[..., None], 3, axis=-1)


def read_msr_bin(source: str | os.PathLike | bytes) -> np.ndarray:
    """Read an MSRAction3D depth ``.bin``.

    Layout (the MSRAction3D release's format): int32 little-endian header (frames, width, height), then
    frames x height x width int32 little-endian depth values, row-major.

    Args:
        source: a path, or the file's bytes.

    Returns:
        (T, H, W) int32.

    Raises:
        DecodeError: missing, truncated or oversized file, or a header that is not three positive numbers.
    """
    name, data = _read_bytes(source, "bin")
    if len(data) < 12:
        raise DecodeError(f"{name}: {len(data)} bytes, shorter than the 12-byte header (frames, width, height)")
    frames, width, height = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    if frames <= 0 or width <= 0 or height <= 0:
        raise DecodeError(f"{name}: header frames={frames} width={width} height={height} is not an MSRAction3D header")
    expected = 12 + 4 * frames * width * height
    if len(data) < expected:
        raise DecodeError(
            f"{name}: truncated: the header announces {frames} frames of {width}x{height} ({expected} bytes) "
            f"but the file has {len(data)} bytes"
        )
    if len(data) > expected:
        raise DecodeError(
            f"{name}: {len(data) - expected} bytes after the {frames} frames of {width}x{height} the header "
            "announces; not an MSRAction3D depth .bin"
        )
    values = np.frombuffer(data, dtype="<i4", count=frames * height * width, offset=12)
    return values.reshape(frames, height, width).astype(np.int32)


def read_depth(source: str | os.PathLike | bytes, *, kind: str | None = None) -> np.ndarray:
    """All frames of a depth source, raw values (no scaling).

    Args:
        source: a folder of depth PNGs (sorted by name), an MSRAction3D ``.bin`` (path, or bytes with kind="bin"), or
            a depth video (path or bytes; converted to gray).
        kind: what the bytes are, as in `open_video`.

    Returns:
        (T, H, W): uint16 (16-bit PNGs), int32 (``.bin``) or uint8 (8-bit PNGs, videos).

    Raises:
        DecodeError: as `open_video`.
    """
    src = _Source.of(source, _normalise_kind(kind))
    if src.kind == "bin":
        return read_msr_bin(src.data if src.data is not None else src.path)
    if src.kind == "folder":
        reader = _FolderReader(src, "depth", None)
        return reader.read(np.arange(reader.num_frames))
    with _open_stream(src, modality="rgb", size_for=None, backend="auto", threads=thread_budget()) as video:
        frames = video.get_batch(np.arange(video.num_frames))
        # A stream that ends early has its count corrected during the call; the clamped copies past it go.
        return _to_gray(frames[: video.num_frames])


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) uint8, the channel mean (a depth video stores gray as R = G = B)."""
    return np.rint(rgb.astype(np.float32).mean(axis=-1)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Video


class Video:
    """An opened video; get one from `open_video`.

    Attributes:
        num_frames: frames that decode. Starts as the number of packets (or files) really present; if a decode finds
            the stream ending earlier, it shrinks to the number of frames that decoded (read it again after
            `get_batch` when recording it).
        fps: frames per second (``ASSUMED_FPS`` for frame folders and ``.bin`` files).
        height: height of the frames `get_batch` returns.
        width: width of the frames `get_batch` returns.
        modality: "rgb" or "depth".
        backend: what decodes now: "decord", "pyav", "pyav-intra" (`_IntraReader`), "frames" (image folder) or "bin".
    """

    def __init__(self, reader: _Reader, modality: str, name: str, fallback: Callable[[], _Reader] | None) -> None:
        self._reader = reader
        self._fallback = fallback
        self._name = name
        self.modality = modality
        self.num_frames = reader.num_frames
        self.fps = reader.fps
        self.height, self.width = reader.height, reader.width

    @property
    def backend(self) -> str:
        return self._reader.backend

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames by index.

        The sorted set of distinct indices is decoded in one backend call, then indexed, so unsorted and repeated
        indices cost nothing extra.

        Args:
            indices: (K,) frame indices in [0, num_frames), any order, repeats allowed.

        Returns:
            frames: (K, height, width, 3) uint8 RGB, ``frames[i]`` is frame ``indices[i]`` (clamped to the last frame
            that decodes, see the class docstring). Depth sources come out through `depth_to_uint8`, scaled over the
            distinct frames of this call.

        Raises:
            IndexError: an index outside [0, num_frames).
            DecodeError: the frames cannot be decoded.
        """
        idx = self._indices(indices)
        if idx.size == 0:
            return np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = self._read(unique)
        if self.modality == "depth":
            frames = depth_to_uint8(_to_gray(frames) if frames.ndim == 4 else frames)
        if frames.shape[1:3] != (self.height, self.width):
            raise DecodeError(f"{self._name}: decoded {frames.shape[1:3]} frames, expected {(self.height, self.width)}")
        if len(unique) == len(idx) and (len(idx) == 1 or bool((idx[1:] > idx[:-1]).all())):
            return frames  # already in the asked order (training clips): skip the copy
        return frames[inverse.reshape(-1)]

    def get_crops(self, clips: Sequence[tuple[Sequence[int] | np.ndarray, Box, np.ndarray]]) -> None:
        """Decode the frames of one or more clips once and write each clip's crop of its frames into its buffer.

        `get_batch` of the union of the clips' indices followed by one copy of the crops per clip, fused: the intra
        reader (RGB) writes the crops of each frame as it converts the frame, so the whole frames are never stored and
        no second pass reads them back (measured by `timemae bench-loader`). Other backends and depth decode with
        `get_batch` and copy.
        A buffer may be any strided view, such as a TIME grid buffer seen in source-frame order
        (`data.time_grid.source_view`), which no reshape to ``(L, h, w, 3)`` could give.

        Args:
            clips: ``(indices, box, out)`` per clip: (L,) frame indices in [0, num_frames) in any order, repeats
                allowed; the crop box (top, left, h, w) inside the (height, width) frames; and (..., h, w, 3) uint8
                whose leading axes, read in C order, are the L slots: slot i gets the crop of frame ``indices[i]``.

        Raises:
            IndexError: an index outside [0, num_frames).
            ValueError: a box leaves the frame, or a buffer does not fit.
            DecodeError: the frames cannot be decoded.
        """
        jobs = []
        for indices, box, out in clips:
            top, left, h, w = (int(v) for v in box)
            if h < 1 or w < 1 or top < 0 or left < 0 or top + h > self.height or left + w > self.width:
                raise ValueError(f"crop box {tuple(box)} does not lie inside the {self.height} x {self.width} frames")
            idx = self._indices(indices)
            if out.dtype != np.uint8 or out.shape[-3:] != (h, w, 3) or math.prod(out.shape[:-3]) != idx.size:
                raise ValueError(f"out {out.shape} {out.dtype} does not hold {idx.size} crops of {h} x {w} x 3 uint8")
            jobs.append((idx, slice(top, top + h), slice(left, left + w), out))
        if not jobs or not any(idx.size for idx, *_ in jobs):
            return
        if len(jobs) == 1 and (jobs[0][0].size == 1 or bool((jobs[0][0][1:] > jobs[0][0][:-1]).all())):
            unique, inverse = jobs[0][0], None  # one clip, sorted and distinct: a training clip
        else:
            unique, inverse = np.unique(np.concatenate([idx for idx, *_ in jobs]), return_inverse=True)
        if self.modality == "rgb" and isinstance(self._reader, _IntraReader):
            if inverse is None:
                _, rows, cols, out = jobs[0]
                targets = [[(view, rows, cols)] for view in _slot_views(out)]
            else:  # every frame's crops for every clip that uses it, repeats included
                targets = [[] for _ in range(len(unique))]
                positions = iter(inverse.reshape(-1).tolist())
                for _, rows, cols, out in jobs:
                    for view in _slot_views(out):
                        targets[next(positions)].append((view, rows, cols))
            try:
                self._reader.read_crops(unique, targets)
            except DecodeError as err:
                if self._fallback is None:
                    raise
                self._use_fallback(err)
            else:
                self.num_frames = self._reader.num_frames
                return
        frames = self.get_batch(unique)
        start = 0
        for idx, rows, cols, out in jobs:
            crops = frames[:, rows, cols]  # a view: the indexing below copies the crops only
            if inverse is not None:
                crops = crops[inverse[start : start + idx.size]]
            np.copyto(out, crops.reshape(out.shape))
            start += idx.size

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as a flat int64 array; IndexError for one outside [0, num_frames)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_frames):
            raise IndexError(
                f"{self._name}: frame indices must lie in [0, {self.num_frames}), got {idx.min()}..{idx.max()}"
            )
        return idx

    def _read(self, unique: np.ndarray) -> np.ndarray:
        try:
            frames = self._reader.read(unique)
        except DecodeError as err:
            if self._fallback is None:
                raise
            self._use_fallback(err)
            frames = self._reader.read(unique)
        self.num_frames = self._reader.num_frames
        return frames

    def _use_fallback(self, err: DecodeError) -> None:
        log.debug("%s: %s failed (%s); decoding with PyAV", self._name, self._reader.backend, err)
        self._reader.close()
        self._reader, self._fallback = self._fallback(), None

    def close(self) -> None:
        """Release the decoder; the object is unusable afterwards."""
        self._reader.close()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Video({self._name!r}, backend={self.backend}, num_frames={self.num_frames}, fps={self.fps:g}, "
            f"size={self.width}x{self.height}, modality={self.modality})"
        )


def open_video(
    source: str | os.PathLike | bytes,
    *,
    modality: str = "rgb",
    kind: str | None = None,
    short_side: int | None = None,
    backend: str = "auto",
    threads: int | None = None,
) -> Video:
    """Open a video, frame folder or depth file for random access by frame index.

    Args:
        source: a video file, a folder of JPEG/PNG frames (sorted by name, numbers compared as numbers), a folder of
            16-bit depth PNGs (modality="depth"), an MSRAction3D ``.bin`` (always depth), or bytes of one of the files.
        modality: "rgb", or "depth": frames are converted to gray (videos) and scaled by `depth_to_uint8`.
        kind: what the bytes (or a path with an unusual extension) are: "bin" for MSRAction3D; anything else (the
            container extension: "mp4", "avi", ...) or None means a video, whose format is read from its content.
        short_side: decode at about this short side (never upscaled; aspect kept; even sides); None = native size.
        backend: "auto" (intra-only H.264 packet by packet, else decord when trusted, else PyAV; see the module
            docstring), "decord" or "pyav".
        threads: decoder threads; None = the budget set by `set_thread_budget` (1 unless changed).

    Returns:
        A `Video` (also a context manager).

    Raises:
        UserError: an unknown modality, backend or kind, or a short_side < 2.
        DecodeError: the source is missing, empty or unreadable (the message names it and says why).
    """
    if modality not in MODALITIES:
        raise UserError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown decode backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if short_side is not None and short_side < 2:
        raise UserError(f"short_side {short_side} is < 2; use e.g. 128 or 256, or None for the native size")
    threads = thread_budget() if threads is None else max(1, int(threads))
    size_for = (lambda w, h: _target_size(w, h, short_side)) if short_side is not None else None
    return _open(source, kind=kind, modality=modality, size_for=size_for, backend=backend, threads=threads)


def _open(
    source: str | os.PathLike | bytes,
    *,
    kind: str | None,
    modality: str,
    size_for: Callable[[int, int], tuple[int, int]] | None,
    backend: str,
    threads: int,
) -> Video:
    src = _Source.of(source, _normalise_kind(kind))
    if src.kind == "bin":
        return Video(_BinReader(src, size_for), "depth", src.name, None)
    if src.kind == "folder":
        return Video(_FolderReader(src, modality, size_for), modality, src.name, None)
    return _open_stream(src, modality=modality, size_for=size_for, backend=backend, threads=threads)


def _open_stream(
    src: _Source,
    *,
    modality: str,
    size_for: Callable[[int, int], tuple[int, int]] | None,
    backend: str,
    threads: int,
) -> Video:
    """Video containers: probe with PyAV, then (auto) the intra reader or decord if trusted, else PyAV."""
    probe, demuxed = _scan(src, demux=backend != "decord", keep=backend == "auto")
    size = (probe.width, probe.height)
    if demuxed is not None:
        if size_for is not None:
            size = size_for(*size)
        intra = _IntraReader(src, probe, size, demuxed)
        return Video(intra, modality, src.name, lambda: _PyAVReader(src, probe, size, threads))
    if size_for is not None and size_for(*size) != size:
        size = _decord_safe_size(*size_for(*size))

    def pyav() -> _Reader:
        return _PyAVReader(src, probe, size, threads)

    if backend == "pyav":
        return Video(pyav(), modality, src.name, None)
    if backend == "auto" and probe.format_name not in DECORD_CONTAINERS:
        log.debug("%s: %s container, decoding with PyAV (decord: MP4/MOV, Matroska, AVI)", src.name, probe.format_name)
        return Video(pyav(), modality, src.name, None)
    if backend == "auto" and _decord_width_fails(size[0]):
        log.debug("%s: decord cannot return %d px wide frames; decoding with PyAV", src.name, size[0])
        return Video(pyav(), modality, src.name, None)
    try:
        reader = _DecordReader(src, probe, size, threads)
    except DecodeError as err:
        if backend == "decord":
            raise
        log.debug("%s: decord cannot open it (%s); decoding with PyAV", src.name, err)
        return Video(pyav(), modality, src.name, None)
    if backend == "decord":
        return Video(reader, modality, src.name, None)
    reason = reader.mistrust(probe)
    if reason:
        log.debug("%s: not decoding with decord: %s", src.name, reason)
        reader.close()
        return Video(pyav(), modality, src.name, None)
    return Video(reader, modality, src.name, pyav)


# ---------------------------------------------------------------------------------------------------------------------
# Sources and readers


@dataclass(frozen=True)
class _Source:
    """Where the data is: a path or bytes, and what it is ("video", "folder" or "bin")."""

    name: str
    kind: str
    path: str | None = None
    data: bytes | None = None

    @staticmethod
    def of(source: str | os.PathLike | bytes, kind: str | None) -> _Source:
        name = _describe(source, kind)
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if not data:
                raise DecodeError(f"{name}: empty (0 bytes)")
            return _Source(name, "bin" if kind == "bin" else "video", data=data)
        path = os.fspath(source)
        if not os.path.exists(path):
            raise DecodeError(f"{name}: no such file or folder")
        if os.path.isdir(path):
            return _Source(name, "folder", path=path)
        if os.path.getsize(path) == 0:
            raise DecodeError(f"{name}: empty file (0 bytes)")
        is_bin = kind == "bin" or (kind is None and path.lower().endswith(".bin"))
        return _Source(name, "bin" if is_bin else "video", path=path)

    def open_pyav(self) -> av.container.InputContainer:
        return av.open(self.path if self.path is not None else io.BytesIO(self.data), mode="r")

    def decord_source(self) -> str | io.BytesIO:
        # decord reads a file object into memory itself; BytesIO measured as fast as a temporary file, without disk.
        return self.path if self.path is not None else io.BytesIO(self.data)


def _describe(source: object, kind: str | None) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of {kind or 'video'}>"
    return os.fspath(source)  # type: ignore[arg-type]


def _normalise_kind(kind: str | None) -> str | None:
    if kind is None:
        return None
    if not isinstance(kind, str) or not kind.strip(". "):
        raise UserError(f"kind {kind!r} is not a file type; use e.g. 'mp4', 'avi' or 'bin', or None for a video")
    return kind.strip(". ").lower()


def _read_bytes(source: str | os.PathLike | bytes, kind: str) -> tuple[str, bytes]:
    name = _describe(source, kind)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name, bytes(source)
    try:
        with open(source, "rb") as f:
            return name, f.read()
    except OSError as err:
        raise DecodeError(f"{name}: {err.strerror or err}") from err


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side about ``short_side``; never upscaled; even sides when resized."""
    if short_side >= min(width, height):
        return width, height
    scale = short_side / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _decord_width_fails(width: int) -> bool:
    """Whether decord2 fails on RGB frames ``width`` px wide (a size-mismatch error on every batch).

    decord takes the channel count of a decoded frame as ``linesize // width`` when that divides evenly. FFmpeg pads
    an rgb24 row to the CPU's SIMD alignment (16, 32 or 64 bytes) by rounding the width up to a multiple of 1, 2, 4,
    ... pixels until the row is aligned; for a few widths (all < 192 px, e.g. 16, 24, 32, 48, 96, 144 with 64-byte
    alignment) the padded row is a whole multiple of the width, decord sees 4 or more "channels" and the copy fails.
    Checked for every alignment, since it depends on the machine's CPU.
    """
    for align in (16, 32, 64):
        step = 1
        while True:
            linesize = 3 * (-(-width // step) * step)
            if linesize % align == 0 or step >= align:
                break
            step *= 2
        if linesize % width == 0 and linesize != 3 * width:
            return True
    return False


def _decord_safe_size(width: int, height: int) -> tuple[int, int]:
    """A resize target decord can produce: the width moves by 2 px at a time away from `_decord_width_fails`."""
    for delta in (0, 2, -2, 4, -4, 6, -6, 8, -8):
        if width + delta >= 2 and not _decord_width_fails(width + delta):
            return width + delta, height
    return width, height


def _short(err: BaseException) -> str:
    """First line of a library error, at most 200 characters, without decord's "[time] file.cc:line:" prefixes."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = _DECORD_LOG_PREFIX.sub("", lines[0]).strip() if lines else ""
    text = text or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Reader:
    """What `Video` needs from a backend."""

    backend: str
    num_frames: int
    fps: float
    width: int
    height: int

    def read(self, unique: np.ndarray) -> np.ndarray:
        """(K,) sorted distinct indices -> (K, H, W, 3) uint8 RGB, or (K, H, W) raw depth."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources."""


@dataclass(frozen=True)
class _Probe:
    """What one PyAV pass over the container's packets (no decoding) says about the first video stream."""

    format_name: str
    width: int
    height: int
    fps: float
    num_packets: int  # packets with data: one per frame in every container checked
    key_positions: list[int] | None  # display-order indices of keyframes; None when some packet has no timestamp
    codec: str = ""
    intra_only: bool = False  # every packet is a keyframe, with a timestamp, in display order


@dataclass
class _Demuxed:
    """An open container and the data packets of its first video stream, in decode order (kept by `_scan`)."""

    container: av.container.InputContainer
    stream: av.VideoStream
    packets: list[av.Packet]


def _probe(src: _Source, demux: bool) -> _Probe:
    return _scan(src, demux, keep=False)[0]


def _scan(src: _Source, demux: bool, keep: bool) -> tuple[_Probe, _Demuxed | None]:
    """Probe a video; with ``keep``, an intra-only stream also comes back open, with its packets (see `_IntraReader`).

    Keeping them saves the second open and demux a reader would otherwise do, a noticeable part of decoding a few
    dozen small frames.
    """
    container = None
    try:
        container = src.open_pyav()
        if not container.streams.video:
            raise DecodeError(f"{src.name}: no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = stream.codec_context.name
        packets: list[av.Packet] = []
        if demux:
            try:
                for packet in container.demux(stream):
                    if packet.size:
                        packets.append(packet)
            except _PYAV_ERRORS:
                pass  # a truncated tail: the packets read so far are what the file holds
        fmt = container.format.name
    except DecodeError:
        if container is not None:
            container.close()
        raise
    except _PYAV_ERRORS as err:
        if container is not None:
            container.close()
        raise DecodeError(f"{src.name}: not a readable video ({_short(err)})") from err
    if width <= 0 or height <= 0:
        container.close()
        raise DecodeError(f"{src.name}: video stream has no frame size")
    if demux and not packets:
        container.close()
        raise DecodeError(f"{src.name}: video stream holds no frames")
    pts = [p.pts for p in packets]
    keys, intra = None, False
    if packets and all(t is not None for t in pts):
        order = sorted(range(len(packets)), key=lambda i: pts[i])
        keys = [rank for rank, i in enumerate(order) if packets[i].is_keyframe]
        intra = len(keys) == len(packets) and all(a < b for a, b in zip(pts[:-1], pts[1:], strict=True))
    probe = _Probe(fmt, width, height, fps if fps > 0 else ASSUMED_FPS, len(packets), keys, codec, intra)
    if keep and intra and codec in INTRA_CODECS:
        return probe, _Demuxed(container, stream, packets)
    container.close()
    return probe, None


class _DecordReader(_Reader):
    backend = "decord"

    def __init__(self, src: _Source, probe: _Probe, size: tuple[int, int], threads: int) -> None:
        self._name = src.name
        self.width, self.height = size
        resize = size != (probe.width, probe.height)
        try:
            self._vr = decord.VideoReader(
                src.decord_source(),
                ctx=decord.cpu(0),
                width=self.width if resize else -1,
                height=self.height if resize else -1,
                num_threads=threads,
            )
            self.num_frames = len(self._vr)
            fps = float(self._vr.get_avg_fps())
        except _DECORD_ERRORS as err:
            raise DecodeError(f"{src.name}: decord: {_short(err)}") from err
        self.fps = fps if np.isfinite(fps) and fps > 0 else probe.fps

    def mistrust(self, probe: _Probe) -> str | None:
        """Why decord's frame indexing cannot be trusted for this file, or None (see the module docstring)."""
        if probe.key_positions is None:
            return "packets without timestamps"
        if self.num_frames != probe.num_packets:
            return f"decord counts {self.num_frames} frames, the container holds {probe.num_packets} packets"
        try:
            pts = self._vr.get_frame_timestamp(np.arange(self.num_frames))[:, 0]
            keys = list(self._vr.get_key_indices())
        except _DECORD_ERRORS as err:
            return f"decord index unreadable ({_short(err)})"
        if not (np.isfinite(pts).all() and (np.diff(pts) > 0).all()):
            return "decord's frame timestamps do not increase"
        if keys != probe.key_positions:
            return "keyframes out of display order (open GOP or B-frames before a keyframe)"
        return None

    def read(self, unique: np.ndarray) -> np.ndarray:
        try:
            frames = self._vr.get_batch(unique).asnumpy()
        except (*_DECORD_ERRORS, IndexError) as err:
            raise DecodeError(f"{self._name}: decord: {_short(err)}") from err
        if frames.shape[0] != len(unique):
            raise DecodeError(f"{self._name}: decord returned {frames.shape[0]} of {len(unique)} frames")
        return frames

    def close(self) -> None:
        self._vr = None


class _PyAVReader(_Reader):
    """Decodes forward from the start, counting frames, which is frame-exact whatever the container's timestamps.

    The decoder stays open between calls: a request that starts after the last decoded frame (chunked reading of a
    whole video) continues where the last one stopped instead of starting over.
    """

    backend = "pyav"

    def __init__(self, src: _Source, probe: _Probe, size: tuple[int, int], threads: int) -> None:
        self._src = src
        self._threads = threads
        self._native = (probe.width, probe.height)
        self.width, self.height = size
        self.fps = probe.fps
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._next = 0  # index of the frame self._frames yields next
        self._last: av.VideoFrame | None = None
        self._reformatter = VideoReformatter()
        self.num_frames = probe.num_packets

    def _restart(self) -> None:
        self.close()
        try:
            self._container = self._src.open_pyav()
            stream = self._container.streams.video[0]
            stream.codec_context.thread_count = self._threads
            if self._threads > 1:
                stream.thread_type = "AUTO"
        except _PYAV_ERRORS as err:
            raise DecodeError(f"{self._src.name}: PyAV: {_short(err)}") from err
        self._frames = self._decode(self._container, stream)
        self._next = 0
        self._last = None

    @staticmethod
    def _decode(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except _PYAV_ERRORS:
                    continue  # one damaged packet: skip it and keep decoding, as ffmpeg does
                yield from frames
        except _PYAV_ERRORS:
            # The container breaks off (truncated file): the decoder still holds reordered frames; flush them.
            try:
                frames = stream.codec_context.decode(None)
            except _PYAV_ERRORS:
                return
            yield from frames

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        return _to_rgb(self._reformatter, frame, self.width, self.height)

    def read(self, unique: np.ndarray) -> np.ndarray:
        if self._frames is None or self._next > unique[0]:
            self._restart()
        out: list[np.ndarray] = []
        wanted = unique.tolist()
        try:
            for frame in self._frames:
                index, self._next, self._last = self._next, self._next + 1, frame
                if index == wanted[len(out)]:
                    out.append(self._rgb(frame))
                    if len(out) == len(wanted):
                        break
        except _PYAV_ERRORS as err:
            raise DecodeError(f"{self._src.name}: PyAV: {_short(err)}") from err
        if len(out) < len(wanted):
            # The stream ended early: now the count is exact; what lies past it is clamped to the last frame.
            self.num_frames = self._next
            if self._last is None:
                raise DecodeError(f"{self._src.name}: no frame decodes")
            last = self._rgb(self._last)
            out.extend(last for _ in range(len(wanted) - len(out)))
            self.close()
        return np.stack(out)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None


def _to_rgb(reformatter: VideoReformatter, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB of a decoded frame, resized when its size differs.

    One `VideoReformatter` per reader: ``frame.to_ndarray(format=...)`` builds a new swscale context for every frame,
    which costs more than the conversion itself at the sizes stored in shards.
    """
    if (frame.width, frame.height) == (width, height):
        return reformatter.reformat(frame, format="rgb24").to_ndarray()
    return reformatter.reformat(frame, width=width, height=height, format="rgb24").to_ndarray()


class _IntraReader(_Reader):
    """Intra-only H.264 (every frame an IDR, the default of `timemae shards`): decodes exactly the wanted packets.

    An IDR frame decodes on its own, so a batch sends only the packets of the wanted frames to the decoder: no seek,
    no frame decoded and thrown away, cost proportional to the frames asked for whatever the video's length. The
    container stays open with its packets from the probe (`_scan`). Decoding runs on one thread: one slice per frame
    leaves nothing to split within a frame, and frame threading would delay every output frame. Anything unexpected
    (a packet that fails, a frame that does not come out) raises DecodeError, and `Video` switches to `_PyAVReader`.
    """

    backend = "pyav-intra"

    def __init__(self, src: _Source, probe: _Probe, size: tuple[int, int], demuxed: _Demuxed) -> None:
        self._name = src.name
        self._demuxed = demuxed
        self.width, self.height = size
        self.fps = probe.fps
        self.num_frames = len(demuxed.packets)
        self._index = {p.pts: i for i, p in enumerate(demuxed.packets)}
        self._reformatter = VideoReformatter()
        demuxed.stream.codec_context.thread_count = 1

    def read(self, unique: np.ndarray) -> np.ndarray:
        out = np.empty((len(unique), self.height, self.width, 3), dtype=np.uint8)
        whole = slice(None)
        self._decode(unique, [[(frame, whole, whole)] for frame in out])
        return out

    def read_crops(self, unique: np.ndarray, targets: Sequence[Sequence[tuple[np.ndarray, slice, slice]]]) -> None:
        """For every ``(view, rows, cols)`` in ``targets[k]``: ``view[...] = frame unique[k][rows, cols]``."""
        self._decode(unique, targets)

    def _decode(self, unique: np.ndarray, targets: Sequence[Sequence[tuple[np.ndarray, slice, slice]]]) -> None:
        if self._demuxed is None:
            raise DecodeError(f"{self._name}: video is closed")
        codec = self._demuxed.stream.codec_context
        packets = self._demuxed.packets
        slot = {int(i): k for k, i in enumerate(unique.tolist())}
        done = 0
        try:
            for i in unique.tolist():
                for frame in codec.decode(packets[i]):
                    done += self._put(frame, slot, targets)
            if done < len(unique):  # a decoder that holds frames back gives them up when drained
                for frame in codec.decode(None):
                    done += self._put(frame, slot, targets)
                codec.flush_buffers()
        except _PYAV_ERRORS as err:
            raise DecodeError(f"{self._name}: PyAV: {_short(err)}") from err
        if done != len(unique):
            raise DecodeError(f"{self._name}: {len(unique) - done} of {len(unique)} intra frames did not decode")

    def _put(self, frame: av.VideoFrame, slot: dict[int, int], targets) -> int:
        k = slot.pop(self._index.get(frame.pts, -1), None)
        if k is None:
            return 0
        rgb = _to_rgb(self._reformatter, frame, self.width, self.height)  # a view of swscale's output
        for view, rows, cols in targets[k]:
            view[...] = rgb[rows, cols]
        return 1

    def close(self) -> None:
        if self._demuxed is not None:
            self._demuxed.container.close()
            self._demuxed = None


def _slot_views(out: np.ndarray) -> list[np.ndarray]:
    """The (h, w, 3) views of an (..., h, w, 3) array, its leading axes read in C order (no copy, any strides)."""
    views = [out]
    for _ in range(out.ndim - 3):
        views = [v for u in views for v in u]
    return views


def _natural_key(name: str) -> list[Any]:
    # "img_2" before "img_10": digit runs compare as numbers (re.split alternates text and digits, so types line up).
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class _FolderReader(_Reader):
    """A folder of frames: RGB images (JPEG/PNG), or depth PNGs (16-bit, or 8-bit gray) for modality="depth"."""

    backend = "frames"

    def __init__(self, src: _Source, modality: str, size_for: Callable[[int, int], tuple[int, int]] | None) -> None:
        self._name = src.name
        self._depth = modality == "depth"
        names = [n for n in os.listdir(src.path) if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not names:
            raise DecodeError(f"{src.name}: folder holds no {'/'.join(IMAGE_EXTENSIONS)} frames")
        self._files = [os.path.join(src.path, n) for n in sorted(names, key=_natural_key)]
        self.num_frames = len(self._files)
        self.fps = ASSUMED_FPS
        try:
            with Image.open(self._files[0]) as first:
                native = first.size
        except (OSError, ValueError) as err:
            raise DecodeError(f"{self._files[0]}: not a readable image ({_short(err)})") from err
        self.width, self.height = size_for(*native) if size_for is not None else native

    def _load(self, path: str) -> np.ndarray:
        size = (self.width, self.height)
        with Image.open(path) as img:
            if self._depth:
                arr = np.array(img)
                if arr.ndim == 3:
                    arr = _to_gray(arr[None, ..., :3])[0]
                # Nearest neighbour: interpolating would invent depths between a surface and 0 (invalid) pixels.
                return _resize_nearest(arr, size) if arr.shape[::-1] != size else arr
            if img.format == "JPEG":
                img.draft("RGB", size)  # DCT-domain downscaling: JPEG decodes faster at 1/2, 1/4, 1/8 size
            img = img.convert("RGB")
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(img)

    def read(self, unique: np.ndarray) -> np.ndarray:
        frames = []
        for i in unique.tolist():
            try:
                frames.append(self._load(self._files[i]))
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some broken PNG chunks
                raise DecodeError(f"{self._files[i]}: not a readable image ({_short(err)})") from err
        return np.stack(frames)


def _resize_nearest(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., H, W) -> (..., h, w), nearest source pixel to each output pixel centre; size = (w, h)."""
    w, h = size
    rows = ((np.arange(h) + 0.5) * frame.shape[-2] / h).astype(np.int64)
    cols = ((np.arange(w) + 0.5) * frame.shape[-1] / w).astype(np.int64)
    return frame[..., rows[:, None], cols[None, :]]


class _BinReader(_Reader):
    """An MSRAction3D ``.bin``: read whole at open (they are small: 320x240 x tens of frames)."""

    backend = "bin"

    def __init__(self, src: _Source, size_for: Callable[[int, int], tuple[int, int]] | None) -> None:
        self._depth = read_msr_bin(src.data if src.data is not None else src.path)
        t, h, w = self._depth.shape
        self.num_frames, self.fps = t, ASSUMED_FPS
        self.width, self.height = size_for(w, h) if size_for is not None else (w, h)

    def read(self, unique: np.ndarray) -> np.ndarray:
        frames = self._depth[unique]
        if frames.shape[1:] != (self.height, self.width):
            frames = _resize_nearest(frames, (self.width, self.height))
        return frames


# ---------------------------------------------------------------------------------------------------------------------
# Timeouts and threads


class _DecodeThread:
    """A long-lived daemon thread that runs one calling thread's decodes, one at a time.

    Reused across decodes: starting a thread per clip costs CPU on every clip (thread start-up, and fresh malloc arenas
    for the frames), a visible share of the work outside decoding in `timemae bench-loader`.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="timemae-decode", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.jobs.get()
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread, which re-raises it
                box["error"] = err
            done.release()
            del fn, box, done  # drop the finished job's references before waiting for the next one

    def usable(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive()


_decode_threads = threading.local()


def decode_with_timeout(fn: Callable[[], T], timeout_s: float | None, *, what: str = "decode") -> T:
    """Run ``fn()``; give up with DecodeError if it takes longer than ``timeout_s``.

    ``fn`` runs in a daemon thread and the caller waits ``timeout_s`` for it. A thread, not SIGALRM: an alarm only
    works in a process's main thread, replaces any other SIGALRM handler, and its handler only runs between Python
    bytecodes, so it cannot interrupt a decoder stuck in C either. A thread works the same in the main process, in
    DataLoader worker processes and in threads, and the caller gets control back even while the decoder is stuck in C
    (PyAV and decord release the GIL while decoding). The price: an abandoned decode cannot be killed; it goes on in
    the background until it finishes (daemon threads never keep the process alive), so ``fn`` must not share mutable
    state with the caller. Each calling thread (per process: a forked DataLoader worker starts its own) keeps one
    decode thread for all its decodes; after a timeout the stuck thread is abandoned and the next decode starts a new
    one.

    Args:
        fn: the work, e.g. ``lambda: load_clip(open_video(data), spec, rng)``.
        timeout_s: seconds; None or <= 0 runs ``fn`` directly with no limit.
        what: names the work in the error message (e.g. the sample key).

    Returns:
        ``fn()``'s result; exceptions from ``fn`` are re-raised as they are.

    Raises:
        DecodeError: ``fn`` did not finish in time.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn()
    runner = getattr(_decode_threads, "runner", None)
    if runner is None or not runner.usable():
        runner = _decode_threads.runner = _DecodeThread()
    box: dict[str, Any] = {}
    # A held lock that the decode thread releases when done: waiting on it is one C call, where an Event's wait runs a
    # Condition's Python code on both sides (slow with the caches cold after decoding).
    done = threading.Lock()
    done.acquire()
    runner.jobs.put((fn, box, done))
    if not done.acquire(timeout=timeout_s):
        _decode_threads.runner = None  # still busy with the stuck decode: abandon it
        raise DecodeError(f"{what}: timed out after {timeout_s:g} s (abandoned)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def set_thread_budget(n: int = 1) -> None:
    """Limit one data-loading process to ``n`` compute threads.

    Sets torch's intra-op threads, OpenCV's (when installed), the OpenMP/BLAS environment variables (read by libraries
    that initialise later and by child processes) and the default decoder threads of `open_video`. With W workers on
    C cores, n = C // W keeps the workers from oversubscribing the cores.
    """
    global _thread_budget
    n = int(n)
    if n < 1:
        raise UserError(f"thread budget {n} is < 1; use 1 or more threads per worker")
    _thread_budget = n
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        import cv2  # optional: only when something in the process uses OpenCV
    except ImportError:
        return
    cv2.setNumThreads(n)


def thread_budget() -> int:
    """The current per-process decode thread budget (1 until `set_thread_budget` changes it)."""
    return _thread_budget


def keep_freed_memory() -> bool:
    """Let this process's C heap keep freed memory for reuse instead of handing it back to the kernel (glibc only).

    A loader worker allocates and frees the same large blocks for every clip (decoded frames, about 4 MB; the float
    clip, 9.6 MB at 16 x 224 x 224). With glibc's default, blocks that large come from fresh ``mmap`` pages, or are
    trimmed off the heap when freed, so every clip page-faults its buffers in again, a large share of everything
    besides decoding. Raising the mmap threshold to 64 MiB and the trim threshold to
    256 MiB keeps the blocks in the heap (at most 256 MiB of freed memory stays with the process).

    Returns:
        Whether the thresholds were set (False without glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt parameter numbers from glibc's malloc.h; mallopt returns 1 on success.
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for a DataLoader: ``set_thread_budget($TIMEMAE_WORKER_THREADS or 1)``,
    `keep_freed_memory`, `freeze_inherited_objects`, and signals left to the training process.

    A worker gets the signals meant for its training process too: a terminal's Ctrl-C (SIGINT) and SLURM's SIGUSR1
    reach the whole process group or job step, ``timeout``'s SIGTERM the process group, and the DeepSpeed launcher
    sends SIGTERM to every process under each rank. The training process stops at its next step boundary, writes a
    checkpoint and then ends its workers; a worker that died first would fail that step. So SIGINT and SIGUSR1 are
    ignored, and SIGTERM is acted on only when it comes from the parent (torch's own worker handler does the same for
    the parent's SIGTERM); from anyone else it is dropped. A worker whose parent is gone exits by itself (torch checks
    every few seconds), so none outlives an aborted run. Signals are changed in DataLoader workers only.
    """
    import signal

    del worker_id  # every worker gets the same budget
    raw = os.environ.get(WORKER_THREADS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        raise UserError(f"{WORKER_THREADS_ENV}={raw!r} is not a whole number; set it to e.g. 1") from None
    if torch.utils.data.get_worker_info() is not None:  # a DataLoader worker, not a pool or the caller's process
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        parent = os.getppid()

        def parents_sigterm_only() -> None:
            while True:
                if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                    os._exit(0)

        # SIGTERM stays pending (blocked in every thread, decoder threads started later included) until this
        # thread takes it, with the sender's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=parents_sigterm_only, name="sigterm-from-parent", daemon=True).start()
    set_thread_budget(n)
    keep_freed_memory()
    freeze_inherited_objects()


def freeze_inherited_objects() -> int:
    """Move every object this process holds now out of reach of Python's cyclic garbage collector (``gc.freeze``).

    A loader worker starts with everything its parent had (torch, the model, the trainer: ~340k tracked objects),
    none of which it frees. Each full collection walks all of them: 0.17 s every ~1000 clips of the N = 2 shard path,
    and in a forked worker it writes to every object's header, so the pages it shares with the trainer get copied.
    Frozen, they are never walked; the worker's own garbage is collected as before.

    Returns:
        The number of objects frozen so far.
    """
    gc.freeze()
    return gc.get_freeze_count()
