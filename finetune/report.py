"""Evaluation reports: the metrics of one evaluation and the files that show where a classifier goes wrong.

`VideoScores` holds one evaluation's per-video results (merged over ranks by `finetune.engine.evaluate_videos`);
`summarise` turns it into the logged metrics and `write_reports` into a folder of files, each written atomically:

* ``metrics.json``: top-1, top-5, mean per-class accuracy, videos, views (and whatever the caller adds: step, split).
* ``per_class.csv``: label, class name, videos, correct, accuracy (empty for a class with no video).
* ``confusion.csv``: counts, rows = true class, columns = predicted class, class names on both axes.
* ``confusion.png``: the same, each row normalised to the share of its videos; sized so that 120 class names stay
  readable.
* ``predictions.csv``: per video: key, label, predicted class, top-5, the predicted class's mean softmax, and the
  share of its views (clips x crops) whose own prediction is the video's (view agreement).

Class names come from the shards' records (``class_name``) where given, else the label number.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os

import numpy as np

from common.files import atomic_write_bytes, atomic_write_text

__all__ = ["VideoScores", "class_labels", "confusion_matrix", "summarise", "write_reports"]

FILES = ("metrics.json", "per_class.csv", "confusion.csv", "confusion.png", "predictions.csv")


@dataclasses.dataclass
class VideoScores:
    """One evaluation's results, one row per distinct video.

    Attributes:
        keys: (N,) video ids (``shard/key``).
        labels: (N,) int true labels.
        scores: (N, C) softmax averaged over the video's views.
        view_agreement: (N,) share of the video's views whose own argmax is the video's prediction.
        views: (N,) views per video.
        view_correct: single views whose argmax is the label, over all videos.
        loss_sum: summed single-view cross-entropy, over all views.
        duplicates: videos that came from more than one rank (exact mode never does this; counted, not hidden).
        class_names: label -> name, from the records seen.
    """

    keys: list[str]
    labels: np.ndarray
    scores: np.ndarray
    view_agreement: np.ndarray
    views: np.ndarray
    view_correct: int = 0
    loss_sum: float = 0.0
    duplicates: int = 0
    class_names: dict[int, str] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.scores.shape[1]

    def ranked(self, k: int = 5) -> np.ndarray:
        """(N, min(k, C)) class ids by decreasing score (ties: the lower id first, as ``argmax``)."""
        return np.argsort(-self.scores, axis=1, kind="stable")[:, : min(k, self.num_classes)]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: ``[i, j]`` = videos of class i predicted as j."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (labels, predicted), 1)
    return out


def summarise(v: VideoScores) -> dict:
    """The evaluation record: ``top1`` / ``top5`` of the view-averaged softmax, ``mean_class_acc`` (the mean over
    the classes that have at least one video of their top-1), ``view_top1`` (single views), ``loss`` (mean single-view
    cross-entropy), ``num_videos``, ``num_views`` (per video), ``duplicate_videos``."""
    n = len(v.keys)
    if n == 0:
        return {"kind": "eval", "top1": 0.0, "top5": 0.0, "mean_class_acc": 0.0, "num_videos": 0, "num_views": 0,
                "duplicate_videos": v.duplicates}
    ranked = v.ranked(5)
    hit = ranked[:, 0] == v.labels
    count = np.bincount(v.labels, minlength=v.num_classes)
    right = np.bincount(v.labels, weights=hit, minlength=v.num_classes)
    seen = count > 0
    views = int(v.views.sum())
    return {
        "kind": "eval",
        "top1": float(hit.mean()),
        "top5": float((ranked == v.labels[:, None]).any(1).mean()),
        "mean_class_acc": float(np.mean(right[seen] / count[seen])),
        "view_top1": v.view_correct / views,
        "loss": v.loss_sum / views,
        "num_videos": n,
        "num_views": views / n,
        "duplicate_videos": v.duplicates,
    }


def class_labels(num_classes: int, names: dict[int, str]) -> list[str]:
    """The display name of every class: its records' ``class_name``, else the label number."""
    return [names.get(c) or str(c) for c in range(num_classes)]


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_reports(folder: str, v: VideoScores, metrics: dict, names: list[str]) -> None:
    """The five report files of one evaluation (module docstring) into ``folder`` (created if needed).

    Args:
        folder: where the files go.
        v: the evaluation's per-video results.
        metrics: what ``metrics.json`` holds (`summarise`'s record plus e.g. ``step`` and ``split``).
        names: display name per class (`class_labels`), C of them.
    """
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, "metrics.json"),
                      json.dumps({k: val for k, val in metrics.items() if k != "kind"}, indent=2) + "\n")
    ranked = v.ranked(5)
    predicted = ranked[:, 0] if len(v.keys) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(v.labels, predicted, v.num_classes)
    count, right = cm.sum(1), np.diag(cm)
    per_class = [["label", "class_name", "videos", "correct", "accuracy"]] + [
        [c, names[c], int(count[c]), int(right[c]), f"{right[c] / count[c]:.6f}" if count[c] else ""]
        for c in range(v.num_classes)
    ]
    atomic_write_text(os.path.join(folder, "per_class.csv"), _csv(per_class))
    confusion = [["true \\ predicted", *names]] + [[names[c], *map(int, cm[c])] for c in range(v.num_classes)]
    atomic_write_text(os.path.join(folder, "confusion.csv"), _csv(confusion))
    predictions = [["video", "label", "class_name", "predicted", "predicted_name", "correct", "top5", "score",
                    "view_agreement"]]
    for i, key in enumerate(v.keys):
        label, pred = int(v.labels[i]), int(predicted[i])
        predictions.append([key, label, names[label], pred, names[pred], int(label == pred),
                            " ".join(str(int(c)) for c in ranked[i]), f"{v.scores[i, pred]:.6f}",
                            f"{v.view_agreement[i]:.6f}"])
    atomic_write_text(os.path.join(folder, "predictions.csv"), _csv(predictions))
    atomic_write_bytes(os.path.join(folder, "confusion.png"), confusion_png(cm, names, metrics))


def confusion_png(cm: np.ndarray, names: list[str], metrics: dict) -> bytes:
    """The confusion matrix as a PNG: rows normalised (share of the true class's videos), counts written in the cells
    up to 30 classes. The figure grows with the class count (about 0.13 inch per class) and the font shrinks to 5 pt,
    so that 120 class names on each axis do not overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c = cm.shape[0]
    side = max(6.0, 0.13 * c + 3.0)
    font = 9 if c <= 20 else 7 if c <= 50 else 5
    rows = np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(side, side), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    short = [n if len(n) <= 28 else n[:27] + "…" for n in names]
    ax.set_xticks(range(c), short, rotation=90, fontsize=font)
    ax.set_yticks(range(c), short, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:
        for i, j in zip(*np.nonzero(cm), strict=True):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=font - 1,
                    color="white" if cm[i, j] / rows[i, 0] > 0.5 else "black")
    title = f"{metrics.get('split', 'eval')}"
    if "step" in metrics:
        title += f" step {metrics['step']}"
    if "top1" in metrics:
        title += f": top-1 {metrics['top1']:.4f}, mean class {metrics.get('mean_class_acc', 0.0):.4f}"
    ax.set_title(title + f" ({int(cm.sum())} videos)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
