"""tools/gpu_run.sh, the one-call GPU measurement script, run dry (toy sizes, CPU): every part runs and exits 0."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_script_runs_every_part_dry(tmp_path, demo_dir):
    out = tmp_path / "gpu_out"
    env = {**os.environ, "DRY": "1", "OUT": str(out), "TIMEMAE_DEMO_DIR": str(demo_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "tools/gpu_run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parts = ["bench_step_vit", "bench_step_resnet", "train_zero0", "finetune_vit", "finetune_resnet", "bench_loader",
             "cuda_tests"]
    assert done.stdout.count("   exit 0 after") == len(parts), done.stdout[-3000:]
    for part in parts:
        assert (out / f"{part}.txt").stat().st_size > 0, part
    vit = (out / "bench_step_vit.txt").read_text()
    assert "compile" in vit and vit.count("vit_tiny    0.75") == 2  # eager and compiled rows
    assert "real loader" in (out / "bench_loader.txt").read_text()
    summary = (out / "summary.txt").read_text()
    lines = summary.splitlines()
    assert [line.split(":")[0] for line in lines] == ["finetune_resnet", "finetune_vit", "train_zero0"]
    assert all("clips/s" in line and "data wait" in line for line in lines)
