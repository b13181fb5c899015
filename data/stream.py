"""Streaming clips out of webdataset tar shards (written by `data.prep.shards`).

Two explicit modes:

- ``exact`` (evaluation): every sample exactly once per epoch across all ranks. Shard ``i`` goes to the global
  worker ``i mod (world_size x num_workers)`` (global worker = rank x num_workers + worker), so there must be at least
  as many shards as ranks x workers (`UserError` otherwise; write smaller shards). Ranks can differ by up to one
  shard's worth of samples, so an evaluation must gather its results rather than assume equal counts.
- ``epochs`` (fine-tuning's ``--data-mode exact``): infinite, one pass over every sample per epoch. Epoch e is a
  permutation of all samples seeded by (seed, epoch), the same on every rank; position p of it goes to the global
  worker ``p mod (world_size x num_workers)``, so over all ranks and workers each sample is used once per epoch
  (workers' shares differ by at most one sample). Shards are read by record (`scan_tar`), so any number of shards
  works.
- ``resampled`` (pretraining): infinite. Each worker draws whole shards with replacement using its own generator
  seeded from (seed, rank, worker, epoch), so different seeds, ranks, workers and epochs see different streams.
  An epoch is ``num_samples`` yielded clips (the training loop counts; the stream never ends). With
  ``samples_per_decode = K`` each decode yields K clips, so an epoch is ``num_samples / K`` decodes.

Both modes pass samples through a shuffle buffer. The buffer holds where samples are (shard, byte offset, size,
from one header-only scan of each shard, `scan_tar`), not their bytes: a sample's bytes are read only when it is
decoded. So a resumed stream replays the draws and the buffer up to its position without reading any sample it
skips, and continues exactly where the interrupted one stopped (`ShardDataset.resume_from`).

Bad data never stops training: a sample that fails to decode (corrupt bytes, broken JSON, decode timeout) is
skipped, logged with ``logging.warning`` (key, shard, reason) and counted; an unreadable shard is logged and counted
too. The counts live in shared-memory integers that every DataLoader worker adds to, so the training loop reads
the totals from the main process at any time with `ShardDataset.stats()`. Only a stream where
``max_consecutive_failures`` samples in a row fail (almost surely not video data at all) raises.

``samples_per_decode = K`` (VideoMAE V2 repeated sampling): K index lists are drawn independently, their sorted union
is decoded in one ``get_batch``, and K clips (own offsets, own augmentation) are yielded one after the other.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import itertools
import json
import logging
import multiprocessing
import os
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from common.dist import is_distributed
from common.errors import DecodeError, UserError
from data import decode
from data.clip import (
    ClipSpec,
    draw_crop,
    finish_grid,
    grid_buffer,
    make_clip,
    make_frames,
    normalize_clip,
    sample_indices,
    sampling_uniforms,
)
from data.sampling import union_indices
from data.timeout import decode_with_timeout
from data.workers import worker_init

log = logging.getLogger(__name__)

MODES = ("exact", "epochs", "resampled")
OUTPUTS = ("float", "uint8")
VIDEO_EXTS = ("mp4", "avi", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "bin")
DEFAULT_SHUFFLE_BUFFER = 128
DEFAULT_DECODE_TIMEOUT_S = 30.0
SCAN_CACHE = 64  # shards whose scan a worker keeps
OPEN_SHARDS = 8  # shard files a worker keeps open


def resolve_shards(shards: str | os.PathLike | Iterable[str]) -> tuple[list[str], int | None]:
    """Shard paths and, when a shard folder has an index.json, its sample count.

    Args:
        shards: a folder written by `data.prep.shards.write_shards` (its index.json lists the shards; otherwise every
            ``*.tar`` in it), one ``.tar`` file, a brace pattern (``dir/shard-{000000..000009}.tar``), a shell pattern
            (``dir/train-*.tar``, expanded here in sorted order when no file has that literal name) or a list of them.

    Returns:
        (sorted-as-given list of tar paths, num_samples or None when unknown).

    Raises:
        UserError: missing paths, or no tar at all.
    """
    items = [os.fspath(shards)] if isinstance(shards, (str, os.PathLike)) else [os.fspath(s) for s in shards]
    paths: list[str] = []
    num_samples: int | None = 0
    for item in items:
        if os.path.isdir(item):
            index_path = os.path.join(item, "index.json")
            if os.path.isfile(index_path):
                try:
                    with open(index_path) as f:
                        index = json.load(f)
                    found = [os.path.join(item, name) for name in index["shards"]]
                    count = int(index["num_samples"])
                    per_shard = index.get("shard_samples")
                except (OSError, ValueError, KeyError, TypeError) as err:
                    raise UserError(f"{index_path} is unreadable ({err}); rewrite the shards or delete it") from err
                consistent = (isinstance(per_shard, list) and len(per_shard) == len(found)
                              and all(isinstance(n, int) for n in per_shard) and sum(per_shard) == count)
                if per_shard is not None and not consistent:
                    raise UserError(f"{index_path} contradicts itself (num_samples {count}, shard_samples "
                                    f"{per_shard!r:.60} for {len(found)} shards); rewrite the shards or delete it")
            else:
                found, count = sorted(glob.glob(os.path.join(item, "*.tar"))), None
            if not found:
                raise UserError(f"shard folder {item} holds no .tar shards; write some with `timemae shards`")
        else:
            found = []
            for path in braceexpand.braceexpand(item) if "{" in item else [item]:
                if any(ch in path for ch in "*?[") and not os.path.exists(path):
                    matched = sorted(glob.glob(path))  # a shell pattern the shell did not expand (it was quoted)
                    if not matched:
                        raise UserError(f"shard pattern {path} matches no file; check the path (or rewrite the shards)")
                    found += matched
                else:
                    found.append(path)
            count = None
        missing = [p for p in found if not os.path.isfile(p)]
        if missing:
            there = os.path.exists(missing[0])
            what = "is not a regular file (a folder, FIFO or device)" if there else "does not exist"
            raise UserError(f"shard {missing[0]} {what}; check the path (or rewrite the shards)")
        paths += found
        num_samples = None if num_samples is None or count is None else num_samples + count
    if not paths:
        raise UserError("no shards given; pass a shard folder, a .tar file or a list of them")
    return paths, num_samples


@dataclasses.dataclass(frozen=True)
class Record:
    """Where one sample's members lie in its shard: ``members`` is ``((ext, data offset, size), ...)``."""

    key: str
    members: tuple[tuple[str, int, int], ...]


