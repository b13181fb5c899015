"""Compatibility name for `tools.preview`: the same module object, so that imports and patches written against
this older name reach it."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("tools.preview")
