"""``timemae protocol NAME``: a dataset's evaluation protocol as one command whose output is the paper's table.

    timemae protocol --list
    timemae protocol uwa3d-mv2 --root /data/UWA3DII --modality depth --out runs/uwa_depth -- --model vit_base \
        --init-from runs/pretrain/encoder.pth --epochs 50
    timemae protocol hmdb51 --root /data/HMDB51 --out runs/hmdb --launcher torchrun --nproc 8 -- --model vit_base

A protocol is a list of trainings, each with one training side and one or more test sides (`Unit`: a preset split and
partition). The runner builds a manifest and shards per side (`data.prep.presets`, `data.prep.shards`; shards already
there with the same videos are reused), runs `finetune/run.py` once per training through the chosen launcher, and
collects every run's ``metrics.json`` into ``table.md``, ``table.csv`` and ``table.png``.

Selection never looks at a test side. A training evaluates its first test side as ``--val-data`` (logged as
``test``, never used to choose: ``--select-on last`` reports the final weights, ``--select-on val`` a split held out
of the training shards), and its ``metrics.json`` is that side's row. Every further test side (UWA3D's second
held-out view) is one ``--eval-only`` run of that training's ``best.pth`` (the reported weights, whichever the
rule) with its own ``metrics.json``; so each row is one ``metrics.json`` and all rows of a training come from the
same weights.

Output folder: ``manifests/<side>.csv``, ``shards/<side>/`` (or ``--shards-dir``), ``runs/<training>/`` (the
fine-tuning run; ``runs/<training>/eval_<side>/`` for the further test sides), ``protocol.json`` per run (the flags
it was started with: a finished run with the same flags is skipped, an unfinished one resumes from its checkpoint,
other flags are refused unless ``--force``), and the tables.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

from common.errors import UserError
from data.prep import presets
from data.prep.manifest import Record, read_manifest, write_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SCRIPT = os.path.join(REPO, "finetune", "run.py")
LAUNCHERS = ("auto", "python", "torchrun", "deepspeed", "srun")
# Flags the runner sets for every run: a user value would point a run at other data or another folder.
OWNED = ("data", "val_data", "output_dir", "eval_only", "resume", "modality")
# Shards per side at least (when the side has that many videos): exact-mode streams need one per rank x worker.
MIN_SHARDS = 64


@dataclasses.dataclass(frozen=True)
class Unit:
    """One side of a training: the videos of ``partition`` ("train" / "test") of the preset's ``split``.

    ``name`` names its manifest and shard folder (shared by trainings that test on the same side); ``label`` is its
    column in the table; ``rule`` assigns a record of a manifest CSV (``--root M.csv``) to "train" / "test" / None
    from its fields, None when the fields cannot tell (then a raw tree is needed).
    """

    name: str
    label: str
    split: str
    partition: str
    rule: Callable[[Record], str | None] | None = None

    def select(self, record: Record) -> bool:
        assert self.rule is not None
        return self.rule(record) == self.partition


@dataclasses.dataclass(frozen=True)
class Training:
    """One fine-tuning: its run folder ``name``, the training side and the test sides (first = ``--val-data``)."""

    name: str
    label: str
    train: Unit
    tests: tuple[Unit, ...]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One dataset's protocol.

    Attributes:
        name: the command's NAME.
        preset: the `data.prep.presets` preset that finds the videos and splits them.
        description: one line for ``--list``.
        splits: the preset splits it trains on (UWA3D: the 12 pairs, grouped into 6 trainings).
        pick_one: ``--split`` picks one of ``splits`` and is required (NTU); otherwise every split runs (HMDB51 and
            UCF101: three, reported per split and as their mean) and ``--split`` may restrict them.
        examples: modality -> one file name that the preset's naming matches, for messages.
    """

    name: str
    preset: str
    description: str
    splits: tuple[str, ...]
    pick_one: bool = False
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def trainings(self, split: str | None, options: dict) -> list[Training]:
        """The trainings of this protocol (``split``: the one picked, or None for all)."""
        if self.preset == "uwa3d_mv2":
            out: dict[tuple[int, int], list[Unit]] = {}
            for name, (a, b), test in presets.UWA3D_PAIRS:
                rule = _view_rule(a, b, test)
                out.setdefault((a, b), []).append(Unit(f"view_v{test}", f"V{test}", name, "test", rule))
            return [Training(f"v{a}{b}", f"V{a} & V{b}",
                             Unit(f"train_v{a}{b}", f"V{a} & V{b}", tests[0].split, "train", tests[0].rule),
                             tuple(tests))
                    for (a, b), tests in out.items()]
        chosen = self.splits if split is None else (split,)
        result = []
        for s in chosen:
            rule = _field_rule(self.preset, s, options)
            tests = (Unit(f"{s}_test", s, s, "test", rule),)
            result.append(Training(s, s, Unit(f"{s}_train", s, s, "train", rule), tests))
        return result


def _view_rule(a: int, b: int, test: int) -> Callable[[Record], str | None]:
    return lambda r: "train" if r.view in (a, b) else "test" if r.view == test else None


def _field_rule(preset: str, split: str, options: dict) -> Callable[[Record], str | None] | None:
    """The preset's partition rule on a manifest's fields (subject / view columns); None where the fields cannot tell
    (NTU x-set needs the setup id, HMDB51 / UCF101 their split files)."""
    subjects: frozenset[int] | None = None
    if preset == "uwa3d_activity":
        given = options.get("train_subjects")
        subjects = presets._subjects(given) if given else frozenset(presets.UWA3D_ACTIVITY_TRAIN_SUBJECTS)
    elif preset == "msr_action3d":
        subjects = frozenset(presets.MSR_ACTION3D_TRAIN_SUBJECTS)
    elif preset == "msr_action_pairs":
        subjects = frozenset(presets.MSR_ACTION_PAIRS_TRAIN_SUBJECTS)
    elif preset in ("ntu60", "ntu120") and split == "xsub":
        subjects = frozenset(presets.NTU60_XSUB_TRAIN if preset == "ntu60" else presets.NTU120_XSUB_TRAIN)
    elif preset in ("ntu60", "ntu120") and split == "xview":
        cameras = frozenset(presets.NTU60_XVIEW_TRAIN_CAMERAS)
        return lambda r: None if r.view < 0 else "train" if r.view in cameras else "test"
    if subjects is None:
        return None
    return lambda r: None if r.subject < 0 else "train" if r.subject in subjects else "test"


_STEM = {"rgb": "{}_rgb.avi", "depth": "{}_depth.avi"}
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("uwa3d-mv2", "uwa3d_mv2", "UWA3D Multiview II cross-view: 6 view pairs x 2 held-out views (TIME "
                 "Table 3)", tuple(n for n, _, _ in presets.UWA3D_PAIRS),
                 examples={"rgb": "a01_s01_e01_v01_rgb.avi", "depth": "a01_s01_e01_v01_depth.avi"}),
        Protocol("ntu60", "ntu60", "NTU RGB+D 60, --split xsub or xview", ("xsub", "xview"), pick_one=True,
                 examples={"rgb": "S001C001P001R001A001_rgb.avi", "depth": "S001C001P001R001A001/MDepth-00000001.png"}),
        Protocol("ntu120", "ntu120", "NTU RGB+D 120, --split xsub or xset", ("xsub", "xset"), pick_one=True,
                 examples={"rgb": "S001C001P001R001A001_rgb.avi", "depth": "S001C001P001R001A001/MDepth-00000001.png"}),
        Protocol("hmdb51", "hmdb51", "HMDB51, official splits 1-3: per split and mean", ("split1", "split2", "split3")),
        Protocol("ucf101", "ucf101", "UCF101, official splits 1-3: per split and mean", ("split1", "split2", "split3")),
        Protocol("msr_action3d", "msr_action3d", "MSRAction3D depth, cross-subject", ("xsub",),
                 examples={"depth": "a01_s01_e01_sdepth.bin"}),
        Protocol("msr_action_pairs", "msr_action_pairs", "MSR 3D Action Pairs, cross-subject", ("xsub",),
                 examples={"rgb": "a01_s01_e01_rgb.avi", "depth": "a01_s01_e01_depth.avi"}),
        Protocol("uwa3d_activity", "uwa3d_activity", "UWA3D Activity, cross-subject halves", ("xsub",),
                 examples={"rgb": "a01_s01_e01_rgb.avi", "depth": "a01_s01_e01_depth.avi"}),
    )
}  # fmt: skip


def _norm(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def get_protocol(name: str) -> Protocol:
    """The protocol named ``name`` ('-' and '_' alike, any case).

    Raises:
        UserError: no such protocol.
    """
    for p in PROTOCOLS.values():
        if _norm(p.name) == _norm(name):
            return p
    raise UserError(f"unknown protocol {name!r}; use one of: {', '.join(PROTOCOLS)} (timemae protocol --list)")


# ---------------------------------------------------------------------------------------------------------------------
# Records of each side


class Sides:
    """The records of every side of a plan, read once from a raw tree (preset builder per split) or a manifest."""

    def __init__(self, protocol: Protocol, root: str, modality: str, options: dict):
        self.protocol, self.root, self.modality, self.options = protocol, root, modality, options
        self.preset = presets.PRESETS[protocol.preset]
        if modality not in self.preset.modalities:
            only = self.preset.modalities[0]
            raise UserError(f"protocol {protocol.name} has {only} videos only; pass --modality {only}")
        for key in options:
            if key not in self.preset.options:
                users = [p.name for p in PROTOCOLS.values() if key in presets.PRESETS[p.preset].options]
                raise UserError(f"--{key.replace('_', '-')} does not apply to protocol {protocol.name}; it is for "
                                f"{', '.join(users)}")
        if not os.path.exists(root):
            raise UserError(f"--root {root} does not exist; pass the raw dataset folder or a manifest CSV")
        self.manifest: list[Record] | None = None
        if os.path.isfile(root):
            rows = read_manifest(root)
            self.manifest = [r for r in rows if r.modality == modality]
            if not self.manifest:
                raise UserError(f"--root {root}: none of its {len(rows)} rows is {modality}; pass --modality "
                                f"{rows[0].modality if rows else 'rgb'} or another manifest")
        self._by_split: dict[str, list[Record]] = {}

    def _raw(self, split: str) -> list[Record]:
        if split not in self._by_split:
            try:
                self._by_split[split] = self.preset.builder(self.root, split, modality=self.modality, **self.options)
            except UserError:
                counted = presets.count_named(self.preset.name, self.root)
                if counted is None or counted[0] > 0:
                    raise
                _, total, naming = counted
                example = self.protocol.examples.get(self.modality, naming)
                raise UserError(f"--root {self.root}: 0 of its {total} files follow the {self.protocol.name} naming "
                                f"{naming} (expected e.g. {example}); check --root") from None
        return self._by_split[split]

    def records(self, unit: Unit) -> list[Record]:
        """The side's records sorted by path; never empty.

        Raises:
            UserError: the side has no video, or a manifest cannot tell the side (no rule or no field values).
        """
        if self.manifest is None:
            found = [r for r in self._raw(unit.split) if r.split == unit.partition]
            pool = list({r.path: r for rs in self._by_split.values() for r in rs}.values())
        else:
            if unit.rule is None:
                raise UserError(f"protocol {self.protocol.name} split {unit.split} cannot be read from a manifest "
                                "(its partitions need the raw dataset's names or split files); pass the raw dataset "
                                "folder as --root")
            found = [dataclasses.replace(r, split=unit.partition) for r in self.manifest if unit.select(r)]
            pool = self.manifest
        if not found:
            what, seen = f"split {unit.split}", ""
            if self.protocol.preset == "uwa3d_mv2":
                what = f"view {unit.label[1:]}"
                seen = f" (views {', '.join(map(str, sorted({r.view for r in pool})))})"
            raise UserError(f"protocol {self.protocol.name}: {what} has no {unit.partition} samples among the "
                            f"{len(pool)} {self.modality} videos found in {self.root}{seen}; check --root (some "
                            "files may be missing)")
        return sorted(found, key=lambda r: r.path)


# ---------------------------------------------------------------------------------------------------------------------
# Flags of the fine-tuning runs


def finetune_fields(argv: Sequence[str]) -> dict:
    """The fields a list of ``finetune/run.py`` flags sets (values as plain data), plus ``config`` for --config.

    Raises:
        UserError: a flag finetune/run.py does not know, or one the protocol sets itself (`OWNED`).
    """
    from finetune.config import FinetuneConfig
    from launch import config as config_lib

    parser = config_lib.new_parser(prog="finetune/run.py", add_help=False)
    parser.add_argument("--config", default=None)
    config_lib.add_dataclass_arguments(parser, FinetuneConfig)
    ns, unknown = parser.parse_known_args(list(argv))
    if unknown:
        hint = config_lib.unknown_flags_message(parser, unknown[:1]).partition(" (")[2]
        raise UserError(f"finetune/run.py has no flag {unknown[0]!r} (after --){' (' + hint if hint else ''}; "
                        "see finetune/run.py --help")
    fields = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in vars(ns).items() if v is not None}
    owned = [k for k in OWNED if k in fields]
    if fields.get("config"):
        keys = {str(k).replace("-", "_") for k in config_lib.load_yaml(fields["config"])}
        owned += [k for k in OWNED if k in keys and k not in owned]
    if owned:
        flag = config_lib.flag_name(owned[0])
        why = "--modality goes before --" if owned[0] == "modality" else "the protocol sets it for every run"
        raise UserError(f"conflicting flags: {flag} after -- ({why}); remove it")
    return fields


def to_argv(fields: dict) -> list[str]:
    """``finetune/run.py`` flags from fields (the inverse of `finetune_fields`), in the fields' order."""
    from launch import config as config_lib

    argv: list[str] = []
    for key, value in fields.items():
        flag = "--config" if key == "config" else config_lib.flag_name(key)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def launcher_prefix(launcher: str, nproc: int) -> list[str]:
    """The command that starts ``finetune/run.py`` on ``nproc`` processes (srun: the allocation's tasks)."""
    if launcher == "python":
        return [sys.executable, "-u"]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if launcher == "deepspeed":
        exe = os.path.join(os.path.dirname(sys.executable), "deepspeed")
        return [exe if os.path.isfile(exe) else (shutil.which("deepspeed") or "deepspeed"), "--num_gpus", str(nproc)]
    # srun: one step of the job per run, all its tasks (SLURM_NTASKS), as launch/slurm/finetune.sbatch starts them
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return ["srun", "--kill-on-bad-exit=1", "--export=ALL", *([f"--cpus-per-task={cpus}"] if cpus else []),
            sys.executable, "-u"]


def resolve_launcher(launcher: str, nproc: int | None) -> tuple[str, int]:
    """(launcher, processes) from the flags and the environment.

    Raises:
        UserError: python with several processes, srun outside a SLURM job, --nproc with srun, --nproc < 1.
    """
    slurm = bool(os.environ.get("SLURM_JOB_ID"))
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc {nproc} is < 1; use 1 or more")
    if launcher == "auto":
        launcher = "srun" if slurm else "python" if (nproc or 1) == 1 else "torchrun"
    if launcher == "srun":
        if not slurm:
            raise UserError("--launcher srun needs a SLURM job (SLURM_JOB_ID is not set); use python, torchrun or "
                            "deepspeed, or submit launch/slurm/protocol.sbatch")
        if nproc is not None:
            raise UserError("conflicting flags: --nproc with srun (the job's --ntasks sets the processes); drop it")
        return launcher, int(os.environ.get("SLURM_NTASKS", "1"))
    if launcher == "python" and (nproc or 1) > 1:
        raise UserError(f"conflicting flags: --launcher python runs one process but --nproc {nproc}; use --launcher "
                        "torchrun or deepspeed")
    return launcher, nproc or 1


# ---------------------------------------------------------------------------------------------------------------------
# Shards


def _shard_size(n: int) -> int:
    return max(1, n // MIN_SHARDS)


def shards_match(folder: str, records: Sequence[Record], short_side: int | None) -> bool:
    """Whether ``folder`` holds complete shards of exactly these videos and labels at this short side (made by an
    earlier protocol run or by ``timemae shards``)."""
    try:
        with open(os.path.join(folder, "index.json")) as fh:
            index = json.load(fh)
        kept = {(os.path.abspath(r.path), r.label) for r in read_manifest(os.path.join(folder, "manifest.csv"))}
        with open(os.path.join(folder, "quarantine.csv"), newline="") as fh:
            bad = {(os.path.abspath(row["path"]), int(row["label"])) for row in csv.DictReader(fh)}
    except (OSError, ValueError, KeyError, UserError):
        return False
    wanted = {(os.path.abspath(r.path), r.label) for r in records}
    complete = all(os.path.isfile(os.path.join(folder, name)) for name in index.get("shards", []))
    return complete and index.get("short_side") == short_side and kept | bad == wanted and not kept & bad


# ---------------------------------------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass
class Run:
    """One process of the plan: a training (``test`` = its first test side) or an ``--eval-only`` of its best.pth."""

    training: Training
    test: Unit
    folder: str
    fields: dict
    eval_only: bool

    def argv(self) -> list[str]:
        return [RUN_SCRIPT, *to_argv(self.fields)]


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None


def _stamp(run: Run) -> dict:
    stamp = {"fields": run.fields}
    if run.eval_only:  # a redone training invalidates its evaluations
        stamp["weights"] = _digest(os.path.join(os.path.dirname(run.folder), "best.json"))
    return stamp


def run_state(run: Run) -> str:
    """"done" (metrics.json and the same flags), "resume" (started with the same flags), "new", or "other" (the
    folder holds a run with other flags)."""
    stamp_path = os.path.join(run.folder, "protocol.json")
    if not os.path.exists(stamp_path):
        if run.eval_only or not os.path.isdir(os.path.join(run.folder, "checkpoints")):
            return "new"
        return "other"  # a run the protocol did not start
    try:
        with open(stamp_path) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return "other"
    if saved != json.loads(json.dumps(_stamp(run))):
        return "new" if run.eval_only else "other"  # an evaluation is cheap: redo it for new weights or flags
    return "done" if os.path.isfile(os.path.join(run.folder, "metrics.json")) else "resume"


def _eval_folder(training_folder: str, unit: Unit) -> str:
    return os.path.join(training_folder, f"eval_{unit.name}")


def plan_runs(trainings: Sequence[Training], out: str, shards_dir: str, user: dict, modality: str,
              num_classes: int) -> list[Run]:
    """The runs of the plan in order: each training, then the ``--eval-only`` of its further test sides."""
    runs = []
    for t in trainings:
        folder = os.path.join(out, "runs", t.name)
        base = {"data": os.path.join(shards_dir, t.train.name), "modality": modality,
                "num_classes": user.get("num_classes", num_classes)}
        train = {**base, "val_data": os.path.join(shards_dir, t.tests[0].name), "output_dir": folder,
                 **{k: v for k, v in user.items() if k not in base}}
        runs.append(Run(t, t.tests[0], folder, train, False))
        # --eval-only takes best.pth (the weights the training reports) and no selection or head-reset flags
        evaluated = {k: v for k, v in user.items()
                     if k not in base and k not in ("select_on", "val_fraction", "init_from", "reset_head")}
        for unit in t.tests[1:]:
            sub = _eval_folder(folder, unit)
            fields = {**base, "val_data": os.path.join(shards_dir, unit.name), "output_dir": sub, "eval_only": True,
                      "init_from": os.path.join(folder, "best.pth"), **evaluated}
            runs.append(Run(t, unit, sub, fields, True))
    return runs


def execute(run: Run, prefix: list[str], log: Callable[[str], None]) -> None:
    """Start one run and wait for it (its output goes to this process's stdout / stderr).

    Raises:
        UserError: the run refused its input (exit 2).
        RunFailed: any other non-zero exit.
    """
    os.makedirs(run.folder, exist_ok=True)
    with open(os.path.join(run.folder, "protocol.json"), "w") as fh:
        json.dump(_stamp(run), fh, indent=1)
    cmd = prefix + run.argv()
    log(f"$ {shlex.join(cmd)}")
    sys.stdout.flush()
    rc = subprocess.call(cmd)
    if rc == 2:
        raise UserError(f"{run.folder}: finetune/run.py refused its input (its error is above); fix the flags and "
                        "run the protocol again")
    if rc != 0:
        raise RunFailed(f"{run.folder}: finetune/run.py exited with {rc} (output above); run the same command again "
                        "to resume it")


class RunFailed(RuntimeError):
    """A fine-tuning run failed for another reason than its input (exit code 1)."""


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def read_row(run: Run) -> dict:
    """One table row from the run's ``metrics.json`` (a training: the reported test evaluation; an evaluation: its
    own). top-1 / top-5 / mean class accuracy in percent."""
    path = os.path.join(run.folder, "metrics.json")
    with open(path) as fh:
        m = json.load(fh)
    trained = m
    if run.eval_only:  # how its weights were chosen is the training's record
        with open(os.path.join(os.path.dirname(run.folder), "metrics.json")) as fh:
            trained = json.load(fh)
    return {"training": run.training.label, "test": run.test.label, "top1": round(100 * m["top1"], 2),
            "top5": round(100 * m["top5"], 2), "mean_class_acc": round(100 * m["mean_class_acc"], 2),
            "num_videos": m["num_videos"], "selected_on": trained["selected_on"], "metrics": path}


def average(rows: Sequence[dict]) -> float:
    return round(sum(r["top1"] for r in rows) / len(rows), 2)


def table_md(protocol: Protocol, rows: Sequence[dict], modality: str) -> str:
    """Markdown: UWA3D in Table 3's layout (training views and test view as columns, top-1 and the average);
    the others one row per result and, with several, their mean."""
    title = f"{protocol.name} ({modality}), top-1 (%)"
    if protocol.preset == "uwa3d_mv2":
        head = "| Training | " + " | ".join(r["training"] for r in rows) + " | Average |"
        sep = "|---" * (len(rows) + 2) + "|"
        test = "| Testing | " + " | ".join(r["test"] for r in rows) + " | |"
        top = "| top-1 | " + " | ".join(f"{r['top1']:.2f}" for r in rows) + f" | {average(rows):.2f} |"
        return f"{title}\n\n{head}\n{sep}\n{test}\n{top}\n"
    lines = [title, "", "| training | test | top-1 | top-5 | mean class | videos |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['training']} | {r['test']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['mean_class_acc']:.2f} | "
              f"{r['num_videos']} |" for r in rows]
    if len(rows) > 1:
        lines.append(f"| mean | | {average(rows):.2f} | | | |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("training", "test", "top1", "top5", "mean_class_acc", "num_videos", "selected_on", "metrics")


def table_csv(rows: Sequence[dict]) -> str:
    """One line per result (percentages), then ``average`` (the mean top-1) when there are several."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    if len(rows) > 1:
        w.writerow({"training": "average", "top1": average(rows)})
    return buf.getvalue()


def bar_chart(protocol: Protocol, rows: Sequence[dict], modality: str, path: str) -> None:
    """Top-1 per result as bars (labelled training -> test), the average as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['training']}\n-> {r['test']}" if r["training"] != r["test"] else r["test"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(rows) + 1.5), 3.5))
    ax.bar(range(len(rows)), [r["top1"] for r in rows], color="#4c72b0")
    if len(rows) > 1:
        ax.axhline(average(rows), color="#c44e52", linestyle="--", label=f"average {average(rows):.2f}")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_xticks(range(len(rows)), names, fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{protocol.name} ({modality})", fontsize=9)
    fig.tight_layout()
    from common.files import atomic_write_figure

    atomic_write_figure(fig, str(path), dpi=120)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="print the protocols and how many trainings each needs")
    parser.add_argument("--root", help="raw dataset folder, or a manifest CSV with the columns the split needs")
    parser.add_argument("--modality", help="rgb or depth (default: the dataset's first: rgb, depth for msr_action3d)")
    parser.add_argument("--split", help="ntu60: xsub or xview, ntu120: xsub or xset (required); hmdb51 / ucf101: one "
                                        "split only (default all three)")
    parser.add_argument("--out", help="output folder: manifests, shards, runs, table.md / .csv / .png")
    parser.add_argument("--shards-dir", help="where the shards go (default OUT/shards); share it between protocol "
                                             "runs of one dataset")
    parser.add_argument("--short-side", default="auto", help="shard storage, as `timemae shards` (default auto: from "
                                                             "--grid-n and --input-size after --)")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards (default 1)")
    parser.add_argument("--launcher", default="auto", choices=LAUNCHERS,
                        help="how each run starts: auto (srun inside a SLURM job, else python, or torchrun with "
                             "--nproc > 1), python, torchrun, deepspeed, srun")
    parser.add_argument("--nproc", type=int, help="processes (GPUs) per run with torchrun / deepspeed (default 1)")
    parser.add_argument("--force", action="store_true", help="redo every training and evaluation (shards are reused)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (sample counts, commands), run nothing")
    parser.add_argument("--split-dir", help="hmdb51 / ucf101: folder of the official split files")
    parser.add_argument("--skip-missing", action="store_true", help="hmdb51 / ucf101: leave out listed videos "
                                                                    "missing on disk")
    parser.add_argument("--train-subjects", help="uwa3d_activity: training subject ids, e.g. 1,2,3,4,5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``timemae protocol``; NAME and the finetune/run.py flags after ``--`` are read by `run`."""
    _add_flags(parser)
    parser.epilog = "usage: timemae protocol NAME --root RAW_OR_MANIFEST --out DIR [flags] [-- finetune/run.py flags]"
    # argparse cannot take a positional before flags and more positionals after `--` (python < 3.12); the words
    # from NAME on are kept whole and parsed again in `run`.
    parser.add_argument("words", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _parse(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    words = list(args.words)
    head, tail = (words[: words.index("--")], words[words.index("--") + 1:]) if "--" in words else (words, [])
    from launch import config as config_lib

    parser = config_lib.new_parser(prog="timemae protocol")
    _add_flags(parser)
    parser.add_argument("name", nargs="?")
    parser.set_defaults(**{k: v for k, v in vars(args).items() if k != "words"})
    parsed, unknown = parser.parse_known_args(head)
    if unknown:
        parser.error(config_lib.unknown_flags_message(parser, unknown))
    return parsed, tail


def list_protocols() -> str:
    lines = []
    for p in PROTOCOLS.values():
        trainings = len(p.trainings(p.splits[0] if p.pick_one else None, {}))
        results = sum(len(t.tests) for t in p.trainings(p.splits[0] if p.pick_one else None, {}))
        splits = f"--split {' | '.join(p.splits)}" if p.pick_one else ""
        lines.append(f"{p.name:<18}{trainings} training{'s' * (trainings > 1)}, {results} result"
                     f"{'s' * (results > 1)}  {splits}\n{'':<18}{p.description}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs ``timemae protocol``."""
    from data.prep.shards import parse_short_side, write_shards

    ns, tail = _parse(args)
    if ns.list:
        print(list_protocols())
        return 0
    if not ns.name:
        raise UserError("no protocol named; use e.g. `timemae protocol uwa3d-mv2 --root RAW --out DIR` (--list "
                        "shows them)")
    protocol = get_protocol(ns.name)
    for flag in ("root", "out"):
        if not getattr(ns, flag):
            raise UserError(f"--{flag} is required; see `timemae protocol --help`")
    if ns.split is not None:
        if len(protocol.splits) == 1 or protocol.preset == "uwa3d_mv2":
            raise UserError(f"conflicting flags: --split {ns.split} but protocol {protocol.name} has no splits to "
                            "choose from; drop --split")
        split = presets._canonical_split(protocol.name, ns.split, protocol.splits)
    elif protocol.pick_one:
        raise UserError(f"protocol {protocol.name} needs --split: one of {', '.join(protocol.splits)}")
    else:
        split = None
    modality = (ns.modality or presets.PRESETS[protocol.preset].modalities[0]).strip().lower()
    if modality not in ("rgb", "depth"):
        raise UserError(f"unknown --modality {ns.modality!r}; use rgb or depth")
    launcher, nproc = resolve_launcher(ns.launcher, ns.nproc)
    user = finetune_fields(tail)
    options = {k: getattr(ns, k) for k in ("split_dir", "train_subjects") if getattr(ns, k)}
    if ns.skip_missing:
        options["skip_missing"] = True
    if ns.workers < 1:
        raise UserError(f"--workers {ns.workers} is < 1; use 1 or more")
    from finetune.config import FinetuneConfig  # the shards are cut for the runs' grid and input size

    defaults = FinetuneConfig()
    short_side = parse_short_side(ns.short_side, user.get("grid_n", defaults.grid_n),
                                  user.get("input_size", defaults.input_size))

    root, out = os.path.abspath(os.path.expanduser(ns.root)), os.path.abspath(os.path.expanduser(ns.out))
    shards_dir = os.path.abspath(os.path.expanduser(ns.shards_dir)) if ns.shards_dir else os.path.join(out, "shards")
    trainings = protocol.trainings(split, options)
    sides = Sides(protocol, root, modality, options)
    units = {u.name: u for t in trainings for u in (t.train, *t.tests)}
    records = {name: sides.records(u) for name, u in units.items()}
    num_classes = max(r.label for rs in records.values() for r in rs) + 1
    runs = plan_runs(trainings, out, shards_dir, user, modality, num_classes)
    prefix = launcher_prefix(launcher, nproc)

    print(f"protocol {protocol.name} ({modality}): {len(trainings)} trainings, {len(runs)} results, "
          f"{num_classes} classes; launcher {launcher} x {nproc}")
    for t in trainings:
        tests = ", ".join(f"{u.label} {len(records[u.name])}" for u in t.tests)
        print(f"  {t.name}: train {t.train.label} {len(records[t.train.name])} videos; test {tests}")
    if ns.dry_run:
        for r in runs:
            state = "redo" if ns.force else run_state(r)
            print(f"[{state}] {shlex.join(prefix + r.argv())}")
        return 0

    os.makedirs(os.path.join(out, "manifests"), exist_ok=True)
    for name, recs in records.items():
        write_manifest(recs, os.path.join(out, "manifests", f"{name}.csv"))
        folder = os.path.join(shards_dir, name)
        if shards_match(folder, recs, short_side):
            print(f"shards {name}: reused ({folder})")
            continue
        index = write_shards(recs, folder, shard_samples=_shard_size(len(recs)), short_side=short_side,
                             workers=ns.workers, progress=False, overwrite=True, order_seed=0)
        print(f"shards {name}: {index['num_samples']} videos in {len(index['shards'])} shards "
              f"({index['num_quarantined']} quarantined) in {folder}")

    for r in runs:
        if ns.force and not r.eval_only and os.path.isdir(r.folder):
            shutil.rmtree(r.folder)  # its evaluations go with it
        state = run_state(r)
        if state == "other":
            raise UserError(f"conflicting flags: {r.folder} holds a run with other flags; pass --force to redo it, "
                            "or give another --out")
        if state == "done":
            print(f"{r.folder}: done, skipped")
            continue
        if r.eval_only:  # an evaluation starts afresh: no stale metrics.json may stand for it
            for name in ("metrics.json", "eval.json"):
                if os.path.exists(os.path.join(r.folder, name)):
                    os.remove(os.path.join(r.folder, name))
        try:
            execute(r, prefix, print)
        except RunFailed as err:
            print(f"timemae protocol: error: {err}", file=sys.stderr)
            return 1

    rows = [read_row(r) for r in runs]
    md = table_md(protocol, rows, modality)
    print(md, end="")
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(out, "table.csv"), "w", newline="") as fh:
        fh.write(table_csv(rows))
    bar_chart(protocol, rows, modality, os.path.join(out, "table.png"))
    print(f"wrote {os.path.join(out, 'table.md')}, table.csv, table.png")
    return 0


CLI = {"protocol": (add_arguments, run)}
