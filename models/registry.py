"""The model registry: named classifiers of every family behind one factory signature, and the VideoMAE sizes.

``CLASSIFIERS`` is an explicit dict, name -> `ModelEntry` (family and factory). Every factory has one signature,
``factory(num_classes, num_frames, img_size, drop_path=0.0, **options)``, and every classifier takes ``(B, 3, T, H,
W)`` and returns ``(B, num_classes)`` with timm's interface (``forward_features``, ``forward_head``,
``reset_classifier``, ``no_weight_decay``, ``num_layer_ids`` / ``get_layer_id`` for layer decay). Families:

* ``videomae``: the VideoMAE ViT classifiers (``vit_mini``, ``vit_tiny`` ... ``vit_huge``), options are
  `VideoMAEClassifier`'s keyword names (``use_mean_pooling``, ``attn_impl``, ``depth``, ...);
* ``resnet``: ``resnet18`` / ``resnet50`` / ``resnet101`` run TSN-style over the frames, optionally with a temporal
  module (`models.tsn`, `models.temporal`);
* ``vit``: ``vit_b16``, timm's image ViT-B/16 run TSN-style.

``MODELS`` is the dict of VideoMAE sizes, name -> `ViTSize`; each size builds both the pretraining model and the
classifier.
Sizes follow the release (encoder width/depth/heads; decoder width/depth/heads): S 384/12/6, 192/4/3; B 768/12/12,
384/4/6; L 1024/24/16, 512/12/8; H 1280/32/16, 640/12/8. ``vit_tiny`` (192/12/3, decoder 96/4/3, DeiT-Tiny widths
with the half-width decoder of S and B) has no released weights; it exists for tests and smoke runs. ``vit_mini``
(192/2/3, decoder 96/1/3) is vit_tiny two blocks deep, the quickstart's model: on 2 CPU cores its masked
reconstruction loss falls within minutes, where twelve blocks sit at the "predict zeros" plateau for hundreds of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.errors import UserError
from models.videomae import PATCH_SIZE, TUBELET_SIZE, VideoMAEClassifier, VideoMAEPretrain


@dataclass(frozen=True)
class ViTSize:
    """Widths and depths of one named size; ``build_*`` take the official keyword names as overrides."""

    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int

    def build_pretrain(self, **overrides: Any) -> VideoMAEPretrain:
        """`VideoMAEPretrain` of this size; ``overrides`` use its keyword names (e.g. ``encoder_depth=2``)."""
        kwargs = dict(
            encoder_embed_dim=self.embed_dim,
            encoder_depth=self.depth,
            encoder_num_heads=self.num_heads,
            decoder_embed_dim=self.decoder_embed_dim,
            decoder_depth=self.decoder_depth,
            decoder_num_heads=self.decoder_num_heads,
        )
        return VideoMAEPretrain(**{**kwargs, **overrides})

    def build_classifier(self, num_classes: int, **overrides: Any) -> VideoMAEClassifier:
        """`VideoMAEClassifier` of this size; ``overrides`` use its keyword names (e.g. ``all_frames=8``)."""
        kwargs = dict(embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads)
        return VideoMAEClassifier(num_classes=num_classes, **{**kwargs, **overrides})


MODELS: dict[str, ViTSize] = {
    "vit_mini": ViTSize(192, 2, 3, 96, 1, 3),
    "vit_tiny": ViTSize(192, 12, 3, 96, 4, 3),
    "vit_small": ViTSize(384, 12, 6, 192, 4, 3),
    "vit_base": ViTSize(768, 12, 12, 384, 4, 6),
    "vit_large": ViTSize(1024, 24, 16, 512, 12, 8),
    "vit_huge": ViTSize(1280, 32, 16, 640, 12, 8),
}
DEFAULT_MODEL = "vit_base"


@dataclass(frozen=True)
class ModelEntry:
    """One named classifier: its family (which recipe and checkpoint filters apply), its factory, and what its input
    must tile into: ``frames_per_token`` (VideoMAE's tubelet, else 1) and ``patch`` pixels (1: any size)."""

    family: str
    factory: Callable[..., nn.Module]
    frames_per_token: int = 1
    patch: int = 1


def _videomae_factory(size: ViTSize) -> Callable[..., nn.Module]:
    def build(num_classes: int, num_frames: int = 16, img_size: int = 224, drop_path: float = 0.0,
              **options: Any) -> VideoMAEClassifier:
        kwargs = dict(all_frames=num_frames, img_size=img_size, drop_path_rate=drop_path)
        return size.build_classifier(num_classes, **{**kwargs, **options})

    return build


def _tsn_factory(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, num_frames: int = 8, img_size: int = 224, drop_path: float = 0.0,
              **options: Any) -> nn.Module:
        from models import tsn  # imports timm: only when a frame-level model is built

        return getattr(tsn, name)(num_classes, num_frames, img_size, drop_path=drop_path, **options)

    return build


CLASSIFIERS: dict[str, ModelEntry] = {
    **{name: ModelEntry("videomae", _videomae_factory(size), TUBELET_SIZE, PATCH_SIZE)
       for name, size in MODELS.items()},
    "resnet18": ModelEntry("resnet", _tsn_factory("resnet18")),
    "resnet50": ModelEntry("resnet", _tsn_factory("resnet50")),
    "resnet101": ModelEntry("resnet", _tsn_factory("resnet101")),
    "vit_b16": ModelEntry("vit", _tsn_factory("vit_b16"), 1, 16),  # timm's vit_base_patch16
}


def get_size(name: str) -> ViTSize:
    """The named VideoMAE size; `UserError` naming the choices for an unknown name."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def get_entry(name: str) -> ModelEntry:
    """The named classifier; `UserError` naming the choices for an unknown name."""
    if name not in CLASSIFIERS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name]


def build_pretrain(name: str = DEFAULT_MODEL, **overrides: Any) -> VideoMAEPretrain:
    """Pretraining model of a named size, e.g. ``build_pretrain("vit_base", num_frames=8, drop_path_rate=0.1)``."""
    return get_size(name).build_pretrain(**overrides)


def build_classifier(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """A named classifier: ``build_classifier("resnet50", 30, num_frames=8, img_size=224, temporal="trm")``.

    ``kwargs`` are the factory's (``num_frames``, ``img_size``, ``drop_path``) and the family's options.
    """
    return get_entry(name).factory(num_classes, **kwargs)


def check_input(name: str, num_frames: int, input_size: int) -> None:
    """`UserError` (naming the flag, the model's own value and the fix) unless ``--num-frames`` and ``--input-size``
    tile into the named model's tokens; the values come from the model's entry, never re-typed by a caller."""
    entry = get_entry(name)
    k, p = entry.frames_per_token, entry.patch
    tokens = f"{k} x {p} x {p} tubelets" if k > 1 else f"{p} x {p} patches"
    if input_size % p:
        raise UserError(f"--input-size {input_size} is not divisible by the patch size {p} of --model {name} (its "
                        f"tokens are {tokens}); use a multiple of {p}, e.g. {max(p, input_size // p * p)} or 224")
    if num_frames % k:
        raise UserError(f"--num-frames {num_frames} is not divisible by the tubelet size {k} of --model {name} (its "
                        f"tokens are {tokens}); use a multiple of {k}, e.g. 16")
