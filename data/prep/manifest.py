"""Manifest CSV: one row per video, the single input format of the shard writer and the checker.

Format (UTF-8, comma-separated, header required; column names are case-insensitive, order free)::

    path,label[,class_name,subject,view,episode,split,modality]

- ``path``: a video file, a frame folder or a depth file; absolute, or relative to the manifest file's folder
  (resolved when read, so a manifest can travel with its data).
- ``label``: either every label is a 0-based integer class index, or every label is a class name. Class names are
  mapped to indices in sorted order (sorted unique names -> 0..K-1) and kept in ``class_name``. Mixing the two is an
  error, as is a decimal number.
- ``subject``, ``view``, ``episode``: whole numbers; empty means unknown (-1).
- ``split``: free text, stored lower-case ("train", "test", "val", or empty).
- ``modality``: "rgb" (default when empty) or "depth".

Blank lines and lines starting with ``#`` are skipped; unknown extra columns are ignored (they may carry the user's
own metadata). Files are not opened here: `timemae check` decodes every row.
Every problem raises `common.errors.UserError` with one line naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from common.constants import MAX_CLASSES, MODALITIES
from common.errors import UserError
from common.files import atomic_write_text

COLUMNS = ("path", "label", "class_name", "subject", "view", "episode", "split", "modality")
_INT_COLUMNS = ("subject", "view", "episode")
_HEADER_HINT = "expected header path,label[,class_name,subject,view,episode,split,modality]"


@dataclass(frozen=True)
class Record:
    """One video of a dataset.

    Attributes:
        path: absolute path, or relative to the manifest file's folder (resolved on read).
        label: 0-based class index.
        class_name: human-readable class name, "" when unknown.
        subject: performer id, -1 when unknown.
        view: camera / viewpoint id, -1 when unknown.
        episode: repetition id, -1 when unknown.
        split: "train" / "test" / "val" / "" (free text).
        modality: "rgb" or "depth".
        line: the manifest line the record was read from (error messages name it); 0 when it was not read from a
            file. Not written by `write_manifest`, and not part of equality.
    """

    path: str
    label: int
    class_name: str = ""
    subject: int = -1
    view: int = -1
    episode: int = -1
    split: str = ""
    modality: str = "rgb"
    line: int = field(default=0, compare=False)


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_rows(path: str) -> list[tuple[int, list[str]]]:
    """Returns (line number, cells) for every non-blank, non-comment row, the header included."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = []
            for cells in reader:
                if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                    continue
                rows.append((reader.line_num, cells))
    except UnicodeDecodeError:
        raise UserError(f"manifest {path} is not UTF-8 text; save it as a UTF-8 CSV") from None
    except csv.Error as err:
        raise UserError(f"manifest {path} is not a valid CSV ({err}); quote fields that contain commas") from None
    except OSError as err:
        raise UserError(f"cannot read manifest {path} ({err.strerror}); check the path and its permissions") from None
    return rows


def _header(path: str, cells: list[str]) -> list[str]:
    names = [c.strip().lower() for c in cells]
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise UserError(f"manifest {path} has the column {name!r} twice; keep one")
        seen.add(name)
    for required in ("path", "label"):
        if required not in seen:
            # A tab- or semicolon-separated file reads as one column; say so rather than only "no label column".
            if len(cells) == 1 and any(sep in cells[0] for sep in ("\t", ";")):
                raise UserError(f"manifest {path} is not comma-separated; use commas ({_HEADER_HINT})")
            raise UserError(f"manifest {path} has no {required!r} column; {_HEADER_HINT}")
    return names


