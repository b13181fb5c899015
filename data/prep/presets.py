"""Dataset presets: build a manifest (a list of `Record`) from a dataset's own file names and split files.

One builder per dataset, each ``build_X(root, split, *, modality, ...) -> list[Record]`` with ``split`` set to
"train" / "test" on every record; `build_manifest` is the single entry point (name and split validation, partition
filter) used by ``timemae manifest`` and ``timemae shards --preset``. Each builder's docstring states its
dataset's protocol (subjects, views, splits).

The trees are read by `data.prep.scan` (how samples are found, which form wins, how listed videos are
located).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from common.constants import MODALITIES
from common.errors import UserError
from data.prep.manifest import Record, read_manifest, write_manifest
from data.prep.scan import _Locator, _read_lines, _report_missing, _scan, _split_candidates, _stem_samples, _StemPattern

log = logging.getLogger(__name__)

PARTITIONS = ("train", "test", "all")

# (split name, training views, testing view): every pair of the four views trains, each of the two other views tests;
# pairs, then test views, in increasing order, which is the TIME paper's Table 3 column order (v12_v3, v12_v4, ...).
UWA3D_PAIRS: tuple[tuple[str, tuple[int, int], int], ...] = tuple(
    (f"v{a}{b}_v{test}", (a, b), test)
    for a, b in itertools.combinations((1, 2, 3, 4), 2)
    for test in (1, 2, 3, 4)
    if test not in (a, b)
)

# Spec decision (datasets.md names no list for UWA3D Activity): the first half of the 10 subjects trains, the same
# halves as MSR 3D Action Pairs. `train_subjects` overrides it.
UWA3D_ACTIVITY_TRAIN_SUBJECTS = (1, 2, 3, 4, 5)
MSR_ACTION3D_TRAIN_SUBJECTS = (1, 3, 5, 7, 9)
MSR_ACTION_PAIRS_TRAIN_SUBJECTS = (1, 2, 3, 4, 5)
NTU60_XSUB_TRAIN = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92, 93,
    94, 95, 97, 98, 100, 103,
)  # fmt: skip
NTU60_XVIEW_TRAIN_CAMERAS = (2, 3)
NTU60_MAX_SETUP = 17  # NTU-60 is setups S001-S017 of NTU-120


# ---------------------------------------------------------------------------------------------------------------------
# Finding stem-named samples


_UWA3D_MV2 = _StemPattern(
    "UWA3D Multiview II", "a{AA}_s{SS}_e{EE}_v{VV}", re.compile(r"a(\d+)_s(\d+)_e(\d+)_v(\d+)", re.I)
)
_UWA3D_ACTIVITY = _StemPattern("UWA3D Activity", "a{AA}_s{SS}_e{EE}", re.compile(r"a(\d+)_s(\d+)_e(\d+)", re.I))
_MSR_ACTION3D = _StemPattern("MSRAction3D", "a{AA}_s{SS}_e{EE}_sdepth.bin", _UWA3D_ACTIVITY.regex)
_MSR_PAIRS = _StemPattern("MSR 3D Action Pairs", "a{AA}_s{SS}_e{EE}", _UWA3D_ACTIVITY.regex)
_NTU = _StemPattern("NTU RGB+D", "S{sss}C{ccc}P{ppp}R{rrr}A{aaa}", re.compile(r"S(\d+)C(\d+)P(\d+)R(\d+)A(\d+)", re.I))


def _check_range(value: int, lo: int, hi: int, what: str, path: str, dataset: str) -> None:
    if not lo <= value <= hi:
        raise UserError(
            f"{path}: {what} {value} is outside {lo}-{hi} for {dataset}; move the file out of --root or pick the "
            "matching --preset"
        )


def _subjects(value: Iterable[int] | str, flag: str = "--train-subjects") -> frozenset[int]:
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
        if not parts or not all(p.isdigit() for p in parts):
            raise UserError(f"{flag} {value!r} is not a list of subject ids; use e.g. {flag} 1,2,3,4,5")
        return frozenset(int(p) for p in parts)
    return frozenset(int(v) for v in value)


# ---------------------------------------------------------------------------------------------------------------------
# Stem-named datasets


def build_uwa3d_mv2(root: str, split: str, *, modality: str = "rgb") -> list[Record]:
    """UWA3D Multiview Activity II, cross-view: train on two views, test on one other view.

    Args:
        root: folder holding ``a{AA}_s{SS}_e{EE}_v{VV}`` samples (any depth of sub-folders).
        split: one of the `UWA3D_PAIRS` names, e.g. "v12_v3" = train views 1 and 2, test view 3. Samples of the
            fourth view are left out.
        modality: "rgb" or "depth".

    Returns:
        Records with label = action - 1, subject, view, episode, split "train" / "test".
    """
    pairs = {name: (train, test) for name, train, test in UWA3D_PAIRS}
    split = _canonical_split("uwa3d_mv2", split, tuple(pairs))
    train_views, test_view = pairs[split]
    records = []
    for path, (action, subject, episode, view) in _stem_samples(root, _UWA3D_MV2, modality):
        _check_range(action, 1, 30, "action", path, _UWA3D_MV2.dataset)
        _check_range(view, 1, 4, "view", path, _UWA3D_MV2.dataset)
        part = "train" if view in train_views else "test" if view == test_view else None
        if part is not None:
            records.append(Record(path, action - 1, "", subject, view, episode, part, modality))
    return records


def _build_cross_subject(
    root: str, modality: str, pattern: _StemPattern, num_classes: int, num_subjects: int, train: frozenset[int]
) -> list[Record]:
    records = []
    for path, (action, subject, episode) in _stem_samples(root, pattern, modality):
        _check_range(action, 1, num_classes, "action", path, pattern.dataset)
        _check_range(subject, 1, num_subjects, "subject", path, pattern.dataset)
        part = "train" if subject in train else "test"
        records.append(Record(path, action - 1, "", subject, -1, episode, part, modality))
    return records


def build_uwa3d_activity(
    root: str, split: str = "xsub", *, modality: str = "rgb", train_subjects: Iterable[int] | str | None = None
) -> list[Record]:
    """UWA3D Activity (30 actions, 10 subjects), cross-subject halves.

    Args:
        root: folder holding ``a{AA}_s{SS}_e{EE}`` samples.
        split: "xsub".
        modality: "rgb" or "depth".
        train_subjects: subject ids that train (default `UWA3D_ACTIVITY_TRAIN_SUBJECTS`, 1-5); the rest test.
    """
    _canonical_split("uwa3d_activity", split, ("xsub",))
    train = _subjects(train_subjects) if train_subjects is not None else frozenset(UWA3D_ACTIVITY_TRAIN_SUBJECTS)
    return _build_cross_subject(root, modality, _UWA3D_ACTIVITY, 30, 10, train)


def build_msr_action3d(root: str, split: str = "xsub", *, modality: str = "depth") -> list[Record]:
    """MSRAction3D (20 actions, depth only): subjects 1,3,5,7,9 train, 2,4,6,8,10 test.

    Args:
        root: folder holding ``a{AA}_s{SS}_e{EE}_sdepth.bin`` files (or depth frame folders of the same stems).
        split: "xsub".
        modality: "depth".
    """
    _canonical_split("msr_action3d", split, ("xsub",))
    return _build_cross_subject(root, modality, _MSR_ACTION3D, 20, 10, frozenset(MSR_ACTION3D_TRAIN_SUBJECTS))


def build_msr_action_pairs(root: str, split: str = "xsub", *, modality: str = "rgb") -> list[Record]:
    """MSR 3D Action Pairs (12 actions): subjects 1-5 train, 6-10 test.

    Args:
        root: folder holding ``a{AA}_s{SS}_e{EE}`` samples.
        split: "xsub".
        modality: "rgb" or "depth".
    """
    _canonical_split("msr_action_pairs", split, ("xsub",))
    return _build_cross_subject(root, modality, _MSR_PAIRS, 12, 10, frozenset(MSR_ACTION_PAIRS_TRAIN_SUBJECTS))


def _build_ntu(root: str, split: str, modality: str, preset: str) -> list[Record]:
    split = _canonical_split(preset, split, _SPLITS[preset])
    ntu60 = preset == "ntu60"
    num_classes, max_setup = (60, NTU60_MAX_SETUP) if ntu60 else (120, 32)
    xsub = frozenset(NTU60_XSUB_TRAIN if ntu60 else NTU120_XSUB_TRAIN)
    records = []
    for path, (setup, camera, subject, replication, action) in _stem_samples(root, _NTU, modality):
        if ntu60 and setup > NTU60_MAX_SETUP:
            continue  # an NTU-120 tree also holds NTU-60: keep only its setups
        _check_range(setup, 1, max_setup, "setup", path, _NTU.dataset)
        _check_range(action, 1, num_classes, "action", path, _NTU.dataset)
        _check_range(camera, 1, 3, "camera", path, _NTU.dataset)
        if split == "xsub":
            part = "train" if subject in xsub else "test"
        elif split == "xview":
            part = "train" if camera in NTU60_XVIEW_TRAIN_CAMERAS else "test"
        else:  # xset
            part = "train" if setup % 2 == 0 else "test"
        records.append(Record(path, action - 1, "", subject, camera, replication, part, modality))
    if not records:
        raise UserError(f"no NTU-60 samples (setups S001-S017) under {root}; check --root or use --preset ntu120")
    return records


def build_ntu60(root: str, split: str, *, modality: str = "rgb") -> list[Record]:
    """NTU RGB+D 60: x-sub (`NTU60_XSUB_TRAIN` subjects train) or x-view (cameras 2, 3 train; camera 1 tests).

    Args:
        root: folder holding ``S{sss}C{ccc}P{ppp}R{rrr}A{aaa}`` samples: RGB ``<stem>_rgb.avi``, masked depth
            ``<stem>/MDepth-########.png``. Setups above 17 (NTU-120 only) are left out.
        split: "xsub" or "xview".
        modality: "rgb" or "depth".

    Returns:
        Records with subject = performer P, view = camera C, episode = replication R.
    """
    return _build_ntu(root, split, modality, "ntu60")


def build_ntu120(root: str, split: str, *, modality: str = "rgb") -> list[Record]:
    """NTU RGB+D 120: x-sub (`NTU120_XSUB_TRAIN` subjects train) or x-set (even setup ids train, odd test).

    Args:
        root: as `build_ntu60`, setups 1-32.
        split: "xsub" or "xset".
        modality: "rgb" or "depth".
    """
    return _build_ntu(root, split, modality, "ntu120")


# ---------------------------------------------------------------------------------------------------------------------
# Split-file datasets


def build_hmdb51(
    root: str, split: str, *, modality: str = "rgb", split_dir: str | None = None, skip_missing: bool = False
) -> list[Record]:
    """HMDB51 with the official three splits.

    Args:
        root: folder holding ``{class}/{video}.avi``.
        split: "split1", "split2" or "split3".
        modality: "rgb".
        split_dir: folder holding ``{class}_test_split{1,2,3}.txt`` (lines ``video.avi k``: k = 1 train, 2 test,
            0 unused); default: root, or a ``testTrainMulti_7030_splits`` / ``splits`` folder in root or beside it.
        skip_missing: leave out listed videos that are not on disk instead of raising.

    Returns:
        Records with label = index of the class in sorted class names, class_name set.
    """
    split = _canonical_split("hmdb51", split, _SPLITS["hmdb51"])
    number = split[-1]
    pattern = re.compile(rf"(.+)_test_split{number}\.txt")
    files: dict[str, str] = {}
    for folder in _split_candidates(root, split_dir, ("testTrainMulti_7030_splits", "splits")):
        if os.path.isdir(folder):
            files = {m.group(1): os.path.join(folder, n) for n in os.listdir(folder) if (m := pattern.fullmatch(n))}
            if files:
                break
    if not files:
        where = split_dir if split_dir is not None else f"{root} or its testTrainMulti_7030_splits folder"
        raise UserError(f"no HMDB51 split files *_test_split{number}.txt in {where}; pass --split-dir")
    locator = _Locator(root)
    records, missing, listed = [], [], 0
    for label, name in enumerate(sorted(files)):
        for line_no, line in _read_lines(files[name]):
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise UserError(
                    f"{files[name]} line {line_no}: expected 'video.avi k' with k 0, 1 or 2, got {line[:80]!r}; "
                    "fix the split file"
                )
            if parts[1] == "0":
                continue
            listed += 1
            rel = f"{name}/{parts[0]}"
            path = locator.find(rel)
            if path is None:
                missing.append(rel)
                continue
            records.append(Record(path, label, name, split="train" if parts[1] == "1" else "test", modality=modality))
    _report_missing("HMDB51", listed, missing, root, skip_missing)
    return records


_UCF_GROUP_CLIP = re.compile(r"v_.+_g(\d+)_c(\d+)", re.I)


def build_ucf101(
    root: str, split: str, *, modality: str = "rgb", split_dir: str | None = None, skip_missing: bool = False
) -> list[Record]:
    """UCF101 with the official three splits.

    Args:
        root: folder holding ``{Class}/v_{Class}_gGG_cCC.avi``.
        split: "split1", "split2" or "split3".
        modality: "rgb".
        split_dir: folder holding ``classInd.txt`` (``index name``, 1-based), ``trainlist0N.txt`` (``path label``)
            and ``testlist0N.txt`` (``path``); default: root, or a ``ucfTrainTestlist`` / ``splits`` folder in root
            or beside it.
        skip_missing: leave out listed videos that are not on disk instead of raising.

    Returns:
        Records with label = classInd index - 1, class_name, subject = group GG, episode = clip CC.
    """
    split = _canonical_split("ucf101", split, _SPLITS["ucf101"])
    number = split[-1]
    candidates = _split_candidates(root, split_dir, ("ucfTrainTestlist", "splits"))
    folder = next((f for f in candidates if os.path.isfile(os.path.join(f, "classInd.txt"))), None)
    if folder is None:
        where = split_dir if split_dir is not None else f"{root} or its ucfTrainTestlist folder"
        raise UserError(f"no UCF101 classInd.txt in {where}; pass --split-dir")
    class_file = os.path.join(folder, "classInd.txt")
    names: list[str] = []
    for line_no, line in _read_lines(class_file):
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(names) + 1):
            raise UserError(
                f"{class_file} line {line_no}: expected '{len(names) + 1} ClassName' (1-based, in order), got "
                f"{line[:80]!r}; fix the file"
            )
        names.append(parts[1])
    index = {n.lower(): i for i, n in enumerate(names)}
    locator = _Locator(root)
    records, missing, listed = [], [], 0
    for part, list_name in (("train", f"trainlist0{number}.txt"), ("test", f"testlist0{number}.txt")):
        list_file = os.path.join(folder, list_name)
        if not os.path.isfile(list_file):
            raise UserError(f"UCF101 list {list_file} does not exist; pass --split-dir with the official split files")
        for line_no, line in _read_lines(list_file):
            parts = line.split()
            if len(parts) not in (1, 2) or (len(parts) == 2 and not parts[1].isdigit()):
                raise UserError(f"{list_file} line {line_no}: expected 'Class/video.avi [label]', got {line[:80]!r}")
            rel = parts[0].replace("\\", "/")
            class_dir = rel.split("/")[0] if "/" in rel else ""
            label = index.get(class_dir.lower())
            if label is None:
                raise UserError(
                    f"{list_file} line {line_no}: class folder {class_dir!r} is not in {class_file}; check the files"
                )
            if len(parts) == 2 and int(parts[1]) - 1 != label:
                raise UserError(
                    f"{list_file} line {line_no}: label {parts[1]} disagrees with classInd.txt ({label + 1} for "
                    f"{names[label]}); use the official split files"
                )
            listed += 1
            path = locator.find(rel)
            if path is None:
                missing.append(rel)
                continue
            m = _UCF_GROUP_CLIP.search(os.path.basename(rel))
            subject, episode = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
            records.append(Record(path, label, names[label], subject, -1, episode, part, modality))
    _report_missing("UCF101", listed, missing, root, skip_missing)
    return records


def _split_path_label(line: str, list_file: str, line_no: int) -> tuple[str, int]:
    for sep in (None, ","):
        parts = line.rsplit(sep, 1)
        if len(parts) == 2 and parts[1].strip().isdigit() and parts[0].strip():
            return parts[0].strip(), int(parts[1])
    raise UserError(
        f"{list_file} line {line_no}: expected 'path label' with a 0-based integer label, got {line[:80]!r}; "
        "fix the list"
    )


def _build_video_list(
    root: str, modality: str, dataset: str, train_list: str | None, val_list: str | None, skip_missing: bool
) -> list[Record]:
    if train_list is None and val_list is None:
        raise UserError(f"{dataset} needs its list files; pass --train-list and/or --val-list ('path label' lines)")
    locator = _Locator(root)
    records, missing, listed = [], [], 0
    for part, list_file in (("train", train_list), ("test", val_list)):
        if list_file is None:
            continue
        if not os.path.isfile(list_file):
            flag = "--train-list" if part == "train" else "--val-list"
            raise UserError(f"{dataset} list {list_file} does not exist; check {flag}")
        for line_no, line in _read_lines(list_file):
            rel, label = _split_path_label(line, list_file, line_no)
            path = locator.find(rel)
            if path is None:
                # VideoMAE-style frame lists carry 'path num_frames label'.
                head = rel.rsplit(None, 1)
                if len(head) == 2 and head[1].isdigit():
                    path = locator.find(head[0])
                    rel = head[0] if path is not None else rel
            listed += 1
            if path is None:
                missing.append(rel)
                continue
            records.append(Record(path, label, split=part, modality=modality))
    if not listed:
        raise UserError(f"the {dataset} lists hold no videos; check --train-list / --val-list")
    _report_missing(dataset, listed, missing, root, skip_missing)
    return records


@dataclass(frozen=True)
class _ListBuilder:
    """The builder (`Preset.builder`) of a dataset that comes as ``path label`` train / val lists.

    Attributes:
        preset: its `PRESETS` name.
        dataset: its name in messages.
    """

    preset: str
    dataset: str

    def __call__(
        self,
        root: str,
        split: str = "official",
        *,
        modality: str = "rgb",
        train_list: str | None = None,
        val_list: str | None = None,
        skip_missing: bool = False,
    ) -> list[Record]:
        """The records of both lists; the val list is the "test" partition.

        Args:
            root: folder the list paths are relative to (absolute list paths are used as they are).
            split: "official".
            modality: "rgb".
            train_list: list file of the train partition (lines ``path label``, whitespace or comma separated, label
                0-based; ``path num_frames label`` also accepted).
            val_list: list file of the test partition.
            skip_missing: leave out listed videos that are not on disk (Kinetics always has some) instead of raising.
        """
        _canonical_split(self.preset, split, ("official",))
        return _build_video_list(root, modality, self.dataset, train_list, val_list, skip_missing)


build_kinetics = _ListBuilder("kinetics", "Kinetics")  # Kinetics 400 / 600 / 700
build_ssv2 = _ListBuilder("ssv2", "SSv2")  # Something-Something V2


def build_generic(root: str, split: str = "csv", *, modality: str = "rgb") -> list[Record]:
    """An existing manifest CSV (`data.prep.manifest.read_manifest`); partitions come from its split column.

    Args:
        root: the CSV file.
        split: "csv".
        modality: ignored: every row carries its own modality.
    """
    _canonical_split("generic", split, ("csv",))
    if os.path.isdir(root):
        raise UserError(f"--root {root} is a folder; for --preset generic pass the manifest CSV file")
    return read_manifest(root)


# ---------------------------------------------------------------------------------------------------------------------
# Registry and entry point


@dataclass(frozen=True)
class Preset:
    """One dataset preset.

    Attributes:
        name: registry key.
        description: one line for ``timemae manifest --list``.
        builder: ``builder(root, split, *, modality, **options) -> list[Record]``.
        splits: valid split names.
        modalities: modalities the dataset has.
        options: extra keyword arguments the builder takes.
        root_is_file: root is a file (generic) rather than a folder.
    """

    name: str
    description: str
    builder: Callable[..., list[Record]]
    splits: tuple[str, ...]
    modalities: tuple[str, ...]
    options: tuple[str, ...] = ()
    root_is_file: bool = False


_SPLITS: dict[str, tuple[str, ...]] = {
    "hmdb51": ("split1", "split2", "split3"),
    "ucf101": ("split1", "split2", "split3"),
    "ntu60": ("xsub", "xview"),
    "ntu120": ("xsub", "xset"),
}
_BOTH = ("rgb", "depth")
_LISTS = ("train_list", "val_list", "skip_missing")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("uwa3d_mv2", "UWA3D Multiview Activity II, 12 cross-view pairs (TIME Table 3)", build_uwa3d_mv2,
               tuple(name for name, _, _ in UWA3D_PAIRS), _BOTH),
        Preset("uwa3d_activity", "UWA3D Activity, cross-subject halves (subjects 1-5 train)", build_uwa3d_activity,
               ("xsub",), _BOTH, ("train_subjects",)),
        Preset("msr_action3d", "MSRAction3D depth, odd subjects train", build_msr_action3d, ("xsub",), ("depth",)),
        Preset("msr_action_pairs", "MSR 3D Action Pairs, subjects 1-5 train", build_msr_action_pairs, ("xsub",),
               _BOTH),
        Preset("hmdb51", "HMDB51, official splits 1-3", build_hmdb51, _SPLITS["hmdb51"], ("rgb",),
               ("split_dir", "skip_missing")),
        Preset("ucf101", "UCF101, official splits 1-3", build_ucf101, _SPLITS["ucf101"], ("rgb",),
               ("split_dir", "skip_missing")),
        Preset("ntu60", "NTU RGB+D 60, cross-subject / cross-view", build_ntu60, _SPLITS["ntu60"], _BOTH),
        Preset("ntu120", "NTU RGB+D 120, cross-subject / cross-setup", build_ntu120, _SPLITS["ntu120"], _BOTH),
        Preset("kinetics", "Kinetics from 'path label' train/val lists", build_kinetics, ("official",), ("rgb",),
               _LISTS),
        Preset("ssv2", "Something-Something V2 from 'path label' train/val lists", build_ssv2, ("official",),
               ("rgb",), _LISTS),
        Preset("generic", "an existing manifest CSV (--root is the file); partitions from its split column",
               build_generic, ("csv",), _BOTH, root_is_file=True),
    )
}  # fmt: skip


def _preset(name: str) -> Preset:
    key = str(name).strip().lower().replace("-", "_")
    if key not in PRESETS:
        raise UserError(f"unknown preset {name!r}; use one of: {', '.join(PRESETS)}")
    return PRESETS[key]


def _canonical_split(preset: str, split: str | None, valid: Sequence[str]) -> str:
    """Matches split against the valid names ignoring case, '-' and '_' ("x-sub" = "xsub"); returns the valid name."""

    def norm(text: str) -> str:
        return re.sub(r"[-_\s]", "", text.lower())

    if split is None:
        if len(valid) == 1:
            return valid[0]
        raise UserError(f"preset {preset} needs --split; use one of: {', '.join(valid)}")
    for name in valid:
        if norm(name) == norm(split):
            return name
    raise UserError(f"unknown split {split!r} for preset {preset}; use one of: {', '.join(valid)}")


_NAMING: dict[str, _StemPattern] = {
    "uwa3d_mv2": _UWA3D_MV2, "uwa3d_activity": _UWA3D_ACTIVITY, "msr_action3d": _MSR_ACTION3D,
    "msr_action_pairs": _MSR_PAIRS, "ntu60": _NTU, "ntu120": _NTU,
}  # fmt: skip


def count_named(preset: str, root: str) -> tuple[int, int, str] | None:
    """For a stem-named preset: (samples of any modality named like the dataset's, files under ``root``, the naming
    as users know it, e.g. ``a{AA}_s{SS}_e{EE}_v{VV}``), so a message can say how much of a tree matched; None for
    presets that read list files.
    """
    pattern = _NAMING.get(_preset(preset).name)
    if pattern is None:
        return None
    matched = sum(len(stems) for stems in _scan(root, pattern.regex).values())
    total = sum(sum(not f.startswith(".") for f in files) for _, _, files in os.walk(root, followlinks=True))
    return matched, total, pattern.text


def list_splits(preset: str) -> list[str]:
    """Valid split names of a preset (UWA3D pairs in TIME Table 3 order).

    Raises:
        UserError: unknown preset.
    """
    return list(_preset(preset).splits)


def build_manifest(
    preset: str,
    root: str | os.PathLike,
    split: str | None,
    *,
    modality: str | None = None,
    partition: str | None = None,
    **kw: object,
) -> list[Record]:
    """Builds the records of one dataset split from the raw dataset.

    Args:
        preset: a `PRESETS` name.
        root: the raw dataset folder (generic: the manifest CSV).
        split: one of `list_splits(preset)`; None is accepted when the preset has a single split.
        modality: "rgb" or "depth"; None (default) = the preset's first: depth for msr_action3d, rgb for the rest.
            Generic ignores it: its rows carry their own.
        partition: "train", "test", or None / "all" for both.
        **kw: preset options (`Preset.options`): split_dir, train_list, val_list, train_subjects, skip_missing.

    Returns:
        Records sorted by path, each with split "train" or "test" (generic: as in the CSV).

    Raises:
        UserError: unknown preset, split, modality, partition or option; missing root; no matching files; an empty
            requested partition.
    """
    p = _preset(preset)
    split = _canonical_split(p.name, split, p.splits)
    modality = p.modalities[0] if modality is None else modality.strip().lower()
    if modality not in MODALITIES:
        raise UserError(f"unknown modality {modality!r}; use rgb or depth")
    if modality not in p.modalities and not p.root_is_file:
        only = p.modalities[0]
        raise UserError(f"preset {p.name} has {only} videos only; pass --modality {only}")
    part = "all" if partition is None else partition.strip().lower()
    if part not in PARTITIONS:
        raise UserError(f"unknown partition {partition!r}; use one of: {', '.join(PARTITIONS)}")
    for key in kw:
        if key not in p.options:
            users = [q.name for q in PRESETS.values() if key in q.options]
            raise UserError(
                f"--{key.replace('_', '-')} does not apply to preset {p.name}; it is for {', '.join(users) or 'none'}"
            )
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        what = "manifest CSV" if p.root_is_file else "dataset folder"
        raise UserError(f"--root {root} does not exist; pass the {what}")
    if not p.root_is_file and not os.path.isdir(root):
        raise UserError(f"--root {root} is a file; pass the folder that holds the dataset")

    records = p.builder(root, split, modality=modality, **kw)
    produced = [q for q in ("train", "test") if any(r.split == q for r in records)]
    if p.name in ("kinetics", "ssv2"):
        expected = [q for q, key in (("train", "train_list"), ("test", "val_list")) if kw.get(key) is not None]
    elif p.root_is_file:
        expected = []  # a generic CSV may have no split column at all
    else:
        expected = ["train", "test"]
    wanted = expected if part == "all" else [part]
    for q in wanted:
        if q not in produced:
            if p.name in ("kinetics", "ssv2") and q not in expected:
                flag = "--train-list" if q == "train" else "--val-list"
                raise UserError(f"preset {p.name} has a {q} partition only when {flag} is given; pass it")
            raise UserError(
                f"preset {p.name} split {split}: no {q} samples among the {len(records)} found under {root}; "
                "check --root (some files may be missing)"
            )
    if part != "all":
        records = [r for r in records if r.split == part]
    return sorted(records, key=lambda r: r.path)


# ---------------------------------------------------------------------------------------------------------------------
# Command line: timemae manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``timemae manifest``."""
    parser.add_argument("--preset", help=f"dataset preset (required): {', '.join(PRESETS)}")
    parser.add_argument("--root", help="raw dataset folder (required; for --preset generic: the manifest CSV)")
    parser.add_argument("--split", help="protocol split, see --list (optional when the preset has only one)")
    parser.add_argument("--modality", help="rgb or depth (default: rgb, or depth for depth-only presets)")
    parser.add_argument("--partition", default="all", help="train, test or all (default all)")
    parser.add_argument("--out", help="manifest CSV to write (required)")
    parser.add_argument("--split-dir", help="hmdb51 / ucf101: folder of the official split files")
    parser.add_argument("--train-list", help="kinetics / ssv2: train list ('path label' lines)")
    parser.add_argument("--val-list", help="kinetics / ssv2: val list, written as the test partition")
    parser.add_argument("--train-subjects", help="uwa3d_activity: training subject ids, e.g. 1,2,3,4,5")
    missing_help = "hmdb51 / ucf101 / kinetics / ssv2: leave out listed videos missing on disk instead of failing"
    parser.add_argument("--skip-missing", action="store_true", help=missing_help)
    parser.add_argument("--list", action="store_true", help="print the presets and their splits, then exit")


