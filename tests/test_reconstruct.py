"""`timemae reconstruct`: panels per grid N and mask ratio, errors.csv, and the inputs it refuses."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from launch import cli
from models import build_pretrain
from models.videomae_weights import save_encoder, save_pretrain_weights

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {"model": "vit_tiny", "input_size": 32, "num_frames": 4, "norm_pix_loss": True, "modality": "rgb"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = build_pretrain("vit_tiny", img_size=32, num_frames=4)
    save_pretrain_weights(model, folder / "pretrain.pth", CONFIG)
    save_encoder(model.state_dict(), folder / "encoder.pth", CONFIG)
    return folder


def test_panels_and_errors_for_every_setting(weights, demo_dir, tmp_path, capsys):
    video = str(next((demo_dir / "videos" / "rgb" / "val").glob("*.mp4")))
    out = tmp_path / "out"
    args = ["reconstruct", "--checkpoint", str(weights / "pretrain.pth"), "--video", video, "--out", str(out),
            "--grid-n", "1", "2", "--mask-ratio", "0.5", "0.75", "--frames", "4"]
    assert cli.main(args) == 0
    rows = list(csv.DictReader((out / "errors.csv").open()))
    assert [(r["grid_n"], r["mask_ratio"]) for r in rows] == [("1", "0.5"), ("1", "0.75"), ("2", "0.5"), ("2", "0.75")]
    for row in rows:
        assert 0.9 < float(row["zero_prediction_error"]) < 1.0  # predicting zeros under norm-pix: (P - 1) / P
        assert float(row["masked_error"]) > 0 and row["view"] == "honest"
        image = np.asarray(Image.open(out / row["image"]))
        # 4 frames of 32 after the label column; original, masked, target, prediction, reconstruction, error
        assert image.shape == (6 * 32, 150 + 4 * 32, 3)
    assert "N=2 mask 0.75" in capsys.readouterr().out
    assert cli.main([*args[:-8], "--view", "oracle", "--out", str(tmp_path / "oracle")]) == 0
    assert list(csv.DictReader((tmp_path / "oracle" / "errors.csv").open()))[0]["view"] == "oracle"


@pytest.mark.parametrize("case, message", [
    ("encoder", "has no decoder"), ("missing", "does not exist"), ("ratio", "mask"), ("video", "does not exist"),
    ("resnet", "reconstructions need a VideoMAE pretraining model"), ("size", "--input-size 160000 x 160000")])
def test_bad_input_is_one_line(weights, demo_dir, tmp_path, capsys, case, message):
    video = str(next((demo_dir / "videos" / "rgb" / "val").glob("*.mp4")))
    if case == "resnet":
        from models import build_classifier

        torch.save({"model": build_classifier("resnet18", 3, num_frames=4, img_size=32).state_dict(),
                    "config": {**CONFIG, "model": "resnet18"}}, tmp_path / "r18.pth")
    ckpt = {"encoder": weights / "encoder.pth", "missing": tmp_path / "nope.pth",
            "resnet": tmp_path / "r18.pth"}.get(case, weights / "pretrain.pth")
    args = ["reconstruct", "--checkpoint", str(ckpt), "--video", video if case != "video" else str(tmp_path / "v.mp4"),
            "--out", str(tmp_path / "out"), "--mask-ratio", "1.5" if case == "ratio" else "0.75"]
    if case == "size":  # a size no machine holds stops before the model's tables are built
        args += ["--input-size", "160000"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
