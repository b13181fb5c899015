"""What a user at the keyboard meets: Ctrl-C and SIGTERM save a checkpoint, a second Ctrl-C aborts, the first step
shows at once (a progress bar on a terminal), loader workers fit the cores, the demo data is announced, bad input
fails before the distributed start-up and leaves nothing behind."""

import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, check_usage_error, run_script

TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--mask-ratio", "0.75",
        "--batch-size", "2", "--shuffle-buffer", "8", "--recon-every", "0"]
FINETUNE_TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--batch-size", "2"]


def _env(demo_dir: Path) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TIMEMAE_DEMO_DIR": str(demo_dir)}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def _wait_for_a_logged_step(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.time() + 300
    while not (run / "log.jsonl").exists() or not (run / "log.jsonl").read_text().strip():
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run ended before logging a step (exit {proc.wait()})")
        time.sleep(0.05)


def _pretrain_args(run: Path, workers: int, log_every: int) -> list[str]:
    """A 400-step pretraining run that saves no checkpoint of its own accord: only a signal stops it early."""
    return ["pretrain/run.py", *TINY, "--num-workers", str(workers), "--log-every", str(log_every), "--save-every",
            "1000", "--max-steps", "400", "--output-dir", str(run)]


@contextlib.contextmanager
def _running(cmd: list[str], demo_dir: Path, run: Path, **pipes: int) -> Iterator[subprocess.Popen]:
    """``cmd`` in its own process group, once its run has logged a step; the group is killed on the way out if it
    is still running, so that a failing test leaves no run behind."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(demo_dir), text=True, start_new_session=True, **pipes)
    try:
        _wait_for_a_logged_step(proc, run)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_checkpoints_at_the_next_step_and_resume_continues(demo_dir, tmp_path, sig):
    # As a terminal's Ctrl-C (SIGINT) or `timeout` (SIGTERM) does: the signal goes to the whole process group, loader
    # workers included. The run finishes its step, writes a checkpoint, logs the step and exits 0; no worker dies.
    run = tmp_path / "run"
    args = _pretrain_args(run, workers=1, log_every=1000)
    with _running([sys.executable, *args], demo_dir, run, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    name = signal.Signals(sig).name
    assert f"{name}: stopping at the end of this step with a checkpoint" in err
    assert "ETA" not in err  # no progress bar when stderr is no terminal
    steps = _steps(run)
    stopped = steps[-1]
    assert steps[0] == 1 and 1 < stopped < 400  # the first step at once, the stopped step too
    assert (run / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").is_file()
    assert f"received {name}: checkpointing at step {stopped}" in out and "continues from" in out
    assert ("requeued" in out) == (sig != signal.SIGINT)  # Ctrl-C is the user's stop: no requeue attempt
    if sig == signal.SIGINT:
        more = run_script([*args[:-4], "--max-steps", str(stopped + 1), "--output-dir", str(run)], demo=demo_dir)
        assert more.returncode == 0, more.stderr[-2000:]
        assert f"resumed at step {stopped}" in more.stdout
        assert _steps(run)[-1] == stopped + 1


def test_a_second_sigint_aborts_at_once(demo_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, *_pretrain_args(run, workers=0, log_every=1)]
    with _running(cmd, demo_dir, run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        proc.send_signal(signal.SIGINT)
        for line in proc.stderr:  # the first one is handled: the run is on its way to a checkpoint
            if "SIGINT: stopping" in line:
                break
        else:
            pytest.fail(f"no stop message (exit {proc.wait()})")
        proc.send_signal(signal.SIGINT)
        t0 = time.time()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGINT and time.time() - t0 < 5
    assert not (run / "checkpoints").exists()


def test_the_first_step_shows_at_once_and_a_terminal_gets_a_progress_bar(demo_dir, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain/run.py", *TINY, "--num-workers", "0", "--log-every", "100", "--max-steps", "3", "--save-every",
            "1000", "--output-dir", str(run)]
    master, slave = pty.openpty()
    with open(tmp_path / "stdout", "w") as stdout:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(demo_dir), stdout=stdout, stderr=slave)
    os.close(slave)
    terminal = b""
    while True:  # read the terminal until the process closes it (EIO on Linux)
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, terminal[-3000:]
    assert _steps(run) == [1, 3]  # the first step regardless of --log-every, then every 100th and the last
    text = terminal.decode(errors="replace")
    bar = [part for part in text.replace("\r", "\n").splitlines() if part.startswith("step 3/3")]
    assert bar and "ETA" in bar[-1] and "loss" in bar[-1] and "clips/s" in bar[-1], text[-2000:]
    stdout_text = (tmp_path / "stdout").read_text()
    assert "step 1  loss" in stdout_text and "step 3  loss" in stdout_text  # the log lines go on, above the bar


def test_cores_per_rank_and_the_worker_cap(monkeypatch):
    import dataclasses

    from launch.distributed import DistInfo, cores_per_rank
    from launch.trainer import cap_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    ds = DistInfo("deepspeed", 0, 0, 4, "127.0.0.1", 29500)
    assert cores_per_rank(ds, {"LOCAL_SIZE": "4"}) == (4, 4)
    assert cores_per_rank(DistInfo("torchrun", 0, 0, 32, "h", 1), {"LOCAL_WORLD_SIZE": "8"}) == (2, 8)
    assert cores_per_rank(DistInfo("slurm", 0, 0, 8, "h", 1), {"SLURM_CPUS_PER_TASK": "10"}) == (10, 1)
    assert cores_per_rank(DistInfo("python", 0, 0, 1, "h", 1), {}) == (16, 1)
    assert cores_per_rank(DistInfo("torchrun", 0, 0, 32, "h", 1), {"LOCAL_WORLD_SIZE": "32"}) == (1, 32)

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        num_workers: int

    cfg, note = cap_workers(Cfg(8), ds, {"LOCAL_SIZE": "4"})
    assert cfg.num_workers == 4 and note.startswith("--num-workers 8 capped at 4: this rank has 4 CPU cores (its")
    assert cap_workers(Cfg(4), ds, {"LOCAL_SIZE": "4"}) == (Cfg(4), "")  # within the cap: the flag stands, silently
    assert cap_workers(Cfg(0), ds, {"LOCAL_SIZE": "4"}) == (Cfg(0), "")
    assert cap_workers(Cfg(8), ds, {"LOCAL_SIZE": "32"})[0].num_workers == 1  # never below 1
    assert cap_workers(Cfg(8), ds, {"LOCAL_SIZE": "4", "TIMEMAE_MAX_WORKERS": "6"})[0].num_workers == 6


def test_loader_workers_are_capped_at_the_cores_with_one_line(demo_dir, tmp_path):
    run = tmp_path / "run"
    out = run_script(["pretrain/run.py", *TINY, "--num-workers", "3", "--max-steps", "1", "--output-dir", str(run)],
                     demo=demo_dir, launcher=["taskset", "-c", "0", sys.executable])
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("--num-workers")]
    assert lines == ["--num-workers 3 capped at 1: this rank has 1 CPU core (TIMEMAE_MAX_WORKERS=N sets another "
                     "cap)"], lines
    assert "num_workers: 1" in (run / "config.yaml").read_text()


def test_the_demo_data_is_announced_before_it_is_made(tmp_path, monkeypatch, capsys):
    import data.demo
    from launch import trainer as trainer_lib
    from launch.logger import RunLogger

    made = []

    def fake_ensure_demo(folder, **kwargs):
        made.append(capsys.readouterr().out)  # what was printed before generation started
        return {"root": str(folder), "shards": {"train": str(tmp_path / "shards")}}

    monkeypatch.setattr(data.demo, "ensure_demo", fake_ensure_demo)
    monkeypatch.setattr(trainer_lib, "DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setattr(trainer_lib.distributed, "detect", lambda: trainer_lib.distributed.DistInfo(
        "python", 0, 0, 1, "127.0.0.1", 1))

    class Cfg:
        num_workers, modality = 0, "rgb"

    trainer = trainer_lib.Trainer(Cfg())
    trainer.log = RunLogger(str(tmp_path / "run"), tensorboard=False)
    assert trainer.demo_shards("train") == str(tmp_path / "shards")
    assert f"making the demo data in {tmp_path / 'demo'}" in made[0]
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / data.demo.STAMP).write_text(json.dumps({"complete": True, "format": "timemae-demo-0"}))
    made.clear()
    trainer.demo_shards("train")
    assert "making the demo data" in made[0]  # a demo of an older format is made again: announced too
    (tmp_path / "demo" / data.demo.STAMP).write_text(json.dumps({"complete": True, "format": data.demo.STAMP_FORMAT}))
    made.clear()
    trainer.demo_shards("train")
    assert "making the demo data" not in made[0]  # an existing demo is used silently
    trainer.log.close()


@pytest.mark.parametrize(
    "script,flags,message",
    [
        ("pretrain/run.py", ["--data", "/no/such/shards"], "/no/such/shards"),
        ("pretrain/run.py", ["--init-from", "/no/such/weights.pth"], "--init-from /no/such/weights.pth"),
        ("pretrain/run.py", ["--modality", "depth", "--data", "DEMO_RGB"], "--modality depth but the --data shards"),
        ("finetune/run.py", ["--data", "/no/such/shards"], "/no/such/shards"),
        ("pretrain/run.py", ["--samples-per-decode", "0"], "--samples-per-decode 0 is < 1"),
        ("finetune/run.py", ["--num-classes", "1000000"], "--num-classes 1000000 is above"),
        ("pretrain/run.py", ["--seed", "-1"], "--seed -1 is outside"),
        ("finetune/run.py", ["--seed", "4294967295"], "--seed 4294967295 is outside"),
        ("pretrain/run.py", ["--drop-path", "1.5"], "--drop-path 1.5 is outside [0, 1)"),
        ("finetune/run.py", ["--drop-path", "-0.1"], "--drop-path -0.1 is outside [0, 1)"),
        ("pretrain/run.py", ["--num-frames", "1000000"], "--num-frames 1000000 x --input-size 32 x 32"),
        ("finetune/run.py", ["--input-size", "160000"], "--input-size 160000 x 160000"),
        ("finetune/run.py", ["--test-clips", "100000"], "--test-clips 100000 is above 100"),
        ("finetune/run.py", ["--model", "resnet18", "--input-size", "32", "--temporal", "tsm", "--temporal-options",
                             "fold_div=abc"], "fold_div='abc'"),
    ],
)
def test_bad_input_fails_before_the_distributed_start_up_and_leaves_no_run_folder(demo_dir, tmp_path, script, flags,
                                                                                  message):
    flags = [str(demo_dir / "shards" / "train") if f == "DEMO_RGB" else f for f in flags]
    run = tmp_path / "run"
    extra = FINETUNE_TINY if script == "finetune/run.py" else TINY
    out = run_script([script, *extra, "--max-steps", "1", "--output-dir", str(run), *flags], demo=demo_dir)
    check_usage_error(out, message)
    assert "launcher:" not in out.stdout  # the distributed start-up was not reached
    assert not run.exists()


DEEPSPEED = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port"]


def _two_ranks(demo_dir: Path, run: Path, port_offset: int) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """A two-rank run under the deepspeed launcher, as `_running`; stdout and stderr in one pipe."""
    port = str(31500 + os.getpid() % 1000 + port_offset)
    cmd = [*DEEPSPEED, port, *_pretrain_args(run, workers=1, log_every=1)]
    return _running(cmd, demo_dir, run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_ctrl_c_under_the_deepspeed_launcher_checkpoints_every_rank(demo_dir, tmp_path):
    # A terminal's Ctrl-C: SIGINT to every process of the group (launcher, ranks, loader workers); DeepSpeed's launcher
    # then sends SIGTERM to every process under each rank, and SIGKILL 30 s later.
    run = tmp_path / "run"
    with _two_ranks(demo_dir, run, 0) as proc:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)  # returns once every process holding the pipe is gone
    stopped = _steps(run)[-1]
    ckpt = run / "checkpoints" / f"step_{stopped:08d}"
    assert (ckpt / "COMPLETE").is_file(), out[-3000:]
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file()
    assert f"stopped at step {stopped}" in out
    assert "DataLoader worker" not in out and "killed by signal" not in out, out[-3000:]


@pytest.mark.slow
def test_when_a_rank_dies_the_others_end_too(demo_dir, tmp_path):
    # The launcher sends SIGTERM to the surviving rank, which now asks for a checkpoint instead of dying at once; it
    # must still end (a collective with the dead rank fails, or the launcher's SIGKILL comes 30 s later).
    import psutil

    run = tmp_path / "run"
    with _two_ranks(demo_dir, run, 7) as proc:
        procs = psutil.Process(proc.pid).children(recursive=True)
        launch = next(p for p in procs if "deepspeed.launcher.launch" in " ".join(p.cmdline()))
        victim = next(p for p in launch.children() if p.environ().get("LOCAL_RANK") == "1")  # a rank, not a worker
        victim.kill()
        t0 = time.time()
        out, _ = proc.communicate(timeout=150)
    assert proc.returncode != 0 and time.time() - t0 < 90, out[-3000:]
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
