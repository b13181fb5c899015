"""The ground floor: what every package may import and nothing of ours below it.

- `common.errors`: `UserError` (bad input, one line, exit 2), `DecodeError` (one unreadable sample), `one_line`;
- `common.files`: atomic file writing (bytes, text, ``torch.save``, a matplotlib figure);
- `common.dist`: `distributed`, whether a process group is up;
- `common.constants`: the ImageNet statistics, video and image file extensions, modality names;
- `common.cpu`: `prefer_passive_wait`, the OpenMP wait policy the training entry points set before torch loads.

This package imports only the standard library at import time (torch and matplotlib only inside the functions that
need them), so that ``data``, ``models`` and ``launch`` can all stand on it without importing one another.
"""

from common.constants import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, MODALITIES, VIDEO_EXTENSIONS
from common.dist import is_distributed
from common.errors import DecodeError, UserError, one_line
from common.files import atomic_save, atomic_write, atomic_write_bytes, atomic_write_figure, atomic_write_text

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "MODALITIES", "VIDEO_EXTENSIONS",
    "DecodeError", "UserError", "one_line",
    "atomic_save", "atomic_write", "atomic_write_bytes", "atomic_write_figure", "atomic_write_text",
    "is_distributed",
]
