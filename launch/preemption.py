"""Stopping a run cleanly: checkpoint at the next step boundary on a signal, then requeue under SLURM.

Submit with ``#SBATCH --signal=USR1@120`` (or ``B:USR1@120`` plus forwarding in the script): SLURM sends SIGUSR1
two minutes before the time limit. SIGTERM (preemption, ``scancel``, ``timeout``, a launcher passing on a Ctrl-C) and
SIGINT (Ctrl-C) are handled the same way, under SLURM or not. The handler only sets a flag; the training loop asks
at every step boundary whether any rank has received one (the flag rides on the collective each micro-batch makes
anyway, `launch.loop.LoopState.loss_is_finite`, so all ranks agree without another host read), writes a checkpoint,
and `requeue` puts a SLURM job back in the queue, where ``--resume auto`` continues.

A second SIGINT (or a second SIGTERM) ends the process at once, without a checkpoint: the first one hands the signal
back to its default action, which the kernel carries out even while the process is blocked in a collective. A rank
blocked in a collective because another rank died never reaches its step boundary; its launcher ends it (DeepSpeed's
launcher and torchrun send SIGKILL 30 s after their SIGTERM, SLURM after its ``KillWait``).
"""

from __future__ import annotations

import os
import signal
import subprocess


class StopRequest:
    """Catches SIGUSR1, SIGINT and SIGTERM: the first of each asks for a checkpoint at the next step boundary, a
    second SIGINT or SIGTERM kills the process (their default action) at once.

    Args:
        signals: the signals to catch (default: SIGUSR1, SIGINT, SIGTERM).
        announce: say on stderr, as the signal arrives, what will happen (rank 0).
    """

    def __init__(self, signals: tuple[int, ...] | None = None, *, announce: bool = True):
        if signals is None:
            signals = (signal.SIGUSR1, signal.SIGINT, signal.SIGTERM)
        self.received: int | None = None
        self.announce = announce
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        first = self.received is None
        if first:
            self.received = signum
        again = ""
        if signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)  # the next one kills at once, even inside a blocking call
            again = f"; {signal.Signals(signum).name} again aborts without one"
        if self.announce:
            what = "stopping at the end of this step with a checkpoint" if first else "already stopping"
            # os.write, not print: the handler may run while the main thread is inside a print to the same stream
            os.write(2, f"\n{signal.Signals(signum).name}: {what}{again}\n".encode())

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
