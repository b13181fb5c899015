"""The one-way import flow (common under everything; data and models side by side; pretrain / finetune / launch above)
and the command's surface."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
UPPER = {"pretrain", "finetune", "launch", "tools"}


def _imported_top_levels(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


OURS = {"common", "data", "models"} | UPPER


def test_common_is_the_ground_floor():
    # common imports nothing of ours, and nothing heavy at import time (torch / matplotlib only inside functions).
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_top_levels(p) & (OURS - {"common"}))
                 for p in (ROOT / "common").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}
    probe = "import common, sys; print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_shared_names_are_defined_once():
    # UserError, the atomic writers, the ImageNet statistics and the modality names live in common only.
    import common
    import data.errors
    import data.transforms
    import launch.checkpoint
    import models.checkpoint

    assert data.errors.UserError is common.UserError
    assert models.checkpoint.atomic_save is launch.checkpoint.atomic_save is common.atomic_save
    assert data.transforms.IMAGENET_MEAN is common.IMAGENET_MEAN
    for path in [*ROOT.glob("*/*.py"), *ROOT.glob("data/prep/*.py")]:
        if path.relative_to(ROOT).parts[0] in OURS - {"common"}:
            tree = ast.parse(path.read_text())
            defined = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
                       if isinstance(t, ast.Name)}
            defined |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            clash = defined & {"UserError", "DecodeError", "IMAGENET_MEAN", "IMAGENET_STD", "MODALITIES",
                               "atomic_save", "atomic_write_bytes", "atomic_write_text"}
            assert not clash, f"{path.relative_to(ROOT)} defines {sorted(clash)} again; import them from common"


def _is_compat_name(path: pathlib.Path) -> bool:
    return path.read_text().startswith('"""Compatibility name for')


def test_data_runtime_does_not_import_offline_preparation():
    # The training-time path (decode, sampling, clip, grid, transforms, augmentation, stream) stands alone: offline
    # preparation (data.prep) and the tools may use it, never the other way round.
    offenders = {}
    for path in (ROOT / "data").glob("*.py"):
        if _is_compat_name(path):
            continue
        tree = ast.parse(path.read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        bad = sorted(m for m in mods if m.startswith(("data.prep", "tools")) or m == "data.prep")
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


@pytest.mark.parametrize("old,new", [("data.manifest", "data.prep.manifest"), ("data.shards", "data.prep.shards"),
                                     ("data.demo", "data.prep.demo"), ("data.presets", "data.prep.presets"),
                                     ("data.bench", "tools.bench_loader"), ("data.preview", "tools.preview")])
def test_moved_modules_keep_their_old_names(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)


def test_distributed_guard_is_written_once():
    written = [str(p.relative_to(ROOT)) for p in ROOT.glob("*/*.py")
               if p.parts[-2] in OURS - {"common"} and "is_initialized()" in p.read_text()]
    assert written == []


@pytest.mark.parametrize("package", ["data", "models"])
def test_lower_packages_do_not_import_upper_ones(package):
    # data and models stand side by side on common: neither imports the other or anything above.
    forbidden = UPPER | ({"models"} if package == "data" else {"data"})
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
    names = ["pyproject.toml", "README.md", "common", "data", "data/prep", "models", "pretrain", "finetune", "launch",
             "tools", "tests"]
    for name in names:
        assert (ROOT / name).exists(), name


def _timemae(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_every_command():
    from launch.cli import COMMANDS

    out = _timemae("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        # each name stands apart from its description, also the longest one
        assert re.search(rf"^  {re.escape(name)} +\S", out.stdout, re.M), name


def test_unknown_command_exits_2():
    out = _timemae("no-such-command")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_a_command_takes_whole_flags_only_and_names_the_one_meant():
    out = _timemae("demo", "--ou", "x")  # a prefix of --out
    assert out.returncode == 2
    assert "unrecognized arguments: --ou x (did you mean --out?)" in out.stderr