def read_manifest(path: str | os.PathLike) -> list[Record]:
    """Reads a manifest CSV (format in the module docstring).

    Args:
        path: the CSV file.

    Returns:
        One `Record` per row, in file order, with absolute normalised paths.

    Raises:
        UserError: missing / empty / unreadable file, missing or duplicate columns, a malformed row.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"manifest {path} does not exist; check the path, or build one with `timemae manifest`")
    if os.path.isdir(path):
        raise UserError(f"manifest {path} is a folder; pass the CSV file itself")
    rows = _read_rows(path)
    if not rows:
        raise UserError(f"manifest {path} is empty; {_HEADER_HINT} and one row per video")
    names = _header(path, rows[0][1])
    if len(rows) == 1:
        raise UserError(f"manifest {path} has a header but no rows; add one row per video")
    base = os.path.dirname(os.path.abspath(path))

    parsed: list[tuple[int, dict[str, str]]] = []
    for line, cells in rows[1:]:
        if len(cells) > len(names) and not any(c.strip() for c in cells[len(names) :]):
            cells = cells[: len(names)]  # trailing commas
        if len(cells) != len(names):
            raise UserError(
                f"manifest {path} line {line} has {len(cells)} fields but the header has {len(names)}; "
                "fix the row (quote paths that contain commas)"
            )
        parsed.append((line, {n: c.strip() for n, c in zip(names, cells, strict=True) if n}))

    labels = _resolve_labels(path, parsed)
    records = []
    for (line, row), (label, class_name) in zip(parsed, labels, strict=True):
        where = f"manifest {path} line {line}"
        raw_path = row["path"]
        if not raw_path:
            raise UserError(f"{where} has an empty path; give the video's path")
        full = os.path.expanduser(raw_path)
        if not os.path.isabs(full):
            full = os.path.join(base, full)
        ints = {}
        for col in _INT_COLUMNS:
            text = row.get(col, "")
            value = -1 if text == "" else _parse_int(text)
            if value is None:
                raise UserError(f"{where}: {col} {text!r} is not an integer; use a whole number or leave it empty")
            ints[col] = value
        modality = row.get("modality", "").lower() or "rgb"
        if modality not in MODALITIES:
            raise UserError(f"{where}: modality {row['modality']!r} is unknown; use rgb or depth")
        records.append(
            Record(
                path=os.path.normpath(full),
                label=label,
                class_name=class_name,
                split=row.get("split", "").lower(),
                modality=modality,
                line=line,
                **ints,
            )
        )
    return records


def _resolve_labels(path: str, parsed: list[tuple[int, dict[str, str]]]) -> list[tuple[int, str]]:
    """Turns the label column into (index, class name) pairs: all integers, or all class names."""
    texts = [row["label"] for _, row in parsed]
    for (line, _), text in zip(parsed, texts, strict=True):
        if text == "":
            raise UserError(f"manifest {path} line {line} has an empty label; give a class index or class name")
        if _parse_int(text) is None and _is_number(text):
            raise UserError(f"manifest {path} line {line}: label {text!r} is not a whole number; use 0-based indices")
    numeric = [_parse_int(t) is not None for t in texts]
    if all(numeric):
        out = []
        names: dict[int, tuple[str, int]] = {}
        for (line, row), text in zip(parsed, texts, strict=True):
            label = int(text)
            if label < 0:
                raise UserError(f"manifest {path} line {line}: label {label} is negative; use 0-based class indices")
            if label >= MAX_CLASSES:
                raise UserError(f"manifest {path} line {line}: label {label} is not a class index (at most "
                                f"{MAX_CLASSES - 1}); number the classes 0..K-1, or give class names as labels")
            name = row.get("class_name", "")
            if name:
                first, first_line = names.setdefault(label, (name, line))
                if first != name:
                    raise UserError(
                        f"manifest {path} line {line}: label {label} is named {name!r} here but {first!r} on line "
                        f"{first_line}; use one class_name per label"
                    )
            out.append((label, name))
        return out
    if any(numeric):
        line = parsed[numeric.index(True)][0]
        raise UserError(
            f"manifest {path} mixes integer labels (line {line}) and class names; use indices or names, not both"
        )
    # Class names: sorted order makes the mapping independent of row order, so train and test rows of one file agree.
    index = {name: i for i, name in enumerate(sorted(set(texts)))}
    out = []
    for (line, row), text in zip(parsed, texts, strict=True):
        given = row.get("class_name", "")
        if given and given != text:
            raise UserError(
                f"manifest {path} line {line}: label {text!r} and class_name {given!r} disagree; "
                "leave class_name empty when labels are names"
            )
        out.append((index[text], text))
    return out


def write_manifest(records: Iterable[Record], path: str | os.PathLike) -> None:
    """Writes records as a manifest CSV with header path,label,class_name,subject,view,episode,split,modality.

    Paths are written as given (presets give absolute ones). The file is written to a temporary name first and
    renamed, so a failed run never leaves half a manifest behind.

    Args:
        records: the rows.
        path: the CSV file to create or replace; its folder is created if needed.

    Raises:
        UserError: no records, a record with a bad label or modality, or an unwritable path.
    """
    path = os.fspath(path)
    records = list(records)
    if not records:
        raise UserError(f"no records to write to {path}; check --root and --split")
    for rec in records:
        if isinstance(rec.label, bool) or not isinstance(rec.label, int) or rec.label < 0:
            raise UserError(f"record {rec.path} has label {rec.label!r}; labels are 0-based integers")
        if rec.modality not in MODALITIES:
            raise UserError(f"record {rec.path} has modality {rec.modality!r}; use rgb or depth")
    if os.path.isdir(path):
        raise UserError(f"manifest path {path} is a folder; pass a file name such as {os.path.join(path, 'm.csv')}")
    folder = os.path.dirname(os.path.abspath(path))
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    for r in records:
        writer.writerow([r.path, r.label, r.class_name, r.subject, r.view, r.episode, r.split, r.modality])
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write_text(path, text.getvalue())
    except OSError as err:
        raise UserError(f"cannot write manifest {path} ({err.strerror}); choose another output path") from None


def filter_split(records: Iterable[Record], split: str | None) -> list[Record]:
    """Records whose ``split`` equals ``split`` (case-insensitive); None or "all" keeps every record.

    Raises:
        UserError: no record has that split (the message lists the splits present).
    """
    records = list(records)
    if split is None or split.strip().lower() == "all":
        return records
    want = split.strip().lower()
    out = [r for r in records if r.split == want]
    if not out:
        present = ", ".join(sorted({r.split or "(empty)" for r in records})) or "none"
        raise UserError(f"no records with split {split!r}; the manifest has splits: {present}; pass one of them")
    return out


def num_classes(records: Iterable[Record]) -> int:
    """Number of classes: the largest label + 1 (a test partition may lack some classes; the index range does not).

    Raises:
        UserError: no records.
    """
    labels = [r.label for r in records]
    if not labels:
        raise UserError("no records, so no classes; check the manifest and its split column")
    return max(labels) + 1


def class_names(records: Iterable[Record]) -> list[str]:
    """Class names indexed by label ("" where no record names the class); length `num_classes(records)`."""
    records = list(records)
    names = [""] * num_classes(records)
    for r in records:
        if r.class_name and not names[r.label]:
            names[r.label] = r.class_name
    return names
