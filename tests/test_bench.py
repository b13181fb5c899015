"""`timemae bench-loader`: a smoke test on a tiny generated video (no timing assertions), and its input errors."""

from __future__ import annotations

import os
import subprocess
import sys

from data import bench
from data.manifest import Record
from data.shards import write_shards
from launch import cli
from tests.videos import write_index_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args: str) -> subprocess.CompletedProcess:
    # A subprocess: the bench sets process-wide state (thread budget, CPU affinity, malloc thresholds).
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", "bench-loader", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_quick_run_prints_the_whole_table(tmp_path):
    video = write_index_video(tmp_path / "tiny.mp4", 24, width=64, height=48)
    shard_dir = tmp_path / "given"
    write_shards([Record(video, 0)], shard_dir, short_side=32, progress=False)
    res = _bench("--videos", video, "--quick", "--work", str(tmp_path / "work"), "--shards", str(shard_dir))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch" in lines[0] and "decord" in lines[0] and "av " in lines[0]
    header = next(line for line in lines if line.startswith("video"))
    for column in bench.COLUMNS:
        assert column in header
    rows = [line for line in lines if line.startswith(("tiny", "00000000"))]
    # 3 videos (the file, its 240p and 720p re-encodes) x (baseline + 3 N from the file + 3 N from shards + N=2 float
    # + N=2 fine-tune + K=2, 4), and the given shard's one sample x 3 N.
    assert len(rows) == 3 * 11 + 3
    names = {row.split()[0] for row in rows}
    assert names == {"tiny", "tiny_240p", "tiny_720p", "00000000-tiny"}
    for config in ("VideoMAE 16x4 PIL", "TIME N=1", "TIME N=2", "TIME N=4", "TIME N=2 float", "TIME N=2 fine-tune",
                   "TIME N=2 K=2", "TIME N=2 K=4"):
        assert any(config in row for row in rows), config
    assert any("shards s128 g1" in row for row in rows) and any("shards s64 g1" in row for row in rows)
    targets = [line for line in lines if line.startswith("target:")]
    assert len(targets) == 4 and all("float output on the loader" in line for line in targets)
    assert os.path.isfile(tmp_path / "work" / "tiny_720p.mp4")


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    # Arguments are checked before the bench touches any process-wide setting, so this runs in-process.
    assert cli.main(["bench-loader", "--videos", str(tmp_path / "missing.mp4"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "missing.mp4" in err and err.count("\n") == 1
    assert cli.main(["bench-loader", "--grid-n", "0", "--quick"]) == 2
    assert "--grid-n" in capsys.readouterr().err


def test_real_loader_rows_count_the_clips_each_worker_count_delivers(demo_dir):
    lines = bench.loader_rows([str(demo_dir / "shards" / "train")], [0, 2], batch_size=2, seconds=0.5)
    assert lines[0].startswith("real loader: N = 2, 16 x 224 x 224 uint8 clips, batch 2")
    rows = [line.split() for line in lines[2:]]
    assert [int(r[0]) for r in rows] == [0, 2]
    for _workers, rate, clips in rows:
        assert float(rate) > 0 and int(clips) > 0 and int(clips) % 2 == 0


def test_loader_workers_flag_is_checked(capsys):
    assert cli.main(["bench-loader", "--loader-workers", "-1"]) == 2
    assert "--loader-workers" in capsys.readouterr().err
