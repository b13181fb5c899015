"""`timemae extract` and `timemae probe`: features of every video, and probes that tell signal from noise."""

import json

import numpy as np
import pytest
import torch

from launch import cli
from models import build_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier("resnet18", 8, num_frames=4, img_size=32)
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    config = {"model": "resnet18", "num_frames": 4, "input_size": 32, "grid_n": 2, "modality": "rgb"}
    torch.save({"model": model.state_dict(), "config": config}, path)
    return path


def test_extract_and_attention_refuse_a_clip_no_machine_holds_in_one_line(resnet_file, demo_dir, tmp_path, capsys):
    video = str(next((demo_dir / "videos" / "rgb" / "val").glob("*.mp4")))
    for argv in (["extract", "--checkpoint", str(resnet_file), "--data", str(demo_dir / "shards" / "val"),
                  "--out", str(tmp_path / "a.npz"), "--num-frames", "40000000"],
                 ["attention", "--checkpoint", str(resnet_file), "--video", video, "--out", str(tmp_path / "att"),
                  "--num-frames", "40000000"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--num-frames 40000000 x --input-size 32 x 32" in err[0], err
    assert not (tmp_path / "a.npz").exists()


def test_extract_writes_one_row_per_video_and_is_deterministic(resnet_file, demo_dir, tmp_path, capsys):
    shards = str(demo_dir / "shards" / "val")
    args = ["extract", "--checkpoint", str(resnet_file), "--data", shards, "--clips", "2", "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert "wrote 32 videos x 512 features" in capsys.readouterr().out
    a = np.load(tmp_path / "a.npz")
    assert a["features"].shape == (32, 512) and len(set(a["keys"].tolist())) == 32
    assert sorted(np.bincount(a["labels"]).tolist()) == [4] * 8
    assert json.loads(str(a["meta"]))["layer"] == "pre_logits"
    assert cli.main([*args, "--out", str(tmp_path / "b.npz")]) == 0
    np.testing.assert_array_equal(a["features"], np.load(tmp_path / "b.npz")["features"])
    assert cli.main([*args, "--layer", "layer3", "--pool", "max", "--out", str(tmp_path / "c.npz")]) == 0
    assert np.load(tmp_path / "c.npz")["features"].shape == (32, 256)
    assert cli.main([*args, "--layer", "nope", "--out", str(tmp_path / "d.npz")]) == 2
    assert "--layer nope is not a submodule" in capsys.readouterr().err


def _write(path, x, y):
    np.savez(path, features=x.astype(np.float32), labels=y, keys=np.array([str(i) for i in range(len(y))]),
             meta=np.array("{}"))


def test_probes_find_a_signal_and_not_noise(tmp_path, capsys):
    rng = np.random.default_rng(0)
    classes, dim = 5, 32
    centres = rng.normal(0, 1, (classes, dim))

    def signal(n):
        y = rng.integers(classes, size=n)
        return centres[y] * 1.5 + rng.normal(0, 1, (n, dim)), y

    _write(tmp_path / "st.npz", *signal(200))
    _write(tmp_path / "sv.npz", *signal(100))
    _write(tmp_path / "nt.npz", rng.normal(0, 1, (200, dim)), rng.integers(classes, size=200))
    _write(tmp_path / "nv.npz", rng.normal(0, 1, (100, dim)), rng.integers(classes, size=100))
    assert cli.main(["probe", "--train", str(tmp_path / "st.npz"), "--val", str(tmp_path / "sv.npz"),
                     "--out", str(tmp_path / "s.json")]) == 0
    signal_result = json.loads((tmp_path / "s.json").read_text())
    assert signal_result["linear"]["top1"] > 0.8 and signal_result["knn"]["top1"] > 0.8  # chance is ~0.2
    assert cli.main(["probe", "--train", str(tmp_path / "nt.npz"), "--val", str(tmp_path / "nv.npz"),
                     "--out", str(tmp_path / "n.json")]) == 0
    noise = json.loads((tmp_path / "n.json").read_text())
    assert noise["linear"]["top1"] < 0.4 and noise["knn"]["top1"] < 0.4
    assert "linear probe" in capsys.readouterr().out
    assert cli.main(["probe", "--train", str(tmp_path / "missing.npz"), "--val", str(tmp_path / "sv.npz")]) == 2


def test_probes_on_extracted_features_see_what_the_model_sees(resnet_file, demo_dir, tmp_path, capsys):
    """Features of a frame-level ResNet carry a per-video colour (its classes' signal here) but not the demo's
    classes, which differ only in motion: the probes find the first and stay near chance on the second."""
    from videos import write_tinted_video as write_tinted

    from data.manifest import Record
    from data.shards import write_shards

    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40)]
    for split, count in (("train", 8), ("val", 4)):
        records = []
        for label, colour in enumerate(colours):
            for i in range(count):
                path = tmp_path / "raw" / split / f"{label}_{i}.avi"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_tinted(path, colour, rng)
                records.append(Record(str(path), label))
        write_shards(records, tmp_path / "tinted" / split, shard_samples=8, progress=False, short_side=None)
    results = {}
    for name, root in (("tinted", tmp_path / "tinted"), ("demo", demo_dir / "shards")):
        for split in ("train", "val"):
            assert cli.main(["extract", "--checkpoint", str(resnet_file), "--data", str(root / split), "--clips", "1",
                             "--out", str(tmp_path / f"{name}_{split}.npz"), "--no-progress"]) == 0
        assert cli.main(["probe", "--train", str(tmp_path / f"{name}_train.npz"), "--val",
                         str(tmp_path / f"{name}_val.npz"), "--out", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    capsys.readouterr()
    assert results["tinted"]["linear"]["top1"] >= 0.9 and results["tinted"]["knn"]["top1"] >= 0.9  # chance 0.25
    assert results["demo"]["linear"]["top1"] < 0.4 and results["demo"]["knn"]["top1"] < 0.4  # chance 0.125
