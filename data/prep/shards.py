"""Checking the videos of a manifest and writing them into webdataset tar shards.

One sample in a shard is two tar members with the same key:

    {key}.{ext}   the video bytes; ext is the container ("mp4", "avi", ...), always "mp4" for re-encoded videos
    {key}.json    label, class_name, subject, view, episode, split, modality, num_frames (frames that really decode),
                  fps, width, height (of the stored video), source (input path), stored ("original" or "h264"),
                  decode_modality (the modality to pass to `data.decode.open_video` for these bytes), depth_scaling

`write_shards` keeps videos byte for byte unless ``short_side`` or ``gop`` is given (the ``timemae shards`` command
re-encodes by default, see below); frame folders (JPEG/PNG), 16-bit depth PNG folders and MSRAction3D ``.bin`` files
are always encoded, since a shard sample must be one playable video. Encoding is H.264, yuv420p, constant frame rate,
no B-frames, CAVLC, a keyframe exactly every ``gop`` frames (so a clip decode seeks to a keyframe at most gop - 1
frames before its first frame). Depth that gets encoded is scaled to 8 bits with
`data.depth.depth_to_uint8` over the whole video first (one scale per video, which a reader that sees a few frames
at a time cannot do), so its bytes decode as ordinary RGB (``decode_modality == "rgb"``); a depth video kept as
bytes is scaled by the reader, per clip (``decode_modality == "depth"``).

Short side: every source frame ends up as one TIME grid cell, so ``timemae shards`` stores by default
(``--short-side auto``) the cell size rounded up to a multiple of 32 (`auto_short_side`: N = 2 at 224 -> 128,
N = 1 -> 224, N = 4 -> 64); ``--short-side keep`` stores the original bytes. `data.clip.ClipSpec.decode_short_side`
gives the short side at which even the smallest multi-scale training crop still fills a cell at full resolution
(170 for N = 2, 340 for N = 1 at 224); a stored video smaller than that is decoded at its own size, never upscaled.

GOP: 1 by default, every frame an IDR keyframe, which `data.decode` decodes packet by packet: a clip costs exactly
its own frames wherever they lie, and no seeking; with longer GOPs every wanted frame costs a seek to its keyframe
and the frames between. The price is size (about twice GOP 16's bytes). ``timemae bench-loader --gop-sweep``
measures both; README "Clip loading" records the figures with their machine.

Every input is checked before it is written (exists, non-empty, every frame decodes, has >= 1 frame); bad ones go to
``quarantine.csv`` with the reason and never into a shard. `check_records` (``timemae check``) runs exactly this
preparation, encoding included, and only drops the bytes, so it flags what ``timemae shards`` would quarantine.

Before any of that, an input whose content contradicts its modality is refused for the whole run (`ModalityMismatch`,
a `UserError`): read with the wrong modality it would decode without an error into a wrong sample (see
`modality_mismatch` for the rule). Writing stops at the first failed write into the output folder (a full disk):
the shard being written is removed, complete ones stay, and `ShardWriteError` says so.

The output is deterministic: samples go in manifest order whatever the number of workers, keys come from the manifest
position and file name, tar members have fixed mtime/owner/mode, and no timestamps are written, so the same input
gives byte-identical shards.

Public API: `check_records`, `write_shards`, `modality_mismatch`, `ModalityMismatch`, `ShardWriteError`,
`parse_shard_size`, `parse_short_side`, `auto_short_side`, `sample_key`, `encode_h264`, `write_quarantine`, and the
``check`` / ``shards`` commands (`CLI`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
import webdataset as wds
from av.video.reformatter import VideoReformatter
from PIL import Image
from tqdm import tqdm

from common.constants import IMAGE_EXTENSIONS
from common.errors import DecodeError, UserError
from common.files import atomic_write_text
from data import decode
from data.depth import depth_to_uint8
from data.prep.manifest import Record, class_names, read_manifest, write_manifest
from data.readers import check_container
from data.timeout import decode_with_timeout
from data.workers import worker_init

DEFAULT_SHARD_SAMPLES = 500
DEFAULT_GOP = 1  # all intra: fastest to sample by far (numbers in the module docstring)
DEFAULT_TIMEOUT_S = 300.0
# H.264 quality: visually lossless at crf 18; "veryfast" keeps encoding cheap next to decoding the source.
X264_CRF = 18
X264_PRESET = "veryfast"
# Frames decoded per get_batch call while re-encoding: bounds the writer's memory for long, large videos.
ENCODE_CHUNK = 64
# Fixed tar member metadata: part of what makes two runs byte-identical.
TAR_MTIME = 0
TAR_USER = "timemae"
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
QUARANTINE_FIELDS = ["path", "label", "modality", "reason"]


# ----------------------------------------------------------------------------------------------------------------------
# One input: probe (check), and the bytes + record that go into the shard


@dataclasses.dataclass(frozen=True)
class _Options:
    short_side: int | None
    gop: int | None
    timeout_s: float


def _input_kind(path: str) -> str:
    """The input type: "video" (kept as bytes unless re-encoding), "frames" (image folder) or "bin" (MSRAction3D)."""
    if os.path.isdir(path):
        return "frames"
    return "bin" if path.lower().endswith(".bin") else "video"


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".") or "mp4"


def _check_exists(path: str) -> str | None:
    """The reason ``path`` cannot be a sample before any decoding, or None."""
    if not os.path.exists(path):
        return "missing: no such file or folder"
    if os.path.isdir(path):
        if not any(name.lower().endswith(FRAME_SUFFIXES) for name in os.listdir(path)):
            return "empty: folder holds no .jpg/.png frames"
    elif not os.path.isfile(path):  # a FIFO would block the reader, a device never end
        return "not a regular file: a FIFO, socket or device"
    elif os.path.getsize(path) == 0:
        return "empty: file has 0 bytes"
    return None


def _video_info(video: decode.Video) -> dict[str, Any]:
    """Frame count, fps and size of an opened video, after decoding every frame (ENCODE_CHUNK at a time).

    Every frame, not a sample of them: a frame that fails anywhere (a damaged image in a frame folder, a broken
    packet decord gives up on) must make the input bad here rather than fail a training clip later.
    """
    if video.num_frames < 1:
        raise DecodeError("no frame decodes")
    height, width = video.height, video.width
    for chunk in _chunks(video):
        height, width = chunk.shape[1:3]
    n = int(video.num_frames)  # lowered by get_batch when the stream ends before the container says
    if n < 1:
        raise DecodeError("no frame decodes")
    fps = float(video.fps) if video.fps and math.isfinite(video.fps) and video.fps > 0 else 0.0
    return {"num_frames": n, "fps": fps, "height": int(height), "width": int(width)}


def _load(record: Record) -> tuple[bytes | None, dict[str, Any]]:
    """Check one input and decode all its frames; raises DecodeError with the reason.

    Returns:
        (the file's bytes for a video file, else None; {"num_frames", "fps", "height", "width"}).
    """
    reason = _check_exists(record.path)
    if reason:
        raise DecodeError(reason)
    if _input_kind(record.path) != "video":
        with decode.open_video(record.path, modality=record.modality) as video:
            return None, _video_info(video)
    check_container(record.path)
    with open(record.path, "rb") as f:
        data = f.read()
    # Probe the bytes, not the path: the shard reader only ever sees bytes.
    with decode.open_video(data, modality=record.modality, kind=_ext(record.path)) as video:
        return data, _video_info(video)


def _even_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """Output (height, width): short side ``short_side`` (never upscaled), both even (4:2:0 needs even sides)."""
    if short_side is not None and min(height, width) > short_side:
        scale = short_side / min(height, width)
        height, width = round(height * scale), round(width * scale)
    return max(2, height - height % 2), max(2, width - width % 2)


def _rate(fps: float) -> Fraction:
    # NTSC rates (29.97 = 30000/1001) survive exactly; anything unknown becomes 30 fps.
    return Fraction(fps).limit_denominator(1001) if fps > 0 else Fraction(30)


def encode_h264(
    chunks: Iterator[np.ndarray], fps: float, short_side: int | None, gop: int, *, nearest: bool = False
) -> tuple[bytes, dict]:
    """Encode RGB frames as H.264 mp4 bytes.

    Args:
        chunks: (t, H, W, 3) uint8 RGB arrays, in order, all of one size.
        fps: frame rate to record (0 = unknown -> 30).
        short_side: resize to this short side (area interpolation, never upscaled); None keeps the size.
        gop: keyframe interval in frames.
        nearest: resize with the nearest pixel (depth: interpolation would invent depths at object edges).

    Returns:
        (mp4 bytes, {"num_frames", "height", "width"} of what was encoded).
    """
    buf = io.BytesIO()
    count, size = 0, None
    reformatter = VideoReformatter()  # one swscale context for the whole video, not one per frame
    # fflags=bitexact keeps version strings and other non-reproducible bits out of the container.
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        stream = None
        for chunk in chunks:
            for rgb in chunk:
                if stream is None:
                    size = _even_size(rgb.shape[0], rgb.shape[1], short_side)
                    stream = out.add_stream("libx264", rate=_rate(fps))
                    stream.height, stream.width = size
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.gop_size = gop
                    # threads=1: identical bytes on every machine (and the pool already uses the cores); bf=0 and
                    # a fixed keyint without scene cuts make random access cost predictable; cabac=0 (CAVLC):
                    # intra frames decode faster for a few % more bytes (see DEFAULT_GOP).
                    stream.options = {
                        "crf": str(X264_CRF),
                        "preset": X264_PRESET,
                        "threads": "1",
                        "bf": "0",
                        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:cabac=0",
                    }
                h, w = size
                if short_side is None or min(rgb.shape[:2]) <= short_side:
                    rgb = rgb[:h, :w]  # drop an odd last row/column rather than resample
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                interpolation = "POINT" if nearest else "AREA"
                frame = reformatter.reformat(frame, width=w, height=h, format="yuv420p", interpolation=interpolation)
                frame.pts = count
                out.mux(stream.encode(frame))
                count += 1
        if stream is None:
            raise DecodeError("no frame decodes")
        out.mux(stream.encode(None))
    return buf.getvalue(), {"num_frames": count, "height": size[0], "width": size[1]}


def _chunks(video: decode.Video) -> Iterator[np.ndarray]:
    """All frames of a video, ENCODE_CHUNK at a time, stopping where decoding really ends."""
    start = 0
    while start < video.num_frames:
        stop = min(start + ENCODE_CHUNK, video.num_frames)
        frames = video.get_batch(np.arange(start, stop))
        # A stream that ends early lowers num_frames during the call and clamps the indices past it: drop those.
        yield frames[: max(0, video.num_frames - start)]
        start = stop


def _encoded_sample(record: Record, opts: _Options) -> tuple[str, bytes, dict]:
    """Decode an input fully and encode it as H.264; depth is scaled to 8 bits over the whole video first."""
    kind = _input_kind(record.path)
    source: str | bytes = record.path
    if kind == "video":
        check_container(record.path)
        with open(record.path, "rb") as f:
            source = f.read()
    ext = _ext(record.path) if kind == "video" else None
    gop = opts.gop or DEFAULT_GOP
    if record.modality == "depth" or kind == "bin":
        depth = decode.read_depth(source, kind=ext)  # (T, H, W) raw values
        fps = 0.0
        if kind == "video":
            with decode.open_video(source, kind=ext) as video:
                fps = float(video.fps)
        data, info = encode_h264(iter([depth_to_uint8(depth)]), fps, opts.short_side, gop, nearest=True)
        scaling = "per-video"
    else:
        with decode.open_video(source, kind=ext) as video:
            fps = float(video.fps)
            data, info = encode_h264(_chunks(video), fps, opts.short_side, gop)
        scaling = ""
    # The stored bytes must decode to exactly the frames that were encoded.
    with decode.open_video(data, kind="mp4") as check:
        got = _video_info(check)
    if got["num_frames"] != info["num_frames"]:
        raise DecodeError(f"encoded video decodes to {got['num_frames']} frames, {info['num_frames']} were written")
    meta = {**got, "fps": float(_rate(fps)), "stored": "h264", "decode_modality": "rgb", "depth_scaling": scaling}
    return "mp4", data, meta


def _prepare(record: Record, opts: _Options) -> tuple[str, bytes, dict]:
    """(extension, bytes, JSON record) of one input's shard sample; raises DecodeError with the reason."""
    if opts.short_side is not None or opts.gop is not None or _input_kind(record.path) != "video":
        reason = _check_exists(record.path)
        if reason:
            raise DecodeError(reason)
        ext, data, info = _encoded_sample(record, opts)
    else:
        data, info = _load(record)
        ext = _ext(record.path)
        info = {**info, "stored": "original", "decode_modality": record.modality, "depth_scaling": ""}
    meta = {
        "label": record.label,
        "class_name": record.class_name,
        "subject": record.subject,
        "view": record.view,
        "episode": record.episode,
        "split": record.split,
        "modality": record.modality,
        "source": record.path,
        **info,
    }
    return ext, data, meta


def _guarded(fn: Callable[[], Any], timeout_s: float, what: str) -> tuple[Any, str | None]:
    """(result, None), or (None, reason) for anything that goes wrong with one input."""
    try:
        return decode_with_timeout(fn, timeout_s, what=what), None
    except DecodeError as err:
        return None, str(err) or "decode error"
    except Exception as err:  # noqa: BLE001 -- any library failure on one file quarantines that file only
        return None, f"{type(err).__name__}: {err}"


def _prepare_task(task: tuple[Record, _Options]) -> tuple[tuple | None, str | None]:
    record, opts = task
    return _guarded(lambda: _prepare(record, opts), opts.timeout_s, "decoding")  # the reason is listed after the path


def _mismatch_task(task: tuple[Record, float]) -> tuple[str, str] | None:
    record, timeout_s = task
    # An input that cannot be read has no say here; the full check quarantines it with the reason.
    return _guarded(lambda: modality_mismatch(record), timeout_s, "decoding")[0]


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Any]:
    """A process pool for `_run_tasks` when ``workers > 1`` (one for all passes of a run), else None."""
    if workers <= 1:
        yield None
        return
    # spawn: decoders hold threads and library state that a fork would copy mid-flight.
    with multiprocessing.get_context("spawn").Pool(workers, initializer=worker_init, initargs=(0,)) as pool:
        yield pool


