"""Shard writing: checking and quarantine, JSON records, determinism, re-encoding, shard splitting, the commands."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from data import decode
from data.clip import ClipSpec, grid_buffer
from data.errors import UserError
from data.manifest import Record, read_manifest, write_manifest
from data.shards import (
    DEFAULT_GOP,
    auto_short_side,
    check_records,
    parse_shard_size,
    parse_short_side,
    sample_key,
    write_shards,
)
from data.stream import iter_tar
from launch import cli
from tests.videos import index_depth, read_index, write_depth_pngs, write_index_frames, write_index_video, write_msr_bin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _index(out_dir) -> dict:
    with open(os.path.join(out_dir, "index.json")) as f:
        return json.load(f)


def _samples(out_dir) -> list[dict]:
    index = _index(out_dir)
    return [s for name in index["shards"] for s in iter_tar(os.path.join(out_dir, name))]


def _indices(data: bytes, idx) -> list[int]:
    with decode.open_video(data, kind="mp4") as video:
        return [read_index(f) for f in video.get_batch(idx)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Record]:
    """Five good inputs of every kind, one corrupt file and one missing file."""
    d = tmp_path_factory.mktemp("raw")
    write_index_video(d / "a01_s01_e01_v01.mp4", 20)
    write_index_video(d / "a02_s02_e01_v02.avi", 12, codec="mpeg4")
    write_index_frames(d / "frames_clip", 10)
    write_depth_pngs(d / "S001C001P001R001A001", 8)
    write_msr_bin(d / "a03_s03_e01_sdepth.bin", index_depth(6).astype(np.int32))
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    records = [
        Record(str(d / "a01_s01_e01_v01.mp4"), 0, "wave", subject=1, view=1, episode=1, split="train"),
        Record(str(d / "corrupt.mp4"), 1, "clap"),
        Record(str(d / "a02_s02_e01_v02.avi"), 1, "clap", subject=2, view=2, episode=1),
        Record(str(d / "frames_clip"), 2, "run"),
        Record(str(d / "missing.mp4"), 0, "wave"),
        Record(str(d / "S001C001P001R001A001"), 0, "wave", modality="depth"),
        Record(str(d / "a03_s03_e01_sdepth.bin"), 2, "run", subject=3, modality="depth"),
    ]
    write_manifest(records, d / "m.csv")
    return records


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    index = write_shards(inputs, out, shard_samples=2, progress=False)
    return out, index


def test_bad_inputs_are_quarantined_with_reasons(inputs, written):
    out, index = written
    assert index["num_samples"] == 5 and index["num_quarantined"] == 2
    with open(out / "quarantine.csv") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["path"]) for r in rows] == ["corrupt.mp4", "missing.mp4"]
    assert all(r["reason"] for r in rows)
    assert "missing" in rows[1]["reason"]
    keys = [s["__key__"] for s in _samples(out)]
    assert keys == [sample_key(i, r.path) for i, r in enumerate(inputs) if i not in (1, 4)]
    kept = [r.path for i, r in enumerate(inputs) if i not in (1, 4)]
    assert [r.path for r in read_manifest(out / "manifest.csv")] == kept


def test_json_records(inputs, written):
    out, index = written
    samples = {s["__key__"]: s for s in _samples(out)}
    metas = [json.loads(s["json"]) for s in samples.values()]
    assert [m["num_frames"] for m in metas] == [20, 12, 10, 8, 6]
    assert [m["label"] for m in metas] == [0, 1, 2, 0, 2]
    assert [m["modality"] for m in metas] == ["rgb", "rgb", "rgb", "depth", "depth"]
    first = metas[0]
    assert first["class_name"] == "wave" and (first["subject"], first["view"], first["episode"]) == (1, 1, 1)
    assert first["source"] == inputs[0].path and (first["width"], first["height"]) == (64, 48)
    assert first["fps"] == pytest.approx(25.0) and first["stored"] == "original"
    # Videos are kept byte for byte; folders and .bin are encoded as H.264 mp4.
    exts = [sorted(k for k in s if not k.startswith("__")) for s in samples.values()]
    assert exts == [["json", "mp4"], ["avi", "json"], ["json", "mp4"], ["json", "mp4"], ["json", "mp4"]]
    assert samples[first["key"]]["mp4"] == Path(inputs[0].path).read_bytes()
    assert [m["stored"] for m in metas[2:]] == ["h264"] * 3
    assert [m["decode_modality"] for m in metas] == ["rgb", "rgb", "rgb", "rgb", "rgb"]
    assert index["classes"] == ["wave", "clap", "run"] and index["shard_samples"] == [2, 2, 1]


def test_converted_inputs_keep_every_frame(written):
    out, _ = written
    samples = _samples(out)
    frames, depth_png, depth_bin = samples[2]["mp4"], samples[3]["mp4"], samples[4]["mp4"]
    assert _indices(frames, list(range(10))) == list(range(10))
    # Depth scaled over the whole video keeps near (bit 1) and far (bit 0) cells apart in every frame.
    for data, n in ((depth_png, 8), (depth_bin, 6)):
        with decode.open_video(data, kind="mp4") as video:
            got = video.get_batch(list(range(n)))
        near = index_depth(n)[:, 1:] < 2000
        lo, hi = got[:, 1:, :, 0][near], got[:, 1:, :, 0][~near]
        assert abs(float(lo.mean()) - float(hi.mean())) > 100


def test_two_runs_are_byte_identical(inputs, written, tmp_path):
    out, index = written
    again = write_shards(inputs, tmp_path, shard_samples=2, progress=False, workers=2)
    assert again == index
    for name in index["shards"] + ["index.json", "manifest.csv", "quarantine.csv"]:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_reencode_keeps_frames_and_sets_short_side_and_gop(tmp_path):
    path = write_index_video(tmp_path / "v.mp4", 40, width=64, height=48)
    index = write_shards([Record(path, 0)], tmp_path / "out", short_side=24, gop=4, progress=False)
    assert index["short_side"] == 24 and index["gop"] == 4
    (sample,) = _samples(tmp_path / "out")
    meta = json.loads(sample["json"])
    assert (meta["height"], meta["width"], meta["num_frames"], meta["stored"]) == (24, 32, 40, "h264")
    wanted = [0, 3, 4, 17, 18, 19, 38, 39]
    assert _indices(sample["mp4"], wanted) == wanted
    with av.open(io.BytesIO(sample["mp4"])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        keys = [i for i, frame in enumerate(container.decode(stream)) if frame.key_frame]
    assert keys == list(range(0, 40, 4))


def test_default_gop_is_all_intra_and_decodes_packet_by_packet(tmp_path):
    path = write_index_video(tmp_path / "v.mp4", 40, width=64, height=48)
    index = write_shards([Record(path, 0)], tmp_path / "out", short_side=48, progress=False)
    assert DEFAULT_GOP == 1 and index["gop"] == 1
    (sample,) = _samples(tmp_path / "out")
    with av.open(io.BytesIO(sample["mp4"])) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        assert len(packets) == 40 and all(p.is_keyframe for p in packets)
    wanted = [39, 0, 17, 17, 5, 38, 1]
    with decode.open_video(sample["mp4"], kind="mp4") as video:
        assert video.backend == "pyav-intra" and (video.width, video.height) == (64, 48)
        assert [read_index(f) for f in video.get_batch(wanted)] == wanted
        assert [read_index(f) for f in video.get_batch(range(40))] == list(range(40))
    with decode.open_video(sample["mp4"], kind="mp4", short_side=24) as video:  # resized while converting to RGB
        assert video.backend == "pyav-intra" and video.get_batch([3, 20]).shape == (2, 24, 32, 3)
        assert [read_index(f) for f in video.get_batch([3, 20])] == [3, 20]
    with decode.open_video(sample["mp4"], kind="mp4", backend="decord") as video:  # an explicit backend is kept
        assert video.backend == "decord" and [read_index(f) for f in video.get_batch(wanted)] == wanted


def test_intra_reader_falls_back_to_pyav_when_a_frame_does_not_decode(tmp_path, monkeypatch):
    path = write_index_video(tmp_path / "v.mp4", 20, width=64, height=48)
    write_shards([Record(path, 0)], tmp_path / "out", short_side=48, progress=False)
    (sample,) = _samples(tmp_path / "out")
    monkeypatch.setattr(decode._IntraReader, "_put", lambda self, frame, slot, *where: 0)  # no frame comes out
    with decode.open_video(sample["mp4"], kind="mp4") as video:
        assert video.backend == "pyav-intra"
        assert [read_index(f) for f in video.get_batch([19, 2])] == [19, 2]
        assert video.backend == "pyav"
    with decode.open_video(sample["mp4"], kind="mp4") as video, decode.open_video(path, backend="pyav") as pyav:
        out = np.zeros((2, 40, 60, 3), np.uint8)
        video.get_crops([([19, 2], (4, 2, 40, 60), out)])  # the crops fall back the same way
        assert video.backend == "pyav"
        assert np.array_equal(out, pyav.get_batch([19, 2])[:, 4:44, 2:62])


@pytest.mark.parametrize("wanted", [[0, 3, 17, 20, 21, 38, 39, 5], [39, 0, 17, 17, 5, 38, 1, 1]])
def test_get_crops_writes_each_frames_crop_into_a_strided_view(tmp_path, wanted):
    """`Video.get_crops` = `get_batch` + crop, into TIME grid buffers seen in source-frame order, for one clip and for
    several sharing frames, with the intra reader (which crops while converting each frame), decord, PyAV and depth."""
    path = write_index_video(tmp_path / "v.mp4", 40, width=64, height=48)
    write_shards([Record(path, 0)], tmp_path / "out", short_side=48, progress=False)
    (sample,) = _samples(tmp_path / "out")
    box, other = (5, 9, 30, 41), (0, 20, 48, 44)  # (top, left, h, w)
    spec = ClipSpec(num_frames=2, grid_n=2, input_size=64)  # L = 8 slots
    second = [1, 17, 17, 38, 39, 39, 2, 3]  # shares frames with the first clip
    sources = [(sample["mp4"], {}, "pyav-intra"), (path, {"backend": "decord"}, "decord"),
               (path, {"backend": "pyav"}, "pyav"), (sample["mp4"], {"modality": "depth"}, "pyav-intra")]
    for source, kwargs, backend in sources:
        with decode.open_video(source, kind="mp4", **kwargs) as video:
            assert video.backend == backend
            grid, slots = grid_buffer(spec, box)
            video.get_crops([(wanted, box, slots)])
            expected = video.get_batch(wanted)[:, 5:35, 9:50]
            assert np.array_equal(np.stack(decode._slot_views(slots)), expected), (backend, kwargs)
            # the grid holds the frames where the TIME grid puts them
            cells = grid.transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 30, 41, 3)  # (T*, cell r N + c, h, w, 3)
            assert np.array_equal(cells[1, 2], expected[2 * 2 + 1])  # spatial: frame (r N + c) T* + t
            both = [grid_buffer(spec, box)[1], np.zeros((8, 48, 44, 3), np.uint8)]
            video.get_crops([(wanted, box, both[0]), (second, other, both[1])])
            assert np.array_equal(both[0], slots)
            assert np.array_equal(both[1], video.get_batch(second)[:, :, 20:64]), (backend, kwargs)
    with decode.open_video(sample["mp4"], kind="mp4") as video:
        with pytest.raises(ValueError, match="does not lie inside"):
            video.get_crops([(wanted, (20, 0, 30, 10), np.empty((8, 30, 10, 3), np.uint8))])
        with pytest.raises(ValueError, match="does not hold"):
            video.get_crops([(wanted, box, np.empty((7, 30, 41, 3), np.uint8))])
        with pytest.raises(IndexError):
            video.get_crops([([0, 40], box, np.empty((2, 30, 41, 3), np.uint8))])


def test_short_side_auto_keep_and_sizes():
    assert [auto_short_side(n) for n in (1, 2, 3, 4)] == [224, 128, 96, 64]
    assert auto_short_side(2, 160) == 96
    assert parse_short_side("auto") == 128 and parse_short_side("AUTO", grid_n=4) == 64
    assert parse_short_side("keep") is None and parse_short_side("96") == 96
    for bad in ("", "0", "1", "-5", "big", "12.5"):
        with pytest.raises(UserError, match="--short-side"):
            parse_short_side(bad)


def test_shard_size_by_count_and_by_bytes(inputs, tmp_path):
    good = [r for i, r in enumerate(inputs) if i in (0, 2, 3)]
    by_count = write_shards(good, tmp_path / "n", shard_samples=1, progress=False)
    assert by_count["shard_samples"] == [1, 1, 1]
    by_bytes = write_shards(good, tmp_path / "b", shard_mb=1e-6, progress=False)  # every sample overflows alone
    assert by_bytes["shard_samples"] == [1, 1, 1]
    one = write_shards(good, tmp_path / "one", shard_mb=100, progress=False)
    assert one["shards"] == ["shard-000000.tar"] and one["shard_samples"] == [3]
    assert parse_shard_size("500") == (500, None)
    assert parse_shard_size("200MB") == (None, 200.0)
    assert parse_shard_size("1gb") == (None, 1000.0)
    for bad in ("", "0", "-3", "1.5", "12 parsecs"):
        with pytest.raises(UserError):
            parse_shard_size(bad)


def test_existing_shards_need_overwrite(inputs, tmp_path):
    write_shards(inputs[:1], tmp_path, progress=False)
    with pytest.raises(UserError, match="--overwrite"):
        write_shards(inputs[:1], tmp_path, progress=False)
    assert write_shards(inputs[:1], tmp_path, progress=False, overwrite=True)["num_samples"] == 1


def test_all_bad_inputs_is_a_user_error(inputs, tmp_path):
    with pytest.raises(UserError, match="quarantine"):
        write_shards([inputs[1], inputs[4]], tmp_path, progress=False)
    assert (tmp_path / "quarantine.csv").exists()


def test_check_records(inputs):
    good, bad = check_records(inputs)
    assert [r.path for r in good] == [r.path for i, r in enumerate(inputs) if i not in (1, 4)]
    assert [(r.path, bool(reason)) for r, reason in bad] == [(inputs[1].path, True), (inputs[4].path, True)]


def test_commands(inputs, tmp_path, capsys):
    manifest = os.path.join(os.path.dirname(inputs[0].path), "m.csv")
    assert cli.main(["check", "--manifest", manifest, "--no-progress"]) == 1  # bad inputs fail the check
    res = capsys.readouterr()
    assert "good: 5  bad: 2" in res.out and "corrupt.mp4" in res.out and "--allow-bad" in res.err
    assert cli.main(["check", "--manifest", manifest, "--no-progress", "--allow-bad"]) == 0  # only report them
    assert "good: 5  bad: 2" in capsys.readouterr().out
    assert cli.main(["shards", "--manifest", manifest, "--out", str(tmp_path / "s"), "--shard-size", "3"]) == 0
    assert "quarantined 2" in capsys.readouterr().out
    index = _index(tmp_path / "s")
    assert index["shard_samples"] == [3, 2]
    # Default --short-side auto: re-encoded for N = 2 at 224 (128 px, never upscaled), all intra.
    assert (index["short_side"], index["gop"]) == (128, 1)
    assert {json.loads(s["json"])["stored"] for s in _samples(tmp_path / "s")} == {"h264"}
    keep = ["--short-side", "keep", "--no-progress"]
    assert cli.main(["shards", "--manifest", manifest, "--out", str(tmp_path / "k"), *keep]) == 0
    assert _index(tmp_path / "k")["short_side"] is None
    assert json.loads(_samples(tmp_path / "k")[0]["json"])["stored"] == "original"
    auto4 = ["--grid-n", "4", "--input-size", "160", "--gop", "8", "--no-progress"]
    assert cli.main(["shards", "--manifest", manifest, "--out", str(tmp_path / "n4"), *auto4]) == 0
    assert (_index(tmp_path / "n4")["short_side"], _index(tmp_path / "n4")["gop"]) == (64, 8)
    assert cli.main(["shards", "--manifest", manifest, "--out", str(tmp_path / "x"), "--short-side", "tiny"]) == 2
    assert "--short-side 'tiny'" in capsys.readouterr().err
    preset = ["--preset", "generic", "--root", manifest, "--partition", "train"]
    assert cli.main(["shards", *preset, "--out", str(tmp_path / "p"), "--no-progress"]) == 0
    assert _index(tmp_path / "p")["num_samples"] == 1  # the one row with split "train"
    missing = str(tmp_path / "nope.csv")
    for args in (["check", "--manifest", missing], ["shards", "--manifest", missing, "--out", str(tmp_path / "x")]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "nope.csv" in err and err.count("\n") == 1  # one line, no traceback
    res = subprocess.run(
        [sys.executable, "-m", "launch.cli", "check", "--manifest", missing], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_timemae_shards_writes_a_seeded_shuffled_order_by_default(tmp_path, capsys):
    """A manifest sorted by class gives shards that mix classes; the same seed gives the same shards, byte for
    byte; --order manifest keeps the manifest's order."""
    raw = tmp_path / "raw"
    raw.mkdir()
    records = [Record(write_index_video(raw / f"c{c}_{i}.mp4", 6), c) for c in range(3) for i in range(4)]
    write_manifest(records, raw / "m.csv")
    args = ["shards", "--manifest", str(raw / "m.csv"), "--shard-size", "4", "--short-side", "keep", "--no-progress"]

    def labels(out) -> list[list[int]]:
        index = _index(out)
        return [[json.loads(s["json"])["label"] for s in iter_tar(str(out / n))] for n in index["shards"]]

    for name in ("a", "b"):
        assert cli.main([*args, "--out", str(tmp_path / name)]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "m"), "--order", "manifest"]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "s1"), "--order-seed", "1"]) == 0
    capsys.readouterr()
    assert labels(tmp_path / "m") == [[0] * 4, [1] * 4, [2] * 4]
    shuffled = labels(tmp_path / "a")
    assert sorted(sum(shuffled, [])) == [0] * 4 + [1] * 4 + [2] * 4
    assert all(len(set(shard)) > 1 for shard in shuffled)  # no shard of one class
    assert _index(tmp_path / "a")["order"] == "shuffled, seed 0" and _index(tmp_path / "m")["order"] == "manifest"
    for n in _index(tmp_path / "a")["shards"]:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    assert labels(tmp_path / "s1") != shuffled
    assert cli.main([*args, "--out", str(tmp_path / "neg"), "--order-seed", "-1"]) == 2
    assert "--order-seed -1 is negative" in capsys.readouterr().err
