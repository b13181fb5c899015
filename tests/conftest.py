"""Shared fixtures: the demo dataset (generated once per test session) and a runner for the training scripts."""

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
