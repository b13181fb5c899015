"""`timemae protocol`: the UWA3D Multiview II cross-view protocol end to end on fake trees with the real naming (RGB
videos, 16-bit depth PNG folders), the plan (--dry-run), resume by skipping finished trainings and by resuming the one
killed mid-training, the 3-split mean of HMDB51, and the bad inputs (one line, exit 2)."""

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import kill_after_checkpoint, run_script
from videos import write_depth_pngs, write_tinted_video

from launch.cli import main

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220)]  # action 1, 2, 3: every frame shows its class
TINY = ["--model", "resnet18", "--input-size", "32", "--num-frames", "4", "--max-steps", "3", "--batch-size", "2",
        "--num-workers", "0"]


def write_tinted(path: Path, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    """A 32 x 32, 8-frame clip tinted ``colour`` (`videos.write_tinted_video`)."""
    write_tinted_video(path, colour, rng)


@pytest.fixture(scope="module")
def uwa_tree(tmp_path_factory) -> Path:
    """UWA3D Multiview II naming, a{AA}_s{SS}_e{EE}_v{VV}_rgb.avi: 3 actions x 2 subjects x 1 episode x 4 views."""
    root = tmp_path_factory.mktemp("uwa") / "UWA3DII"
    root.mkdir()
    rng = np.random.default_rng(0)
    for action, colour in enumerate(COLOURS, 1):
        for subject in (1, 2):
            for view in (1, 2, 3, 4):
                write_tinted(root / f"a{action:02d}_s{subject:02d}_e01_v{view:02d}_rgb.avi", colour, rng)
    return root


@pytest.fixture(scope="module")
def uwa_depth_tree(tmp_path_factory) -> Path:
    """UWA3D Multiview II depth: a{AA}_s{SS}_e{EE}_v{VV}_depth/ folders of 8 16-bit PNGs (millimetres, first row 0 as
    Kinect's missing depth), 3 actions x 2 subjects x 1 episode x 4 views; every frame shows its action as a near band
    (left, middle or right third) in front of a far background."""
    root = tmp_path_factory.mktemp("uwa_depth") / "UWA3DII"
    root.mkdir()
    rng = np.random.default_rng(1)
    for action in (1, 2, 3):
        for subject in (1, 2):
            for view in (1, 2, 3, 4):
                depth = rng.normal(3000, 50, (8, 32, 32))
                depth[:, :, (action - 1) * 11: action * 11] -= 2000
                depth[:, 0, :] = 0
                write_depth_pngs(root / f"a{action:02d}_s{subject:02d}_e01_v{view:02d}_depth", 8,
                                 depth=depth.astype(np.uint16))
    return root


HMDB_CLASSES = ("brush_hair", "cartwheel", "chew")


@pytest.fixture(scope="module")
def hmdb_tree(tmp_path_factory) -> Path:
    """HMDB51 layout: hmdb51/{class}/{video}.avi and, beside it, testTrainMulti_7030_splits/{class}_test_split{n}.txt
    with lines "video.avi k" (k 1 train, 2 test, 0 unused). 3 classes x 5 videos; per split each class has 3 training
    videos, 1 test video (a different one in each split) and 1 unused."""
    base = tmp_path_factory.mktemp("hmdb")
    root, splits = base / "hmdb51", base / "testTrainMulti_7030_splits"
    splits.mkdir()
    rng = np.random.default_rng(2)
    for cls, colour in zip(HMDB_CLASSES, COLOURS, strict=True):
        (root / cls).mkdir(parents=True)
        videos = [f"April_09_{cls}_u_nm_np1_fr_goo_{k}.avi" for k in range(5)]
        for video in videos:
            write_tinted(root / cls / video, colour, rng)
        for n in (1, 2, 3):
            kinds = ["1"] * 5
            kinds[n - 1], kinds[4] = "2", "0"
            lines = "".join(f"{v} {k} \n" for v, k in zip(videos, kinds, strict=True))
            (splits / f"{cls}_test_split{n}.txt").write_text(lines)
    return root


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["protocol", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_list_shows_every_protocol_with_its_trainings(capsys):
    rc, out, _ = cli(["--list"], capsys)
    assert rc == 0
    assert "uwa3d-mv2         6 trainings, 12 results" in out
    assert "hmdb51            3 trainings, 3 results" in out
    for name in ("ntu60", "ntu120", "ucf101", "msr_action3d", "msr_action_pairs", "uwa3d_activity"):
        assert name in out


def test_dry_run_counts_every_side_and_prints_the_commands(uwa_tree, tmp_path, capsys):
    rc, out, _ = cli(["uwa3d-mv2", "--root", str(uwa_tree), "--out", str(tmp_path / "o"), "--dry-run", "--", *TINY],
                     capsys)
    assert rc == 0, out
    assert "6 trainings, 12 results, 3 classes" in out
    assert "v12: train V1 & V2 12 videos; test V3 6, V4 6" in out
    assert "v34: train V3 & V4 12 videos; test V1 6, V2 6" in out
    commands = [ln for ln in out.splitlines() if ln.startswith("[new]")]
    assert len(commands) == 12
    assert sum("--eval-only" in c for c in commands) == 6
    assert all("--select-on" not in c for c in commands)  # the default, last: the test views choose nothing
    assert not (tmp_path / "o").exists()  # nothing written


def test_a_manifest_root_gives_the_same_plan(uwa_tree, tmp_path, capsys):
    from data.manifest import write_manifest
    from data.presets import build_manifest

    records = {r.path: r for split in ("v12_v3", "v12_v4") for r in build_manifest("uwa3d_mv2", uwa_tree, split)}
    write_manifest(list(records.values()), tmp_path / "all.csv")
    rc, out, _ = cli(["uwa3d-mv2", "--root", str(tmp_path / "all.csv"), "--out", str(tmp_path / "o"), "--dry-run"],
                     capsys)
    assert rc == 0 and "v24: train V2 & V4 12 videos; test V1 6, V3 6" in out


@pytest.mark.parametrize(
    "case,message",
    [
        ("other_names", "0 of its 2 files follow the uwa3d-mv2 naming a{AA}_s{SS}_e{EE}_v{VV} (expected e.g. "
                        "a01_s01_e01_v01_rgb.avi)"),
        ("no_view_4", "view 4 has no test samples among the 18 rgb videos"),
        ("unknown", "unknown protocol 'uwa3d-mv9'"),
        ("owned_flag", "conflicting flags: --output-dir after --"),
        ("foreign_flag", "finetune/run.py has no flag '--lr' (after --) (the learning rate is --base-lr"),
        ("python_nproc", "conflicting flags: --launcher python runs one process but --nproc 2"),
        ("split", "conflicting flags: --split xsub but protocol uwa3d-mv2 has no splits"),
        ("ntu_no_split", "protocol ntu60 needs --split: one of xsub, xview"),
        ("depth_only", "protocol msr_action3d has depth videos only; pass --modality depth"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(uwa_tree, tmp_path, capsys, case, message):
    root, name, extra, tail = uwa_tree, "uwa3d-mv2", [], []
    if case == "other_names":
        root = tmp_path / "raw"
        root.mkdir()
        (root / "clip_001.avi").write_bytes(b"x")
        (root / "notes.txt").write_text("x")
    elif case == "no_view_4":
        root = tmp_path / "raw"
        root.mkdir()
        for f in uwa_tree.iterdir():
            if not f.name.endswith("_v04_rgb.avi"):
                (root / f.name).symlink_to(f)
    elif case == "unknown":
        name = "uwa3d-mv9"
    elif case == "owned_flag":
        tail = ["--", "--output-dir", "x"]
    elif case == "foreign_flag":  # not taken as a prefix of --lr-steps
        tail = ["--", "--lr", "1e-3"]
    elif case == "python_nproc":
        extra = ["--launcher", "python", "--nproc", "2"]
    elif case == "split":
        extra = ["--split", "xsub"]
    elif case == "ntu_no_split":
        name = "ntu60"
    elif case == "depth_only":
        name = "msr_action3d"
        extra = ["--modality", "rgb"]
    rc, _, err = cli([name, "--root", str(root), "--out", str(tmp_path / "o"), "--dry-run", *extra, *tail], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.slow
def test_uwa3d_mv2_gives_twelve_rows_from_the_runs_and_a_second_run_skips_them(uwa_tree, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out_dir = tmp_path / "out"
    args = ["uwa3d-mv2", "--root", str(uwa_tree), "--out", str(out_dir), "--", *TINY]
    rc, out, err = cli(args, capsys)
    assert rc == 0, out[-3000:] + err[-3000:]
    rows = list(csv.DictReader((out_dir / "table.csv").open()))
    assert len(rows) == 13 and rows[-1]["training"] == "average"
    pairs = [(r["training"], r["test"]) for r in rows[:12]]
    assert pairs[:2] == [("V1 & V2", "V3"), ("V1 & V2", "V4")] and pairs[-1] == ("V3 & V4", "V2")  # Table 3 order
    for row in rows[:12]:
        metrics = json.loads(Path(row["metrics"]).read_text())
        assert float(row["top1"]) == round(100 * metrics["top1"], 2)
        assert metrics["num_videos"] == 6 and row["selected_on"] == "last"
    assert float(rows[-1]["top1"]) == round(sum(float(r["top1"]) for r in rows[:12]) / 12, 2)
    training = json.loads((out_dir / "runs" / "v12" / "metrics.json").read_text())
    assert training["selected_on"] == "last" and training["split"] == "test" and training["step"] == 3
    md = (out_dir / "table.md").read_text()
    assert "| Testing | V3 | V4 | V2 |" in md and md.rstrip().endswith(f"| {float(rows[-1]['top1']):.2f} |")
    assert (out_dir / "table.png").stat().st_size > 0
    assert len(list((out_dir / "shards").iterdir())) == 10  # six training pairs, four test views

    t0 = time.perf_counter()
    rc, out, err = cli(args, capsys)
    assert rc == 0, err
    assert out.count("done, skipped") == 12 and out.count("reused") == 10
    assert time.perf_counter() - t0 < 30
    assert list(csv.DictReader((out_dir / "table.csv").open())) == rows

    rc, _, err = cli([*args, "--max-steps", "4"], capsys)  # other flags on a finished run: refused without --force
    assert rc == 2 and "holds a run with other flags; pass --force" in err


def test_launchers_and_slurm_steps(uwa_tree, tmp_path, capsys, monkeypatch):
    from finetune.protocol import resolve_launcher

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    rc, out, _ = cli(["uwa3d-mv2", "--root", str(uwa_tree), "--out", str(tmp_path), "--dry-run", "--nproc", "2"],
                     capsys)
    assert rc == 0 and "launcher torchrun x 2" in out and "torch.distributed.run --nproc-per-node 2" in out
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert resolve_launcher("auto", None) == ("srun", 8)
    rc, out, _ = cli(["uwa3d-mv2", "--root", str(uwa_tree), "--out", str(tmp_path), "--dry-run"], capsys)
    assert rc == 0 and "[new] srun --kill-on-bad-exit=1" in out


def _rows_agree_with_their_metrics(rows: list[dict]) -> None:
    for row in rows:
        metrics = json.loads(Path(row["metrics"]).read_text())
        assert float(row["top1"]) == round(100 * metrics["top1"], 2)
        assert int(row["num_videos"]) == metrics["num_videos"] and row["selected_on"] == "last"


def test_hmdb51_gives_the_three_splits_and_their_mean(hmdb_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out_dir = tmp_path / "out"
    rc, out, err = cli(["hmdb51", "--root", str(hmdb_tree), "--out", str(out_dir), "--", *TINY], capsys)
    assert rc == 0, out[-3000:] + err[-3000:]
    for n in (1, 2, 3):
        assert f"split{n}: train split{n} 9 videos; test split{n} 3" in out  # the unused videos left out
    rows = list(csv.DictReader((out_dir / "table.csv").open()))
    assert [(r["training"], r["test"]) for r in rows[:3]] == [(f"split{n}", f"split{n}") for n in (1, 2, 3)]
    assert len(rows) == 4 and rows[-1]["training"] == "average"
    _rows_agree_with_their_metrics(rows[:3])
    assert all(int(r["num_videos"]) == 3 for r in rows[:3])
    mean = round(sum(float(r["top1"]) for r in rows[:3]) / 3, 2)
    assert float(rows[-1]["top1"]) == mean
    md = (out_dir / "table.md").read_text().splitlines()
    assert md[0] == "hmdb51 (rgb), top-1 (%)"
    assert [ln.split(" | ")[0] for ln in md if ln.startswith("| split")] == ["| split1", "| split2", "| split3"]
    assert md[-1] == f"| mean | | {mean:.2f} | | | |"
    tests = {n: {r["path"] for r in csv.DictReader((out_dir / "manifests" / f"split{n}_test.csv").open())}
             for n in (1, 2, 3)}
    assert not tests[1] & tests[2] and not tests[2] & tests[3]  # each split tests on other videos


@pytest.mark.slow
def test_a_depth_protocol_killed_mid_training_resumes_that_training(uwa_depth_tree, tmp_path):
    out_dir, steps = tmp_path / "out", 4
    at = TINY.index("--max-steps")
    flags = [*TINY[:at], *TINY[at + 2:], "--max-steps", str(steps), "--save-every", "2", "--log-every", "1"]
    args = ["-m", "launch.cli", "protocol", "uwa3d-mv2", "--root", str(uwa_depth_tree), "--modality", "depth",
            "--out", str(out_dir), "--", *flags]
    first = out_dir / "runs" / "v12"
    kill_after_checkpoint([sys.executable, *args], first, 2)
    assert not (first / "metrics.json").exists(), "the first training finished before it was killed"
    stopped = max(int(p.parent.name.split("_")[1]) for p in (first / "checkpoints").glob("step_*/COMPLETE"))
    assert not (out_dir / "runs" / "v13").exists()  # killed in the first training

    again = run_script(args, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "shards train_v12: reused" in again.stdout
    assert f"resumed at step {stopped} from {first / 'checkpoints' / f'step_{stopped:08d}'}" in again.stdout
    assert again.stdout.count("resumed at step") == 1  # the other trainings start afresh
    logged = [json.loads(ln)["step"] for ln in (first / "log.jsonl").read_text().splitlines()
              if json.loads(ln).get("kind", "train") == "train"]
    assert logged[:stopped] == list(range(1, stopped + 1)) and logged.count(1) == 1  # continued, not restarted
    assert logged[-1] == steps
    assert json.loads((first / "metrics.json").read_text())["step"] == steps

    rows = list(csv.DictReader((out_dir / "table.csv").open()))
    assert len(rows) == 13 and rows[-1]["training"] == "average"
    _rows_agree_with_their_metrics(rows[:12])
    assert all(int(r["num_videos"]) == 6 for r in rows[:12])
    assert float(rows[-1]["top1"]) == round(sum(float(r["top1"]) for r in rows[:12]) / 12, 2)
    md = (out_dir / "table.md").read_text()
    assert md.startswith("uwa3d-mv2 (depth), top-1 (%)") and "| Testing | V3 | V4 | V2 |" in md
    manifest = list(csv.DictReader((out_dir / "manifests" / "train_v12.csv").open()))
    assert len(manifest) == 12 and {r["modality"] for r in manifest} == {"depth"}
    assert all(Path(r["path"]).name.endswith("_depth") for r in manifest)
