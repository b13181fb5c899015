"""Time limits and preemption: checkpoint at the next step boundary when SLURM (or anyone) warns, then requeue.

Submit with ``#SBATCH --signal=USR1@120`` (or ``B:USR1@120`` plus forwarding in the script): SLURM sends SIGUSR1
two minutes before the time limit. SIGTERM (preemption, ``scancel``) is handled the same way. The handler only sets
a flag; the training loop asks `StopRequest.should_stop` at every step boundary (all ranks agree through one
all-reduce), writes a checkpoint, and `requeue` puts the job back in the queue, where ``--resume auto`` continues.
"""

from __future__ import annotations

import os
import signal
import subprocess

import torch


class StopRequest:
    """Catches SIGUSR1 always, and SIGTERM inside a SLURM job (preemption). Outside SLURM, SIGTERM keeps its default
    action: launchers such as DeepSpeed's send it to stop the other ranks when one fails, and those must exit."""

    def __init__(self, signals: tuple[int, ...] | None = None):
        if signals is None:
            signals = (signal.SIGUSR1, signal.SIGTERM) if "SLURM_JOB_ID" in os.environ else (signal.SIGUSR1,)
        self.received: int | None = None
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.received = signum

    def should_stop(self, device: torch.device) -> bool:
        """True on every rank when any rank has received a signal (collective: call it on all ranks)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"


def requeue() -> str:
    """Requeue this SLURM job (``scontrol requeue``); returns what happened, for the log."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job: not requeued"
    if os.environ.get("TIMEMAE_REQUEUE", "1") == "0":
        return f"SLURM job {job}: requeue disabled (TIMEMAE_REQUEUE=0)"
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"SLURM job {job}: scontrol requeue failed ({err})"
    if out.returncode != 0:
        return f"SLURM job {job}: scontrol requeue failed ({out.stderr.strip() or out.returncode})"
    return f"SLURM job {job} requeued"
