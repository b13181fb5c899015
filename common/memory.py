"""Sizes no machine here can hold, refused before anything starts.

A typo such as ``--num-frames 100000`` or ``--input-size 100000`` used to end with the kernel's out-of-memory killer
(exit 137, no message) in a loader worker, or with a deep allocator traceback. These checks compare what a command
must hold at the least (its input batch) with the memory still free, and stop with one line naming the flags. They
are lower bounds: the model's activations come on top, so passing them does not promise that a run fits.
"""

from __future__ import annotations

import os

from common.errors import UserError

GIB = 2**30


def available_memory() -> int | None:
    """Bytes this machine can still give a process: free RAM plus free swap (Linux's ``/proc/meminfo``), else the
    physical memory; None when neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if len(line.split()) > 1}
        return info["MemAvailable"] + info.get("SwapFree", 0)
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need: int, what: str, fix: str) -> None:
    """`UserError` when ``need`` bytes (``what`` names what they hold) are more than the memory still free."""
    free = available_memory()
    if free is not None and need > free:
        raise UserError(f"{what}: {need / GIB:,.1f} GiB, more than the {free / GIB:,.1f} GiB of memory this "
                        f"machine has free; {fix}")


def check_clips_fit(batch_size: int, num_frames: int, input_size: int, *, batch_flag: str = "--batch-size",
                    bytes_per_value: int = 4, copies: int = 1) -> None:
    """``copies`` batches of ``(3, T*, H*, W*)`` clips must fit; `UserError` naming the flags otherwise.

    Float32 (4 bytes) for training: the loader builds each batch in host memory before any GPU sees it. A picture
    of a clip holds uint8 frames (1 byte) a few times over (the decoded frames, the clip, the contact sheet).
    Without a ``batch_flag`` the batch is one clip.
    """
    need = copies * batch_size * 3 * num_frames * input_size**2 * bytes_per_value
    what = f"{batch_flag} {batch_size}: clips" if batch_flag else "a clip"
    kind = {1: "uint8", 4: "float32"}.get(bytes_per_value, f"{bytes_per_value}-byte values")
    times = f" ({copies} copies)" if copies > 1 else ""
    fix = f"lower --num-frames, --input-size or {batch_flag}" if batch_flag else "lower --num-frames or --input-size"
    check_fits(need, f"{what} of --num-frames {num_frames} x --input-size {input_size} x {input_size} as {kind}{times}",
               fix)
