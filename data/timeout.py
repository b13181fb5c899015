"""The decode timeout: run a decode in a reusable daemon thread and give up on it after a time limit."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from common.errors import DecodeError

T = TypeVar("T")


class _DecodeThread:
    """A long-lived daemon thread that runs one calling thread's decodes, one at a time.

    Reused across decodes: starting a thread per clip costs CPU on every clip (thread start-up, and fresh malloc arenas
    for the frames), a visible share of the work outside decoding in `timemae bench-loader`.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="timemae-decode", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.jobs.get()
            try:
                box["value"] = fn()
            except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread, which re-raises it
                box["error"] = err
            done.release()
            del fn, box, done  # drop the finished job's references before waiting for the next one

    def usable(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive()


_decode_threads = threading.local()


def decode_with_timeout(fn: Callable[[], T], timeout_s: float | None, *, what: str = "decode") -> T:
    """Run ``fn()``; give up with DecodeError if it takes longer than ``timeout_s``.

    ``fn`` runs in a daemon thread and the caller waits ``timeout_s`` for it. A thread, not SIGALRM: an alarm only
    works in a process's main thread, replaces any other SIGALRM handler, and its handler only runs between Python
    bytecodes, so it cannot interrupt a decoder stuck in C either. A thread works the same in the main process, in
    DataLoader worker processes and in threads, and the caller gets control back even while the decoder is stuck in C
    (PyAV and decord release the GIL while decoding). The price: an abandoned decode cannot be killed; it goes on in
    the background until it finishes (daemon threads never keep the process alive), so ``fn`` must not share mutable
    state with the caller. Each calling thread (per process: a forked DataLoader worker starts its own) keeps one
    decode thread for all its decodes; after a timeout the stuck thread is abandoned and the next decode starts a new
    one.

    Args:
        fn: the work, e.g. ``lambda: load_clip(open_video(data), spec, rng)``.
        timeout_s: seconds; None or <= 0 runs ``fn`` directly with no limit.
        what: names the work in the error message (e.g. the sample key).

    Returns:
        ``fn()``'s result; exceptions from ``fn`` are re-raised as they are.

    Raises:
        DecodeError: ``fn`` did not finish in time.
    """
    if timeout_s is None or timeout_s <= 0:
        return fn()
    runner = getattr(_decode_threads, "runner", None)
    if runner is None or not runner.usable():
        runner = _decode_threads.runner = _DecodeThread()
    box: dict[str, Any] = {}
    # A held lock that the decode thread releases when done: waiting on it is one C call, where an Event's wait runs a
    # Condition's Python code on both sides (slow with the caches cold after decoding).
    done = threading.Lock()
    done.acquire()
    runner.jobs.put((fn, box, done))
    if not done.acquire(timeout=timeout_s):
        _decode_threads.runner = None  # still busy with the stuck decode: abandon it
        raise DecodeError(f"{what}: timed out after {timeout_s:g} s (abandoned)")
    if "error" in box:
        raise box["error"]
    return box["value"]
