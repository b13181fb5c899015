"""Compatibility name: the error types live in `common.errors` (the ground floor every package may import)."""

from common.errors import DecodeError, UserError, one_line

__all__ = ["DecodeError", "UserError", "one_line"]
