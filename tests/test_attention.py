"""`timemae attention`: per-layer maps, class-weight heatmaps, comparisons and ResNet feature maps."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from launch import cli
from models import build_classifier, build_pretrain
from models.videomae_weights import save_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    base = {"num_frames": 4, "input_size": 32, "grid_n": 2, "modality": "rgb"}
    r18 = build_classifier("resnet18", 8, num_frames=4, img_size=32)
    torch.save({"model": r18.state_dict(), "config": {**base, "model": "resnet18"}}, folder / "r18.pth")
    vit = build_classifier("vit_tiny", 8, num_frames=4, img_size=32)
    torch.save({"model": vit.state_dict(), "config": {**base, "model": "vit_tiny"}}, folder / "vit.pth")
    save_encoder(build_pretrain("vit_tiny", img_size=32, num_frames=4).state_dict(), folder / "enc.pth",
                 {**base, "model": "vit_tiny"})
    return folder


def _video(demo_dir):
    return str(next((demo_dir / "videos" / "rgb" / "val").glob("*.mp4")))


def test_videomae_layers_class_weights_and_a_comparison(files, demo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["attention", "--checkpoint", str(files / "vit.pth"), "--video", _video(demo_dir), "--out", str(out),
            "--compare", str(files / "enc.pth"), "--frames", "4"]
    assert cli.main(args) == 0
    for name in ("layers.png", "layers_compare.png", "class_weight.png", "attention.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "attention.json").read_text())
    first, second = data["models"]
    layers = np.array(first["layers"])
    assert layers.shape == (12, 2, 2)  # vit_tiny: 12 layers; 32 px / 16 = 2 x 2 patches
    # Every query's attention sums to 1 over the keys, so the mean attention received over all patches is 1 / N.
    assert np.allclose(layers.mean(axis=(1, 2)), 1 / 8, atol=1e-6)
    assert first["predicted"] in range(8) and second["predicted"] is None  # the encoder export has no head
    assert np.array(first["class_weight_map"]).shape == (4, 32, 32)
    image = np.asarray(Image.open(out / "class_weight.png"))
    assert image.ndim == 3 and image.shape[0] > 200  # frames + two rows per model
    assert "class_weight.png" in capsys.readouterr().out


def test_resnet_class_activation_map_and_feature_maps(files, demo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["attention", "--checkpoint", str(files / "r18.pth"), "--video", _video(demo_dir),
                     "--out", str(out), "--feature-maps"]) == 0
    data = json.loads((out / "attention.json").read_text())["models"][0]
    assert data["class_weight"].startswith("class activation map") and "layers" not in data
    assert (out / "feature_maps.png").is_file() and not (out / "layers.png").exists()
    assert cli.main(["attention", "--checkpoint", str(files / "vit.pth"), "--video", _video(demo_dir),
                     "--out", str(tmp_path / "x"), "--feature-maps"]) == 2
    err = capsys.readouterr().err
    assert "--feature-maps needs a ResNet" in err and err.count("\n") == 1
