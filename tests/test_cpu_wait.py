"""The training entry points make OpenMP threads wait passively (common/cpu.py), set before torch is loaded."""

import os
import pathlib
import subprocess
import sys

import pytest

from common.cpu import WAIT_POLICY_ENV, prefer_passive_wait

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs an entry script with --help and prints OMP_WAIT_POLICY as it was when torch was first imported ("unset" if it
# was not set, "never" if torch was not imported at all).
PROBE = """
import builtins, os, runpy, sys
seen = []
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name.split(".")[0] == "torch" and not seen:
        seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("POLICY " + (seen[0] if seen else "never") + "\\n")
"""


def test_the_policy_is_set_unless_the_user_chose_one():
    env: dict[str, str] = {}
    assert prefer_passive_wait(env) == "PASSIVE" and env == {WAIT_POLICY_ENV: "PASSIVE"}
    env = {WAIT_POLICY_ENV: "ACTIVE"}
    assert prefer_passive_wait(env) == "ACTIVE" and env == {WAIT_POLICY_ENV: "ACTIVE"}


@pytest.mark.parametrize("script", ["pretrain/run.py", "finetune/run.py"])
@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_entry_scripts_set_it_before_torch_is_imported(script, given):
    env = {k: v for k, v in os.environ.items() if k != WAIT_POLICY_ENV}
    if given:
        env[WAIT_POLICY_ENV] = given
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert f"POLICY {given or 'PASSIVE'}" in done.stderr.splitlines(), done.stderr[-2000:]