def _run_tasks(fn: Callable, tasks: Sequence, pool: Any, progress: bool, desc: str) -> Iterator:
    """Results of ``fn`` over ``tasks`` in task order, from ``pool`` (see `_pool`) unless it is None."""
    bar = tqdm(total=len(tasks), desc=desc, unit="video", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    try:
        # imap keeps task order: the output does not depend on the number of workers.
        for result in map(fn, tasks) if pool is None else pool.imap(fn, tasks, chunksize=1):
            yield result
            bar.update()
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# Modality: what an input's content says it is
#
# A row read with the wrong modality decodes without any error into a wrong sample: 16-bit depth PNGs read as RGB
# saturate to near white, a colour video read as depth becomes gray "depth". The rule refuses only what the content
# settles; anything else keeps the modality it was given:
# - marked rgb, but depth: an MSRAction3D .bin; frame images with one channel of more than 8 bits (PIL modes I;16*,
#   I, F: depth PNGs); a video whose pixel format is one channel of more than 8 bits (gray16le, gray12le, ...).
#   8-bit gray frames or video marked rgb pass (grayscale footage is RGB data).
# - marked depth, but colour: 8-bit frames or video in which at least COLOUR_SHARE of the pixels of the first, middle
#   and last frame have channels COLOUR_SPREAD or more levels apart. Depth stored as gray video or as R = G = B images
#   passes: gray through H.264 4:2:0 decodes with every channel equal (the demo's depth videos: no pixel apart),
#   where colour video has most of its pixels far apart (the demo's RGB videos: 84-99 % at >= 32 levels).
COLOUR_SPREAD = 32  # levels between the largest and the smallest channel of one pixel
COLOUR_SHARE = 0.01  # share of the sampled pixels at least COLOUR_SPREAD apart that makes an input colour
_DEEP_IMAGE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_GRAY_IMAGE_MODES = ("1", "L", "LA", "La", *_DEEP_IMAGE_MODES)


def _image_mode(folder: str) -> str:
    """PIL mode of the first frame of a frame folder (its frames share one format)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    with Image.open(os.path.join(folder, names[0])) as img:
        return img.mode


def _video_format(path: str) -> av.VideoFormat | None:
    """Pixel format of the first video stream of a file (read from the header, nothing decoded)."""
    with av.open(path) as container:
        return container.streams.video[0].codec_context.format if container.streams.video else None


def _single_channel(fmt: av.VideoFormat | None) -> bool:
    return fmt is not None and fmt.name.startswith(("gray", "ya"))  # luma only (ya: with alpha)


def _colour_share(path: str) -> float:
    """Share of the pixels of the first, middle and last frame whose channels are COLOUR_SPREAD or more apart."""
    with decode.open_video(path, modality="rgb") as video:
        n = video.num_frames
        frames = video.get_batch(sorted({0, n // 2, n - 1})).astype(np.int16)
    return float(((frames.max(axis=-1) - frames.min(axis=-1)) >= COLOUR_SPREAD).mean())


def modality_mismatch(record: Record) -> tuple[str, str] | None:
    """What an input is, when its content contradicts ``record.modality`` (the rule is in the comment above).

    Reads the file header or the first image for inputs marked rgb, and decodes three frames of those marked depth.

    Returns:
        (what the input is, in words; the modality that reads it), or None where the content agrees with the modality
        or does not settle it. A missing or empty input gives None (the full check quarantines it).

    Raises:
        Whatever decoding raises for an input that cannot be read.
    """
    path = record.path
    if _check_exists(path):
        return None
    kind = _input_kind(path)
    if record.modality == "rgb":
        if kind == "bin":
            return "an MSRAction3D depth .bin", "depth"
        if kind == "frames":
            mode = _image_mode(path)
            if mode in _DEEP_IMAGE_MODES:
                bits = 16 if mode.startswith("I;16") else 32
                return f"a folder of single-channel {bits}-bit images (PIL mode {mode}), i.e. depth", "depth"
            return None
        fmt = _video_format(path)
        bits = max((c.bits for c in fmt.components), default=0) if fmt is not None else 0
        if _single_channel(fmt) and bits > 8:
            return f"a single-channel {bits}-bit video ({fmt.name}), i.e. depth", "depth"
        return None
    if kind == "bin":
        return None
    if kind == "frames" and _image_mode(path) in _GRAY_IMAGE_MODES:
        return None
    if kind == "video" and _single_channel(_video_format(path)):
        return None
    share = _colour_share(path)
    if share < COLOUR_SHARE:
        return None
    what = "a folder of colour images" if kind == "frames" else "a colour video"
    return f"{what} ({share:.0%} of its pixels have channels {COLOUR_SPREAD}+ levels apart)", "rgb"


class ModalityMismatch(UserError):
    """Inputs whose content contradicts their modality (`modality_mismatch`); the message names the first one.

    Attributes:
        index: position of the first such input in the records.
        record: that input.
        what: what it is, in words.
        needed: the modality its content needs.
        count: how many inputs mismatch in all.
    """

    def __init__(self, index: int, record: Record, what: str, needed: str, count: int) -> None:
        self.index, self.record, self.what, self.needed, self.count = index, record, what, needed, count
        super().__init__(self.message())

    def message(self, where: str | None = None, fix: str | None = None) -> str:
        """One line: ``where`` names the input (default "input INDEX"), ``fix`` says what to change."""
        where = where or f"input {self.index}"
        fix = fix or f"give it modality {self.needed}"
        more = f" (and {self.count - 1} more input{'s' if self.count > 2 else ''} like it)" if self.count > 1 else ""
        return f"{where}: {self.record.path} is {self.what}, but its modality is {self.record.modality}{more}; {fix}"


def _refuse_mismatches(records: Sequence[Record], pool: Any, timeout_s: float, progress: bool) -> None:
    """Raises ModalityMismatch, naming the first input whose content contradicts its modality."""
    results = _run_tasks(_mismatch_task, [(r, timeout_s) for r in records], pool, progress, "modality")
    found = [(i, r, got) for i, (r, got) in enumerate(zip(records, results, strict=True)) if got is not None]
    if found:
        index, record, (what, needed) = found[0]
        raise ModalityMismatch(index, record, what, needed, len(found))


# ----------------------------------------------------------------------------------------------------------------------
# Public API


def _options(short_side: int | None, gop: int | None, timeout_s: float) -> _Options:
    if short_side is not None and short_side < 2:
        raise UserError(f"--short-side {short_side} is < 2; use e.g. 128 (N = 2 at 224) or leave it out")
    if gop is not None and gop < 1:
        raise UserError(f"--gop {gop} is < 1; use a keyframe interval such as 16")
    return _Options(short_side=short_side, gop=gop, timeout_s=timeout_s)


def check_records(
    records: Sequence[Record],
    *,
    short_side: int | None = None,
    gop: int | None = None,
    workers: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = False,
) -> tuple[list[Record], list[tuple[Record, str]]]:
    """Check every input exactly as `write_shards` with the same arguments would, without writing anything.

    Each input goes through the same preparation (every frame decoded, encoded when ``short_side`` / ``gop`` or the
    input kind asks for it, the encoded bytes decoded again); the bad ones are those `write_shards` quarantines.

    Args:
        records: manifest records (paths already resolved).
        short_side: as in `write_shards`.
        gop: as in `write_shards`.
        workers: processes decoding in parallel.
        timeout_s: per-input limit; a slower input counts as bad.
        progress: show a progress bar on stderr.

    Returns:
        (good records, [(bad record, reason)]), both in input order.

    Raises:
        ModalityMismatch: an input's content contradicts its modality (`modality_mismatch`).
        UserError: bad arguments.
    """
    opts = _options(short_side, gop, timeout_s)
    good, bad = [], []
    tasks = [(r, opts) for r in records]
    with _pool(workers) as pool:
        _refuse_mismatches(records, pool, timeout_s, progress)
        for record, (_, reason) in zip(records, _run_tasks(_prepare_task, tasks, pool, progress, "check"), strict=True):
            if reason is None:
                good.append(record)
            else:
                bad.append((record, reason))
    return good, bad


def parse_shard_size(text: str) -> tuple[int | None, float | None]:
    """``"500"`` -> (500 samples, None); ``"200MB"`` -> (None, 200.0 MB). Units: KB, MB, GB (powers of 1000).

    Raises:
        UserError: for anything else.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0 or (m.group(2) is None and "." in m.group(1)):
        raise UserError(f"--shard-size {text!r} is not a sample count or a size; use e.g. 500 (samples) or 200MB")
    if m.group(2) is None:
        return int(m.group(1)), None
    unit = {"k": 1e-3, "m": 1.0, "g": 1e3}[m.group(2)[0]] * (1.048576 if "i" in m.group(2) else 1.0)
    return None, float(m.group(1)) * unit


def sample_key(index: int, path: str) -> str:
    """Shard key of the input at manifest position ``index``: ``{index:08d}-{file stem}`` in [A-Za-z0-9_-].

    webdataset splits member names at the first dot, so the key holds none.
    """
    stem = os.path.basename(os.path.normpath(path))
    stem = os.path.splitext(stem)[0] if not os.path.isdir(path) else stem
    return f"{index:08d}-{re.sub(r'[^A-Za-z0-9_-]', '_', stem)[:60]}"


def _tar_size(sizes: Sequence[int]) -> int:
    # one 512-byte header per member, data padded to 512 bytes
    return sum(512 + 512 * math.ceil(s / 512) for s in sizes)


class ShardWriteError(RuntimeError):
    """A write into the output folder failed midway (a full disk, an I/O error); the message says what was kept."""


def _write_failed(err: OSError, path: str, out_dir: str, complete: Sequence[str]) -> ShardWriteError:
    """The one-line error for a failed write of ``path``; ``complete`` are the shards written before it (kept)."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.ENOSPC:
        reason = f"no space left on the device ({reason})"
    try:
        free = f"{shutil.disk_usage(out_dir).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return ShardWriteError(
        f"could not write {path}: {reason}; {free}. {len(complete)} complete shard{'' if len(complete) == 1 else 's'} "
        f"stay in {out_dir} (no index.json, no incomplete file); free some space and run again with --overwrite"
    )


class _ShardSink:
    """Writes samples into numbered tars, starting a new one at the sample or size limit.

    A tar is written as ``NAME.tmp`` and renamed when complete. A write that fails raises ShardWriteError; `abort`
    then removes the incomplete tar, so an error leaves only complete shards behind.
    """

    def __init__(self, out_dir: str, prefix: str, max_samples: int | None, max_bytes: float | None):
        self.out_dir, self.prefix = out_dir, prefix
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.names: list[str] = []
        self.counts: list[int] = []
        self.complete: list[str] = []
        self._file: io.BufferedWriter | None = None
        self._writer: wds.TarWriter | None = None
        self._bytes = 0

    def _tmp(self) -> str:
        return os.path.join(self.out_dir, self.names[-1] + ".tmp")

    def _failed(self, err: OSError) -> ShardWriteError:
        return _write_failed(err, self._tmp(), self.out_dir, self.complete)

    def _open(self) -> None:
        self.close()
        self.names.append(f"{self.prefix}-{len(self.names):06d}.tar")
        self.counts.append(0)
        self._bytes = 0
        try:
            self._file = open(self._tmp(), "wb")  # noqa: SIM115 -- closed by close() / abort()
        except OSError as err:
            raise self._failed(err) from None
        self._writer = wds.TarWriter(
            self._file, encoder=False, mtime=TAR_MTIME, user=TAR_USER, group=TAR_USER, mode=0o444
        )

    def write(self, key: str, ext: str, data: bytes, meta_json: bytes) -> None:
        size = _tar_size([len(data), len(meta_json)])
        full = self._writer is None or (self.max_samples is not None and self.counts[-1] >= self.max_samples)
        if self.max_bytes is not None and self._writer is not None and self.counts[-1] > 0:
            full = full or self._bytes + size > self.max_bytes
        if full:
            self._open()
        try:
            self._writer.write({"__key__": key, ext: data, "json": meta_json})
        except OSError as err:
            raise self._failed(err) from None
        self.counts[-1] += 1
        self._bytes += size

    def close(self) -> None:
        """Finish the tar being written and give it its name."""
        if self._writer is None:
            return
        try:
            self._writer.close()
            self._file.close()
            os.replace(self._tmp(), os.path.join(self.out_dir, self.names[-1]))  # only a complete tar gets its name
        except OSError as err:
            raise self._failed(err) from None
        self._writer = self._file = None
        self.complete.append(self.names[-1])

    def abort(self) -> None:
        """Remove the tar being written, if any; complete ones stay."""
        if self._file is None:
            return
        for step in (self._file.close, lambda: os.remove(self._tmp())):
            with contextlib.suppress(OSError):
                step()
        self._writer = self._file = None


def _prepare_out_dir(out_dir: str, prefix: str, overwrite: bool) -> list[str]:
    """Create ``out_dir`` and prove a file can be written in it (a probe, removed again).

    Returns:
        The files of an earlier run (shards, index, manifest, quarantine) that ``overwrite`` allows to replace.

    Raises:
        UserError: one line naming the folder, the reason (a file in the way, read-only, ...) and the fix; or the
            folder holds shards and ``overwrite`` is False.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file; give a folder for the shards")
    probe = os.path.join(out_dir, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(out_dir, exist_ok=True)
        try:
            with open(probe, "w") as f:
                f.write("ok\n")
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)
        names = os.listdir(out_dir)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(
            f"--out {out_dir} cannot be written ({reason}: {err.filename or out_dir}); give a folder you can write to"
        ) from None
    old = sorted(n for n in names if n.startswith(prefix + "-") and n.endswith((".tar", ".tar.tmp")))
    if old and not overwrite:
        raise UserError(f"--out {out_dir} already holds shards ({old[0]}, ...); pass --overwrite or use another folder")
    return old + [n for n in ("index.json", "manifest.csv", "quarantine.csv") if n in names]


def write_quarantine(bad: Sequence[tuple[Record, str]], path: str) -> None:
    """CSV with header path,label,modality,reason (written even when empty, so "no file" never means "no problem")."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(QUARANTINE_FIELDS)
    for record, reason in bad:
        w.writerow([record.path, record.label, record.modality, " ".join(reason.split())])
    atomic_write_text(path, buf.getvalue())


def write_shards(
    records: Sequence[Record],
    out_dir: str | os.PathLike,
    *,
    shard_samples: int | None = None,
    shard_mb: float | None = None,
    short_side: int | None = None,
    gop: int | None = None,
    workers: int = 1,
    prefix: str = "shard",
    progress: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    overwrite: bool = False,
    order_seed: int | None = None,
) -> dict:
    """Check every input and write the good ones into tar shards, in record order or a seeded shuffled order.

    Writes ``out_dir/{prefix}-000000.tar`` ..., ``quarantine.csv`` (bad inputs with the reason), ``manifest.csv``
    (the records that went in, in shard order) and ``index.json``. Nothing is written or removed before the output
    folder has proved writable and every input's modality agrees with its content.

    Args:
        records: manifest records (paths already resolved).
        out_dir: output folder (created; must not hold shards already unless ``overwrite``).
        shard_samples: at most this many samples per shard.
        shard_mb: at most about this many MB (10^6 bytes) per shard (a single bigger sample gets a shard of its own).
            With neither limit, shards hold DEFAULT_SHARD_SAMPLES samples.
        short_side: re-encode every video to this short side (never upscaled); None keeps the original bytes.
        gop: keyframe interval when encoding; giving it also re-encodes videos kept as bytes otherwise.
            Default DEFAULT_GOP.
        workers: processes checking/encoding in parallel; the output does not depend on it.
        prefix: shard file name prefix.
        progress: show a tqdm bar on stderr.
        timeout_s: per-input limit for checking + encoding; slower inputs are quarantined.
        overwrite: replace shards an earlier run left in ``out_dir``.
        order_seed: None writes the records in their order; a seed writes them in the permutation
            ``numpy.random.default_rng(order_seed).permutation(len(records))`` (the same for the same records and
            seed), so that a manifest sorted by path (grouped by class) does not give shards of one class.

    Returns:
        The index.json content: {"num_samples", "num_quarantined", "shards": [file names], "shard_samples": [counts],
        "classes": [name per label], "num_classes", "short_side", "gop", "format"}.

    Raises:
        ModalityMismatch: an input's content contradicts its modality (`modality_mismatch`); nothing is written.
        UserError: bad arguments, an output folder that cannot be written, or no input could be read.
        ShardWriteError: a write into ``out_dir`` failed midway (a full disk); complete shards are kept, the
            incomplete one is removed.
    """
    if shard_samples is not None and shard_samples < 1:
        raise UserError(f"shard size {shard_samples} samples is < 1; give at least 1 sample per shard")
    if shard_mb is not None and shard_mb <= 0:
        raise UserError(f"shard size {shard_mb} MB is not positive; give e.g. 200MB")
    opts = _options(short_side, gop, timeout_s)
    if shard_samples is None and shard_mb is None:
        shard_samples = DEFAULT_SHARD_SAMPLES
    out_dir = os.fspath(out_dir)
    old = _prepare_out_dir(out_dir, prefix, overwrite)

    if order_seed is not None:
        records = [records[i] for i in np.random.default_rng(order_seed).permutation(len(records))]
    sink = _ShardSink(out_dir, prefix, shard_samples, None if shard_mb is None else shard_mb * 1e6)
    good: list[Record] = []
    bad: list[tuple[Record, str]] = []
    tasks = [(r, opts) for r in records]
    with _pool(workers) as pool:
        _refuse_mismatches(records, pool, timeout_s, progress)
        for name in old:
            os.remove(os.path.join(out_dir, name))
        try:
            results = _run_tasks(_prepare_task, tasks, pool, progress, "shards")
            for index, (record, (result, reason)) in enumerate(zip(records, results, strict=True)):
                if reason is not None:
                    bad.append((record, reason))
                    continue
                ext, data, meta = result
                key = sample_key(index, record.path)
                meta_json = json.dumps({"key": key, **meta}, sort_keys=True, separators=(",", ":")).encode()
                sink.write(key, ext, data, meta_json)
                good.append(record)
            sink.close()
        except BaseException:  # a failed write, an interrupt: no incomplete tar stays behind
            sink.abort()
            raise

    quarantine = os.path.join(out_dir, "quarantine.csv")
    try:
        write_quarantine(bad, quarantine)
    except OSError as err:
        raise _write_failed(err, quarantine, out_dir, sink.complete) from None
    if not good:
        raise UserError(
            f"none of the {len(records)} inputs could be read (reasons in {quarantine}); "
            "fix the paths or run `timemae check` on the manifest"
        )
    write_manifest(good, os.path.join(out_dir, "manifest.csv"))
    classes = class_names(good)
    index = {
        "format": "timemae-shards-1",
        "num_samples": len(good),
        "num_quarantined": len(bad),
        "shards": sink.names,
        "shard_samples": sink.counts,
        "classes": classes,
        "num_classes": len(classes),
        "short_side": short_side,
        "gop": (gop or DEFAULT_GOP) if short_side is not None or gop is not None else None,
        "order": "manifest" if order_seed is None else f"shuffled, seed {order_seed}",
    }
    index_path = os.path.join(out_dir, "index.json")
    try:
        atomic_write_text(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
    except OSError as err:
        raise _write_failed(err, index_path, out_dir, sink.complete) from None
    return index


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (a manifest CSV, or a dataset preset)")
    src.add_argument("--manifest", help="manifest CSV (path,label[,class_name,subject,view,episode,split,modality])")
    src.add_argument("--preset", help="dataset preset name instead of --manifest (see `timemae manifest --help`)")
    src.add_argument("--root", help="raw dataset root folder, with --preset")
    src.add_argument("--split", help="protocol split of the preset (see `timemae manifest --list`)")
    src.add_argument("--modality", default=None, help="rgb or depth, with --preset (default: the preset's)")
    src.add_argument("--partition", default=None, help="train, test or all (default all), with --preset")
    parser.add_argument("--workers", type=int, default=1, help="parallel decoding processes (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per input before it counts as bad"
    )


def _records_from_args(args: argparse.Namespace) -> list[Record]:
    if args.manifest and args.preset:
        raise UserError("give either --manifest or --preset, not both")
    if args.manifest:
        return read_manifest(args.manifest)
    if not args.preset:
        raise UserError("no input: give --manifest M.csv, or --preset NAME --root RAW_ROOT --split SPLIT")
    if not args.root:
        raise UserError(f"--preset {args.preset} needs --root RAW_ROOT (and --split SPLIT when it has several)")
    from data import presets  # only this path needs the presets

    kw = {k: getattr(args, k) for k in ("modality", "partition") if getattr(args, k) is not None}
    return presets.build_manifest(args.preset, args.root, split=args.split, **kw)


def _mismatch_error(err: ModalityMismatch, args: argparse.Namespace) -> UserError:
    """The mismatch named where the user can fix it: the manifest line, or the preset's --modality."""
    if err.record.line:  # read from a manifest file: --manifest, or --preset generic --root FILE
        where = f"manifest {args.manifest or args.root} line {err.record.line}"
        return UserError(err.message(where, f"set its modality column to {err.needed}"))
    return UserError(err.message(f"--preset {args.preset}", f"pass --modality {err.needed}"))


def auto_short_side(grid_n: int, input_size: int = 224) -> int:
    """The short side ``--short-side auto`` stores: one TIME grid cell, ``ceil(input_size / N)``, rounded up to a
    multiple of 32 (N = 1: 224, N = 2: 128, N = 4: 64 at 224).

    A frame ends up as one cell, so a bigger video only costs decoding time; the rounding leaves room for the
    multi-scale crop.
    """
    if grid_n < 1 or input_size < grid_n:
        raise UserError(f"--grid-n {grid_n} / --input-size {input_size}: need 1 <= N <= input size")
    cell = math.ceil(input_size / grid_n)
    return 32 * math.ceil(cell / 32)


def parse_short_side(text: str, grid_n: int = 2, input_size: int = 224) -> int | None:
    """``--short-side``: "auto" -> `auto_short_side` (grid_n, input_size), "keep" -> None (original bytes), "96" -> 96.

    Raises:
        UserError: anything else, or a size < 2.
    """
    value = str(text).strip().lower()
    if value == "auto":
        return auto_short_side(grid_n, input_size)
    if value == "keep":
        return None
    if not value.isdigit() or int(value) < 2:
        raise UserError(f"--short-side {text!r} is not auto, keep or a size >= 2 px; use e.g. auto, keep or 128")
    return int(value)


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """How inputs are stored; `timemae check` takes them too, so that it checks what `timemae shards` would write."""
    parser.add_argument(
        "--short-side",
        default="auto",
        help="auto (default): re-encode (H.264) to one TIME grid cell rounded up to a multiple of 32 px, from "
        "--grid-n and --input-size (N=2 at 224: 128); keep: store the original bytes; or a size in px",
    )
    parser.add_argument("--grid-n", type=int, default=2, help="TIME grid N the shards are for, with --short-side auto")
    parser.add_argument("--input-size", type=int, default=224, help="model input size, with --short-side auto")
    parser.add_argument(
        "--gop",
        type=int,
        default=None,
        help=f"keyframe interval of encoded videos (default {DEFAULT_GOP}: every frame a keyframe, fastest to sample)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_source_arguments(parser)
    _add_storage_arguments(parser)
    parser.add_argument(
        "--allow-bad", action="store_true", help="only report bad inputs: exit 0 even when some are bad (default 1)"
    )


def _check_run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} is < 1; use 1 or more")
    short_side = parse_short_side(args.short_side, args.grid_n, args.input_size)
    records = _records_from_args(args)
    try:
        good, bad = check_records(
            records,
            short_side=short_side,
            gop=args.gop,
            workers=args.workers,
            timeout_s=args.timeout,
            progress=not args.no_progress,
        )
    except ModalityMismatch as err:
        raise _mismatch_error(err, args) from None
    print(f"good: {len(good)}  bad: {len(bad)}")
    for record, reason in bad:
        print(f"{record.path}: {reason}")
    if bad and not args.allow_bad:
        print(
            f"timemae check: {len(bad)} of {len(records)} inputs are bad (listed above; `timemae shards` quarantines "
            "them); fix or remove them, or pass --allow-bad to only report",
            file=sys.stderr,
        )
        return 1
    return 0


def _shards_add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_source_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder for the shards, index.json, manifest/quarantine")
    parser.add_argument(
        "--shard-size", default=str(DEFAULT_SHARD_SAMPLES), help="samples per shard (500) or bytes per shard (200MB)"
    )
    _add_storage_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    parser.add_argument(
        "--order",
        default="shuffled",
        choices=("shuffled", "manifest"),
        help="sample order in the shards: shuffled (a seeded permutation, default: no shard holds one class) or the "
        "manifest's order",
    )
    parser.add_argument("--order-seed", type=int, default=0, help="seed of the shuffled order (default 0)")


def _shards_run(args: argparse.Namespace) -> int:
    shard_samples, shard_mb = parse_shard_size(args.shard_size)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers} is < 1; use 1 or more")
    short_side = parse_short_side(args.short_side, args.grid_n, args.input_size)
    if args.order_seed < 0:
        raise UserError(f"--order-seed {args.order_seed} is negative; give a seed >= 0 (or --order manifest)")
    records = _records_from_args(args)
    try:
        index = write_shards(
            records,
            args.out,
            shard_samples=shard_samples,
            shard_mb=shard_mb,
            short_side=short_side,
            gop=args.gop,
            workers=args.workers,
            progress=not args.no_progress,
            timeout_s=args.timeout,
            overwrite=args.overwrite,
            order_seed=args.order_seed if args.order == "shuffled" else None,
        )
    except ModalityMismatch as err:
        raise _mismatch_error(err, args) from None
    except ShardWriteError as err:  # not the user's input: exit 1, but one line all the same
        print(f"timemae shards: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {args.out}")
    print(f"quarantined {index['num_quarantined']} inputs (see {os.path.join(args.out, 'quarantine.csv')})")
    return 0


CLI = {"check": (_check_add_arguments, _check_run), "shards": (_shards_add_arguments, _shards_run)}
