"""VideoMAE weights: our encoder export and pretraining weights, the official release's files, one filter each.

Sources that ``--init-from FILE`` accepts (`detect_source` tells them apart):

* ``official_pretrain``: a pretraining file of the official VideoMAE release, ``{'model': sd, 'optimizer', 'epoch',
  'scaler', 'args': argparse.Namespace}`` with keys ``encoder.*``, ``decoder.*``, ``mask_token``,
  ``encoder_to_decoder.*``;
* ``official_finetune``: a fine-tuning file of the release, ``{'model': sd}`` or DeepSpeed's ``{'module': sd}``, with
  keys ``patch_embed.*``, ``blocks.{i}.*``, ``fc_norm.*`` (``norm.*`` without mean pooling), ``head.*``;
* ``timemae_encoder``: our encoder export (`save_encoder`), ``{'model': sd, 'config': dict, 'format':
  'timemae-encoder-v1'}`` with the release's fine-tuning key names and no head;
* ``timemae_checkpoint``: our pretraining weights (`save_pretrain_weights`), ``{'model': sd, 'config': dict,
  'format': 'timemae-pretrain-v1'}`` with the pretraining key names.

Files are read by the generic `models.checkpoint.load_file` (``weights_only=True``; the release's pickled
``argparse.Namespace`` is the one class allowed, so nothing in a file can run code on load). Each source has one
filter function here that renames the file's keys to the target model's and names what it drops and what it leaves
at initialisation; `models.checkpoint.load_mapping` then requires the missing and unexpected keys to be exactly that
(anything else, and any shape difference, is a `UserError`), and the loaders return a report of the mapping.

The encoder export keeps the encoder's final ``norm``: the export is the whole trained encoder (its features are the
ones pretraining produced, e.g. for a linear probe, and it restores a pretraining model's encoder completely).
Fine-tuning with mean pooling drops that ``norm`` and starts a fresh ``fc_norm`` (the release's conversion; the
release's own fine-tuning code also skips it, as an unused key, when it loads such a file). A classifier without mean
pooling, which has ``norm`` in the release's layout too, loads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from common.errors import UserError
from common.files import atomic_save
from models.checkpoint import (
    KeyMapping,
    check_plain,
    grouped,
    load_file,
    load_mapping,
    prefix_label,
    rename,
    state_dict_of,
)
from models.videomae import VideoMAEClassifier, VideoMAEPretrain

FORMAT_ENCODER = "timemae-encoder-v1"
FORMAT_PRETRAIN = "timemae-pretrain-v1"
SOURCE_NAMES = {
    "official_pretrain": "official VideoMAE pretraining checkpoint",
    "official_finetune": "official VideoMAE fine-tuning checkpoint",
    "timemae_encoder": f"timemae encoder export ({FORMAT_ENCODER})",
    "timemae_checkpoint": f"timemae pretraining weights ({FORMAT_PRETRAIN})",
}
_DECODER_SIDE = ("decoder.", "encoder_to_decoder.", "mask_token")
_PRETRAIN_ROOTS = ("encoder.", *_DECODER_SIDE)


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def _pretrain_state(model_or_state: VideoMAEPretrain | Mapping[str, Tensor]) -> dict[str, Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    stray = [k for k in state if not k.startswith(_PRETRAIN_ROOTS)]
    if stray or not any(k.startswith("encoder.") for k in state):
        raise ValueError(
            f"not a VideoMAEPretrain state_dict (keys such as {stray[:5]}); pass the bare model's state_dict "
            "(no 'module.' prefix from DDP / DeepSpeed)"
        )
    return {k: v.detach().cpu() for k, v in state.items()}


def encoder_state_dict(model_or_state: VideoMAEPretrain | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The encoder of a pretraining model under the release's fine-tuning key names, on the CPU.

    Args:
        model_or_state: a `VideoMAEPretrain` or its state_dict.

    Returns:
        ``patch_embed.*``, ``blocks.{i}.*`` and ``norm.*`` (the encoder's final norm, kept; see the module docstring):
        ``encoder.`` stripped; ``decoder.*``, ``mask_token`` and ``encoder_to_decoder.*`` left out.
    """
    state = _pretrain_state(model_or_state)
    return {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}