def scan_tar(path: str) -> tuple[list[Record], Exception | None]:
    """The samples of one tar, in order, from its headers only (the members' data is seeked over, never read).

    Members are grouped by key, webdataset style: ``dir/key.ext`` belongs to sample ``dir/key``; members that are not
    regular files or have no extension are passed over.

    Returns:
        (the samples before any error, the error or None). A file that is not a tar gives ([], the error); the
        sample whose headers were being read when the tar broke belongs to its unreadable rest and is left out.
    """
    records: list[Record] = []
    key: str | None = None
    members: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                tar.members = []  # do not keep every header of a big shard in memory
                base = os.path.basename(member.name)
                if not member.isreg() or "." not in base:
                    continue
                name = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                if name != key:
                    if key is not None:
                        records.append(Record(key, tuple(members)))
                    key, members = name, []
                members.append((base.split(".", 1)[1].lower(), member.offset_data, member.size))
    except (tarfile.TarError, OSError, EOFError) as err:
        return records, err
    if key is not None:
        records.append(Record(key, tuple(members)))
    return records, None


def read_record(fh: Any, record: Record) -> dict[str, Any]:
    """One sample's bytes from its open shard: ``{"__key__": key, ext: bytes, ...}``.

    Raises:
        DecodeError: a member is cut short (the shard was truncated after it was scanned).
    """
    sample: dict[str, Any] = {"__key__": record.key}
    for ext, offset, size in record.members:
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise DecodeError(f"member {record.key}.{ext} is cut short ({len(data)} of {size} bytes)")
        sample[ext] = data
    return sample


def iter_tar(path: str) -> Iterator[dict[str, Any]]:
    """Samples of one tar, in order: ``{"__key__": key, ext: bytes, ...}`` (`scan_tar`, then `read_record`).

    Raises:
        tarfile.TarError, OSError, EOFError: after the readable samples, when the tar is unreadable from some point
            on. DecodeError: a member cut short.
    """
    records, err = scan_tar(path)
    with open(path, "rb") as fh:
        for record in records:
            yield read_record(fh, record)
    if err is not None:
        raise err


