"""`timemae shards` / `timemae check` on bad input: a modality that contradicts the files, an output folder that cannot
be written or fills up, inputs that only fail past their first and last frame."""

from __future__ import annotations

import argparse
import errno
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data.manifest import Record, write_manifest
from data.shards import ModalityMismatch, _mismatch_error, check_records, modality_mismatch, write_shards
from data.stream import iter_tar
from launch import cli
from tests.videos import index_depth, write_depth_pngs, write_index_frames, write_index_video, write_msr_bin


def _colour_video(path, num_frames: int = 6, width: int = 64, height: int = 48) -> str:
    """H.264 mp4 of saturated colour frames (a red-to-blue ramp over a green one)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(num_frames):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[..., 0] = np.linspace(255, 0, width, dtype=np.uint8)[None]
            rgb[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
            rgb[..., 2] = 40 + 10 * k
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)


def _gray16_video(path, num_frames: int = 4) -> str:
    """Lossless 16-bit single-channel video (FFV1 gray16le in Matroska), depth in millimetres."""
    depth = index_depth(num_frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = depth.shape[2], depth.shape[1], "gray16le"
        for frame in depth:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray16le")))
        container.mux(stream.encode(None))
    return str(path)


def _one_error_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_a_modality_that_contradicts_the_files_is_refused_in_one_line(tmp_path, capsys):
    depth_pngs = write_depth_pngs(tmp_path / "S001C001P001R001A001", 4)  # 16-bit PNGs
    colour = _colour_video(tmp_path / "colour.mp4")
    good = write_index_video(tmp_path / "good.mp4", 4)
    cases = [  # (rows, the line and words the error must name)
        ([Record(good, 0), Record(depth_pngs, 1)], ["line 3", depth_pngs, "16-bit", "modality column to depth"]),
        ([Record(colour, 0, modality="depth"), Record(good, 1)], ["line 2", colour, "colour video", "column to rgb"]),
    ]
    for i, (rows, fragments) in enumerate(cases):
        manifest = tmp_path / f"m{i}.csv"
        write_manifest(rows, manifest)
        out = tmp_path / f"out{i}"
        for command in (["shards", "--out", str(out)], ["check"]):
            assert cli.main([*command, "--manifest", str(manifest), "--no-progress"]) == 2
            _one_error_line(capsys.readouterr().err, str(manifest), *fragments)
        assert not out.exists() or not os.listdir(out)  # refused before anything is written
    generic = ["--preset", "generic", "--root", str(tmp_path / "m0.csv"), "--no-progress"]
    assert cli.main(["check", *generic]) == 2  # rows of a CSV read by a preset: still its line
    _one_error_line(capsys.readouterr().err, "m0.csv line 3", "modality column to depth")
    # Records that no file numbers: the API names their position, the command a preset's --modality flag.
    with pytest.raises(ModalityMismatch) as info:
        check_records([Record(depth_pngs, 0)])
    assert str(info.value).startswith(f"input 0: {depth_pngs} is a folder of single-channel 16-bit images")
    preset = argparse.Namespace(manifest=None, preset="ntu60", root=str(tmp_path))
    assert _mismatch_error(info.value, preset).args[0].startswith("--preset ntu60: ")
    assert str(_mismatch_error(info.value, preset)).endswith("; pass --modality depth")

    # The rule on every input kind: only contradictions the content settles.
    msr_bin = write_msr_bin(tmp_path / "a01_s01_e01_sdepth.bin", index_depth(3).astype(np.int32))
    gray16 = _gray16_video(tmp_path / "depth16.mkv")
    gray_frames = write_index_frames(tmp_path / "gray_frames", 3)
    gray_l = tmp_path / "l_frames"  # 8-bit single-channel PNGs
    gray_l.mkdir()
    for k in range(3):
        Image.fromarray(np.full((48, 64), 40 * k, np.uint8)).save(gray_l / f"{k}.png")
    refused = {
        (msr_bin, "rgb"): "depth",
        (gray16, "rgb"): "depth",
        (depth_pngs, "rgb"): "depth",
        (colour, "depth"): "rgb",
    }
    passed = [
        (good, "depth"),
        (good, "rgb"),
        (colour, "rgb"),
        (depth_pngs, "depth"),
        (msr_bin, "depth"),
        (gray16, "depth"),
        (gray_frames, "depth"),
        (gray_frames, "rgb"),
        (str(gray_l), "rgb"),
        (str(gray_l), "depth"),
        (str(tmp_path / "missing.mp4"), "depth"),
    ]
    for (path, modality), needed in refused.items():
        got = modality_mismatch(Record(path, 0, modality=modality))
        assert got is not None and got[1] == needed, (path, modality, got)
    for path, modality in passed:  # R = G = B video marked depth is depth; gray footage marked rgb is rgb
        assert modality_mismatch(Record(path, 0, modality=modality)) is None, (path, modality)
    with pytest.raises(
        ModalityMismatch,
        match=r"input 1: .*depth16.mkv is a single-channel 16-bit video .*"
        r"\(and 1 more input like it\); give it modality depth",
    ):
        check_records([Record(good, 0), Record(gray16, 0), Record(msr_bin, 0)])


def test_an_out_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    write_manifest([Record(write_index_video(tmp_path / "v.mp4", 3), 0)], manifest)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, reason in [
        (a_file, "is a file"),
        (a_file / "under", "Not a directory"),
        ("/proc/timemae-shards", "cannot be written"),
    ]:
        assert cli.main(["shards", "--manifest", str(manifest), "--out", str(out), "--no-progress"]) == 2
        _one_error_line(capsys.readouterr().err, str(out), reason, "give a folder")
    assert sorted(os.listdir(tmp_path)) == ["a_file", "m.csv", "v.mp4"]


def test_a_full_disk_while_writing_shards_keeps_complete_ones_and_leaves_no_tmp(tmp_path, capsys, monkeypatch):
    records = [Record(write_index_video(tmp_path / f"v{k}.mp4", 3), k) for k in range(3)]
    write_manifest(records, tmp_path / "m.csv")
    write = wds.TarWriter.write
    calls = []

    def fills_up(self, obj):
        calls.append(obj["__key__"])
        if len(calls) == 2:  # the second sample, in the second shard
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", fills_up)
    out = tmp_path / "out"
    args = ["--manifest", str(tmp_path / "m.csv"), "--out", str(out), "--shard-size", "1", "--no-progress"]
    assert cli.main(["shards", *args, "--short-side", "keep"]) == 1
    _one_error_line(
        capsys.readouterr().err, "shard-000001.tar", "no space left on the device", "1 complete shard", "--overwrite"
    )
    assert sorted(os.listdir(out)) == ["shard-000000.tar"]  # complete: kept; incomplete: removed; no index
    assert [s["__key__"] for s in iter_tar(str(out / "shard-000000.tar"))] == [calls[0]]


def test_check_decodes_every_frame_as_shards_does(tmp_path, capsys):
    frames = write_index_frames(tmp_path / "frames", 5)
    depth = write_depth_pngs(tmp_path / "depth", 5)
    for folder, name in ((frames, "img_00003.png"), (depth, "MDepth-00000003.png")):
        with open(os.path.join(folder, name), "wb") as f:  # a damaged middle frame; the first and last are fine
            f.write(b"\x89PNG\r\n\x1a\n" + bytes(64))
    good = write_index_video(tmp_path / "good.mp4", 4)
    records = [Record(good, 0), Record(frames, 1), Record(depth, 1, modality="depth")]
    write_manifest(records, tmp_path / "m.csv")
    manifest = ["--manifest", str(tmp_path / "m.csv"), "--no-progress"]

    assert cli.main(["check", *manifest]) == 1
    res = capsys.readouterr()
    assert "good: 1  bad: 2" in res.out and "img_00003.png" in res.out and "MDepth-00000003.png" in res.out
    _one_error_line(res.err, "2 of 3 inputs are bad", "--allow-bad")
    assert cli.main(["check", *manifest, "--allow-bad"]) == 0
    assert "good: 1  bad: 2" in capsys.readouterr().out

    # The same inputs are bad for the writer, for the same reasons, whatever the storage flags.
    for short_side in (None, 32):
        _, bad = check_records(records, short_side=short_side)
        index = write_shards(records, tmp_path / f"s{short_side}", short_side=short_side, progress=False)
        assert index["num_samples"] == 1 and index["num_quarantined"] == 2
        quarantined = (tmp_path / f"s{short_side}" / "quarantine.csv").read_text()
        assert [r.path for r, _ in bad] == [frames, depth]
        assert all(" ".join(reason.split()) in quarantined for _, reason in bad)


def test_a_decode_that_times_out_is_named_once(tmp_path):
    video = _colour_video(tmp_path / "slow.mp4", num_frames=20)
    _, bad = check_records([Record(video, 0)], timeout_s=1e-6)
    (record, reason), = bad
    assert reason.startswith("decoding: timed out after") and video not in reason  # the listing puts the path first


def test_fifos_devices_and_huge_non_videos_are_bad_inputs_named_without_being_read(tmp_path, monkeypatch):
    # A FIFO named .mp4 would block the reader until a writer comes, /dev/zero would never end, and a large file that
    # is no video at all used to be read into memory whole before its first byte was looked at.
    from common.errors import DecodeError
    from data.prep import shards

    os.mkfifo(tmp_path / "fifo.mp4")
    os.symlink("/dev/zero", tmp_path / "zero.mp4")
    with open(tmp_path / "image.mp4", "wb") as f:
        f.truncate(2**30)  # 1 GiB of zeros, sparse on disk
    good = write_index_video(tmp_path / "good.mp4", 6)
    records = [Record(str(tmp_path / name), 0, "x") for name in ("fifo.mp4", "zero.mp4", "image.mp4")]
    kept, bad = check_records([*records, Record(str(good), 0, "x")])
    assert [r.path for r in kept] == [str(good)]
    reasons = {os.path.basename(r.path): reason for r, reason in bad}
    assert "not a regular file" in reasons["fifo.mp4"] and "not a regular file" in reasons["zero.mp4"], reasons
    assert "not a readable video" in reasons["image.mp4"], reasons

    opened = []
    real_open = open
    monkeypatch.setattr(shards, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k),
                        raising=False)
    for opts in (shards._options(None, None, 60.0), shards._options(None, 16, 60.0)):  # as stored, and re-encoded
        with pytest.raises(DecodeError, match="not a readable video"):
            shards._prepare(records[2], opts)
    assert str(tmp_path / "image.mp4") not in opened  # refused from its header, never read
    shards._prepare(Record(str(good), 0, "x"), shards._options(None, None, 60.0))
    assert opened == [str(good)]  # the spy sees the reads it should
    with pytest.raises(DecodeError, match="not a regular file"):
        from data.decode import open_video

        open_video(str(tmp_path / "fifo.mp4"))
