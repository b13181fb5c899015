"""Sizes no machine can hold stop with one line before anything is allocated or written (`common.memory`)."""

import collections

import pytest

from common.errors import UserError
from common.memory import available_memory, check_clips_fit, check_fits


def test_available_memory_is_read_and_a_batch_beyond_it_is_refused_by_its_flags(monkeypatch):
    free = available_memory()
    assert free is not None and free > 2**20  # read on this machine (Linux: MemAvailable + SwapFree)
    check_clips_fit(2, 4, 32)  # 98 KiB: fits anywhere
    monkeypatch.setattr("common.memory.available_memory", lambda: 10 * 2**30)
    check_clips_fit(8, 16, 224)  # 0.6 GiB of 10
    with pytest.raises(UserError) as e:
        check_clips_fit(8, 4096, 224)  # 18.4 GiB
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("--batch-size 8", "--num-frames 4096", "--input-size 224", "18.4 GiB", "10.0 GiB", "lower"):
        assert part in msg, msg
    with pytest.raises(UserError, match="a clip of --num-frames 16 x --input-size 20000 .* uint8 .3 copies."):
        check_clips_fit(1, 16, 20000, batch_flag="", bytes_per_value=1, copies=3)
    monkeypatch.setattr("common.memory.available_memory", lambda: None)
    check_fits(10**18, "anything", "nothing")  # memory unknown: nothing is refused


def test_demo_refuses_a_seed_a_render_and_a_set_that_cannot_fit_before_writing_anything(tmp_path, monkeypatch):
    from data.prep import demo

    out = tmp_path / "demo"
    with pytest.raises(UserError, match="--seed -1"):
        demo.make_demo(out, seed=-1, depth=False, shards=False)
    with pytest.raises(UserError, match="rendering 2 demo videos at once .--workers. of --num-frames 1000000"):
        demo.make_demo(out, num_frames=1_000_000, workers=2)  # 2 x 307 GB of frames, on any machine
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(demo.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))  # 1 MiB free
    with pytest.raises(UserError) as e:
        demo.make_demo(out, per_class=64, val_per_class=16, depth=False, shards=False)
    msg = str(e.value)
    assert "8 x (64 + 16) videos" in msg and str(out) in msg and "GiB" in msg and "--videos-per-class" in msg
    assert not out.exists()  # refused before the folder was made
    demo.make_demo(out, per_class=1, val_per_class=1, num_frames=4, size=(32, 32), depth=False, shards=False,
                   workers=1)  # 16 tiny videos fit in the 1 MiB
    assert len(list((out / "videos" / "rgb" / "train").glob("*.mp4"))) == 8


def test_timemae_commands_refuse_impossible_sizes_in_one_line(tmp_path, capsys):
    from videos import write_index_video

    from launch.cli import main

    video = tmp_path / "clip.mp4"
    write_index_video(video, 32)
    for argv, flag in ((["preview", "--video", str(video), "--num-frames", "1000000", "--out", str(tmp_path / "p")],
                        "--num-frames 1000000"),
                       (["bench-step", "--input-size", "160000"], "--input-size 160000"),
                       (["bench-step", "--model", "resnet18", "--temporal", "tsm", "--num-frames", "1000000"],
                        "--num-frames 1000000"),
                       (["demo", "--out", str(tmp_path / "d"), "--videos-per-class", "10000000000"],
                        "--videos-per-class")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "GiB" in err[0], err
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()
