"""launch/slurm/*.sbatch against a real one-node SLURM cluster (tests/slurm_cluster.sh): ranks, requeue, errors.

The module fixture brings the cluster up (installing slurm-wlm and munge with apt-get when they are missing) and
takes it down at the end. Jobs run on CPU (gloo) with a tiny model on the demo shards.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

SLURM_DIR = Path(os.environ.get("TIMEMAE_SLURM_DIR", "/tmp/timemae-slurm"))
CLUSTER = ["bash", str(ROOT / "tests" / "slurm_cluster.sh")]
TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--mask-ratio", "0.75",
        "--batch-size", "2", "--num-workers", "0", "--log-every", "1", "--shuffle-buffer", "8", "--recon-every", "0"]
FT_TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--batch-size", "2",
           "--num-workers", "0", "--log-every", "1", "--shuffle-buffer", "8"]
TWO_TASKS = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]


def cluster(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIMEMAE_SLURM_DIR": str(SLURM_DIR)}
    return subprocess.run([*CLUSTER, command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def slurm_env(demo_dir) -> dict:
    """Environment for sbatch & co. (SLURM_CONF, the demo data) while the test cluster is up."""
    if os.geteuid() != 0:
        why = "the SLURM tests install slurm-wlm and munge (apt-get) and run the daemons as root; not root here"
        pytest.skip(reason=why)
    up = cluster("up")
    assert up.returncode == 0, up.stdout + up.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TIMEMAE_"))}
    env.update(SLURM_CONF=str(SLURM_DIR / "slurm.conf"), TIMEMAE_DEMO_DIR=str(demo_dir), PYTHONUNBUFFERED="1")
    if not (ROOT / ".venv" / "bin" / "python").exists():
        env["TIMEMAE_PYTHON"] = sys.executable
    try:
        yield env
    finally:
        down = cluster("down")
        status = cluster("status")
    assert down.returncode == 0, down.stdout + down.stderr
    assert status.returncode == 1 and "still running" not in status.stdout, status.stdout


def sbatch(env: dict, script: str, options: list[str], args: list[str], out_dir: Path, *, background: bool = False,
           extra_env: dict | None = None) -> subprocess.Popen | subprocess.CompletedProcess:
    """``sbatch --wait --parsable`` from the repository root, the job's output in ``out_dir/job.out``; in the
    background, sbatch's own output (the job id first) goes to ``out_dir/sbatch.stdout``."""
    cmd = ["sbatch", "--wait", "--parsable", f"--output={out_dir / 'job.out'}", *options, f"launch/slurm/{script}",
           *args]
    full_env = {**env, **(extra_env or {})}
    if not background:
        return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=900)
    with (out_dir / "sbatch.stdout").open("w") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=fh, stderr=subprocess.STDOUT, text=True)


def job_output(out_dir: Path) -> str:
    path = out_dir / "job.out"
    return path.read_text() if path.exists() else "(no job output)"


def logged_steps(run: Path) -> list[int]:
    """Training steps in log.jsonl, in the order they were logged (across restarts; evaluation records left out)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("kind", "train") == "train"]


def rank_map(text: str) -> list[tuple[int, int]]:
    """(rank, local rank) rows of the rank map printed by rank 0."""
    return [(int(r), int(lr)) for r, lr in re.findall(r"^\S+\s+(\d+)\s+(\d+)\s+cpu$", text, flags=re.M)]


def test_two_ranks_with_srun(slurm_env, tmp_path):
    run = tmp_path / "run"
    out = sbatch(slurm_env, "pretrain.sbatch", TWO_TASKS, [*TINY, "--max-steps", "3", "--save-every", "3"], tmp_path,
                 extra_env={"TIMEMAE_OUTPUT_DIR": str(run)})
    text = job_output(tmp_path)
    assert out.returncode == 0, out.stderr + text[-4000:]
    assert "launcher: slurm, world size 2" in text and "2 tasks, 1 CPUs each" in text
    assert sorted(rank_map(text)) == [(0, 0), (1, 1)]
    assert logged_steps(run) == [1, 2, 3]
    ckpt = run / "checkpoints" / "step_00000003"
    for name in ("COMPLETE", "rng_rank0.pt", "rng_rank1.pt"):
        assert (ckpt / name).is_file(), name
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert "Traceback" not in text


@pytest.mark.parametrize("script", ["pretrain.sbatch", "finetune.sbatch"])
def test_warning_signal_checkpoints_requeues_and_the_job_continues(slurm_env, tmp_path, script):
    run, total = tmp_path / "run", 20
    flags = TINY if script == "pretrain.sbatch" else [*FT_TINY, "--eval-every", "1000"]
    proc = sbatch(slurm_env, script, TWO_TASKS, [*flags, "--max-steps", str(total), "--save-every", "1000"],
                  tmp_path, background=True, extra_env={"TIMEMAE_OUTPUT_DIR": str(run)})
    try:
        deadline = time.time() + 300
        while not ((run / "log.jsonl").exists() and (run / "log.jsonl").read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, job_output(tmp_path)[-4000:]
            time.sleep(0.1)
        job = (tmp_path / "sbatch.stdout").read_text().split()[0]  # --parsable: the job id, printed at submission
        # Without --full the signal goes to the job's steps (the training tasks), as --signal=USR1@N does.
        subprocess.run(["scancel", "--signal=USR1", job], env=slurm_env, check=True, timeout=60)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = job_output(tmp_path)
    assert proc.returncode == 0, text[-4000:]
    stopped = int(re.search(r"received SIGUSR1: checkpointing at step (\d+)", text).group(1))
    assert 1 <= stopped < total
    assert f"SLURM job {job} requeued" in text
    assert f"job {job} (restart 1)" in text
    assert f"resumed at step {stopped} from {run / 'checkpoints' / f'step_{stopped:08d}'}" in text
    assert logged_steps(run) == list(range(1, total + 1))  # the second run continues where the first stopped
    assert f"done: {total} steps" in text


@pytest.mark.parametrize("flags,message", [
    (["--mask-ratio", "1.5"], "pretrain/run.py: error: --mask-ratio 1.5 is outside (0, 1)"),
    (["--no-such-flag", "3"], "pretrain/run.py: error: unrecognized arguments: --no-such-flag 3"),
])
def test_failing_job_makes_sbatch_wait_fail_with_the_error_in_the_output(slurm_env, tmp_path, flags, message):
    out = sbatch(slurm_env, "pretrain.sbatch", TWO_TASKS, [*TINY, "--max-steps", "1", *flags], tmp_path,
                 extra_env={"TIMEMAE_OUTPUT_DIR": str(tmp_path / "run")})
    text = job_output(tmp_path)
    assert out.returncode != 0, text[-4000:]
    errors = {line for line in text.splitlines() if line.startswith("pretrain/run.py: error:")}
    assert len(errors) == 1 and next(iter(errors)).startswith(message), text[-4000:]  # one line, same on each rank
    assert "Traceback" not in text


def test_deepspeed_launcher_variant_generates_its_hostfile(slurm_env, tmp_path):
    run = tmp_path / "run"
    options = ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=2"]
    out = sbatch(slurm_env, "pretrain_deepspeed.sbatch", options, [*TINY, "--max-steps", "2", "--save-every", "2"],
                 tmp_path, extra_env={"TIMEMAE_OUTPUT_DIR": str(run), "TIMEMAE_PROCS_PER_NODE": "2"})
    text = job_output(tmp_path)
    assert out.returncode == 0, out.stderr + text[-4000:]
    assert (run / "hostfile").read_text() == f"{socket.gethostname().split('.')[0]} slots=2\n"
    assert "launcher: deepspeed, world size 2" in text
    assert sorted(rank_map(text)) == [(0, 0), (1, 1)]
    assert logged_steps(run) == [1, 2]
    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file() and (ckpt / "COMPLETE").is_file()


def test_finetune_two_ranks_with_srun(slurm_env, tmp_path):
    run = tmp_path / "run"
    out = sbatch(slurm_env, "finetune.sbatch", TWO_TASKS, [*FT_TINY, "--max-steps", "3", "--save-every", "3"],
                 tmp_path, extra_env={"TIMEMAE_OUTPUT_DIR": str(run)})
    text = job_output(tmp_path)
    assert out.returncode == 0, out.stderr + text[-4000:]
    assert "launcher: slurm, world size 2" in text and "2 tasks, 1 CPUs each" in text
    assert sorted(rank_map(text)) == [(0, 0), (1, 1)]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3] and evals[0]["num_videos"] == 32 and evals[0]["duplicate_videos"] == 0
    ckpt = run / "checkpoints" / "step_00000003"
    for name in ("COMPLETE", "rng_rank0.pt", "rng_rank1.pt"):
        assert (ckpt / name).is_file(), name
    assert (run / "best.json").is_file() and (run / "best.pth").is_file()
    assert "Traceback" not in text
