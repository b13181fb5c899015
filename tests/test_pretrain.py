"""Pretraining end to end on the demo shards with a tiny model: run folder, logs, checkpoints, resume, ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import check_usage_error, checkpoint_on_sigusr1, kill_after_checkpoint, run_script

TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--mask-ratio", "0.75",
        "--batch-size", "2", "--num-workers", "0", "--log-every", "1", "--shuffle-buffer", "8"]
DEEPSPEED = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port"]


def read_log(run: Path) -> dict[int, dict]:
    """step -> last record logged for it (a resumed run logs some steps twice)."""
    records = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        records[rec["step"]] = rec
    return records


def check_ok(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_single_process_run_folder(demo_dir, tmp_path):
    run = tmp_path / "run"
    out = run_script(["pretrain/run.py", *TINY, "--max-steps", "4", "--save-every", "2", "--recon-every", "2",
                      "--output-dir", str(run)], demo=demo_dir)
    check_ok(out)
    for name in ("config.yaml", "ds_config.json", "derived.json", "log.jsonl", "encoder.pth"):
        assert (run / name).is_file(), name
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    for rec in log.values():
        assert {"step", "loss", "lr", "grad_norm", "data_wait_s", "clips_per_s"} <= set(rec)
        assert rec["loss"] > 0 and "max_mem_gib" not in rec  # GPU memory: CUDA runs only
    assert "step 4" in out.stdout and "clips_per_s" in out.stdout
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["train_micro_batch_size_per_gpu"] == 2
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000004"
    assert (ckpts / "step_00000002" / "COMPLETE").is_file() and (ckpts / "step_00000004" / "COMPLETE").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/data_wait_s", "train/clips_per_s"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert events.Scalars("train/loss")[-1].value == pytest.approx(log[4]["loss"], rel=1e-6)
    image = events.Images("reconstruction/honest")[0]
    # 4 frames after a label column; original / masked / target / prediction / reconstruction rows
    assert (image.width, image.height) == (150 + 4 * 32, 5 * 32)
    assert sorted(p.name for p in (run / "reconstructions").iterdir()) == [
        "step_00000001_honest.png", "step_00000002_honest.png", "step_00000004_honest.png"]

    # `timemae reconstruct` reads the run folder (its newest checkpoint and config)
    from launch import cli

    video = str(next((demo_dir / "videos" / "rgb" / "val").glob("*.mp4")))
    assert cli.main(["reconstruct", "--checkpoint", str(run), "--video", video, "--out", str(tmp_path / "rec")]) == 0
    assert (tmp_path / "rec" / "recon_n2_mask0.75.png").is_file() and (tmp_path / "rec" / "errors.csv").is_file()
    # `timemae extract` takes the run's encoder.pth and config
    feats = tmp_path / "val.npz"
    assert cli.main(["extract", "--checkpoint", str(run), "--data", str(demo_dir / "shards" / "val"), "--clips", "1",
                     "--out", str(feats), "--no-progress"]) == 0
    import numpy as np

    assert np.load(feats)["features"].shape == (32, 192)  # vit_tiny: 192-d

    from models import build_classifier
    from models.videomae_weights import init_classifier_from

    clf = build_classifier("vit_tiny", 5, img_size=32, all_frames=4)
    report = init_classifier_from(clf, str(run / "encoder.pth"))
    assert "encoder" in report.lower() or "loaded" in report.lower()


def _run_until_checkpoint_then_kill(args: list[str], run: Path, step: int) -> None:
    kill_after_checkpoint([sys.executable, *args], run, step)


def test_sigkill_and_resume_reproduce_the_uninterrupted_losses(demo_dir, tmp_path):
    # Two loader workers and 3 batches before the kill: the resumed loader starts at the other worker.
    common = ["pretrain/run.py", *TINY, "--num-workers", "2", "--max-steps", "6", "--save-every", "3",
              "--recon-every", "0"]
    env = {"TIMEMAE_DEMO_DIR": str(demo_dir)}
    straight = tmp_path / "straight"
    check_ok(run_script([*common, "--output-dir", str(straight)], env=env))
    resumed = tmp_path / "resumed"
    os.environ["TIMEMAE_DEMO_DIR"] = str(demo_dir)
    try:
        _run_until_checkpoint_then_kill([*common, "--output-dir", str(resumed)], resumed, 3)
    finally:
        del os.environ["TIMEMAE_DEMO_DIR"]
    out = run_script([*common, "--output-dir", str(resumed)], env=env)
    check_ok(out)
    assert "resumed at step 3" in out.stdout
    a, b = read_log(straight), read_log(resumed)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [a[s]["loss"] for s in range(1, 7)] == [b[s]["loss"] for s in range(1, 7)]  # bitwise


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--zero-stage", "2"], ["--zero-stage", "3"], ["--zero-stage", "2",
                                                                                  "--accum-steps", "2"]])
def test_two_ranks_with_the_deepspeed_launcher(demo_dir, tmp_path, extra):
    run = tmp_path / "run"
    port = str(29500 + os.getpid() % 1000 + len(extra) * 7 + int(extra[1]))
    out = run_script(["pretrain/run.py", *TINY, *extra, "--max-steps", "3", "--save-every", "3", "--recon-every",
                      "2", "--output-dir", str(run)], demo=demo_dir, launcher=[*DEEPSPEED, port])
    check_ok(out)
    assert "world size 2" in out.stdout
    log = read_log(run)
    assert sorted(log) == [1, 2, 3]
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["train_batch_size"] == 2 * 2 * int(extra[-1] if "--accum-steps" in extra else 1)
    ckpt = run / "checkpoints" / "step_00000003"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file() and (ckpt / "COMPLETE").is_file()
    assert (run / "encoder.pth").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # DeepSpeed's CPU communication op leaves a 69 MB /dev/shm file per rank; the run removes them
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))

    # resume the 2-rank checkpoint on 1 rank: consolidated fp32 weights, and the run says so
    more = run_script(["pretrain/run.py", *TINY, *extra, "--max-steps", "4", "--save-every", "4", "--recon-every",
                       "0", "--output-dir", str(run)], demo=demo_dir)
    check_ok(more)
    assert "consolidated fp32 weights" in more.stdout and "resumed at step 3" in more.stdout
    assert 4 in read_log(run)


@pytest.mark.slow
def test_tiny_model_learns_on_demo_shards(demo_dir, tmp_path):
    # Raw-pixel target: its loss has a clear floor far below the untrained model's, so 150 steps show learning. (The
    # norm-pix target of the demo's smooth textures needs far longer to leave its trivial ~1.0 plateau.)
    run = tmp_path / "run"
    args = ["pretrain/run.py", "--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2",
            "--mask-ratio", "0.75", "--batch-size", "8", "--num-workers", "2", "--max-steps", "150",
            "--warmup-epochs", "1", "--base-lr", "3e-2", "--min-lr", "1e-3", "--log-every", "1", "--save-every",
            "1000", "--recon-every", "0", "--no-norm-pix-loss", "--output-dir", str(run)]
    check_ok(run_script(args, demo=demo_dir, timeout=900))
    log = read_log(run)
    first = sum(log[s]["loss"] for s in range(1, 6)) / 5
    last = sum(log[s]["loss"] for s in range(141, 151)) / 10
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--mask-ratio", "1.5"], "--mask-ratio 1.5 is outside (0, 1)"),
        (["--mask-ratio", "1.0"], "masks all 4 tokens of a slice"),
        (["--mask-ratio", "0.1"], "masks 0 of the 4"),
        (["--input-size", "40"], "not divisible by the patch size 16"),
        (["--grid-n", "64"], "smaller than --grid-n 64"),
        (["--batch-size", "0"], "--batch-size 0 is < 1"),
        (["--data", "/no/such/shards"], "/no/such/shards"),
        (["--modality", "depth", "--data", "DEMO_RGB"], "--modality depth but the --data shards hold rgb"),
        (["--resume", "/no/such/ckpt"], "--resume /no/such/ckpt"),
        (["--base-lr", "-1"], "--base-lr -1.0 must be > 0"),
        (["--warmup-epochs", "-1"], "--warmup-epochs -1.0 is < 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(demo_dir, tmp_path, flags, message):
    flags = [str(demo_dir / "shards" / "train") if f == "DEMO_RGB" else f for f in flags]
    out = run_script(["pretrain/run.py", *TINY, "--max-steps", "1", "--output-dir", str(tmp_path / "r"), *flags],
                     demo=demo_dir, timeout=300)
    check_usage_error(out, message)
    assert "Traceback" not in out.stderr


def test_sigusr1_checkpoints_at_the_next_step_and_the_run_continues_from_it(demo_dir, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain/run.py", *TINY, "--max-steps", "400", "--save-every", "1000", "--recon-every", "0",
            "--output-dir", str(run)]
    checkpoint_on_sigusr1(args, run, demo_dir)
    stopped = max(read_log(run))
    assert stopped < 400
    assert (run / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").is_file()
    more = run_script([*args[:-4], "--max-steps", str(stopped + 2), "--output-dir", str(run)], demo=demo_dir)
    check_ok(more)
    assert f"resumed at step {stopped}" in more.stdout
    assert max(read_log(run)) == stopped + 2


def test_non_finite_loss_skips_then_stops_naming_the_last_good_checkpoint(demo_dir, tmp_path):
    # lr 1e30: the first update throws the weights far out of range, every later loss is inf/nan.
    run = tmp_path / "run"
    out = run_script(["pretrain/run.py", *TINY, "--max-steps", "50", "--save-every", "1", "--recon-every", "0",
                      "--base-lr", "1e32", "--warmup-epochs", "0", "--max-bad-steps", "3", "--output-dir", str(run)],
                     demo=demo_dir)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "3 micro-batches in a row gave a non-finite loss" in out.stdout
    assert f"last good checkpoint: {run / 'checkpoints'}" in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_two_ranks_with_torchrun(demo_dir, tmp_path):
    run = tmp_path / "run"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", "2", "--master-port",
                str(30500 + os.getpid() % 1000)]
    out = run_script(["pretrain/run.py", *TINY, "--max-steps", "2", "--save-every", "2", "--recon-every", "0",
                      "--output-dir", str(run)], demo=demo_dir, launcher=torchrun)
    check_ok(out)
    assert "launcher: torchrun, world size 2" in out.stdout
    assert sorted(read_log(run)) == [1, 2] and (run / "checkpoints" / "step_00000002" / "COMPLETE").is_file()
