"""Generic tests over every entry of `models.MODELS`, pretraining model and classifier, at tiny sizes.

Each named size keeps its widths and head counts; depth, frames and resolution are cut down by overrides so the
whole file runs in seconds on CPU.
"""

import pytest
import torch

from models import MODELS, build_classifier, build_pretrain
from pretrain.loss import reconstruction_loss
from pretrain.masking import tube_mask

GEOMETRY = dict(img_size=32, patch_size=16, tubelet_size=2)  # 4 frames -> 2 x 2 x 2 = 8 tokens
NUM_CLASSES = 5


def _pretrain(name, **kw):
    return build_pretrain(name, **GEOMETRY, num_frames=4, encoder_depth=1, decoder_depth=1, **kw)


def _classifier(name, **kw):
    return build_classifier(name, NUM_CLASSES, **GEOMETRY, all_frames=4, depth=1, **kw)


def _clip(batch=2, seed=0):
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _mask(model, batch=2, seed=1):
    return tube_mask(batch, model.token_grid, 0.5, torch.Generator().manual_seed(seed))


def _assert_every_param_has_grad(model):
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list(MODELS))
def test_pretrain_forward_backward(name):
    torch.manual_seed(0)
    model = _pretrain(name).train()
    x, mask = _clip(), _mask(model)
    pred = model(x, mask)
    assert pred.shape == (2, 4, 3 * 2 * 16 * 16)
    assert torch.isfinite(pred).all()
    feats = model.forward_features(x, mask)
    assert feats.shape == (2, 4, MODELS[name].embed_dim) and model.num_features == MODELS[name].embed_dim
    loss = reconstruction_loss(pred, x, mask, patch_size=model.patch_size, tubelet_size=model.tubelet_size)
    loss.backward()
    _assert_every_param_has_grad(model)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mean_pooling", [True, False])
def test_classifier_forward_backward(name, mean_pooling):
    torch.manual_seed(0)
    model = _classifier(name, use_mean_pooling=mean_pooling, init_scale=1.0).train()
    x = _clip()
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    feats = model.forward_features(x)
    assert feats.shape == (2, 8, MODELS[name].embed_dim)
    assert model.forward_head(feats, pre_logits=True).shape == (2, MODELS[name].embed_dim)
    logits.square().sum().backward()
    _assert_every_param_has_grad(model)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_sdpa_matches_eager(kind):
    torch.manual_seed(0)
    build = _pretrain if kind == "pretrain" else _classifier
    sdpa, eager = build("vit_tiny", attn_impl="sdpa").eval(), build("vit_tiny", attn_impl="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    x = _clip()
    with torch.no_grad():
        if kind == "pretrain":
            mask = _mask(sdpa)
            a, b = sdpa(x, mask), eager(x, mask)
        else:
            a, b = sdpa(x), eager(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["pretrain", "classifier"])
def test_grad_checkpointing_same_grads(kind):
    build = _pretrain if kind == "pretrain" else _classifier
    torch.manual_seed(0)
    model = build("vit_tiny", drop_path_rate=0.2).train()
    x = _clip()
    mask = _mask(model) if kind == "pretrain" else None
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # the same drop-path draws in both runs
        out = model(x, mask) if kind == "pretrain" else model(x)
        out.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n


@pytest.mark.parametrize("name", list(MODELS))
def test_timm_interface(name):
    with torch.device("meta"):
        models = (_pretrain(name), _classifier(name))
    for model in models:
        for method in ("forward_features", "forward_head", "reset_classifier", "no_weight_decay", "group_matcher",
                       "get_layer_id", "set_grad_checkpointing"):  # fmt: skip
            assert callable(getattr(model, method)), method
        ids = {model.get_layer_id(n) for n, _ in model.named_parameters()}
        assert ids == set(range(model.num_layer_ids)) and model.num_layer_ids == 1 + 2


# ---------------------------------------------------------------------------------------------------------------------
# Every entry of the classifier registry, through its one factory signature


def _small_options(name: str) -> dict:
    """Cut depth where the family allows it; widths stay the named model's."""
    from models import CLASSIFIERS

    family = CLASSIFIERS[name].family
    if family == "videomae":
        return {"depth": 1}
    if family == "vit":
        return {"timm_kwargs": {"depth": 1}}
    return {}


def _registry_cases() -> list[tuple[str, str | None]]:
    from models import CLASSIFIERS
    from models.temporal import TEMPORAL_MODULES

    cases = []
    for name, entry in CLASSIFIERS.items():
        cases.append((name, None))
        if entry.family == "resnet" and name != "resnet101":  # resnet101 x modules: tests/test_tsn.py (slow)
            cases += [(name, t) for t in TEMPORAL_MODULES]
    return cases


@pytest.mark.parametrize(("name", "temporal"), _registry_cases())
def test_every_registry_entry_trains_through_one_signature(name, temporal):
    from models import build_classifier

    torch.manual_seed(0)
    options = _small_options(name)
    if temporal:
        options["temporal"] = temporal
    model = build_classifier(name, NUM_CLASSES, num_frames=4, img_size=32, drop_path=0.0, **options).train()
    x = _clip()
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    with torch.no_grad():  # zero-initialised gates (TRM offsets, ATR's BN) would otherwise block gradients upstream
        for n, p in model.named_parameters():
            if ".temporal." in n and not p.abs().any():
                p.add_(0.01 * torch.randn_like(p))
    model(x).square().sum().backward()
    stale = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert stale == []
    for method in ("forward_features", "forward_head", "reset_classifier", "no_weight_decay", "get_layer_id"):
        assert callable(getattr(model, method)), method
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape[0] == 2
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
