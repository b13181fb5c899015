"""A validation split held out of the training shards (``--select-on val``), by video, class-stratified and seeded.

The split is a pure function of the training shards' records (sample key, label) and the seed: every rank, every
restart and every loader worker computes the same one, and no list of keys has to be stored next to the run. Within
each class the videos are ordered by a hash of (seed, key) and the first ``round(fraction x count)`` are held out
(at least one, and never all of a class: a class of one video stays in training). The training stream skips the
held-out keys and the validation stream takes only them (`KeepKeys`, the `data.stream.ShardDataset` ``keep`` filter).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable

from common.errors import DecodeError
from data.stream import read_record, scan_tar


@dataclasses.dataclass(frozen=True)
class KeepKeys:
    """``ShardDataset`` ``keep`` filter: a sample is kept when its key is in ``keys`` (``inside``) or is not
    (``not inside``). A plain dataclass, so that it pickles into the loader workers."""

    keys: frozenset[str]
    inside: bool

    def __call__(self, key: str, label: int) -> bool:
        return (key in self.keys) == self.inside


@dataclasses.dataclass(frozen=True)
class Holdout:
    """The held-out keys and what the split left on each side."""

    keys: frozenset[str]
    num_train: int
    num_val: int
    class_names: dict[int, str]  # label -> the records' class_name, where one is given

    @property
    def train_filter(self) -> KeepKeys:
        return KeepKeys(self.keys, inside=False)

    @property
    def val_filter(self) -> KeepKeys:
        return KeepKeys(self.keys, inside=True)


def read_labels(shards: Iterable[str]) -> tuple[dict[str, int], dict[int, str]]:
    """({sample key: label}, {label: class_name}) from the JSON records of ``shards``; only the records' bytes are
    read (`scan_tar`), never the videos. Samples without a valid record, and unreadable shard tails, are passed over
    (the training stream skips and counts them)."""
    labels: dict[str, int] = {}
    names: dict[int, str] = {}
    for path in shards:
        records, _ = scan_tar(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 -- closed below
        except OSError:
            continue
        with fh:
            for record in records:
                json_only = dataclasses.replace(record, members=tuple(m for m in record.members if m[0] == "json"))
                try:
                    meta = json.loads(read_record(fh, json_only)["json"])
                    label = int(meta["label"])
                except (KeyError, ValueError, TypeError, OverflowError, OSError, DecodeError):
                    continue
                labels[record.key] = label
                if isinstance(meta.get("class_name"), str) and meta["class_name"]:
                    names.setdefault(label, meta["class_name"])
    return labels, names


def stratified_holdout(labels: dict[str, int], fraction: float, seed: int) -> frozenset[str]:
    """The keys held out: per class, the ``round(fraction x n)`` keys (clamped to 1 .. n - 1; none of a class of
    one) first in the order of ``sha256(f"{seed}:{key}")``."""
    by_class: dict[int, list[str]] = {}
    for key, label in labels.items():
        by_class.setdefault(label, []).append(key)
    held: set[str] = set()
    for keys in by_class.values():
        if len(keys) < 2:
            continue
        count = min(len(keys) - 1, max(1, round(fraction * len(keys))))
        keys.sort(key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())
        held.update(keys[:count])
    return frozenset(held)


def carve(shards: Iterable[str], fraction: float, seed: int) -> Holdout:
    """The held-out split of the training ``shards`` (see the module docstring)."""
    labels, names = read_labels(shards)
    keys = stratified_holdout(labels, fraction, seed)
    return Holdout(keys=keys, num_train=len(labels) - len(keys), num_val=len(keys), class_names=names)
