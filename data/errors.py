"""Error types shared by the whole pipeline.

`UserError` is bad input the user can fix (a missing path, an unknown preset, N < 1): its message is one line that
names the problem and the fix, and the command line turns it into exit code 2 with no traceback.
`DecodeError` is a single sample that cannot be read; the readers skip it, count it and go on.
"""


class UserError(ValueError):
    """Bad arguments or input files; the message names the problem and the fix."""


class DecodeError(RuntimeError):
    """One video could not be decoded (corrupt, empty, timed out); the sample is skipped and counted."""
