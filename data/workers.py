"""Loader-worker tuning: the thread budget, the C heap, the garbage collector and signals of a data-loading process.

`worker_init` is the DataLoader ``worker_init_fn`` of `data.stream.make_loader`; the thread budget also sets the
default decoder threads of `data.decode.open_video`.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading

import torch

from common.errors import UserError

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
WORKER_THREADS_ENV = "TIMEMAE_WORKER_THREADS"
MMAP_THRESHOLD = 64 << 20  # bytes; see keep_freed_memory
TRIM_THRESHOLD = 256 << 20
_thread_budget = 1


def set_thread_budget(n: int = 1) -> None:
    """Limit one data-loading process to ``n`` compute threads.

    Sets torch's intra-op threads, OpenCV's (when installed), the OpenMP/BLAS environment variables (read by libraries
    that initialise later and by child processes) and the default decoder threads of `open_video`. With W workers on
    C cores, n = C // W keeps the workers from oversubscribing the cores.
    """
    global _thread_budget
    n = int(n)
    if n < 1:
        raise UserError(f"thread budget {n} is < 1; use 1 or more threads per worker")
    _thread_budget = n
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        import cv2  # optional: only when something in the process uses OpenCV
    except ImportError:
        return
    cv2.setNumThreads(n)


def thread_budget() -> int:
    """The current per-process decode thread budget (1 until `set_thread_budget` changes it)."""
    return _thread_budget


def keep_freed_memory() -> bool:
    """Let this process's C heap keep freed memory for reuse instead of handing it back to the kernel (glibc only).

    A loader worker allocates and frees the same large blocks for every clip (decoded frames, about 4 MB; the float
    clip, 9.6 MB at 16 x 224 x 224). With glibc's default, blocks that large come from fresh ``mmap`` pages, or are
    trimmed off the heap when freed, so every clip page-faults its buffers in again, a large share of everything
    besides decoding. Raising the mmap threshold to 64 MiB and the trim threshold to
    256 MiB keeps the blocks in the heap (at most 256 MiB of freed memory stays with the process).

    Returns:
        Whether the thresholds were set (False without glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt parameter numbers from glibc's malloc.h; mallopt returns 1 on success.
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for a DataLoader: ``set_thread_budget($TIMEMAE_WORKER_THREADS or 1)``,
    `keep_freed_memory`, `freeze_inherited_objects`, and signals left to the training process.

    A worker gets the signals meant for its training process too: a terminal's Ctrl-C (SIGINT) and SLURM's SIGUSR1
    reach the whole process group or job step, ``timeout``'s SIGTERM the process group, and the DeepSpeed launcher
    sends SIGTERM to every process under each rank. The training process stops at its next step boundary, writes a
    checkpoint and then ends its workers; a worker that died first would fail that step. So SIGINT and SIGUSR1 are
    ignored, and SIGTERM is acted on only when it comes from the parent (torch's own worker handler does the same for
    the parent's SIGTERM); from anyone else it is dropped. A worker whose parent is gone exits by itself (torch checks
    every few seconds), so none outlives an aborted run. Signals are changed in DataLoader workers only.
    """
    import signal

    del worker_id  # every worker gets the same budget
    raw = os.environ.get(WORKER_THREADS_ENV, "1")
    try:
        n = int(raw)
    except ValueError:
        raise UserError(f"{WORKER_THREADS_ENV}={raw!r} is not a whole number; set it to e.g. 1") from None
    if torch.utils.data.get_worker_info() is not None:  # a DataLoader worker, not a pool or the caller's process
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        parent = os.getppid()

        def parents_sigterm_only() -> None:
            while True:
                if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                    os._exit(0)

        # SIGTERM stays pending (blocked in every thread, decoder threads started later included) until this
        # thread takes it, with the sender's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=parents_sigterm_only, name="sigterm-from-parent", daemon=True).start()
    set_thread_budget(n)
    keep_freed_memory()
    freeze_inherited_objects()


def freeze_inherited_objects() -> int:
    """Move every object this process holds now out of reach of Python's cyclic garbage collector (``gc.freeze``).

    A loader worker starts with everything its parent had (torch, the model, the trainer: hundreds of thousands of
    tracked objects), none of which it frees. Each full collection walks all of them, a pause every thousand or so
    clips, and in a forked worker it writes to every object's header, so the pages it shares with the trainer get
    copied. Frozen, they are never walked; the worker's own garbage is collected as before.

    Returns:
        The number of objects frozen so far.
    """
    gc.freeze()
    return gc.get_freeze_count()
