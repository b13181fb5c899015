"""Frame readers behind `data.decode.open_video`: decord, PyAV, the intra-only H.264 reader, frame folders and
MSRAction3D ``.bin`` files, and the container probe that decides which one a video gets (the backend decisions are
in `data.decode`'s docstring).
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from common.constants import IMAGE_EXTENSIONS
from common.errors import DecodeError, UserError
from data.depth import _to_gray, read_msr_bin


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
        if not os.path.isfile(path):  # opening a FIFO blocks until a writer comes; a device never ends
            raise DecodeError(f"{name}: not a regular file (a FIFO, socket or device); give a video file")
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


# Frame folders and .bin files carry no frame rate; the Kinect cameras behind the depth datasets record at 30 fps.
ASSUMED_FPS = 30.0


# PyAV format names of the containers in which decord's seeking was checked frame-exact (given the checks above).
DECORD_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})


# Codecs whose intra-only streams `_IntraReader` decodes packet by packet (IDR frames decode on their own).
INTRA_CODECS = frozenset({"h264"})


# What the decoder libraries raise for bad input (decord: DECORDError, RuntimeError and an AssertionError for a zero
# frame count; PyAV: FFmpegError subclasses, some of which are also OSError/ValueError).
_DECORD_ERRORS = (decord.DECORDError, RuntimeError, AssertionError, ValueError, OSError)
_PYAV_ERRORS = (av.FFmpegError, OSError, ValueError, RuntimeError, EOFError)
_DECORD_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


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


def check_container(path: str) -> None:
    """DecodeError unless the container header of the file at ``path`` opens (from the path: milliseconds), so that
    a file that is no video at all (a 10 GB disk image named .mp4) is refused before all of it is read into memory.
    The message has no path in it: callers name the input."""
    try:
        with av.open(path, mode="r"):
            pass
    except _PYAV_ERRORS as err:
        raise DecodeError(f"not a readable video ({_short(err)})") from err


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