def count_tar_samples(path: str) -> int:
    """Number of samples in one shard (`scan_tar`: headers only); an unreadable shard counts what could be read (none
    for a file that is not a tar): the stream skips and counts it when it gets there."""
    return len(scan_tar(path)[0])


def shuffled(items: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream with a buffer of ``buffer_size`` items (0 or 1: pass through unchanged)."""
    if buffer_size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        j = int(rng.integers(buffer_size))
        buf[j], item = item, buf[j]
        yield item
    for j in rng.permutation(len(buf)):
        yield buf[j]


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): as given, else from torch.distributed if initialised, else env RANK/WORLD_SIZE, else 0/1."""
    if rank is not None and world_size is not None:
        got = (int(rank), int(world_size))
    elif is_distributed():
        got = (torch.distributed.get_rank(), torch.distributed.get_world_size())
    else:
        got = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    if got[1] < 1 or not 0 <= got[0] < got[1]:
        raise UserError(f"rank {got[0]} / world size {got[1]} is impossible; need 0 <= rank < world size")
    return got


def _scalar_meta(meta: dict[str, Any]) -> dict[str, Any]:
    # default_collate turns a list of dicts into a dict of lists/tensors and fails on None or nested values
    return {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}


def decode_clips(
    data: bytes,
    ext: str,
    spec: ClipSpec,
    rng: np.random.Generator,
    *,
    modality: str = "rgb",
    samples_per_decode: int = 1,
    timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S,
    what: str = "sample",
    timings: dict[str, float] | None = None,
    output: str = "float",
) -> list[torch.Tensor]:
    """The hot path of `ShardDataset`: K clips out of one encoded video, decoded once.

    K index lists are drawn independently, their sorted union is decoded in one ``get_batch`` (open and decode run
    under ``timeout_s``), and each clip is built from its own frames with its own augmentation. Clips whose
    augmentation is a crop and a flip are cut while decoding instead (`data.decode.Video.get_crops`): the same
    pixels, from the same random draws.

    Args:
        data: the video bytes.
        ext: what the bytes are ("mp4", "avi", "bin", ...), as ``kind`` of `data.decode.open_video`.
        spec: the clip to build; videos decode at ``spec.decode_short_side()``.
        rng: randomness of the sampling (uniforms drawn from it before the decode) and of the augmentation.
        modality: ``decode_modality`` of the sample.
        samples_per_decode: K.
        timeout_s: limit for opening and decoding; None = none.
        what: names the sample in a timeout message.
        timings: when given, ``timings["decode"]`` grows by the process CPU seconds spent opening, decoding and
            closing the video (for `tools.bench_loader`).
        output: "float" (`data.clip.make_clip`) or "uint8" (`data.clip.make_frames`).

    Returns:
        K clips, each (3, T*, H*, W*) float32 normalised, or (T*, H*, W*, 3) uint8.

    Raises:
        DecodeError: the bytes do not decode, or not in time.
    """
    # The decode may be abandoned on timeout and go on in the background, so it must not touch ``rng``: the sampling's
    # random numbers are drawn here and handed over, and so are the crops of clips that need no more than a crop and a
    # flip (`data.clip.draw_crop`, drawn clip after clip as `make_frames` would draw them): the decoder then writes each
    # frame's crops straight into the clips' grid buffers.
    uniforms = sampling_uniforms(spec, rng, samples_per_decode)
    first = draw_crop(spec, rng)
    crops = None if first is None else [first] + [draw_crop(spec, rng) for _ in range(samples_per_decode - 1)]

    def work() -> tuple[list[np.ndarray | None], np.ndarray | list[np.ndarray]]:
        start = time.process_time()
        try:
            with decode.open_video(data, modality=modality, kind=ext, short_side=spec.decode_short_side()) as video:
                opened = time.process_time()
                draws = [
                    sample_indices(video.num_frames, spec, None if uniforms is None else uniforms[k])
                    for k in range(samples_per_decode)
                ]
                if crops is not None:
                    grids, jobs = [], []
                    for idx, crop in zip(draws, crops, strict=True):
                        box = crop.box(spec, video.height, video.width)
                        grid, slots = grid_buffer(spec, box)
                        grids.append(grid)
                        jobs.append((idx, box, slots))
                    sampled = time.process_time()
                    video.get_crops(jobs)
                    out = [None], grids
                else:
                    if samples_per_decode == 1:  # get_batch returns exactly the frames asked for, repeats included
                        union, positions = draws[0], [None]
                    else:  # several draws: decode the frames they share once
                        union, positions = union_indices(draws)
                    sampled = time.process_time()
                    out = positions, video.get_batch(union)
        except DecodeError:
            raise
        except Exception as err:  # noqa: BLE001 -- decoder libraries raise many types for bad bytes
            raise DecodeError(f"{type(err).__name__}: {err}") from err
        if timings is not None:
            timings["decode"] = timings.get("decode", 0.0) + time.process_time() - start - (sampled - opened)
        return out

    positions, frames = decode_with_timeout(work, timeout_s, what=what)
    if crops is not None:
        clips = [finish_grid(grid, spec, crop.flip) for grid, crop in zip(frames, crops, strict=True)]
        return clips if output == "uint8" else [normalize_clip(c, spec.mean, spec.std) for c in clips]
    build = make_frames if output == "uint8" else make_clip
    return [build(frames if pos is None else frames[pos], spec, rng) for pos in positions]


class ShardDataset(IterableDataset):
    """Clips from webdataset shards: ``{"clip": (3, T*, H*, W*) float32, "label": int, "meta": dict}`` per sample.

    ``meta`` is the sample's JSON record (scalars only) plus ``key`` and ``shard``. For ``spec.crop == "three"``
    the clip is (3 views, 3, T*, H*, W*). With ``output="uint8"`` the clip is the un-normalised uint8 pixels,
    (T*, H*, W*, 3) (views first for three crops), for `data.clip.normalize_clip` on the training device: the
    training scripts use it, as it takes a quarter of the bytes through the loader and most of the pixel work off
    the loader's CPU (`timemae bench-loader`).

    Args:
        shards: shard folder, tar path, brace pattern, or a list of them (see `resolve_shards`).
        spec: the clip to build.
        mode: "exact" (each sample once per epoch, evaluation) or "resampled" (infinite, pretraining).
        shuffle_buffer: samples held for shuffling (0 = file order).
        seed: base seed; the generator of one worker is seeded from (seed, rank, worker, epoch).
        samples_per_decode: K clips per decoded video (resampled mode only).
        rank, world_size: this process's place; default from torch.distributed / env RANK, WORLD_SIZE / 0, 1.
        decode_timeout_s: per-sample decode limit; slower samples are skipped.
        max_consecutive_failures: a worker raises `UserError` after this many samples (or shards) in a row failed,
            instead of looping for ever over data that holds no readable video.
        output: "float" (normalised clips) or "uint8" (pixels, normalised later by `data.clip.normalize_clip`).
        keep: ``keep(key, label)`` False drops the sample when its record is read, before decoding (not counted as
            skipped); e.g. a validation split held out of the training shards. Must pickle (loader workers).
    """

    def __init__(
        self,
        shards: str | os.PathLike | list[str],
        spec: ClipSpec,
        *,
        mode: str = "resampled",
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        seed: int = 0,
        samples_per_decode: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
        decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S,
        max_consecutive_failures: int = 100,
        output: str = "float",
        keep: Callable[[str, int], bool] | None = None,
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r} is unknown; use one of {OUTPUTS}")
        if mode not in MODES:
            raise UserError(f"stream mode {mode!r} is unknown; use one of {MODES}")
        if samples_per_decode < 1:
            raise UserError(f"--samples-per-decode {samples_per_decode} is < 1; use 1 (off) or e.g. 2 or 4")
        if mode != "resampled" and samples_per_decode != 1:
            raise UserError(
                f"--samples-per-decode {samples_per_decode} needs the resampled stream; the {mode} stream yields each "
                "sample once per pass: use --samples-per-decode 1 or --data-mode resampled"
            )
        if shuffle_buffer < 0:
            raise UserError(f"shuffle buffer {shuffle_buffer} is < 0; use 0 (off) or e.g. 128")
        self.shards, self._num_samples = resolve_shards(shards)
        self.spec = spec
        self.mode = mode
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.samples_per_decode = samples_per_decode
        self.rank, self.world_size = dist_info(rank, world_size)
        self.decode_timeout_s = decode_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.output = output
        self.keep = keep
        # Shared with the DataLoader workers (handed over when they start): the main process sees their counts, and
        # persistent workers see set_epoch.
        self._epoch = multiprocessing.Value("q", 0)
        self._resume_batches = 0  # batches of this rank already consumed (resume), see resume_from
        self._resume_batch_size = 1
        self._resume_positions: dict[int, int] | None = None
        self._consumed: dict[int, int] = {}  # main process: logical worker -> clips of its stream consumed
        self._scans: collections.OrderedDict[str, tuple[list[Record], Exception | None]] = collections.OrderedDict()
        self._records_read = multiprocessing.Value("q", 0)
        self._skipped = multiprocessing.Value("q", 0)
        self._bad_shards = multiprocessing.Value("q", 0)

    # -- bookkeeping -----------------------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """Samples in all shards (from index.json, else counted from the tar headers once)."""
        if self._num_samples is None:
            self._num_samples = sum(count_tar_samples(p) for p in self.shards)
        return self._num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used in the worker seeds (reaches persistent workers too)."""
        self._epoch.value = int(epoch)

    def resume_from(self, batches_consumed: int, batch_size: int, positions: dict[int, int] | None = None) -> None:
        """Continue the stream after ``batches_consumed`` batches of this rank (a resumed run).

        A DataLoader takes batch j from worker ``j % num_workers`` and starts every new iterator at worker 0. So the
        stream of batch j belongs to the *logical* worker ``j % num_workers``: in a resumed loader, worker w plays
        logical worker ``(w + batches_consumed) % num_workers`` and batch j of the new loader is batch
        ``batches_consumed + j`` of the run, whatever the worker count.

        Args:
            batches_consumed: batches of this rank taken from the stream before (skipped non-finite ones included).
            batch_size: clips per batch.
            positions: `position` of the interrupted run: clips consumed per logical worker. Exact even when some
                samples failed to decode. Without it (checkpoints of older versions) each logical worker skips its
                share of ``batches_consumed x batch_size`` clips, which is exact when no sample failed.

        A logical worker replays its shard draws and shuffle buffer up to its position without reading or decoding
        any skipped sample (`Record`), and the sampling and augmentation randomness of each decode is drawn from
        (seed, rank, logical worker, epoch, decode number): the resumed stream is the uninterrupted one.
        """
        self._resume_batches = int(batches_consumed)
        self._resume_batch_size = int(batch_size)
        self._resume_positions = None if positions is None else {int(k): int(v) for k, v in positions.items()}
        self._consumed = dict(self._resume_positions or {})

    def _clips_to_skip(self, logical: int, num_workers: int) -> int:
        if self._resume_positions is not None:
            return self._resume_positions.get(logical, 0)
        b, w = self._resume_batches, num_workers
        return max(0, (b - logical + w - 1) // w) * self._resume_batch_size

    def tracked(self, batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """``batches`` (a loader's iterator over this dataset), recording each batch as it is taken (`position`)."""
        for batch in batches:
            meta = batch.get("meta", {})
            if "stream_worker" in meta:  # a batch comes from one worker, its clips in stream order
                self._consumed[int(meta["stream_worker"][-1])] = int(meta["stream_pos"][-1]) + 1
            yield batch

    def position(self) -> dict[int, int]:
        """Clips consumed so far per logical worker (plain data for a checkpoint; see `resume_from`)."""
        return dict(self._consumed)

    def records_read(self) -> int:
        """Samples whose bytes were read from the shards so far, over all workers."""
        return int(self._records_read.value)

    def stats(self) -> dict[str, int]:
        """Totals over all workers so far: {"skipped_samples", "bad_shards"}."""
        return {"skipped_samples": int(self._skipped.value), "bad_shards": int(self._bad_shards.value)}

    def check_workers(self, num_workers: int) -> None:
        """Exact mode needs a shard for every (rank, worker), epochs mode a sample.

        Raises:
            UserError: fewer shards (exact) or samples (epochs) than world_size x max(num_workers, 1).
        """
        total = self.world_size * max(num_workers, 1)
        if self.mode == "epochs" and self.num_samples < total:
            raise UserError(
                f"{self.num_samples} training samples cannot feed {total} loader workers (ranks x workers) once per "
                "epoch; use fewer --num-workers or --data-mode resampled"
            )
        if self.mode == "exact" and len(self.shards) < total:
            raise UserError(
                f"exact mode needs at least one shard per rank x worker ({self.world_size} x {max(num_workers, 1)} = "
                f"{total}) but there are {len(self.shards)} shards; write smaller shards (--shard-size) or use fewer "
                "workers"
            )

    def _count(self, value: Any) -> None:
        with value.get_lock():
            value.value += 1

    # -- the stream ------------------------------------------------------------------------------------------------

    def _scan(self, path: str) -> tuple[list[Record], Exception | None]:
        """`scan_tar` of a shard, kept for the most recently used ones (a worker draws the same shards again)."""
        if path in self._scans:
            self._scans.move_to_end(path)
            return self._scans[path]
        found = self._scans[path] = scan_tar(path)
        if len(self._scans) > SCAN_CACHE:
            self._scans.popitem(last=False)
        return found

    def _records(self, shard_paths: Iterable[str]) -> Iterator[tuple[str, Record]]:
        """(shard, record) of every sample of the shards in turn; no sample's bytes are read here."""
        failures = 0  # unreadable shards in a row with no sample between them
        for path in shard_paths:
            records, err = self._scan(path)
            if records:
                failures = 0
            yield from ((path, record) for record in records)
            if err is not None:
                self._count(self._bad_shards)
                log.warning("shard %s unreadable from some point on, rest of it skipped: %s", path, err)
                failures += 1
                if failures >= self.max_consecutive_failures:
                    raise UserError(
                        f"the last {failures} shards read were all unreadable (latest: {path}: {err}); "
                        "rewrite them with `timemae shards`"
                    ) from err

    def _all_records(self) -> list[tuple[str, Record]]:
        """Every sample of every shard, in shard order (bad shards are counted and reported once, here)."""
        found: list[tuple[str, Record]] = []
        for path in self.shards:
            records, err = scan_tar(path)
            found += [(path, record) for record in records]
            if err is not None:
                self._count(self._bad_shards)
                log.warning("shard %s unreadable from some point on, rest of it skipped: %s", path, err)
        return found

    def _epoch_records(self, gid: int, total: int, start: int) -> Iterator[tuple[str, Record]]:
        """Global worker ``gid`` of ``total``: its share of each epoch's permutation, epoch after epoch, from its
        ``start``-th record on (epoch ``start // share``)."""
        records = self._all_records()
        if len(records) < total:
            raise UserError(
                f"{len(records)} readable training samples cannot feed {total} loader workers (ranks x workers) once "
                "per epoch; use fewer --num-workers or --data-mode resampled"
            )
        share = len(range(gid, len(records), total))  # the same every epoch
        first, offset = divmod(start, share)
        for epoch in itertools.count(first):
            order = np.random.default_rng([self.seed, epoch]).permutation(len(records))[gid::total]
            for i in order[offset:]:
                yield records[i]
            offset = 0

    def _read(self, path: str, record: Record, files: dict[str, Any]) -> dict[str, Any]:
        """The bytes of one sample (the last few shards read stay open in ``files``)."""
        fh = files.get(path)
        if fh is None:
            if len(files) >= OPEN_SHARDS:  # the shuffle buffer mixes a few shards: keep the newest ones open
                files.pop(next(iter(files))).close()
            try:
                fh = files[path] = open(path, "rb")  # noqa: SIM115 -- closed by __iter__ (or when evicted here)
            except OSError as err:
                raise DecodeError(f"shard unreadable: {err}") from err
        self._count(self._records_read)
        try:
            sample = read_record(fh, record)
        except OSError as err:
            raise DecodeError(f"shard unreadable: {err}") from err
        sample["__shard__"] = path
        return sample

    def _decode(self, sample: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
        """K samples from one encoded sample; raises DecodeError for bad data."""
        try:
            meta = json.loads(sample["json"])
            label = int(meta["label"])
        except (KeyError, ValueError, TypeError, OverflowError) as err:  # OverflowError: a label such as 1e400
            raise DecodeError(f"no valid JSON record ({type(err).__name__}: {err})") from err
        if self.keep is not None and not self.keep(sample["__key__"], label):
            return []
        exts = [e for e in VIDEO_EXTS if e in sample]
        if not exts:
            raise DecodeError(f"no video member (have {sorted(k for k in sample if not k.startswith('__'))})")
        ext = exts[0]
        modality = str(meta.get("decode_modality", meta.get("modality", "rgb")))
        clips = decode_clips(
            sample[ext],
            ext,
            self.spec,
            rng,
            modality=modality,
            samples_per_decode=self.samples_per_decode,
            timeout_s=self.decode_timeout_s,
            what=sample["__key__"],
            output=self.output,
        )
        meta = {**_scalar_meta(meta), "key": sample["__key__"], "shard": os.path.basename(sample["__shard__"])}
        return [{"clip": clip, "label": label, "meta": dict(meta)} for clip in clips]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = (worker + self._resume_batches) % num_workers  # see resume_from
        epoch = int(self._epoch.value)
        rng = np.random.default_rng([self.seed, self.rank, logical, epoch])
        k = self.samples_per_decode
        skip = self._clips_to_skip(logical, num_workers)
        first = 0  # decode number of the first record of ``refs``
        if self.mode == "epochs":
            first, skip = skip // k, skip % k  # seeks straight to its position: nothing before it is replayed
            refs = self._epoch_records(self.rank * num_workers + logical, self.world_size * num_workers, first)
        else:
            if self.mode == "exact":
                self.check_workers(num_workers)
                total = self.world_size * num_workers
                mine = self.shards[self.rank * num_workers + logical :: total]
                shard_paths: Iterable[str] = (
                    [mine[i] for i in rng.permutation(len(mine))] if self.shuffle_buffer else mine
                )
            else:
                shard_paths = (self.shards[int(rng.integers(len(self.shards)))] for _ in itertools.count())
            refs = shuffled(self._records(shard_paths), self.shuffle_buffer, rng)
        failures = 0
        files: dict[str, Any] = {}
        try:
            for decode_number, (path, record) in enumerate(refs, start=first):
                if skip >= k:  # resuming: this decode's clips were consumed before the restart (nothing is read)
                    skip -= k
                    continue
                # Per-decode randomness: independent of how many decodes were skipped or failed before this one.
                sample_rng = np.random.default_rng([self.seed, self.rank, logical, epoch, decode_number])
                try:
                    out = self._decode(self._read(path, record, files), sample_rng)
                except DecodeError as err:
                    self._count(self._skipped)
                    log.warning("skipping sample %s (%s): %s", record.key, path, err)
                    failures += 1
                    if failures >= self.max_consecutive_failures:
                        raise UserError(
                            f"the last {failures} samples all failed to decode (latest: {err}); the shards "
                            f"({self.shards[0]}, ...) do not hold readable videos: rewrite them with `timemae shards`"
                        ) from err
                    continue
                failures = 0
                for j in range(skip, len(out)):
                    out[j]["meta"].update(stream_worker=logical, stream_pos=decode_number * k + j)
                    yield out[j]
                skip = 0
        finally:
            for fh in files.values():
                fh.close()


def make_loader(
    dataset: ShardDataset,
    batch_size: int,
    num_workers: int,
    *,
    prefetch_factor: int = 4,
    pin_memory: bool | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """A DataLoader over a `ShardDataset`.

    Workers get `data.workers.worker_init` (one thread each) and stay alive between epochs. ``drop_last`` defaults to
    True for the endless training streams (equal batches) and False in exact mode (no sample lost in evaluation).

    Raises:
        UserError: exact mode with fewer shards than ranks x workers, or a non-positive batch size.
    """
    if batch_size < 1 or num_workers < 0:
        raise UserError(f"batch size {batch_size} / workers {num_workers}: need batch size >= 1 and workers >= 0")
    dataset.check_workers(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=worker_init,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=dataset.mode != "exact" if drop_last is None else drop_last,
    )
