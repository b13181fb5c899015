"""Run logging on rank 0: ``log.jsonl`` (one JSON object per logged step), tensorboard events, a console line, and
on an interactive terminal a progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np


class RunLogger:
    """Writes nothing on ranks other than 0 (``enabled=False``), so callers need no rank checks.

    ``progress``: show a progress bar (`open_progress`, `advance`); default: when stderr is an interactive terminal.
    The console lines are then written above the bar; without one they are plain lines.
    """

    def __init__(self, output_dir: str, *, enabled: bool = True, tensorboard: bool = True,
                 progress: bool | None = None):
        self.enabled = enabled
        self.output_dir = output_dir
        self.progress = enabled and (sys.stderr.isatty() if progress is None else progress)
        self._bar = None
        self._bar_loss: float | None = None  # the loss the bar shows: the latest logged step's
        self._tb = None
        self._jsonl = None
        self._start = time.time()
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._jsonl = open(os.path.join(output_dir, "log.jsonl"), "a", buffering=1)  # noqa: SIM115 - lives with run
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard; rank 0 only

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def info(self, message: str) -> None:
        if self.enabled:
            self._print(message)

    def _print(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stdout)  # clears the bar, prints, draws it again
            sys.stdout.flush()
        else:
            print(message, flush=True)

    def open_progress(self, total: int, done: int) -> None:
        """The progress bar of steps ``done``..``total`` (a resumed run starts part way; the ETA counts this run)."""
        if not self.progress or self._bar is not None:
            return
        from tqdm import tqdm

        try:
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except OSError:
            sized = False
        # a terminal that reports no size (a bare pty) would get no bar at all from tqdm: a fixed size instead
        self._bar = tqdm(total=total, initial=done, file=sys.stderr, dynamic_ncols=sized, ncols=None if sized else 100,
                         nrows=None if sized else 24, smoothing=0.1,
                         bar_format="step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| "
                                    "[{elapsed}, ETA {remaining}{postfix}]")

    def advance(self, step: int, clips_per_s: float, *, loss: float | None = None) -> None:
        """Move the bar to ``step``, showing clips per second and the loss of the latest logged step (the loss is
        read from the device at log steps only)."""
        if self._bar is None:
            return
        if loss is not None:
            self._bar_loss = loss
        shown = f"loss {self._bar_loss:.4f}, " if self._bar_loss is not None else ""
        self._bar.set_postfix_str(f"{shown}{clips_per_s:.1f} clips/s", refresh=False)
        self._bar.update(step - self._bar.n)

    def log_step(self, step: int, values: dict[str, Any], *, console: bool = True, prefix: str = "train") -> None:
        """One JSON line, tensorboard scalars under ``{prefix}/`` (``train/``, ``eval/``), and a console line."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        record["time_s"] = round(time.time() - self._start, 3)
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
        if console:
            parts = [f"step {step}"]
            for key, fmt in (("loss", ".4f"), ("lr", ".3e"), ("grad_norm", ".3f"), ("clips_per_s", ".1f"),
                             ("data_wait_s", ".3f"), ("max_mem_gib", ".1f")):
                if key in values and values[key] is not None:
                    parts.append(f"{key} {values[key]:{fmt}}")
            self._print("  ".join(parts))

    def log_images(self, tag: str, images: np.ndarray, step: int) -> None:
        """images: (N, H, W, 3) uint8."""
        if self.enabled and self._tb is not None:
            self._tb.add_images(tag, images, step, dataformats="NHWC")

    def drop_after(self, step: int) -> None:
        """Drop the ``log.jsonl`` records of steps after ``step`` (a resumed run replays them), so that each step
        appears once; the file is rewritten atomically."""
        if not self.enabled:
            return
        from common.files import atomic_write_text

        self._jsonl.close()
        path = os.path.join(self.output_dir, "log.jsonl")
        kept = []
        with open(path) as fh:
            for line in fh:
                try:
                    if int(json.loads(line).get("step", 0)) > step:
                        continue
                except (ValueError, TypeError, AttributeError):
                    pass  # a torn last line of a killed run: kept as it is, it is the user's record
                kept.append(line if line.endswith("\n") else line + "\n")
        atomic_write_text(path, "".join(kept))
        self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115 - lives with the run

    def flush(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
        self._jsonl.close()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if hasattr(value, "item"):
        return value.item()
    return value
