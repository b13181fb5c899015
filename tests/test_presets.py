"""Dataset presets on fake trees with each dataset's real naming: partitions, counts, labels, and clear errors."""

import pathlib
import struct
import subprocess
import sys

import pytest

from data.errors import UserError
from data.manifest import read_manifest
from data.presets import (
    NTU60_XSUB_TRAIN,
    NTU120_XSUB_TRAIN,
    PRESETS,
    UWA3D_PAIRS,
    build_manifest,
    list_splits,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _touch(path: pathlib.Path, data: bytes = b"") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _png_header(bit_depth: int, color_type: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 4, 4, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def _error(fn, *args, **kw) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _by_split(records):
    return {p: [r for r in records if r.split == p] for p in ("train", "test")}


# ---------------------------------------------------------------------------------------------------------------------
# UWA3D Multiview Activity II

UWA_ACTIONS, UWA_SUBJECTS = (1, 7, 30), (1, 2)


@pytest.fixture(scope="module")
def uwa3d_root(tmp_path_factory):
    """RGB videos in rgb/, depth as 16-bit PNG folders in depth/, 3 actions x 2 subjects x 1 episode x 4 views."""
    root = tmp_path_factory.mktemp("raw") / "UWA3D_MV2"
    for a in UWA_ACTIONS:
        for s in UWA_SUBJECTS:
            for v in (1, 2, 3, 4):
                stem = f"a{a:02d}_s{s:02d}_e01_v{v:02d}"
                _touch(root / "rgb" / f"{stem}.avi")
                _touch(root / "depth" / stem / "000001.png", _png_header(16, 0))
    return root


def test_uwa3d_pairs_follow_table3_order():
    expected = [((1, 2), 3), ((1, 2), 4), ((1, 3), 2), ((1, 3), 4), ((1, 4), 2), ((1, 4), 3),
                ((2, 3), 1), ((2, 3), 4), ((2, 4), 1), ((2, 4), 3), ((3, 4), 1), ((3, 4), 2)]  # fmt: skip
    assert [(train, test) for _, train, test in UWA3D_PAIRS] == expected
    assert list_splits("uwa3d_mv2") == [name for name, _, _ in UWA3D_PAIRS]
    assert list_splits("uwa3d_mv2")[0] == "v12_v3"


@pytest.mark.parametrize("modality", ["rgb", "depth"])
@pytest.mark.parametrize(("name", "train_views", "test_view"), UWA3D_PAIRS)
def test_uwa3d_every_pair(uwa3d_root, name, train_views, test_view, modality):
    recs = build_manifest("uwa3d_mv2", uwa3d_root, name, modality=modality)
    parts = _by_split(recs)
    per_view = len(UWA_ACTIONS) * len(UWA_SUBJECTS)
    assert {r.view for r in parts["train"]} == set(train_views)
    assert {r.view for r in parts["test"]} == {test_view}
    assert len(parts["train"]) == 2 * per_view and len(parts["test"]) == per_view
    assert not {r.path for r in parts["train"]} & {r.path for r in parts["test"]}
    assert {r.modality for r in recs} == {modality}
    assert {r.label for r in recs} == {a - 1 for a in UWA_ACTIONS}
    assert all(("depth" if modality == "depth" else "rgb") in r.path for r in recs)
    only_test = build_manifest("uwa3d_mv2", uwa3d_root, name, modality=modality, partition="test")
    assert only_test == parts["test"]


def test_uwa3d_record_fields(uwa3d_root):
    recs = build_manifest("uwa3d_mv2", uwa3d_root, "V34-V1", partition="test")  # names match loosely
    rec = next(r for r in recs if r.path.endswith("a07_s02_e01_v01.avi"))
    assert (rec.label, rec.subject, rec.view, rec.episode, rec.split, rec.modality) == (6, 2, 1, 1, "test", "rgb")


def test_uwa3d_errors(uwa3d_root, tmp_path):
    msg = _error(build_manifest, "uwa3d_mv2", uwa3d_root, "v12_v2")
    assert "unknown split 'v12_v2'" in msg and "v12_v3" in msg and "v34_v2" in msg
    empty = tmp_path / "UWA3D"
    _touch(empty / "readme.txt")
    msg = _error(build_manifest, "uwa3d_mv2", empty, "v12_v3")
    assert msg == f"no UWA3D Multiview II files matching a{{AA}}_s{{SS}}_e{{EE}}_v{{VV}} under {empty}; check --root"
    _touch(empty / "a01_s01_e01_v01.avi")
    _touch(empty / "a01_s01_e01_v02.avi")
    msg = _error(build_manifest, "uwa3d_mv2", empty, "v12_v3")
    assert "no test samples" in msg
    assert "pass --modality rgb" in _error(build_manifest, "uwa3d_mv2", empty, "v12_v3", modality="depth")
    _touch(empty / "a31_s01_e01_v03.avi")
    assert "action 31 is outside 1-30" in _error(build_manifest, "uwa3d_mv2", empty, "v12_v3")


# ---------------------------------------------------------------------------------------------------------------------
# File discovery rules


def test_discovery_forms_and_preferences(tmp_path):
    root = tmp_path / "pairs"
    _touch(root / "a01_s01_e01_rgb.avi")  # RGB video, suffix stripped
    _touch(root / "frames" / "a01_s01_e01" / "0001.jpg")  # same sample as frames: the video wins
    _touch(root / "a02_s06_e01" / "0001.jpg")  # RGB frame folder
    _touch(root / "a01_s01_e01_sdepth.bin")  # depth .bin beats the depth video below
    _touch(root / "a01_s01_e01_depth.avi")
    _touch(root / "depth" / "a02_s06_e01.mp4")  # depth video told by its folder
    _touch(root / "a03_s07_e02" / "img_0001.png", _png_header(16, 0))  # 16-bit grey PNG folder: depth
    _touch(root / "a03_s07_e02_rgb" / "img_0001.png", _png_header(8, 2))  # explicit suffix: RGB
    _touch(root / ".hidden" / "a04_s01_e01.avi")
    _touch(root / "a04_s01_e01.txt")
    rgb = {pathlib.Path(r.path).relative_to(root).as_posix() for r in build_manifest("msr_action_pairs", root, "xsub")}
    assert rgb == {"a01_s01_e01_rgb.avi", "a02_s06_e01", "a03_s07_e02_rgb"}
    depth = build_manifest("msr_action_pairs", root, "xsub", modality="depth")
    assert {pathlib.Path(r.path).relative_to(root).as_posix() for r in depth} == {
        "a01_s01_e01_sdepth.bin", "depth/a02_s06_e01.mp4", "a03_s07_e02",
    }  # fmt: skip
    (root / "loop").symlink_to(root)  # followed links must not loop
    _touch(tmp_path / "elsewhere" / "a05_s02_e01_rgb.avi")
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    assert len(build_manifest("msr_action_pairs", root, "xsub")) == 4
    _touch(root / "a01_s01_e01_rgb.mp4")
    assert "present twice" in _error(build_manifest, "msr_action_pairs", root, "xsub")


# ---------------------------------------------------------------------------------------------------------------------
# Cross-subject datasets


def test_msr_action3d(tmp_path):
    root = tmp_path / "MSRAction3D"
    for a in (1, 20):
        for s in range(1, 11):
            _touch(root / f"a{a:02d}_s{s:02d}_e01_sdepth.bin")
            _touch(root / f"a{a:02d}_s{s:02d}_e02_sdepth.bin")
    recs = build_manifest("msr_action3d", root, None)  # the single split and the only modality are the defaults
    parts = _by_split(recs)
    assert {r.subject for r in parts["train"]} == {1, 3, 5, 7, 9}
    assert {r.subject for r in parts["test"]} == {2, 4, 6, 8, 10}
    assert len(parts["train"]) == len(parts["test"]) == 20
    assert {r.label for r in recs} == {0, 19} and {r.episode for r in recs} == {1, 2}
    assert "depth videos only; pass --modality depth" in _error(
        build_manifest, "msr_action3d", root, "xsub", modality="rgb"
    )


def test_msr_action_pairs_and_uwa3d_activity(tmp_path):
    root = tmp_path / "videos"
    for a in (1, 12):
        for s in range(1, 11):
            _touch(root / f"a{a:02d}_s{s:02d}_e01_rgb.avi")
    parts = _by_split(build_manifest("msr_action_pairs", root, "xsub"))
    assert {r.subject for r in parts["train"]} == {1, 2, 3, 4, 5}
    assert {r.subject for r in parts["test"]} == {6, 7, 8, 9, 10}
    parts = _by_split(build_manifest("uwa3d_activity", root, "xsub"))
    assert {r.subject for r in parts["train"]} == {1, 2, 3, 4, 5}
    parts = _by_split(build_manifest("uwa3d_activity", root, "x-sub", train_subjects="1,3,5,7,9"))
    assert {r.subject for r in parts["train"]} == {1, 3, 5, 7, 9}
    assert len(parts["test"]) == 10
    assert "e.g. --train-subjects" in _error(build_manifest, "uwa3d_activity", root, "xsub", train_subjects="a,b")
    _touch(root / "a13_s01_e01_rgb.avi")
    assert "action 13 is outside 1-12" in _error(build_manifest, "msr_action_pairs", root, "xsub")


# ---------------------------------------------------------------------------------------------------------------------
# HMDB51 and UCF101


def _hmdb(tmp_path):
    root = tmp_path / "hmdb51"
    splits = tmp_path / "testTrainMulti_7030_splits"
    table = {
        "brush_hair": {"bh_1.avi": "1", "bh_2.avi": "2", "bh_3.avi": "0"},
        "wave": {"w_1.avi": "2", "w_2.avi": "1", "w_3.avi": "1"},
    }
    for cls, videos in table.items():
        for video in videos:
            _touch(root / cls / video)
        for n in (1, 2, 3):
            lines = [f"{v} {k if n == 1 else {'1': '2', '2': '1', '0': '0'}[k]} " for v, k in videos.items()]
            (splits / f"{cls}_test_split{n}.txt").parent.mkdir(parents=True, exist_ok=True)
            (splits / f"{cls}_test_split{n}.txt").write_text("\n".join(lines) + "\n")
    return root, splits


def test_hmdb51_splits(tmp_path):
    root, splits = _hmdb(tmp_path)  # split files beside root: found without --split-dir
    recs = build_manifest("hmdb51", root, "split1")
    parts = _by_split(recs)
    names = lambda rs: sorted(pathlib.Path(r.path).name for r in rs)  # noqa: E731
    assert names(parts["train"]) == ["bh_1.avi", "w_2.avi", "w_3.avi"]
    assert names(parts["test"]) == ["bh_2.avi", "w_1.avi"]
    assert {(r.class_name, r.label) for r in recs} == {("brush_hair", 0), ("wave", 1)}
    parts2 = _by_split(build_manifest("hmdb51", root, "split2", split_dir=str(splits)))
    assert names(parts2["train"]) == ["bh_2.avi", "w_1.avi"]
    assert list_splits("hmdb51") == ["split1", "split2", "split3"]


def test_hmdb51_errors(tmp_path):
    root, splits = _hmdb(tmp_path)
    (root / "wave" / "w_3.avi").unlink()
    msg = _error(build_manifest, "hmdb51", root, "split1")
    assert "1 of 5 HMDB51 videos listed are not under" in msg and "wave/w_3.avi" in msg and "--skip-missing" in msg
    assert len(build_manifest("hmdb51", root, "split1", skip_missing=True)) == 4
    (splits / "wave_test_split1.txt").write_text("w_1.avi 3\n")
    assert "with k 0, 1 or 2" in _error(build_manifest, "hmdb51", root, "split1")
    assert "pass --split-dir" in _error(build_manifest, "hmdb51", root, "split1", split_dir=str(root))
    assert "does not apply to preset hmdb51" in _error(build_manifest, "hmdb51", root, "split1", train_list="x")
    assert "rgb videos only" in _error(build_manifest, "hmdb51", root, "split1", modality="depth")


def _ucf(tmp_path):
    root = tmp_path / "UCF-101"
    lists = root / "ucfTrainTestlist"
    classes = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    train, test = [], []
    for i, cls in enumerate(classes, 1):
        file_cls = "HandStandPushups" if cls == "HandstandPushups" else cls  # the dataset's own inconsistency
        for g in (1, 8):
            rel = f"{cls}/v_{file_cls}_g{g:02d}_c02.avi"
            _touch(root / rel)
            (test if g <= 7 else train).append(f"{rel} {i}\n" if g > 7 else f"{rel}\r\n")
    (lists / "trainlist01.txt").write_text("".join(train))
    (lists / "testlist01.txt").write_text("".join(test))
    return root, lists


def test_ucf101_split(tmp_path):
    root, _ = _ucf(tmp_path)
    parts = _by_split(build_manifest("ucf101", root, "split1"))
    assert [r.label for r in parts["train"]] == [0, 1, 2]  # classInd is 1-based, labels 0-based
    assert [r.class_name for r in parts["test"]] == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert {r.subject for r in parts["train"]} == {8} and {r.subject for r in parts["test"]} == {1}
    assert {r.episode for r in parts["train"]} == {2}
    assert "does not exist" in _error(build_manifest, "ucf101", root, "split2")


def test_ucf101_errors(tmp_path):
    root, lists = _ucf(tmp_path)
    (lists / "trainlist01.txt").write_text("YoYo/v_YoYo_g08_c02.avi 1\n")
    assert "disagrees with classInd.txt" in _error(build_manifest, "ucf101", root, "split1")
    (lists / "trainlist01.txt").write_text("Nope/v_Nope_g08_c02.avi 1\n")
    assert "class folder 'Nope'" in _error(build_manifest, "ucf101", root, "split1")
    (lists / "classInd.txt").write_text("1 A\n3 B\n")
    assert "expected '2 ClassName'" in _error(build_manifest, "ucf101", root, "split1")
    (lists / "classInd.txt").unlink()
    assert "no UCF101 classInd.txt" in _error(build_manifest, "ucf101", root, "split1")


# ---------------------------------------------------------------------------------------------------------------------
# NTU RGB+D 60 / 120


@pytest.fixture(scope="module")
def ntu_root(tmp_path_factory):
    """Setups 1, 2, 18, 19; cameras 1-3; subjects 1 (x-sub train), 3 (test), 45 (NTU-120 train); actions 1, 60, 61."""
    root = tmp_path_factory.mktemp("raw") / "ntu"
    for setup in (1, 2, 18, 19):
        for camera in (1, 2, 3):
            for subject in (1, 3, 45):
                for action in (1, 60, 61):
                    if action == 61 and setup < 18:
                        continue
                    stem = f"S{setup:03d}C{camera:03d}P{subject:03d}R001A{action:03d}"
                    _touch(root / "nturgb+d_rgb" / f"{stem}_rgb.avi")
                    _touch(root / "nturgb+d_depth_masked" / stem / "MDepth-00000001.png")
    return root


def test_ntu60_xsub_xview(ntu_root):
    assert 1 in NTU60_XSUB_TRAIN and 3 not in NTU60_XSUB_TRAIN and 45 in NTU120_XSUB_TRAIN
    recs = build_manifest("ntu60", ntu_root, "xsub")
    assert len(recs) == 2 * 3 * 3 * 2  # setups 18, 19 and action 61 belong to NTU-120 only
    parts = _by_split(recs)
    assert {r.subject for r in parts["train"]} == {1}
    assert {r.subject for r in parts["test"]} == {3, 45}
    assert {r.label for r in recs} == {0, 59}
    parts = _by_split(build_manifest("ntu60", ntu_root, "xview", modality="depth"))
    assert {r.view for r in parts["train"]} == {2, 3} and {r.view for r in parts["test"]} == {1}
    assert len(parts["train"]) == 2 * len(parts["test"]) == 24
    assert {pathlib.Path(r.path).parent.name for r in parts["test"]} == {"nturgb+d_depth_masked"}  # the folder
    rec = parts["test"][0]
    assert (rec.modality, rec.episode) == ("depth", 1)
    assert "unknown split 'xset' for preset ntu60" in _error(build_manifest, "ntu60", ntu_root, "xset")


def test_ntu120_xsub_xset(ntu_root):
    recs = build_manifest("ntu120", ntu_root, "xsub")
    assert len(recs) == 2 * 3 * 3 * 2 + 2 * 3 * 3 * 3
    parts = _by_split(recs)
    assert {r.subject for r in parts["train"]} == {1, 45} and {r.subject for r in parts["test"]} == {3}
    assert max(r.label for r in recs) == 60
    parts = _by_split(build_manifest("ntu120", ntu_root, "xset", modality="depth"))
    setups = lambda rs: {int(pathlib.Path(r.path).name[1:4]) for r in rs}  # noqa: E731
    assert setups(parts["train"]) == {2, 18} and setups(parts["test"]) == {1, 19}


# ---------------------------------------------------------------------------------------------------------------------
# Kinetics / SSv2 lists and generic CSVs


def test_kinetics_lists(tmp_path):
    root = tmp_path / "k400"
    _touch(root / "train" / "abseiling" / "a.mp4")
    _touch(root / "train" / "air drumming" / "b.mp4")
    _touch(root / "val" / "c.mp4")
    _touch(tmp_path / "abs.webm")
    train = tmp_path / "train.csv"
    train.write_text(f"train/abseiling/a.mp4 0\ntrain/air drumming/b.mp4 1\n{tmp_path / 'abs.webm'},2\n")
    val = tmp_path / "val.csv"
    val.write_text("val/c.mp4 3\n")
    recs = build_manifest("kinetics", root, "official", train_list=str(train), val_list=str(val))
    parts = _by_split(recs)
    assert sorted(r.label for r in parts["train"]) == [0, 1, 2] and [r.label for r in parts["test"]] == [3]
    assert str(root / "train" / "air drumming" / "b.mp4") in {r.path for r in recs}
    only_train = build_manifest("kinetics", root, None, train_list=str(train))
    assert {r.split for r in only_train} == {"train"}
    assert "--val-list" in _error(build_manifest, "kinetics", root, None, train_list=str(train), partition="test")
    assert "needs its list files" in _error(build_manifest, "kinetics", root, None)
    val.write_text("val/c.mp4 three\n")
    assert "line 1: expected 'path label'" in _error(build_manifest, "kinetics", root, None, val_list=str(val))
    val.write_text("val/missing.mp4 3\nval/c.mp4 3\n")
    assert "1 of 2 Kinetics videos" in _error(build_manifest, "kinetics", root, None, val_list=str(val))
    assert len(build_manifest("kinetics", root, None, val_list=str(val), skip_missing=True)) == 1


def test_ssv2_frame_lists(tmp_path):
    root = tmp_path / "ssv2"
    _touch(root / "1.webm")
    _touch(root / "2" / "img_00001.jpg")
    lst = tmp_path / "train.txt"
    lst.write_text("1.webm 5\n2 48 173\n")  # the second is VideoMAE's 'path num_frames label'
    recs = build_manifest("ssv2", root, "official", train_list=str(lst))
    assert [(pathlib.Path(r.path).name, r.label) for r in recs] == [("1.webm", 5), ("2", 173)]


def test_generic(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split,modality\na.mp4,0,train,depth\nb.mp4,1,test,depth\nc.mp4,1,,depth\n")
    assert len(build_manifest("generic", csv, "csv")) == 3
    assert [r.path for r in build_manifest("generic", csv, None, partition="train")] == [str(tmp_path / "a.mp4")]
    assert "is a folder" in _error(build_manifest, "generic", tmp_path, "csv")


def test_build_manifest_validation(tmp_path):
    msg = _error(build_manifest, "nope", tmp_path, "x")
    assert "unknown preset 'nope'" in msg and all(name in msg for name in PRESETS)
    assert "does not exist" in _error(build_manifest, "ntu60", tmp_path / "missing", "xsub")
    assert "needs --split; use one of: xsub, xview" in _error(build_manifest, "ntu60", tmp_path, None)
    assert "unknown partition 'val'" in _error(build_manifest, "ntu60", tmp_path, "xsub", partition="val")
    assert "unknown modality" in _error(build_manifest, "ntu60", tmp_path, "xsub", modality="ir")
    assert "for uwa3d_activity" in _error(build_manifest, "ntu60", tmp_path, "xsub", train_subjects="1")
    assert "unknown preset" in _error(list_splits, "nope")
    assert set(PRESETS) >= {"uwa3d_mv2", "uwa3d_activity", "msr_action3d", "msr_action_pairs", "hmdb51", "ucf101",
                            "ntu60", "ntu120", "kinetics", "ssv2", "generic"}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _timemae(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def test_cli_writes_manifest(uwa3d_root, tmp_path):
    out = tmp_path / "m" / "uwa.csv"
    res = _timemae("manifest", "--preset", "uwa3d_mv2", "--root", uwa3d_root, "--split", "v12_v3", "--out", out)
    assert res.returncode == 0, res.stderr
    assert "train: 12" in res.stdout and "test: 6" in res.stdout
    recs = read_manifest(out)
    assert len(recs) == 18 and {r.view for r in recs if r.split == "test"} == {3}
    res = _timemae("manifest", "--preset", "uwa3d_mv2", "--root", uwa3d_root, "--split", "v12_v3",
                   "--modality", "depth", "--partition", "test", "--out", out)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert [r.split for r in read_manifest(out)] == ["test"] * 6
    res = _timemae("manifest", "--list")
    assert res.returncode == 0 and "v34_v2" in res.stdout and "ntu120" in res.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--preset", "nope", "--root", ".", "--out", "x.csv"], "unknown preset 'nope'"),
        (["--preset", "ntu60", "--root", "/no/such/dir", "--split", "xsub", "--out", "x.csv"], "does not exist"),
        (["--preset", "ntu60", "--root", ".", "--split", "v12", "--out", "x.csv"], "unknown split 'v12'"),
        (["--root", "."], "--preset is required"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, fragment, tmp_path):
    res = _timemae("manifest", *args)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (REPO / "x.csv").exists()
