"""Error types shared by the whole pipeline.

`UserError` is bad input the user can fix (a missing path, an unknown preset, N < 1): its message is one line that
names the problem and the fix, and the command line turns it into exit code 2 with no traceback.
`DecodeError` is a single sample that cannot be read; the readers skip it, count it and go on.
"""


class UserError(ValueError):
    """Bad arguments or input files; the message names the problem and the fix."""


class DecodeError(RuntimeError):
    """One video could not be decoded (corrupt, empty, timed out); the sample is skipped and counted."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` as the one line a user should see.

    An error raised in a DataLoader worker reaches the training process re-raised with torch's wrapper text ("Caught
    UserError in DataLoader worker process 0.", then the worker's whole traceback); its own message is the last line
    of that text, after the exception's name.
    """
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    name = type(err).__name__
    for prefix in (f"{type(err).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last
