"""Manifest CSV: round trip, relative paths, class-name labels, and one clear UserError per bad input."""

import os

import pytest

from data.errors import UserError
from data.manifest import Record, class_names, filter_split, num_classes, read_manifest, write_manifest


def _write(tmp_path, text, name="m.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _user_error(path, *fragments):
    with pytest.raises(UserError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_round_trip(tmp_path):
    records = [
        Record(str(tmp_path / "a.mp4"), 0, "wave", 1, 2, 3, "train", "rgb"),
        Record(str(tmp_path / "b, with comma.avi"), 4, "", -1, -1, -1, "test", "depth"),
        Record(str(tmp_path / "frames"), 2, "jump", 7, -1, 1, "", "rgb"),
    ]
    path = tmp_path / "out" / "m.csv"
    write_manifest(records, path)
    assert path.read_text().splitlines()[0] == "path,label,class_name,subject,view,episode,split,modality"
    assert read_manifest(path) == records
    assert not [n for n in os.listdir(path.parent) if n != "m.csv"]  # no temporary file left behind


def test_relative_paths_resolve_against_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    path = _write(tmp_path / "sub", "path,label\nvideos/x.mp4,1\n../y.avi,0\n/abs/z.mp4,2\n")
    recs = read_manifest(path)
    assert [r.path for r in recs] == [
        str(tmp_path / "sub" / "videos" / "x.mp4"),
        str(tmp_path / "y.avi"),
        "/abs/z.mp4",
    ]
    assert recs[0] == Record(recs[0].path, 1)  # defaults for every optional column


def test_optional_columns_any_order_and_case(tmp_path):
    text = "# comment line\nSplit, Label ,path,subject,view,episode,modality,class_name,extra\n"
    text += "TRAIN,3,a.mp4,2,,5,DEPTH,kick,whatever\n\n"
    (rec,) = read_manifest(_write(tmp_path, text))
    assert (rec.label, rec.split, rec.subject, rec.view, rec.episode, rec.modality, rec.class_name) == (
        3, "train", 2, -1, 5, "depth", "kick",
    )  # fmt: skip
    assert rec.line == 3  # the file's own line number (comment lines count), named by error messages


def test_records_carry_their_line_outside_equality(tmp_path):
    recs = read_manifest(_write(tmp_path, "path,label\n\n# note\na.mp4,0\nb.mp4,1\n"))
    assert [r.line for r in recs] == [4, 5]
    assert recs[0] == Record(recs[0].path, 0) and Record(recs[0].path, 0).line == 0


def test_class_name_labels_map_sorted_names(tmp_path):
    recs = read_manifest(_write(tmp_path, "path,label,split\na.mp4,walk,train\nb.mp4,jump,train\nc.mp4,walk,test\n"))
    assert [(r.label, r.class_name) for r in recs] == [(1, "walk"), (0, "jump"), (1, "walk")]
    assert num_classes(recs) == 2
    assert class_names(recs) == ["jump", "walk"]


def test_filter_split_and_num_classes(tmp_path):
    recs = [Record("a", 0, split="train"), Record("b", 5, split="test"), Record("c", 1, split="train")]
    assert [r.path for r in filter_split(recs, "train")] == ["a", "c"]
    assert [r.path for r in filter_split(recs, "TEST")] == ["b"]
    assert filter_split(recs, None) == recs and filter_split(recs, "all") == recs
    assert num_classes(recs) == 6
    with pytest.raises(UserError, match="has splits: test, train"):
        filter_split(recs, "val")
    with pytest.raises(UserError):
        num_classes([])


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["is empty", "path,label"]),
        ("\n\n", ["is empty"]),
        ("path,label\n", ["no rows"]),
        ("path,subject\na.mp4,1\n", ["no 'label' column", "expected header path,label"]),
        ("file,label\na.mp4,1\n", ["no 'path' column"]),
        ("path\tlabel\na.mp4\t1\n", ["not comma-separated"]),
        ("path,label,label\na.mp4,1,1\n", ["column 'label' twice"]),
        ("path,label,subject\na.mp4,1,abc\n", ["line 2", "subject 'abc' is not an integer"]),
        ("path,label,view\na.mp4,1,1.5\n", ["view '1.5' is not an integer"]),
        ("path,label\na.mp4,1.0\n", ["not a whole number"]),
        ("path,label\na.mp4,-1\n", ["negative"]),
        ("path,label\na.mp4,0\nb.mp4,100000\n", ["line 3", "label 100000 is not a class index", "class names"]),
        ("path,label\na.mp4,\n", ["empty label"]),
        ("path,label\n,1\n", ["empty path"]),
        ("path,label\na.mp4,1\nb.mp4,run\n", ["mixes integer labels", "line 2"]),
        ("path,label\na.mp4,1,extra\n", ["line 2 has 3 fields but the header has 2"]),
        ("path,label,split\na.mp4\n", ["has 1 fields"]),
        ("path,label,modality\na.mp4,1,ir\n", ["modality 'ir'", "rgb or depth"]),
        ("path,label,class_name\na.mp4,1,run\nb.mp4,1,walk\n", ["label 1 is named 'walk'", "line 2"]),
        ("path,label,class_name\na.mp4,run,walk\n", ["disagree"]),
        ('path,label\n"a.mp4,1\n', ["line 2"]),  # unterminated quote swallows the rest into one field
    ],
)
def test_bad_manifest(tmp_path, text, fragments):
    _user_error(_write(tmp_path, text), *fragments)


def test_missing_and_folder_and_binary(tmp_path):
    _user_error(tmp_path / "nope.csv", "does not exist", "timemae manifest")
    _user_error(tmp_path, "is a folder")
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    _user_error(path, "not UTF-8")


def test_trailing_commas_and_bom(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffpath,label\na.mp4,1,,\n".encode())
    assert read_manifest(path)[0].label == 1


def test_write_rejects_bad_records(tmp_path):
    with pytest.raises(UserError, match="no records"):
        write_manifest([], tmp_path / "m.csv")
    with pytest.raises(UserError, match="modality"):
        write_manifest([Record("a", 0, modality="ir")], tmp_path / "m.csv")
    with pytest.raises(UserError, match="label"):
        write_manifest([Record("a", -2)], tmp_path / "m.csv")
    with pytest.raises(UserError, match="is a folder"):
        write_manifest([Record("a", 0)], tmp_path)
