"""The one-way import flow (data -> models -> pretrain/finetune, launch beside them) and the command's surface."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
UPPER = {"pretrain", "finetune", "launch"}


def _imported_top_levels(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["data", "models"])
def test_lower_packages_do_not_import_upper_ones(package):
    forbidden = UPPER | ({"models"} if package == "data" else set())
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & forbidden)
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("package,other", [("pretrain", "finetune"), ("finetune", "pretrain")])
def test_the_stages_do_not_import_each_other(package, other):
    # What both stages need (schedule, seeds, loop state, checkpoints, logging) lives in launch/.
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if other in _imported_top_levels(p)]
    assert offenders == []


def test_import_checker_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import launch.cli\nfrom pretrain import engine\nfrom . import sibling\n")
    assert _imported_top_levels(probe) == {"launch", "pretrain"}


def test_top_level_layout():
    for name in ["pyproject.toml", "README.md", "pretrain", "finetune", "data", "models", "launch", "tests"]:
        assert (ROOT / name).exists(), name


def _timemae(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_every_command():
    from launch.cli import COMMANDS

    out = _timemae("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_command_exits_2():
    out = _timemae("no-such-command")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr
