"""`timemae experiment time-vs-frames`: does one TIME frame carry time? (the TIME paper's central claim, measured)

The demo's classes differ only in motion (`data.prep.demo`): a single frame cannot tell them apart, a TIME frame of N x
N cells from N^2 moments can. The experiment makes a demo set of the asked size (plain background by default: from
scratch, a frame-level model memorises each video's textured background instead of learning its motion), fine-tunes the
same frame-level model (a TSN ResNet: per-frame features, logits averaged over frames, no temporal modelling) on TIME
clips with N = 1, 2, 4 in the spatial and the temporal arrangement, and, as references that do model time, N = 1 with
TSM and with TRM. Every run has the same steps, batch, size, seed and recipe (`SCRATCH_RECIPE`); each is evaluated on
the demo's validation videos with the final weights (`--select-on last`). It prints and writes ``table.md``,
``table.csv`` (top-1, mean class accuracy, seconds) and ``table.png`` (a bar chart).

A finished run (its ``metrics.json`` exists) is reused when the command is run again; ``--force`` redoes them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# name -> (grid N, arrangement, temporal module)
SETTINGS: dict[str, tuple[int, str, str]] = {
    "N=1": (1, "spatial", "none"),
    "N=2 spatial": (2, "spatial", "none"),
    "N=4 spatial": (4, "spatial", "none"),
    "N=2 temporal": (2, "temporal", "none"),
    "N=4 temporal": (4, "temporal", "none"),
    "N=1 + TSM": (1, "spatial", "tsm"),
    "N=1 + TRM": (1, "spatial", "trm"),
}
EXPERIMENTS = ("time-vs-frames",)
# Every run trains from scratch, where the TSN recipe (SGD at 0.01 per 64 clips, made for ImageNet weights) learns
# nothing in a few hundred steps: AdamW at 1e-3 per 16 clips instead, after a one-epoch warm-up held constant (the
# recipe's step schedule first divides it at epoch 30, past these runs). --finetune-flags come after and override it.
SCRATCH_RECIPE = ("--optimizer", "adamw", "--base-lr", "0.016", "--min-lr", "0", "--weight-decay", "0.05",
                  "--warmup-epochs", "1")


def folder_name(name: str) -> str:
    return name.replace("=", "").replace(" + ", "_").replace(" ", "_").lower()


def run_setting(name: str, out: Path, demo: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Fine-tune one setting (or reuse its finished run); returns its table row."""
    n, arrangement, temporal = SETTINGS[name]
    run = out / "runs" / folder_name(name)
    metrics = run / "metrics.json"
    seconds_file = run / "seconds.txt"
    if args.force or not metrics.is_file():
        cmd = [sys.executable, str(ROOT / "finetune" / "run.py"), "--model", args.model, "--temporal", temporal,
               "--grid-n", str(n), "--grid-arrangement", arrangement, "--input-size", str(args.input_size),
               "--num-frames", str(args.num_frames), "--batch-size", str(args.batch_size),
               "--num-workers", str(args.num_workers), "--max-steps", str(args.max_steps),
               "--eval-every", str(args.max_steps), "--save-every", str(args.max_steps), "--log-every", "25",
               "--data", str(demo / "shards" / "train"), "--val-data", str(demo / "shards" / "val"),
               "--seed", str(args.seed), "--output-dir", str(run), "--resume", "none" if args.force else "auto",
               *SCRATCH_RECIPE, *extra]
        print(f"== {name}: {shlex.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
        (run).mkdir(parents=True, exist_ok=True)
        (run / "output.txt").write_text(done.stdout)
        if done.returncode != 0 or not metrics.is_file():
            tail = "\n".join(done.stdout.splitlines()[-5:])
            raise UserError(f"the {name} run failed (exit {done.returncode}; log {run / 'output.txt'}): {tail}")
        seconds_file.write_text(f"{seconds:.1f}\n")
    else:
        print(f"== {name}: done before, reused ({run})", flush=True)
    result = json.loads(metrics.read_text())
    return {"setting": name, "grid_n": n, "arrangement": arrangement, "temporal": temporal,
            "top1": round(float(result["top1"]), 4), "mean_class_acc": round(float(result["mean_class_acc"]), 4),
            "videos": int(result.get("num_videos", 0)),
            "seconds": float(seconds_file.read_text()) if seconds_file.is_file() else None}


def write_table(rows: list[dict[str, Any]], out: Path, chance: float, title: str) -> str:
    """table.csv, table.md and table.png; returns the markdown table."""
    from common.files import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(str(out / "table.csv"), buf.getvalue())
    lines = [f"{title}", "", "| setting | top-1 | mean class acc | seconds |", "|---|---|---|---|"]
    for r in rows:
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        lines.append(f"| {r['setting']} | {r['top1']:.3f} | {r['mean_class_acc']:.3f} | {secs} |")
    lines += ["", f"chance: {chance:.3f}"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(str(out / "table.md"), text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = [r["setting"] for r in rows]
    ax.bar(names, [r["top1"] for r in rows], color=["#4c72b0" if r["temporal"] == "none" else "#dd8452" for r in rows])
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1)
    ax.set_title("\n".join(textwrap.wrap(title, 95)), fontsize=8)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.legend(fontsize=7)
    fig.tight_layout()
    from common.files import atomic_write_figure

    atomic_write_figure(fig, str(out / "table.png"), dpi=110)
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=EXPERIMENTS, help="the experiment")
    p.add_argument("--out", required=True, help="output folder (demo data, runs, table)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="SETTING",
                   help=f"which settings to run (default all: {', '.join(SETTINGS)})")
    p.add_argument("--videos-per-class", type=int, default=64, help="demo training videos per class")
    p.add_argument("--val-per-class", type=int, default=16, help="demo validation videos per class")
    p.add_argument("--model", default="resnet18", help="the frame-level backbone (a TSN ResNet)")
    p.add_argument("--input-size", type=int, default=112, help="clip size")
    p.add_argument("--num-frames", type=int, default=2, help="T*, TIME frames per clip")
    p.add_argument("--batch-size", type=int, default=16, help="clips per step")
    p.add_argument("--max-steps", type=int, default=300, help="fine-tuning steps of every run")
    p.add_argument("--num-workers", type=int, default=2, help="loader workers per run")
    p.add_argument("--background", choices=("plain", "shaded", "textured"), default="plain",
                   help="the demo's background (timemae demo --background): plain by default, since from scratch a "
                        "frame-level model memorises each video's textured background instead of learning motion")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo data and of every run")
    p.add_argument("--force", action="store_true", help="redo runs that finished before")
    p.add_argument("--finetune-flags", default="", help="more finetune/run.py flags for every run, one string, e.g. "
                                                        "\"--init-from r18_imagenet.pth --reset-head\"")


def run(args: argparse.Namespace) -> int:
    from data.prep.demo import CLASSES, ensure_demo
    from models import get_entry

    if get_entry(args.model).family != "resnet":
        raise UserError(f"--model {args.model} is not a TSN ResNet; the experiment compares frame-level ResNets "
                        "(resnet18, resnet50, resnet101)")
    for flag in ("videos_per_class", "val_per_class", "max_steps", "batch_size", "num_frames"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is < 1; give 1 or more")
    from launch.checkpoint import check_writable
    from launch.fields import check_seed

    check_seed(args.seed)  # the demo and every fine-tuning take it: refused before either starts

    extra = shlex.split(args.finetune_flags)
    check_writable(args.out, "--out")
    out = Path(args.out)
    demo = out / "demo"
    print(f"== demo data ({args.videos_per_class} + {args.val_per_class} videos per class) -> {demo}", flush=True)
    ensure_demo(demo, seed=args.seed, per_class=args.videos_per_class, val_per_class=args.val_per_class,
                depth=False, background=args.background)
    rows = [run_setting(name, out, demo, args, extra) for name in args.settings]
    title = (f"time-vs-frames: {args.model} TSN from scratch, {args.num_frames} x {args.input_size}^2 clips, "
             f"{args.max_steps} steps of {args.batch_size}, demo {args.videos_per_class}/{args.val_per_class} "
             f"videos per class, {args.background} background")
    print(write_table(rows, out, 1 / len(CLASSES), title))
    return 0


CLI = {"experiment": (add_arguments, run)}