def save_encoder(
    model_or_state: VideoMAEPretrain | Mapping[str, Tensor], path: str | os.PathLike, config: dict
) -> None:
    """Write the encoder export ``{'model': encoder_state_dict(...), 'config': config, 'format': FORMAT_ENCODER}``.

    The release's fine-tuning code reads the ``'model'`` entry of this file as it reads its own pretraining files.
    ``config`` must be plain data (TypeError otherwise). The write is atomic (`atomic_save`).
    """
    check_plain(config)
    atomic_save({"model": encoder_state_dict(model_or_state), "config": config, "format": FORMAT_ENCODER}, path)


def save_pretrain_weights(
    model_state_dict: VideoMAEPretrain | Mapping[str, Tensor], path: str | os.PathLike, config: dict
) -> None:
    """Write consolidated pretraining weights ``{'model': state_dict, 'config': config, 'format': FORMAT_PRETRAIN}``.

    ``model_state_dict`` is the bare `VideoMAEPretrain`'s state_dict (or the model); ``config`` must be plain data.
    The write is atomic (`atomic_save`).
    """
    check_plain(config)
    atomic_save({"model": _pretrain_state(model_state_dict), "config": config, "format": FORMAT_PRETRAIN}, path)


# ---------------------------------------------------------------------------------------------------------------------
# Reading and one filter per source


def detect_source(obj: dict, path: str = "checkpoint") -> tuple[str, dict[str, Tensor]]:
    """The source kind of a loaded file and its state_dict.

    Args:
        obj: what `load_file` returned.
        path: the file, for messages.

    Returns:
        ``(kind, state_dict)``, kind one of `SOURCE_NAMES`.
    """
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("timemae-"):
        kinds = {FORMAT_ENCODER: "timemae_encoder", FORMAT_PRETRAIN: "timemae_checkpoint"}
        if fmt not in kinds:
            raise UserError(
                f"{path} has format {fmt!r}, which this version does not read ({', '.join(kinds)}); "
                "use the timemae version that wrote it"
            )
        return kinds[fmt], state_dict_of(obj.get("model"), path, "its 'model' entry")
    # The release's loaders look for 'model', then 'module' (DeepSpeed), then take the file as the state_dict.
    for wrapper in ("model", "module"):
        if wrapper in obj:
            state = state_dict_of(obj[wrapper], path, f"its {wrapper!r} entry")
            break
    else:
        state = state_dict_of(obj, path, "the file")
    if any(k.startswith("encoder.blocks.") or k == "encoder.patch_embed.proj.weight" for k in state):
        return "official_pretrain", state
    if any(k.startswith("blocks.") or k == "patch_embed.proj.weight" for k in state):
        return "official_finetune", state
    raise UserError(
        f"{path} is not a recognised checkpoint: no VideoMAE encoder keys (encoder.blocks.* or blocks.*) among "
        f"{sorted(state)[:5]}; pass a VideoMAE pretraining or fine-tuning file"
    )


def _is_pretrain(model: nn.Module) -> bool:
    return isinstance(model, VideoMAEPretrain)


def _encoder_into_classifier(m: KeyMapping, model: VideoMAEClassifier) -> KeyMapping:
    """Encoder keys (release fine-tuning names, with ``norm.*``) into a classifier that gets a fresh head."""
    if model.fc_norm is not None:
        m.drop("norm.", "the encoder's final norm; fine-tuning with mean pooling starts a fresh fc_norm")
        m.fresh.append(("fc_norm.", "new pooling norm"))
    m.fresh.append(("head.", "new classification head"))
    return m


_DECODER_FRESH = [
    ("decoder.", "the file has no decoder"),
    ("encoder_to_decoder.", "the file has no decoder"),
    ("mask_token", "the file has no decoder"),
]


