"""Named VideoMAE sizes and the two builders.

``MODELS`` is an explicit dict, name -> `ViTSize`; each size builds both the pretraining model and the classifier.
Sizes follow the release (encoder width/depth/heads; decoder width/depth/heads): S 384/12/6, 192/4/3; B 768/12/12,
384/4/6; L 1024/24/16, 512/12/8; H 1280/32/16, 640/12/8. ``vit_tiny`` (192/12/3, decoder 96/4/3, DeiT-Tiny widths
with the half-width decoder of S and B) has no released weights; it exists for tests and smoke runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.errors import UserError
from models.videomae import VideoMAEClassifier, VideoMAEPretrain


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
    "vit_tiny": ViTSize(192, 12, 3, 96, 4, 3),
    "vit_small": ViTSize(384, 12, 6, 192, 4, 3),
    "vit_base": ViTSize(768, 12, 12, 384, 4, 6),
    "vit_large": ViTSize(1024, 24, 16, 512, 12, 8),
    "vit_huge": ViTSize(1280, 32, 16, 640, 12, 8),
}
DEFAULT_MODEL = "vit_base"


def get_size(name: str) -> ViTSize:
    """The named size; `UserError` naming the choices for an unknown name."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def build_pretrain(name: str = DEFAULT_MODEL, **overrides: Any) -> VideoMAEPretrain:
    """Pretraining model of a named size, e.g. ``build_pretrain("vit_base", num_frames=8, drop_path_rate=0.1)``."""
    return get_size(name).build_pretrain(**overrides)


def build_classifier(name: str, num_classes: int, **overrides: Any) -> VideoMAEClassifier:
    """Classifier of a named size, e.g. ``build_classifier("vit_base", 400, drop_path_rate=0.1)``."""
    return get_size(name).build_classifier(num_classes, **overrides)
