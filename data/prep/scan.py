"""How dataset trees are read: samples found by their stem-pattern names, and videos named in split lists.

Finding samples in stem-named datasets (UWA3D, MSRAction3D, Action Pairs, NTU): the tree under ``root`` is walked
and every file or folder whose name, minus one modality suffix (``_rgb``, ``_depth``, ``_sdepth``), matches the
dataset's stem pattern is a sample candidate:

- ``.avi .mp4 .mkv .webm .mov .m4v`` files are RGB videos, or depth videos when the name ends in ``_depth`` or the
  nearest telling folder name says so (a folder named ``depth...`` / ``..._depth_masked``; ``rgb`` or ``color``
  folders say RGB);
- ``.bin`` files are depth (MSRAction3D binary format);
- a folder holding ``.jpg/.jpeg/.png`` frames is a frame folder: depth if its name ends in ``_depth``, if the frame
  names contain "depth" (NTU ``MDepth-########.png``), if the PNGs are 16-bit greyscale, or if a folder above it says
  depth; otherwise RGB. Frame folders are not descended into.

When one sample exists in several forms the preferred one is kept: RGB video over RGB frames; depth ``.bin`` over
depth PNG folder over depth video. Two candidates of the same form (``x.avi`` and ``x.mp4``) are an error.
Hidden files and folders are ignored.

Split-file datasets (HMDB51, UCF101, Kinetics, SSv2) read their lists; a listed video may also be present under
another video extension or as a frame folder of the same stem, and names are matched case-insensitively when the
exact name is absent (UCF101's HandstandPushups / HandStandPushups). A listed video that is missing is an error
unless ``skip_missing=True`` (then they are counted and logged).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.constants import IMAGE_EXTENSIONS, MODALITIES, VIDEO_EXTENSIONS
from common.errors import UserError

log = logging.getLogger(__name__)

# Preference when a sample exists in several forms (lower wins).
_RANK_VIDEO, _RANK_FRAMES, _RANK_DEPTH_VIDEO = 0, 1, 2


@dataclass(frozen=True)
class _StemPattern:
    dataset: str  # for messages, e.g. "UWA3D Multiview II"
    text: str  # the naming as users know it, e.g. "a{AA}_s{SS}_e{EE}_v{VV}"
    regex: re.Pattern[str]  # full match on the name minus extension and modality suffix; groups are the numbers


_SUFFIXES = (("_sdepth", "depth"), ("_depth", "depth"), ("_rgb", "rgb"))


def _strip_suffix(name: str) -> tuple[str, str | None]:
    low = name.lower()
    for suffix, modality in _SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)], modality
    return name, None


def _folder_hint(parts: Sequence[str]) -> str | None:
    """Modality named by the nearest folder name that names exactly one (token-wise: "rgbd", "nturgb" say nothing)."""
    for part in reversed(parts):
        tokens = [t for t in re.split(r"[^a-z0-9]+", part.lower()) if t]
        depth = any(t.startswith("depth") or t.endswith("depth") for t in tokens)
        rgb = any(t in ("rgb", "color", "colour") for t in tokens)
        if depth != rgb:  # a name saying both ("rgb_depth") says nothing
            return "depth" if depth else "rgb"
    return None


def _first_image(folder: str) -> str | None:
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                    return entry.path
    except OSError:
        return None
    return None


def _is_16bit_grey_png(path: str) -> bool:
    # Depth maps are 16-bit single-channel PNGs, RGB frames 8-bit; the IHDR chunk sits at a fixed offset, so the
    # first 26 bytes settle it without decoding.
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return False
    return (
        len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24:26] == b"\x10\x00"
    )


def _frames_modality(first_image: str, hint: str | None) -> str:
    if "depth" in os.path.basename(first_image).lower():
        return "depth"
    if first_image.lower().endswith(".png") and _is_16bit_grey_png(first_image):
        return "depth"
    return hint or "rgb"


def _scan(root: str, regex: re.Pattern[str]) -> dict[str, dict[str, list[tuple[int, str]]]]:
    """Walks root; returns {modality: {stem: [(rank, path), ...]}} for every matching sample candidate."""
    found: dict[str, dict[str, list[tuple[int, str]]]] = {m: {} for m in MODALITIES}
    root_name = os.path.basename(os.path.normpath(root))
    seen: set[tuple[int, int]] = set()
    # Dataset trees are often assembled from symlinks, so links are followed; `seen` stops link cycles.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel = os.path.relpath(dirpath, root)
        hint = _folder_hint([root_name] + ([] if rel == os.curdir else rel.split(os.sep)))
        descend = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            base, modality = _strip_suffix(name)
            folder = os.path.join(dirpath, name)
            first = _first_image(folder) if regex.fullmatch(base) else None
            if first is None:
                descend.append(name)
                continue
            modality = modality or _frames_modality(first, hint)
            found[modality].setdefault(base, []).append((_RANK_FRAMES, folder))
        dirnames[:] = descend
        for name in filenames:
            if name.startswith("."):
                continue
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            if ext == ".bin":
                base, _ = _strip_suffix(stem)
                modality, rank = "depth", _RANK_VIDEO
            elif ext in VIDEO_EXTENSIONS:
                base, modality = _strip_suffix(stem)
                modality = modality or hint or "rgb"
                rank = _RANK_VIDEO if modality == "rgb" else _RANK_DEPTH_VIDEO
            else:
                continue
            if regex.fullmatch(base):
                found[modality].setdefault(base, []).append((rank, os.path.join(dirpath, name)))
    return found


def _stem_samples(root: str, pattern: _StemPattern, modality: str) -> list[tuple[str, tuple[int, ...]]]:
    """Returns [(path, numbers in the stem)] sorted by path, one per sample of the given modality.

    Raises:
        UserError: nothing matches, or a sample is present twice in the same form.
    """
    found = _scan(root, pattern.regex)
    if not found[modality]:
        other = "depth" if modality == "rgb" else "rgb"
        if found[other]:
            raise UserError(
                f"no {modality} {pattern.dataset} files matching {pattern.text} under {root}, but "
                f"{len(found[other])} {other} ones; pass --modality {other} or check --root"
            )
        raise UserError(f"no {pattern.dataset} files matching {pattern.text} under {root}; check --root")
    out = []
    for stem, candidates in found[modality].items():
        candidates.sort()
        best = [path for rank, path in candidates if rank == candidates[0][0]]
        if len(best) > 1:
            raise UserError(
                f"{pattern.dataset} sample {stem} is present twice ({best[0]} and {best[1]}); "
                "remove one copy or point --root at one of them"
            )
        match = pattern.regex.fullmatch(stem)
        assert match is not None  # _scan only keeps matching stems
        out.append((best[0], tuple(int(g) for g in match.groups())))
    return sorted(out)


class _Locator:
    """Finds a listed video under root: exact name, another video extension or frame folder, then case-insensitive."""

    def __init__(self, root: str):
        self.root = root
        self._listings: dict[str, dict[str, str]] = {}

    def _listing(self, folder: str) -> dict[str, str]:
        if folder not in self._listings:
            try:
                self._listings[folder] = {n.lower(): n for n in os.listdir(folder)}
            except OSError:
                self._listings[folder] = {}
        return self._listings[folder]

    def _exact(self, path: str) -> str | None:
        if os.path.exists(path):
            return path
        stem, ext = os.path.splitext(path)
        if ext.lower() in VIDEO_EXTENSIONS:
            for other in VIDEO_EXTENSIONS:
                if os.path.isfile(stem + other):
                    return stem + other
            if os.path.isdir(stem):
                return stem
        return None

    def find(self, rel: str) -> str | None:
        """Absolute path of the listed video (file or frame folder), or None when it is not on disk."""
        if os.path.isabs(rel):
            return self._exact(rel)
        parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
        found = self._exact(os.path.join(self.root, *parts))
        if found is not None:
            return found
        folder = self.root
        for i, part in enumerate(parts):
            name = self._listing(folder).get(part.lower())
            if name is None:
                return self._exact(os.path.join(folder, part)) if i == len(parts) - 1 else None
            folder = os.path.join(folder, name)
        return folder


def _report_missing(dataset: str, listed: int, missing: list[str], root: str, skip_missing: bool) -> None:
    if not missing:
        return
    if not skip_missing:
        raise UserError(
            f"{len(missing)} of {listed} {dataset} videos listed are not under {root} (first: {missing[0]}); "
            "check --root, or pass --skip-missing to leave them out"
        )
    log.warning(
        "%s: left out %d of %d listed videos missing under %s (first: %s)",
        dataset,
        len(missing),
        listed,
        root,
        missing[0],
    )


def _split_candidates(root: str, split_dir: str | None, names: Sequence[str]) -> list[str]:
    if split_dir is not None:
        if not os.path.isdir(split_dir):
            raise UserError(f"--split-dir {split_dir} does not exist; pass the folder holding the split files")
        return [split_dir]
    parent = os.path.dirname(os.path.normpath(root))
    return [root] + [os.path.join(base, n) for base in (root, parent) for n in names]


def _read_lines(path: str) -> list[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return [(i, line.strip()) for i, line in enumerate(fh, 1) if line.strip() and not line.startswith("#")]
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}); check the file") from None
