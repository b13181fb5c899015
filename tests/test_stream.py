"""Streaming clips from shards: exact and resampled modes, rank/worker split, bad data, repeated sampling."""

from __future__ import annotations

import itertools
import json
import logging
import os

import numpy as np
import pytest
import torch
import webdataset as wds

from data import stream
from data.clip import (
    ClipSpec,
    clip_to_uint8_frames,
    draw_crop,
    make_frames,
    normalize_clip,
    sample_indices,
    sampling_uniforms,
)
from data.errors import UserError
from data.manifest import Record
from data.shards import write_shards
from data.stream import ShardDataset, dist_info, make_loader
from tests.videos import read_index, write_index_video

NUM_VIDEOS = 8
# No crop (same aspect as the 64x48 test videos), no resize: every output frame is a whole source frame.
EVAL = ClipSpec(num_frames=4, input_size=(48, 64), train=False, crop="center")
TRAIN = ClipSpec(num_frames=4, input_size=(48, 64), train=True, crop="center")  # random offsets, no crop


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """8 index videos (16..23 frames, labels 0,1,2,0,...) in 4 shards of 2."""
    raw = tmp_path_factory.mktemp("raw")
    records = [Record(write_index_video(raw / f"v{i}.mp4", 16 + i), i % 3) for i in range(NUM_VIDEOS)]
    out = tmp_path_factory.mktemp("shards")
    write_shards(records, out, shard_samples=2, progress=False)
    return out


def _keys(samples) -> list[str]:
    return [s["meta"]["key"] for s in samples]


def test_exact_mode_over_two_ranks_and_two_workers_yields_each_sample_once(shard_dir):
    keys = []
    for rank in range(2):
        ds = ShardDataset(shard_dir, EVAL, mode="exact", rank=rank, world_size=2, shuffle_buffer=3)
        for batch in make_loader(ds, batch_size=3, num_workers=2):
            assert batch["clip"].shape[1:] == (3, 4, 48, 64) and batch["label"].dtype == torch.int64
            keys += batch["meta"]["key"]
    assert len(keys) == NUM_VIDEOS and len(set(keys)) == NUM_VIDEOS


def test_clips_hold_the_sampled_frames(shard_dir):
    samples = list(ShardDataset(shard_dir, EVAL, mode="exact", shuffle_buffer=0))
    assert [s["label"] for s in samples] == [i % 3 for i in range(NUM_VIDEOS)]
    for s in samples:
        frames = clip_to_uint8_frames(s["clip"], EVAL).numpy()
        expected = sample_indices(s["meta"]["num_frames"], EVAL, None).tolist()
        assert [read_index(f) for f in frames] == expected


def test_uint8_output_is_the_float_clip_before_normalisation(shard_dir):
    floats = list(ShardDataset(shard_dir, EVAL, mode="exact", shuffle_buffer=0))
    pixels = list(ShardDataset(shard_dir, EVAL, mode="exact", shuffle_buffer=0, output="uint8"))
    assert [s["meta"]["key"] for s in pixels] == [s["meta"]["key"] for s in floats]
    for f, p in zip(floats, pixels, strict=True):
        assert p["clip"].dtype == torch.uint8 and p["clip"].shape == (4, 48, 64, 3)
        assert torch.equal(p["clip"], clip_to_uint8_frames(f["clip"], EVAL))
    batch = next(iter(make_loader(ShardDataset(shard_dir, EVAL, mode="exact", output="uint8"), 2, 0)))
    assert batch["clip"].shape == (2, 4, 48, 64, 3) and normalize_clip(batch["clip"]).shape == (2, 3, 4, 48, 64)


def test_fewer_shards_than_ranks_times_workers_is_a_user_error(shard_dir):
    ds = ShardDataset(shard_dir, EVAL, mode="exact", rank=0, world_size=3)
    with pytest.raises(UserError, match="shard per rank x worker"):
        make_loader(ds, batch_size=2, num_workers=2)
    with pytest.raises(UserError, match="shard per rank x worker"):
        next(iter(ShardDataset(shard_dir, EVAL, mode="exact", rank=0, world_size=5)))
    make_loader(ShardDataset(shard_dir, TRAIN, mode="resampled", rank=0, world_size=3), 2, 2)  # resampled: fine


