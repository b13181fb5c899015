"""`timemae compare-weights A B --out DIR`: per-layer cosine similarity of two checkpoints of one architecture.

The TIME paper compares a baseline and a TIME model layer by layer (Figs. 5, 7-12): how far each layer moved from the
other model's. Every tensor of the two state dicts is flattened and compared by cosine similarity (float64);
``DIR/similarity.csv`` has one row per tensor in the model's order (key, layer type, block index, shape, elements,
cosine) and ``DIR/similarity.png`` draws them as horizontal bars coloured by layer type, with the mean per type in
the legend.

A checkpoint is a run folder (the newest complete checkpoint's consolidated weights, pretraining or fine-tuning), a
checkpoint folder ``step_*``, or a weights file: our ``encoder.pth`` / ``best.pth`` / pretraining weights, the
official VideoMAE files, or a timm / torchvision state_dict (the tensors under ``model``, ``module`` or
``state_dict``, or the file itself). Two checkpoints whose keys or shapes differ are not the same architecture: one
line names the first difference.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
from typing import Any

import torch

from common.errors import UserError

_INDEX = re.compile(r"\.(\d+)\.")


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a run folder, checkpoint folder or weights file (see the module docstring)."""
    from launch.checkpoint import CheckpointManager

    folder = path.rstrip("/")
    if os.path.isdir(folder):
        if not os.path.isfile(os.path.join(folder, "COMPLETE")):
            found = CheckpointManager(folder, rank=0).find("auto")
            if found is None:
                raise UserError(f"{path} holds no complete checkpoint (checkpoints/step_*/COMPLETE); give a run "
                                "folder that saved one, or a weights file")
            folder = found
        return CheckpointManager.consolidated_weights(folder)
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; give a run folder, a checkpoint folder or a weights file")
    from models.checkpoint import load_file, state_dict_of

    obj = load_file(path, allow=(argparse.Namespace,))
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            return state_dict_of(obj[wrapper], path, f"its {wrapper!r} entry")
    return state_dict_of(obj, path, "the file")


def layer_type(key: str) -> str:
    """The kind of layer a tensor belongs to: its key without block indices and without the last part
    (``blocks.3.attn.qkv.weight`` -> ``blocks.attn.qkv``)."""
    parts = [p for p in key.split(".")[:-1] if not p.isdigit()]
    return ".".join(parts) or key


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: tuple[str, str] = ("A", "B")
            ) -> list[dict[str, Any]]:
    """One row per tensor of ``a`` (in its order): key, type, block, shape, elements, cosine.

    Raises:
        UserError: the two hold other keys or shapes (the first difference is named).
    """
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    if only_a or only_b:
        key, side = (only_a[0], names[0]) if only_a else (only_b[0], names[1])
        raise UserError(f"the checkpoints are not the same architecture: {key} is only in {side} ({len(only_a)} keys "
                        f"only in {names[0]}, {len(only_b)} only in {names[1]}); compare checkpoints of one model")
    rows = []
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise UserError(f"the checkpoints are not the same architecture: {key} is {tuple(ta.shape)} in "
                            f"{names[0]} and {tuple(tb.shape)} in {names[1]}; compare checkpoints of one model")
        if not (ta.is_floating_point() and tb.is_floating_point()) or ta.numel() == 0:
            continue  # counters such as BatchNorm's num_batches_tracked
        va, vb = ta.detach().double().flatten(), tb.detach().double().flatten()
        na, nb = va.norm(), vb.norm()
        cosine = float(va @ vb / (na * nb)) if na > 0 and nb > 0 else float(torch.equal(va, vb))
        match = _INDEX.search(f".{key}.")
        rows.append({"key": key, "type": layer_type(key), "block": int(match.group(1)) if match else "",
                     "shape": "x".join(map(str, ta.shape)) or "scalar", "elements": ta.numel(),
                     "cosine": round(cosine, 6)})
    return rows


def draw(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Horizontal bars of the cosines, one per tensor in model order, coloured by layer type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(r["type"] for r in rows))
    cmap = plt.get_cmap("tab20")
    colour = {t: cmap(i % 20) for i, t in enumerate(types)}
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.14 * len(rows) + 1.5)))
    y = range(len(rows))
    ax.barh(list(y), [r["cosine"] for r in rows], color=[colour[r["type"]] for r in rows], height=0.8)
    ax.set_yticks(list(y), [r["key"] for r in rows], fontsize=5)
    ax.invert_yaxis()
    low = min(0.0, min(r["cosine"] for r in rows))
    ax.set_xlim(low, 1.0)
    ax.set_xlabel("cosine similarity")
    ax.set_title(title, fontsize=9)
    means = {t: sum(r["cosine"] for r in rows if r["type"] == t) / sum(r["type"] == t for r in rows) for t in types}
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[t]) for t in types]
    ax.legend(handles, [f"{t} ({means[t]:.3f})" for t in types], fontsize=6, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    from common.files import atomic_write_figure

    atomic_write_figure(fig, path, dpi=110)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="first checkpoint: run folder, checkpoint folder or weights file")
    p.add_argument("b", help="second checkpoint of the same architecture")
    p.add_argument("--out", required=True, help="output folder for similarity.csv and similarity.png")


def run(args: argparse.Namespace) -> int:
    from common.files import atomic_write_text
    from launch.checkpoint import check_writable

    check_writable(args.out, "--out")
    rows = compare(load_weights(args.a), load_weights(args.b), (args.a, args.b))
    if not rows:
        raise UserError(f"{args.a} holds no floating-point tensors to compare")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(args.out, "similarity.csv"), buf.getvalue())
    draw(rows, os.path.join(args.out, "similarity.png"), f"{args.a}  vs  {args.b}")
    mean = sum(r["cosine"] for r in rows) / len(rows)
    lowest = min(rows, key=lambda r: r["cosine"])
    print(f"{len(rows)} tensors: mean cosine {mean:.4f}, lowest {lowest['cosine']:.4f} ({lowest['key']}); "
          f"wrote similarity.csv and similarity.png to {args.out}")
    return 0


CLI = {"compare-weights": (add_arguments, run)}
