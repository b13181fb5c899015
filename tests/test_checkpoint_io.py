"""Checkpoint I/O: every source kind into both model kinds, safe loading, exact key accounting, atomic writes."""

import argparse
import os

import pytest
import torch

from data.errors import UserError
from models import build_classifier, build_pretrain
from models.checkpoint import atomic_save, load_file
from models.videomae_weights import (
    FORMAT_ENCODER,
    detect_source,
    encoder_state_dict,
    init_classifier_from,
    init_from,
    init_pretrain_from,
    save_encoder,
    save_pretrain_weights,
)
from pretrain.masking import tube_mask

# 4 frames of 32 x 32, tubelet 2 x 8 x 8 -> 2 x 4 x 4 = 32 tokens.
GEOMETRY = dict(img_size=32, patch_size=8, tubelet_size=2)
CONFIG = {"model": "vit_tiny", "mask_ratio": 0.75, "input_size": [32, 32]}


def _pretrain(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"encoder_depth": 2, "decoder_depth": 1, **kw}
    return build_pretrain("vit_tiny", **GEOMETRY, num_frames=4, **kw).eval()


def _classifier(num_classes=5, seed=1, **kw):
    torch.manual_seed(seed)
    kw = {"depth": 2, **kw}
    return build_classifier("vit_tiny", num_classes, **GEOMETRY, all_frames=4, **kw).eval()


