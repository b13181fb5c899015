"""`timemae compare-weights`: per-layer cosine similarity of two checkpoints."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from launch import cli
from models import build_classifier


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    a = build_classifier("resnet18", 5, num_frames=2, img_size=32).state_dict()
    b = {k: v.clone() for k, v in a.items()}
    b["layer2.0.conv1.weight"] = -b["layer2.0.conv1.weight"]  # one layer turned around: cosine -1
    torch.save({"model": a}, folder / "a.pth")
    torch.save(a, folder / "a_bare.pth")  # a bare state_dict, as torchvision writes them
    torch.save({"state_dict": b}, folder / "b.pth")
    vit = build_classifier("vit_tiny", 5, num_frames=2, img_size=32).state_dict()
    torch.save({"model": vit}, folder / "vit.pth")
    return folder


def _rows(out):
    return list(csv.DictReader((out / "similarity.csv").open()))


def test_identical_checkpoints_are_one_everywhere(files, tmp_path, capsys):
    assert cli.main(["compare-weights", str(files / "a.pth"), str(files / "a_bare.pth"), "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path)
    assert rows and all(float(r["cosine"]) == 1.0 for r in rows)
    assert len(rows) == sum(1 for k, v in torch.load(files / "a_bare.pth").items() if v.is_floating_point())
    assert {r["type"] for r in rows} >= {"conv1", "layer1.conv1", "layer1.bn1", "fc"}
    image = np.asarray(Image.open(tmp_path / "similarity.png"))
    assert image.ndim == 3 and image.shape[0] > 300
    assert "mean cosine 1.0000" in capsys.readouterr().out


def test_a_changed_layer_shows_and_nothing_else_moves(files, tmp_path):
    assert cli.main(["compare-weights", str(files / "a.pth"), str(files / "b.pth"), "--out", str(tmp_path)]) == 0
    cos = {r["key"]: float(r["cosine"]) for r in _rows(tmp_path)}
    assert cos.pop("layer2.0.conv1.weight") == pytest.approx(-1.0)
    assert all(v == 1.0 for v in cos.values())


def test_different_architectures_name_the_first_mismatch(files, tmp_path, capsys):
    assert cli.main(["compare-weights", str(files / "a.pth"), str(files / "vit.pth"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not the same architecture" in err and "conv1.weight is only in" in err and err.count("\n") == 1
    assert cli.main(["compare-weights", str(files / "a.pth"), str(tmp_path / "x.pth"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
