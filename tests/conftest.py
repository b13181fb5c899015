"""Shared fixtures and helpers: the demo dataset (generated once per test session), a runner for the training
scripts, and checks of how a run ends."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import data.decode  # noqa: F401 - imports decord the safe way (see data.decode._import_decord) before any test does

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/videos.py and friends


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The embedded demo data (RGB + depth videos, manifests, shards), made once for the whole session."""
    from data.demo import ensure_demo

    out = tmp_path_factory.mktemp("demo") / "demo"
    ensure_demo(str(out))
    return out


def run_script(args: list[str], *, demo: Path | None = None, timeout: int = 600, env: dict | None = None,
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run a repo script (e.g. ``pretrain/run.py``) in a fresh process from the repo root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if demo is not None:
        full_env["TIMEMAE_DEMO_DIR"] = str(demo)
    cmd = (launcher or [sys.executable]) + args
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: a thread pool costs more than it gives on them, and on a shared
    machine it turns a 0.1 s forward into seconds. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def read_log(run: Path, kind: str) -> dict[int, dict]:
    """step -> last record of ``kind`` ("train" or "eval") in log.jsonl (a resumed run logs some steps twice)."""
    import json

    records = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind", "train") == kind:
            records[rec["step"]] = rec
    return records


def kill_after_checkpoint(cmd: list[str], run: Path, step: int, env: dict | None = None) -> None:
    """Start ``cmd`` (a full command line) from the repo root, SIGKILL its process group once the checkpoint of
    ``step`` is complete."""
    import signal
    import time

    env = env or {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = run / "checkpoints" / f"step_{step:08d}" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never wrote its checkpoint"


def check_usage_error(out: subprocess.CompletedProcess, message: str) -> None:
    """A script refused its input as a usage error: exit status 2, and one error line in stderr that holds
    ``message``."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]


def checkpoint_on_sigusr1(args: list[str], run: Path, demo: Path) -> None:
    """Start a training script (``args`` after the interpreter) on the demo data, send it SIGUSR1 once it has logged
    a step, and check that it checkpoints and exits 0 with no SLURM job to requeue."""
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TIMEMAE_DEMO_DIR": str(demo)}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (run / "log.jsonl").exists() or not (run / "log.jsonl").read_text().strip():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run ended before logging a step:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "received SIGUSR1: checkpointing at step" in out and "not a SLURM job: not requeued" in out
