"""Compatibility name for `data.prep.presets`: the same module object, so that imports and patches written against
this older name reach it."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("data.prep.presets")