def _randomize(model, seed=0):
    """Every parameter random (norms and biases too), so no equality holds by accident of the init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + 0.1)
    return model


def _clip(seed=0):
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _mask(model):
    return tube_mask(2, model.token_grid, 0.5, torch.Generator().manual_seed(3))


def _same(a, b):
    return torch.allclose(a, b, rtol=0, atol=1e-6)


def _state_equal(model, reference, prefix=""):
    ref = reference.state_dict()
    return all(torch.equal(v, ref[prefix + k]) for k, v in model.state_dict().items() if prefix + k in ref)


def _fake_official_pretrain(path, state):
    args = argparse.Namespace(
        model="pretrain_videomae_base_patch16_224", mask_ratio=0.9, opt_betas=[0.9, 0.95], window_size=(8, 14, 14),
        lr=1.5e-4, output_dir="/x", device="cuda", resume="",
    )  # fmt: skip
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4}]}
    torch.save({"model": state, "optimizer": optimizer, "epoch": 5, "scaler": {"scale": 65536.0}, "args": args}, path)


# --- round trips ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["timemae_checkpoint", "official_pretrain"])
def test_pretrain_file_into_pretrain_model(tmp_path, kind):
    source = _randomize(_pretrain())
    path = tmp_path / "w.pth"
    if kind == "timemae_checkpoint":
        save_pretrain_weights(source.state_dict(), path, CONFIG)
    else:
        _fake_official_pretrain(path, source.state_dict())
    assert detect_source(load_file(path), str(path))[0] == kind
    target = _pretrain(seed=7)
    report = init_pretrain_from(target, path)
    assert f"loaded: {len(source.state_dict())} tensors" in report
    assert "dropped" not in report and "fresh" not in report
    x, mask = _clip(), _mask(source)
    assert torch.equal(target(x, mask), source(x, mask))


@pytest.mark.parametrize("kind", ["timemae_checkpoint", "official_pretrain", "timemae_encoder"])
@pytest.mark.parametrize("mean_pooling", [True, False])
def test_pretrain_weights_into_classifier(tmp_path, kind, mean_pooling):
    source = _randomize(_pretrain())
    path = tmp_path / "w.pth"
    {"timemae_checkpoint": lambda: save_pretrain_weights(source, path, CONFIG),
     "official_pretrain": lambda: _fake_official_pretrain(path, source.state_dict()),
     "timemae_encoder": lambda: save_encoder(source, path, CONFIG)}[kind]()  # fmt: skip
    clf = _classifier(use_mean_pooling=mean_pooling)
    fresh = {k: v.clone() for k, v in clf.state_dict().items()}
    report = init_classifier_from(clf, path)
    x = _clip()
    with torch.no_grad():
        features = clf.forward_features(x)
        if mean_pooling:
            # The final norm is not loaded: the classifier's features are the encoder's before that norm.
            assert _same(source.encoder.norm(features), source.forward_features(x))
            assert "dropped: norm.* (2 tensors)" in report and "fc_norm.* (2 tensors)" in report
            assert torch.equal(clf.fc_norm.weight, fresh["fc_norm.weight"])
        else:
            assert _same(features, source.forward_features(x))
            assert "norm.*" not in report
    assert torch.equal(clf.head.weight, fresh["head.weight"])
    assert "head.* (2 tensors)" in report
    if kind != "timemae_encoder":
        assert "dropped: decoder.*, encoder_to_decoder.*, mask_token (" in report


def test_encoder_export_into_pretrain_model(tmp_path):
    source = _randomize(_pretrain())
    path = tmp_path / "enc.pth"
    save_encoder(source, path, CONFIG)
    obj = load_file(path)
    assert obj["format"] == FORMAT_ENCODER and obj["config"] == CONFIG
    assert set(obj["model"]) == set(encoder_state_dict(source))
    assert not any(k.startswith(("encoder.", "decoder.", "mask_token")) for k in obj["model"])
    assert "norm.weight" in obj["model"]

    target = _pretrain(seed=7)
    decoder_before = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("encoder.")}
    report = init_pretrain_from(target, path)
    x, mask = _clip(), _mask(source)
    with torch.no_grad():
        assert torch.equal(target.forward_features(x, mask), source.forward_features(x, mask))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in decoder_before.items())
    assert f"initialised fresh: decoder.*, encoder_to_decoder.*, mask_token ({len(decoder_before)} tensors)" in report


@pytest.mark.parametrize("wrapper", ["model", "module"])
def test_official_finetune_into_classifier(tmp_path, wrapper):
    source = _randomize(_classifier())
    path = tmp_path / "ft.pth"
    torch.save({wrapper: source.state_dict(), "epoch": 29}, path)
    same = _classifier(seed=9)
    report = init_classifier_from(same, path)
    assert "official VideoMAE fine-tuning" in report and "file epoch 29" in report and "dropped" not in report
    x = _clip()
    with torch.no_grad():
        assert torch.equal(same(x), source(x))

    other = _classifier(num_classes=7, seed=9)
    head_before = other.head.weight.clone()
    report = init_from(other, path)
    assert "dropped: head.* (2 tensors): the file's head has 5 classes, the model 7" in report
    assert torch.equal(other.head.weight, head_before)
    with torch.no_grad():
        assert torch.equal(other.forward_head(other.forward_features(x), pre_logits=True),
                           source.forward_head(source.forward_features(x), pre_logits=True))  # fmt: skip


def test_official_finetune_into_pretrain_model(tmp_path):
    source = _randomize(_classifier())
    path = tmp_path / "ft.pth"
    torch.save({"module": source.state_dict()}, path)
    target = _pretrain(seed=7)
    report = init_pretrain_from(target, path)
    assert "dropped: head.*" in report and "dropped: fc_norm.*" in report
    assert "encoder.norm.* (2 tensors)" in report and "decoder.*" in report
    assert _state_equal(source, target.encoder)
    x = _clip()
    with torch.no_grad():
        # encoder.norm stayed at its (1, 0) initialisation: the pretraining encoder is the classifier's blocks + norm.
        assert _same(target.forward_features(x), target.encoder.norm(source.forward_features(x)))


# --- refusals ---------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Custom:
    pass


@pytest.mark.parametrize("make", ["reduce", "custom_class"])
def test_arbitrary_pickles_are_refused(tmp_path, make):
    path, marker = tmp_path / "evil.pth", tmp_path / "ran"
    payload = _Payload(str(marker)) if make == "reduce" else _Custom()
    torch.save({"model": _pretrain().state_dict(), "extra": payload}, path)
    with pytest.raises(UserError, match=f"{path} is not a recognised checkpoint") as err:
        init_pretrain_from(_pretrain(), path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_file(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(UserError, match="not a recognised checkpoint"):
        load_file(junk)
    other = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(UserError, match="no VideoMAE encoder keys"):
        init_pretrain_from(_pretrain(), other)
    newer = tmp_path / "newer.pth"
    torch.save({"model": {}, "format": "timemae-pretrain-v9"}, newer)
    with pytest.raises(UserError, match="timemae-pretrain-v9"):
        init_pretrain_from(_pretrain(), newer)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "w.pth"
    save_pretrain_weights(_pretrain(), path, CONFIG)
    with pytest.raises(UserError, match=r"encoder.patch_embed.proj.weight has shape \(192, 3, 2, 8, 8\) in the file "
                                        r"but \(192, 3, 2, 16, 16\) in the model"):  # fmt: skip
        init_pretrain_from(build_pretrain("vit_tiny", img_size=32, patch_size=16, num_frames=4, encoder_depth=2,
                                          decoder_depth=1), path)  # fmt: skip
    with pytest.raises(UserError, match=r"patch_embed.proj.weight has shape"):
        init_classifier_from(build_classifier("vit_tiny", 5, img_size=32, patch_size=16, all_frames=4, depth=2), path)


def test_unexpected_and_missing_keys_are_named(tmp_path):
    state = _pretrain().state_dict()
    state["encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    _fake_official_pretrain(path, state)
    with pytest.raises(UserError, match="unexpected encoder.extra.weight"):
        init_pretrain_from(_pretrain(), path)
    with pytest.raises(UserError, match="unexpected extra.weight"):
        init_classifier_from(_classifier(), path)

    deep = tmp_path / "deep.pth"
    save_encoder(_pretrain(), deep, CONFIG)
    with pytest.raises(UserError, match=r"missing encoder\.blocks\.2\..*the file has 2 encoder blocks, the model 3"):
        init_pretrain_from(_pretrain(encoder_depth=3), deep)


def test_config_must_be_plain_data(tmp_path):
    with pytest.raises(TypeError, match="Namespace"):
        save_encoder(_pretrain(), tmp_path / "e.pth", {"args": argparse.Namespace(a=1)})
    with pytest.raises(ValueError, match="module"):
        save_pretrain_weights({"module." + k: v for k, v in _pretrain().state_dict().items()}, tmp_path / "p.pth", {})
    assert not os.listdir(tmp_path)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        atomic_save({"a": torch.zeros(1000), "bad": lambda: 0}, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    with pytest.raises(Exception):  # noqa: B017
        atomic_save({"bad": lambda: 0}, tmp_path / "new.pth")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth"]
