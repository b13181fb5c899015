"""Checkpoint files, whatever model they feed: safe reading, key mappings checked exactly, reports, atomic writing.

Every file is read with ``torch.load(weights_only=True)``; the only class allowed on top of tensors and plain
containers is ``argparse.Namespace`` (the official VideoMAE release pickles its run's ``args``), so nothing in a file
can run code on load (`load_file`).

Weights are never loaded silently. Each weight source has one filter function, next to the model it feeds
(`models.videomae_weights` for VideoMAE files, `models.tsn` for timm / torchvision ImageNet files), that renames the
file's keys to the target model's and names what it drops and what it leaves at initialisation (a `KeyMapping`);
`load_mapping` then requires the missing and unexpected keys of ``load_state_dict(strict=False)`` to be exactly that
(anything else, and any shape difference, is a `UserError`), and the report helpers describe the mapping.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from common.errors import UserError
from common.files import atomic_save  # noqa: F401 - re-exported for code written against this module

# The release's files hold tensors, plain containers and one pickled argparse.Namespace (the run's `args`).
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
_MAX_LISTED = 5


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def check_plain(value: Any, where: str = "config") -> None:
    """Raise TypeError unless ``value`` is plain data (dict with str keys, list, tuple, str, int, float, bool, None).

    Checkpoints store the config as plain data so that `load_file` reads it back without any allow-listed class.
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}; store the config as plain data")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; store the config as plain data (e.g. dataclasses.asdict)")


# ---------------------------------------------------------------------------------------------------------------------
# Reading


def load_file(path: str | os.PathLike, *, allow: tuple[type, ...] = (), map_location: Any = "cpu") -> dict:
    """Read a checkpoint file with ``weights_only=True`` and the `SAFE_GLOBALS` allow-list (plus ``allow``).

    Raises:
        UserError: the file is missing, is not a torch checkpoint, needs a class outside the allow-list or holds
            pickled code (refused: nothing of it is executed), or does not hold a dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist; check the path")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise UserError(f"checkpoint {path} cannot be read ({err.strerror or err}); check its permissions") from None
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch's zip format, or a (legacy) pickle
        raise UserError(f"{path} is not a recognised checkpoint: not a torch file at all (neither a zip archive nor "
                        f"a pickle; it starts with {head!r}); check the path")
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *allow]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise UserError(
                f"{path} is not a recognised checkpoint and is refused: it contains a pickled {found.group(1)}, which "
                "is not on the allow-list of safe classes (nothing of it was run); if you trust the file, re-save only "
                "its weights, e.g. torch.save({'model': state_dict}, 'weights.pth')"
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unpicklable content"
        raise UserError(f"{path} is not a recognised checkpoint and is refused: its pickled content is not plain "
                        f"data ({reason}; nothing of it was run); check the file") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is not a recognised checkpoint ({reason}); check the path") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a recognised checkpoint: it holds a {type(obj).__name__}, not a dict")
    return obj


def state_dict_of(state: Any, path: str, where: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise UserError(f"{path} is not a recognised checkpoint: {where} is not a non-empty state_dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise UserError(f"{path} is not a recognised checkpoint: {where} has non-tensor entries such as {bad[:3]}")
    return dict(state)


# ---------------------------------------------------------------------------------------------------------------------
# One filter per source


@dataclass
class KeyMapping:
    """What a filter made of a file for one target model.

    Attributes:
        state: the tensors to load, under the target's key names.
        dropped: ``(label, file keys, reason)`` for file tensors deliberately not loaded.
        fresh: ``(key prefix, reason)`` for target keys deliberately left at their initialisation; the target keys
            that start with these prefixes must be exactly the ones ``state`` lacks.
    """

    state: dict[str, Tensor]
    dropped: list[tuple[str, list[str], str]] = field(default_factory=list)
    fresh: list[tuple[str, str]] = field(default_factory=list)

    def drop(self, prefix: str, reason: str, label: str | None = None) -> None:
        """Move every key of ``state`` starting with ``prefix`` to ``dropped``."""
        keys = [k for k in self.state if k.startswith(prefix)]
        if keys:
            for k in keys:
                del self.state[k]
            self.dropped.append((label or prefix_label(prefix), keys, reason))


def prefix_label(prefix: str) -> str:
    return prefix + "*" if prefix.endswith(".") else prefix


def rename(state: Mapping[str, Tensor], strip: str = "", add: str = "") -> dict[str, Tensor]:
    return {add + (k[len(strip) :] if strip and k.startswith(strip) else k): v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Loading with a report


def listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


_COUNTER = "num_batches_tracked"


def load_mapping(model: nn.Module, m: KeyMapping, what: str, *, depth_hint: Callable[[list[str], list[str]], str],
                 shape_fix: str) -> list[str]:
    """Load ``m`` into ``model`` after checking it against the filter's promise exactly.

    The model keys under ``m.fresh`` must be exactly the ones ``m.state`` lacks; anything else missing or unexpected,
    and any shape difference, is a `UserError` starting with ``what`` (``depth_hint(file keys, model keys)`` adds a
    hint such as a block-count difference; ``shape_fix`` says what to do about a shape). BatchNorm step counters the
    file lacks are left to torch, which sets them to 0 itself (files from before the counter, such as torchvision's
    original ImageNet ResNets; the counter matters only with momentum=None).

    Returns:
        The BatchNorm counters left at 0.
    """
    target = model.state_dict()
    fresh = sorted(k for k in target if any(k.startswith(p) for p, _ in m.fresh))
    counters = [k for k in target if k.endswith(_COUNTER) and k not in m.state and k not in fresh]
    unexpected = sorted(k for k in m.state if k not in target)
    missing = sorted(k for k in target if k not in m.state and k not in fresh and k not in counters)
    clash = sorted(k for k in fresh if k in m.state)
    if unexpected or missing or clash:
        parts = [
            f"unexpected {listed(unexpected)}" if unexpected else "",
            f"missing {listed(missing)}" if missing else "",
            f"meant to stay fresh but in the file: {listed(clash)}" if clash else "",
        ]
        raise UserError(f"{what}: {'; '.join(p for p in parts if p)}{depth_hint(list(m.state), list(target))}; "
                        "build the model the file was made for")
    for key, tensor in m.state.items():
        if tensor.shape != target[key].shape:
            raise UserError(f"{what}: {key} has shape {tuple(tensor.shape)} in the file but "
                            f"{tuple(target[key].shape)} in the model; {shape_fix}")
    result = model.load_state_dict(m.state, strict=False)
    # The filter's promise, checked against what torch actually did.
    if sorted(result.missing_keys) != sorted(k for k in fresh + counters if not k.endswith(_COUNTER)) or \
            result.unexpected_keys:
        raise RuntimeError(f"key mapping out of step with load_state_dict: {result}")
    return counters


def grouped(verb: str, groups: list[tuple[str, int, str]]) -> list[str]:
    """Report lines, one per reason: ``verb: label, label (N tensors): reason``."""
    by_reason: dict[str, tuple[list[str], int]] = {}
    for label, count, reason in groups:
        labels, total = by_reason.get(reason, ([], 0))
        by_reason[reason] = (labels + [label], total + count)
    return [
        f"  {verb}: {', '.join(labels)} ({total} tensor{'s' if total != 1 else ''}): {reason}"
        for reason, (labels, total) in by_reason.items()
    ]
