"""Models: pure nn.Modules and their builders (no argparse, no DeepSpeed)."""

from models.registry import (
    CLASSIFIERS,
    DEFAULT_MODEL,
    MODELS,
    ModelEntry,
    ViTSize,
    build_classifier,
    build_pretrain,
    check_input,
    get_entry,
)
from models.videomae import VideoMAEClassifier, VideoMAEPretrain, patchify_target

__all__ = [
    "CLASSIFIERS",
    "DEFAULT_MODEL",
    "MODELS",
    "ModelEntry",
    "VideoMAEClassifier",
    "VideoMAEPretrain",
    "ViTSize",
    "build_classifier",
    "build_pretrain",
    "check_input",
    "get_entry",
    "patchify_target",
]
