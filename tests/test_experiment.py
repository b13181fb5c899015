"""`timemae experiment time-vs-frames`: the runner (settings, reuse, table) on a tiny budget, and (slow) the claim
itself at a reduced budget: a TIME frame (N = 2) lets a frame-level model read the demo's motion, a frame (N = 1) does
not."""

import csv
import json

import pytest

from launch import cli


def test_settings_run_and_the_table_reports_their_metrics(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiment", "time-vs-frames", "--out", str(out), "--settings", "N=1", "N=2 temporal", "N=1 + TSM",
            "--videos-per-class", "2", "--val-per-class", "1", "--input-size", "32", "--num-frames", "4",
            "--batch-size", "4", "--max-steps", "2", "--num-workers", "0"]
    assert cli.main(args) == 0
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["setting"] for r in rows] == ["N=1", "N=2 temporal", "N=1 + TSM"]
    for row, folder in zip(rows, ("n1", "n2_temporal", "n1_tsm"), strict=True):
        metrics = json.loads((out / "runs" / folder / "metrics.json").read_text())
        assert float(row["top1"]) == pytest.approx(metrics["top1"], abs=1e-4)
        config = (out / "runs" / folder / "config.yaml").read_text()
        assert f"grid_n: {row['grid_n']}" in config and f"temporal: {row['temporal']}" in config
        assert f"grid_arrangement: {row['arrangement']}" in config
    assert (out / "table.png").is_file() and "| N=2 temporal |" in (out / "table.md").read_text()
    capsys.readouterr()
    assert cli.main(args) == 0  # a second run reuses every finished run
    assert capsys.readouterr().out.count("done before, reused") == 3
    assert cli.main([*args[:2], "--out", str(tmp_path / "x"), "--model", "vit_tiny"]) == 2
    capsys.readouterr()
    assert cli.main([*args[:2], "--out", str(tmp_path / "y"), "--seed", "3000000000"]) == 2  # before any demo is made
    assert "--seed 3000000000 is outside" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_a_time_frame_shows_what_a_frame_cannot(tmp_path):
    """The README's reduced run: ResNet-18 TSN from scratch, 64 px, 2 frames, 64 + 16 plain-background demo videos per
    class, 300 steps of 16. Measured: N = 1 0.125 (chance), N = 2 spatial 0.750."""
    out = tmp_path / "exp"
    args = ["experiment", "time-vs-frames", "--out", str(out), "--settings", "N=1", "N=2 spatial",
            "--videos-per-class", "64", "--val-per-class", "16", "--input-size", "64", "--num-frames", "2",
            "--batch-size", "16", "--max-steps", "300"]
    assert cli.main(args) == 0
    top1 = {r["setting"]: float(r["top1"]) for r in csv.DictReader((out / "table.csv").open())}
    assert top1["N=2 spatial"] >= top1["N=1"] + 0.10, top1
    assert top1["N=2 spatial"] >= 0.125 + 0.10, top1  # and clearly above chance