def test_resampled_mode_is_infinite_and_follows_the_seed(shard_dir):
    def first(seed, n=3 * NUM_VIDEOS):
        ds = ShardDataset(shard_dir, TRAIN, mode="resampled", seed=seed, shuffle_buffer=4)
        return list(itertools.islice(ds, n))

    a, b, c = first(0), first(0), first(1)
    assert len(a) == 3 * NUM_VIDEOS  # more than one pass over the data
    assert _keys(a) == _keys(b) and all(torch.equal(x["clip"], y["clip"]) for x, y in zip(a, b, strict=True))
    assert _keys(a) != _keys(c)
    assert ShardDataset(shard_dir, TRAIN).num_samples == NUM_VIDEOS


def test_epoch_changes_the_stream(shard_dir):
    ds = ShardDataset(shard_dir, TRAIN, mode="resampled", seed=0)
    e0 = _keys(itertools.islice(ds, 12))
    ds.set_epoch(1)
    assert _keys(itertools.islice(ds, 12)) != e0


def _shard_bytes(shard_dir) -> bytes:
    return (shard_dir / "shard-000000.tar").read_bytes()


def test_corrupt_samples_and_shards_are_skipped_and_counted(shard_dir, tmp_path, caplog):
    good = next(stream.iter_tar(str(shard_dir / "shard-000000.tar")))
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    with open(bad_dir / "a.tar", "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as w:
        w.write({"__key__": "good", "mp4": good["mp4"], "json": good["json"]})
        w.write({"__key__": "garbage", "mp4": b"\x00\x01 not a video" * 50, "json": good["json"]})
        w.write({"__key__": "nojson", "mp4": good["mp4"]})
        w.write({"__key__": "badjson", "mp4": good["mp4"], "json": b"{not json"})
    whole = _shard_bytes(shard_dir)
    (bad_dir / "b.tar").write_bytes(whole[: len(whole) // 2 + 3000])  # second sample cut off
    ds = ShardDataset([str(bad_dir / "a.tar"), str(bad_dir / "b.tar")], EVAL, mode="exact", shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="data.stream"):
        samples = list(ds)
    assert _keys(samples)[0] == "good" and len(samples) == 2
    assert ds.stats() == {"skipped_samples": 3, "bad_shards": 1}
    text = caplog.text
    assert "garbage" in text and "nojson" in text and "badjson" in text and "b.tar" in text


def test_a_stream_of_nothing_but_garbage_stops_with_a_user_error(tmp_path):
    with open(tmp_path / "g.tar", "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as w:
        w.write({"__key__": "x", "mp4": b"junk" * 100, "json": json.dumps({"label": 0}).encode()})
    ds = ShardDataset(tmp_path, TRAIN, mode="resampled", max_consecutive_failures=5)
    with pytest.raises(UserError, match="failed to decode"):
        next(iter(ds))
    assert ds.stats()["skipped_samples"] == 5
    (tmp_path / "g.tar").write_bytes(b"not a tar at all" * 100)
    ds = ShardDataset(tmp_path, TRAIN, mode="resampled", max_consecutive_failures=4)
    with pytest.raises(UserError, match="unreadable"):
        next(iter(ds))
    assert ds.stats() == {"skipped_samples": 0, "bad_shards": 4}


def test_samples_per_decode_yields_k_clips_per_decode(shard_dir, monkeypatch):
    opened = []
    real = stream.decode.open_video
    monkeypatch.setattr(stream.decode, "open_video", lambda *a, **k: opened.append(1) or real(*a, **k))
    ds = ShardDataset(shard_dir, TRAIN, mode="resampled", samples_per_decode=3, shuffle_buffer=0)
    samples = list(itertools.islice(ds, 12))
    assert len(opened) == 4
    distinct = 0
    for group in range(4):
        chunk = samples[3 * group : 3 * group + 3]
        assert len(set(_keys(chunk))) == 1
        frames = [tuple(read_index(f) for f in clip_to_uint8_frames(s["clip"], TRAIN).numpy()) for s in chunk]
        assert all(list(f) == sorted(f) for f in frames)
        distinct += len(set(frames)) > 1
    assert distinct > 0  # each clip of a decode has its own segment offsets
    with pytest.raises(UserError, match="samples-per-decode"):
        ShardDataset(shard_dir, EVAL, mode="exact", samples_per_decode=2)


def test_bad_shard_arguments(tmp_path, shard_dir):
    with pytest.raises(UserError, match="holds no .tar"):
        ShardDataset(tmp_path, EVAL)
    with pytest.raises(UserError, match="does not exist"):
        ShardDataset(str(tmp_path / "nope.tar"), EVAL)
    with pytest.raises(UserError, match="mode"):
        ShardDataset(shard_dir, EVAL, mode="sometimes")
    brace = os.path.join(shard_dir, "shard-{000000..000003}.tar")
    by_pattern = ShardDataset(brace, EVAL)
    assert len(by_pattern.shards) == 4 and by_pattern.num_samples == NUM_VIDEOS  # counted from the tar headers


def test_rank_and_world_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_info() == (1, 2)
    assert dist_info(0, 4) == (0, 4)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UserError):
        dist_info()


@pytest.fixture(scope="module")
def intra_sample(tmp_path_factory) -> dict:
    """One shard sample re-encoded all-intra (the intra reader decodes it), 30 frames of 64x48."""
    raw = tmp_path_factory.mktemp("intra")
    write_shards([Record(write_index_video(raw / "v.mp4", 30), 0)], raw / "out", short_side=48, progress=False)
    return next(stream.iter_tar(str(raw / "out" / "shard-000000.tar")))


@pytest.mark.parametrize(
    "spec",
    [
        ClipSpec(num_frames=4, grid_n=2, input_size=56, flip=True),
        ClipSpec(num_frames=2, grid_n=3, input_size=50, arrangement="temporal", flip=True),  # 3 does not divide 50
        ClipSpec(num_frames=4, grid_n=1, input_size=40, sampling="stride", sampling_rate=2),
        ClipSpec(num_frames=4, grid_n=2, input_size=(40, 56), train=False),
        ClipSpec(num_frames=4, grid_n=2, input_size=56, rotation=10.0),  # the general path
        ClipSpec(num_frames=4, grid_n=2, input_size=56, crop="rrc"),
        ClipSpec(num_frames=4, grid_n=2, input_size=56, train=False, crop="three"),
    ],
)
def test_decode_clips_equals_get_batch_and_make_frames(intra_sample, spec, monkeypatch):
    """The route where the decoder writes the crops into the clips' grids (`Video.get_crops`) gives the clips that
    decoding whole frames and `make_frames` give, from the same seed, for one clip and for K = 3 per decode; the clips
    that need more take that path."""
    sample = intra_sample
    calls = []
    real = stream.decode.Video.get_crops
    monkeypatch.setattr(stream.decode.Video, "get_crops", lambda self, c: calls.append(self.backend) or real(self, c))
    direct = draw_crop(spec, np.random.default_rng(0)) is not None
    for k in (1, 3) if spec.train else (1,):
        for seed in range(4):
            got = stream.decode_clips(sample["mp4"], "mp4", spec, np.random.default_rng(seed), samples_per_decode=k,
                                      output="uint8")
            rng = np.random.default_rng(seed)
            uniforms = sampling_uniforms(spec, rng, k)
            with stream.decode.open_video(sample["mp4"], kind="mp4", short_side=spec.decode_short_side()) as video:
                draws = [sample_indices(video.num_frames, spec, None if uniforms is None else u) for u in
                         (uniforms if uniforms is not None else [None])]
                expected = [make_frames(video.get_batch(idx), spec, rng) for idx in draws]
            assert len(got) == k and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
            floats = stream.decode_clips(sample["mp4"], "mp4", spec, np.random.default_rng(seed), samples_per_decode=k)
            normalised = [normalize_clip(e, spec.mean, spec.std) for e in expected]
            assert all(torch.equal(f, e) for f, e in zip(floats, normalised, strict=True))
    assert calls == (["pyav-intra"] * len(calls) if direct else []) and (len(calls) > 0) == direct
    assert direct == (spec.rotation == 0 and spec.crop not in ("rrc", "three"))


def _take(ds, batches, num_workers, batch_size=2):
    loader = make_loader(ds, batch_size=batch_size, num_workers=num_workers, prefetch_factor=2)
    return list(itertools.islice(ds.tracked(iter(loader)), batches))


@pytest.mark.parametrize("mode, num_workers, samples_per_decode", [("resampled", 2, 1), ("resampled", 3, 2),
                                                                   ("epochs", 2, 1)])
def test_a_resumed_stream_continues_the_interrupted_one_exactly(shard_dir, mode, num_workers, samples_per_decode):
    """Batch j of a loader comes from worker j % workers and a new loader starts at worker 0: after 5 consumed
    batches (not a multiple of the workers) the resumed stream must still be the uninterrupted one, clip for clip."""
    opts = dict(mode=mode, seed=3, shuffle_buffer=4, samples_per_decode=samples_per_decode, output="uint8")
    straight_ds = ShardDataset(shard_dir, TRAIN, **opts)
    straight = _take(straight_ds, 9, num_workers)
    first = ShardDataset(shard_dir, TRAIN, **opts)
    _take(first, 5, num_workers)
    position = json.loads(json.dumps(first.position()))  # as a checkpoint stores it
    for saved in (position, None):  # with the saved position, and by batch count (no sample failed here)
        resumed = ShardDataset(shard_dir, TRAIN, **opts)
        resumed.resume_from(5, 2, saved)
        again = _take(resumed, 4, num_workers)
        assert [b["meta"]["key"] for b in again] == [b["meta"]["key"] for b in straight[5:]]
        assert all(torch.equal(a["clip"], b["clip"]) for a, b in zip(again, straight[5:], strict=True))


def test_resuming_late_reads_no_skipped_sample(shard_dir):
    """Resuming after 40 batches (10 passes over the data) reads the bytes of the samples it decodes, nothing else."""
    ds = ShardDataset(shard_dir, TRAIN, mode="resampled", seed=1, shuffle_buffer=4, output="uint8")
    straight = _take(ds, 41, 0)
    assert ds.records_read() == 82
    resumed = ShardDataset(shard_dir, TRAIN, mode="resampled", seed=1, shuffle_buffer=4, output="uint8")
    assert ds.position() == {0: 82}
    resumed.resume_from(40, 2, {0: 80})
    batch = _take(resumed, 1, 0)[0]
    assert resumed.records_read() == 2  # the two clips of the new batch
    assert batch["meta"]["key"] == straight[40]["meta"]["key"] and torch.equal(batch["clip"], straight[40]["clip"])


def test_the_saved_position_stays_exact_when_a_sample_failed(tmp_path):
    """A sample that failed to decode is consumed without yielding a clip: counting batches would then be off by
    one; the saved position is not."""
    raw = tmp_path / "raw"
    raw.mkdir()
    records = [Record(write_index_video(raw / f"v{i}.mp4", 16 + i), i % 3) for i in range(6)]
    out = tmp_path / "shards"
    write_shards(records, out, shard_samples=3, progress=False)
    for shard in sorted(out.glob("*.tar")):
        scanned, err = stream.scan_tar(str(shard))
        assert err is None and len(scanned) == 3
        ext, offset, size = next(m for m in scanned[1].members if m[0] == "mp4")
        data = bytearray(shard.read_bytes())
        data[offset : offset + size] = b"\0" * size  # the video bytes of each shard's second sample become garbage
        shard.write_bytes(bytes(data))
    opts = dict(mode="resampled", seed=0, shuffle_buffer=0, output="uint8")
    straight_ds = ShardDataset(out, TRAIN, **opts)
    straight = _take(straight_ds, 8, 0)
    first = ShardDataset(out, TRAIN, **opts)
    _take(first, 4, 0)
    assert first.stats()["skipped_samples"] >= 1  # in the part a resumed stream skips
    resumed = ShardDataset(out, TRAIN, **opts)
    resumed.resume_from(4, 2, first.position())
    again = _take(resumed, 4, 0)
    assert [b["meta"]["key"] for b in again] == [b["meta"]["key"] for b in straight[4:]]
    by_count = ShardDataset(out, TRAIN, **opts)
    by_count.resume_from(4, 2, None)
    assert [b["meta"]["key"] for b in _take(by_count, 4, 0)] != [b["meta"]["key"] for b in straight[4:]]


def test_epochs_mode_uses_every_video_once_per_epoch_over_two_ranks_and_two_workers(shard_dir):
    per_rank = []
    for rank in range(2):
        ds = ShardDataset(shard_dir, EVAL, mode="epochs", seed=5, rank=rank, world_size=2, output="uint8")
        batches = _take(ds, 3 * NUM_VIDEOS // 2, num_workers=2, batch_size=1)  # 3 epochs of this rank's half
        per_rank.append([b["meta"]["key"][0] for b in batches])
    epochs = [sorted(per_rank[0][e * 4 : e * 4 + 4] + per_rank[1][e * 4 : e * 4 + 4]) for e in range(3)]
    every = sorted(f"{i:08d}-v{i}" for i in range(NUM_VIDEOS))
    assert epochs == [every] * 3  # each video exactly once in each epoch, over both ranks
    assert per_rank[0][:4] != per_rank[0][4:8]  # a fresh permutation each epoch
    with pytest.raises(UserError, match="cannot feed 12 loader workers"):
        next(iter(ShardDataset(shard_dir, EVAL, mode="epochs", rank=0, world_size=12)))


def test_a_user_error_in_a_loader_worker_reaches_the_user_as_its_one_line(tmp_path):
    from data.errors import one_line

    with open(tmp_path / "g.tar", "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as w:
        for i in range(3):
            w.write({"__key__": f"x{i}", "mp4": b"junk" * 100, "json": json.dumps({"label": 0}).encode()})
    ds = ShardDataset(str(tmp_path / "g.tar"), TRAIN, mode="resampled", max_consecutive_failures=3)
    with pytest.raises(UserError) as err:
        next(iter(make_loader(ds, batch_size=1, num_workers=1)))
    assert "Original Traceback" in str(err.value)  # torch's wrapper around the worker's error
    line = one_line(err.value)
    assert line.startswith("the last 3 samples all failed to decode") and "\n" not in line
    assert one_line(UserError("plain")) == "plain"
    with pytest.raises(UserError, match="3 training samples cannot feed 12 loader workers"):  # in the main process
        make_loader(ShardDataset(str(tmp_path / "g.tar"), TRAIN, mode="epochs", world_size=4, rank=0), 1, 3)


def test_resolve_shards_takes_folders_braces_and_quoted_shell_patterns(tmp_path):
    for name in ("train-000000.tar", "train-000001.tar", "val-000000.tar"):
        (tmp_path / name).write_bytes(b"")
    train = [str(tmp_path / "train-000000.tar"), str(tmp_path / "train-000001.tar")]
    assert stream.resolve_shards(str(tmp_path / "train-*.tar")) == (train, None)
    assert stream.resolve_shards(str(tmp_path / "train-{000000..000001}.tar")) == (train, None)
    assert stream.resolve_shards(str(tmp_path / "train-00000[1].tar"))[0] == train[1:]
    with pytest.raises(UserError, match=r"pattern .*nope-\*\.tar matches no file"):
        stream.resolve_shards(str(tmp_path / "nope-*.tar"))
    with pytest.raises(UserError, match=r"shard .*train-000002\.tar does not exist"):
        stream.resolve_shards(str(tmp_path / "train-{000000..000002}.tar"))
    os.mkfifo(tmp_path / "fifo.tar")  # reading it would block until a writer came
    with pytest.raises(UserError, match=r"shard .*fifo\.tar is not a regular file"):
        stream.resolve_shards(str(tmp_path / "fifo.tar"))


def test_an_index_that_contradicts_itself_is_refused(tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    index = {"shards": ["shard-000000.tar"], "num_samples": 10, "shard_samples": [10]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    assert stream.resolve_shards(str(tmp_path)) == ([str(tmp_path / "shard-000000.tar")], 10)
    for bad in ({"num_samples": 1000}, {"shard_samples": [4, 6]}, {"shard_samples": "10"},
                {"shard_samples": ["10"]}):
        (tmp_path / "index.json").write_text(json.dumps({**index, **bad}))
        with pytest.raises(UserError, match="index.json contradicts itself"):
            stream.resolve_shards(str(tmp_path))
