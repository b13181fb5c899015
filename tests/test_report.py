"""Evaluation reports (`finetune.report`) and the held-out val split (`finetune.holdout`), without training."""

import csv
import json

import numpy as np
import pytest

from finetune.holdout import KeepKeys, carve, read_labels, stratified_holdout
from finetune.report import FILES, VideoScores, class_labels, confusion_matrix, summarise, write_reports


def scores_of(labels: list[int], predicted: list[list[int]], num_classes: int) -> VideoScores:
    """Videos whose softmax ranks ``predicted[i]`` first, second, ... (each view agreeing)."""
    n = len(labels)
    scores = np.full((n, num_classes), 0.01)
    for i, order in enumerate(predicted):
        for rank, c in enumerate(order):
            scores[i, c] = 0.9 - 0.1 * rank
    scores /= scores.sum(1, keepdims=True)
    return VideoScores(keys=[f"s/{i:03d}" for i in range(n)], labels=np.array(labels), scores=scores,
                       view_agreement=np.linspace(0, 1, n), views=np.full(n, 3), view_correct=5, loss_sum=9.0)


def test_summary_counts_and_mean_class_accuracy():
    # class 0: 3 videos, 2 right; class 1: 1 video, right; class 2: 1 video, wrong (its label second); class 3: none
    v = scores_of([0, 0, 0, 1, 2], [[0], [0], [1, 2], [1], [0, 2]], 4)
    m = summarise(v)
    assert m["top1"] == pytest.approx(3 / 5) and m["top5"] == 1.0
    assert m["mean_class_acc"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # classes without a video do not count
    assert m["num_videos"] == 5 and m["num_views"] == 3 and m["view_top1"] == pytest.approx(5 / 15)
    assert m["loss"] == pytest.approx(9 / 15)
    cm = confusion_matrix(v.labels, v.ranked(1)[:, 0], 4)
    assert cm.sum() == 5 and np.trace(cm) / cm.sum() == pytest.approx(m["top1"])
    assert summarise(VideoScores([], np.zeros(0, int), np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)))[
        "num_videos"] == 0


def test_report_files_add_up(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 57, 6
    labels = rng.integers(0, c - 1, n)  # the last class has no video
    v = scores_of(list(labels), [list(rng.permutation(c)) for _ in range(n)], c)
    names = class_labels(c, {0: "walk, fast", 2: "jump"})  # a comma survives the CSV
    assert names[:3] == ["walk, fast", "1", "jump"]
    metrics = {"step": 7, "split": "test", **summarise(v)}
    write_reports(str(tmp_path), v, metrics, names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temporary file left
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["step"] == 7 and saved["num_videos"] == n and saved["top1"] == metrics["top1"]
    assert {"top1", "top5", "mean_class_acc", "num_views", "split"} <= set(saved)

    per_class = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert [r["class_name"] for r in per_class] == names
    assert sum(int(r["videos"]) for r in per_class) == n
    assert sum(int(r["correct"]) for r in per_class) == round(metrics["top1"] * n)
    assert per_class[-1]["videos"] == "0" and per_class[-1]["accuracy"] == ""

    rows = list(csv.reader((tmp_path / "confusion.csv").open()))
    assert rows[0][1:] == names and [r[0] for r in rows[1:]] == names
    cm = np.array([[int(x) for x in r[1:]] for r in rows[1:]])
    assert cm.sum() == n and np.trace(cm) / cm.sum() == pytest.approx(metrics["top1"])
    assert list(cm.sum(1)) == [int(r["videos"]) for r in per_class]

    preds = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(preds) == n and len({p["video"] for p in preds}) == n
    assert sum(int(p["correct"]) for p in preds) == np.trace(cm)
    for p, i in zip(preds, range(n), strict=True):
        top5 = [int(x) for x in p["top5"].split()]
        assert len(top5) == 5 and top5[0] == int(p["predicted"]) and int(p["label"]) == labels[i]
        assert float(p["view_agreement"]) == pytest.approx(v.view_agreement[i], abs=1e-6)
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_png_stays_readable_at_120_classes(tmp_path):
    from PIL import Image

    c = 120
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(c), 2)
    v = scores_of(list(labels), [[int(x)] for x in rng.integers(0, c, len(labels))], c)
    names = class_labels(c, {i: f"a_long_action_name_{i:03d}" for i in range(c)})
    write_reports(str(tmp_path), v, {"split": "test", **summarise(v)}, names)
    with Image.open(tmp_path / "confusion.png") as im:
        width, height = im.size
    assert min(width, height) >= 120 * 15  # at least ~15 pixels per class row and column: the 5 pt names fit


def test_holdout_is_stratified_seeded_and_disjoint():
    labels = {f"k{i:03d}": i % 4 for i in range(40)} | {"lonely": 9}  # 10 videos per class, one class of one
    held = stratified_holdout(labels, 0.2, seed=0)
    assert len(held) == 8 and "lonely" not in held  # 2 of each class of 10, none of a class of one
    assert all(sum(labels[k] == c for k in held) == 2 for c in range(4))
    assert held == stratified_holdout(dict(reversed(labels.items())), 0.2, seed=0)  # order-free: only keys and seed
    assert held != stratified_holdout(labels, 0.2, seed=1)
    assert len(stratified_holdout(labels, 0.01, seed=0)) == 4  # at least one per class
    assert len(stratified_holdout(labels, 0.99, seed=0)) == 36  # never a whole class
    keep, take = KeepKeys(held, inside=False), KeepKeys(held, inside=True)
    assert all(keep(k, 0) != take(k, 0) for k in labels)


def test_holdout_of_shards_reads_records_and_filters_the_stream(demo_dir):
    from data.clip import ClipSpec
    from data.stream import ShardDataset, resolve_shards

    shards = resolve_shards(str(demo_dir / "shards" / "train"))[0][:2]  # 16 videos, 2 per class
    labels, names = read_labels(shards)
    assert len(labels) == 16 and names[0] == "move_left"
    split = carve(shards, 0.5, seed=3)
    assert (split.num_val, split.num_train) == (8, 8)
    spec = ClipSpec(num_frames=2, input_size=16, train=False, crop="center")

    def keys(keep):
        ds = ShardDataset(shards, spec, mode="exact", shuffle_buffer=0, rank=0, world_size=1, output="uint8",
                          keep=keep)
        return [s["meta"]["key"] for s in ds]

    trained, held = keys(split.train_filter), keys(split.val_filter)
    assert set(held) == split.keys and not set(trained) & split.keys
    assert sorted(trained + held) == sorted(labels)
