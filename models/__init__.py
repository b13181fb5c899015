"""Models: pure nn.Modules and their builders (no argparse, no DeepSpeed)."""

from models.registry import DEFAULT_MODEL, MODELS, ViTSize, build_classifier, build_pretrain
from models.videomae import VideoMAEClassifier, VideoMAEPretrain, patchify_target

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "VideoMAEClassifier",
    "VideoMAEPretrain",
    "ViTSize",
    "build_classifier",
    "build_pretrain",
    "patchify_target",
]