def run(args: argparse.Namespace) -> int:
    """Runs ``timemae manifest``: builds the records, prints counts per partition, writes the CSV."""
    if args.list:
        for p in PRESETS.values():
            print(f"{p.name:<18}{p.description}\n{'':<18}splits: {', '.join(p.splits)}")
        return 0
    for flag in ("preset", "root", "out"):
        if not getattr(args, flag):
            raise UserError(f"--{flag} is required; see `timemae manifest --help` (and --list for presets)")
    kw: dict[str, object] = {}
    for key in ("split_dir", "train_list", "val_list", "train_subjects"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.skip_missing:
        kw["skip_missing"] = True
    records = build_manifest(args.preset, args.root, args.split, modality=args.modality, partition=args.partition, **kw)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.split or "(none)"] = counts.get(r.split or "(none)", 0) + 1
    name = _preset(args.preset).name
    split = _canonical_split(name, args.split, PRESETS[name].splits)
    modalities = "+".join(sorted({r.modality for r in records}))
    print(f"{name} {split} ({modalities}): {len(records)} videos, {len({r.label for r in records})} classes")
    for key in sorted(counts, key=lambda k: (k != "train", k)):
        print(f"  {key}: {counts[key]}")
    write_manifest(records, args.out)
    print(f"wrote {args.out}")
    return 0


CLI = {"manifest": (add_arguments, run)}