def filter_official_pretrain(state: Mapping[str, Tensor], model: nn.Module) -> KeyMapping:
    """Release pretraining keys -> `VideoMAEPretrain` (as they are) or `VideoMAEClassifier` (encoder only)."""
    m = KeyMapping(dict(state))
    if _is_pretrain(model):
        return m
    for prefix in _DECODER_SIDE:
        m.drop(prefix, "the pretraining decoder is not part of the classifier")
    m.state = rename(m.state, strip="encoder.")
    return _encoder_into_classifier(m, model)


def filter_timemae_checkpoint(state: Mapping[str, Tensor], model: nn.Module) -> KeyMapping:
    """Our pretraining weights: the release's pretraining layout, so the same mapping as `filter_official_pretrain`."""
    return filter_official_pretrain(state, model)


def filter_timemae_encoder(state: Mapping[str, Tensor], model: nn.Module) -> KeyMapping:
    """Our encoder export (fine-tuning names, with ``norm.*``) -> either model; the decoder / head start fresh."""
    m = KeyMapping(dict(state))
    if _is_pretrain(model):
        m.state = rename(m.state, add="encoder.")
        m.fresh += _DECODER_FRESH
        return m
    return _encoder_into_classifier(m, model)


def filter_official_finetune(state: Mapping[str, Tensor], model: nn.Module) -> KeyMapping:
    """Release fine-tuning keys -> `VideoMAEClassifier` (head kept when its shape fits) or `VideoMAEPretrain`."""
    m = KeyMapping(dict(state))
    if _is_pretrain(model):
        m.drop("head.", "the classification head is not part of the pretraining model")
        m.drop("fc_norm.", "the pooling norm is not part of the pretraining model")
        if "norm.weight" not in m.state:
            m.fresh.append(("encoder.norm.", "the file (mean pooling) has no final encoder norm"))
        m.state = rename(m.state, add="encoder.")
        m.fresh += _DECODER_FRESH
        return m
    if model.fc_norm is not None and "fc_norm.weight" not in m.state:
        m.drop("norm.", "the file pools without mean pooling; this classifier starts a fresh fc_norm")
        m.fresh.append(("fc_norm.", "the file has no fc_norm"))
    if model.fc_norm is None and "norm.weight" not in m.state:
        m.drop("fc_norm.", "the file uses mean pooling; this classifier (no mean pooling) starts a fresh norm")
        m.fresh.append(("norm.", "the file has no final norm"))
    target = model.state_dict()
    file_head = m.state.get("head.weight")
    if file_head is not None and ("head.weight" not in target or target["head.weight"].shape != file_head.shape):
        classes = target["head.weight"].shape[0] if "head.weight" in target else 0
        # As the release's fine-tuning code does for another label set: drop the head, train a new one.
        m.drop("head.", f"the file's head has {file_head.shape[0]} classes, the model {classes}")
        m.fresh.append(("head.", "new classification head"))
    return m


FILTERS: dict[str, Callable[[Mapping[str, Tensor], nn.Module], KeyMapping]] = {
    "official_pretrain": filter_official_pretrain,
    "official_finetune": filter_official_finetune,
    "timemae_encoder": filter_timemae_encoder,
    "timemae_checkpoint": filter_timemae_checkpoint,
}


# ---------------------------------------------------------------------------------------------------------------------
# Loading with a report


