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

Public API: `open_video`, `Video`, `read_depth`. The readers are in `data.readers`, the depth formats
(`depth_to_uint8`, `read_msr_bin`) in `data.depth`, the decode timeout (`decode_with_timeout`) in `data.timeout`, and
the loader-worker tuning (`worker_init`, `set_thread_budget`, ...) in `data.workers`; those names are also importable
from here, as older code does.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from common.constants import MODALITIES
from common.errors import DecodeError, UserError
from data.depth import _to_gray, depth_to_uint8, read_msr_bin  # noqa: F401 - depth_to_uint8, read_msr_bin re-exported
from data.readers import (  # noqa: F401 - decord, the readers and their probe, also reached through this module
    ASSUMED_FPS,
    DECORD_CONTAINERS,
    INTRA_CODECS,
    _BinReader,
    _decord_safe_size,
    _decord_width_fails,
    _DecordReader,
    _describe,
    _FolderReader,
    _IntraReader,
    _normalise_kind,
    _probe,
    _PyAVReader,
    _Reader,
    _scan,
    _slot_views,
    _Source,
    _target_size,
    decord,
)
from data.timeout import decode_with_timeout  # noqa: F401 - re-exported
from data.transforms import Box
from data.workers import (  # noqa: F401 - re-exported: older code reaches the worker tuning through this module
    MMAP_THRESHOLD,
    THREAD_ENV_VARS,
    TRIM_THRESHOLD,
    WORKER_THREADS_ENV,
    freeze_inherited_objects,
    keep_freed_memory,
    set_thread_budget,
    thread_budget,
    worker_init,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")


# ---------------------------------------------------------------------------------------------------------------------
# Depth


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


# ---------------------------------------------------------------------------------------------------------------------
# Timeouts and threads