def _depths(keys: list[str], prefix: str) -> int:
    ids = {int(k[len(prefix) :].split(".")[0]) for k in keys if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _reset_head(m: KeyMapping, reset_head: bool | None, path: str) -> None:
    """``reset_head`` True: never load the file's head; False: a head for another class count is an error; None: the
    release's behaviour (such a head is dropped and the model trains a new one)."""
    if reset_head and "head.weight" in m.state:
        m.drop("head.", "--reset-head: a new classification head")
        m.fresh.append(("head.", "new classification head (--reset-head)"))
    mismatch = [reason for label, _, reason in m.dropped if label == "head.*" and reason.startswith("the file's head")]
    if reset_head is False and mismatch:
        raise UserError(f"{path}: {mismatch[0]}; pass --reset-head to train a new head for this class set")


def _apply(model: nn.Module, path: str | os.PathLike, reset_head: bool | None = None) -> str:
    path = os.fspath(path)
    obj = load_file(path)
    kind, state = detect_source(obj, path)
    m = FILTERS[kind](state, model)
    if not _is_pretrain(model):
        _reset_head(m, reset_head, path)
    what = f"{path} ({SOURCE_NAMES[kind]}) does not fit {type(model).__name__}"
    blocks = "encoder.blocks." if _is_pretrain(model) else "blocks."

    def depth_hint(have: list[str], want: list[str]) -> str:
        a, b = _depths(have, blocks), _depths(want, blocks)
        return f"; the file has {a} encoder blocks, the model {b}" if a != b else ""

    load_mapping(model, m, what, depth_hint=depth_hint, shape_fix="build the model with the file's width / patch / "
                                                                  "tubelet size")
    target = model.state_dict()
    lines = [f"init from {path}: {SOURCE_NAMES[kind]} -> {type(model).__name__}"]
    epoch = obj.get("epoch")
    lines.append(f"  loaded: {len(m.state)} tensors" + (f" (file epoch {epoch})" if isinstance(epoch, int) else ""))
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in m.state.values()} - {"float32"})
    if dtypes:
        lines.append(f"  cast: {', '.join(dtypes)} tensors in the file to the model's dtype")
    fresh_groups = [(prefix_label(p), sum(k.startswith(p) for k in target), reason) for p, reason in m.fresh]
    lines += grouped("dropped", [(label, len(keys), reason) for label, keys, reason in m.dropped])
    lines += grouped("initialised fresh", [g for g in fresh_groups if g[1]])
    return "\n".join(lines)


def init_pretrain_from(model: VideoMAEPretrain, path: str | os.PathLike) -> str:
    """Initialise a pretraining model from any accepted source (see the module docstring).

    A pretraining file fills every tensor; an encoder or fine-tuning file fills the encoder and leaves the decoder,
    ``mask_token`` and ``encoder_to_decoder`` (and the encoder's final norm, if the file has none) at initialisation.

    Returns:
        The mapping report (several lines) for the caller to print or log.

    Raises:
        UserError: unreadable file, keys that do not match exactly, or a shape difference (the key and both shapes).
    """
    if not isinstance(model, VideoMAEPretrain):
        raise TypeError(f"init_pretrain_from needs a VideoMAEPretrain, got {type(model).__name__}")
    return _apply(model, path)


def init_classifier_from(model: VideoMAEClassifier, path: str | os.PathLike, reset_head: bool | None = None) -> str:
    """Initialise a classifier from any accepted source (see the module docstring).

    From a pretraining file or encoder export: the encoder blocks and patch embedding load, ``fc_norm`` and ``head``
    start fresh, the encoder's final norm is dropped (kept with ``use_mean_pooling=False``). From a fine-tuning file:
    everything loads, except a head for another number of classes, which is dropped and left at initialisation
    (``reset_head=None``, the release's behaviour), or is an error (``reset_head=False``, fine-tuning's default: the
    error names ``--reset-head``); ``reset_head=True`` never loads the file's head.

    Returns and raises as `init_pretrain_from`.
    """
    if not isinstance(model, VideoMAEClassifier):
        raise TypeError(f"init_classifier_from needs a VideoMAEClassifier, got {type(model).__name__}")
    return _apply(model, path, reset_head)


def init_from(model: VideoMAEPretrain | VideoMAEClassifier, path: str | os.PathLike) -> str:
    """`init_pretrain_from` or `init_classifier_from`, by the model's type."""
    if isinstance(model, VideoMAEPretrain):
        return init_pretrain_from(model, path)
    return init_classifier_from(model, path)
