"""Run checkpoints: DeepSpeed's sharded save plus what a resume needs, committed atomically.

Layout under ``<output_dir>/checkpoints``::

    step_00001000/          DeepSpeed files of every rank (model, ZeRO optimizer partitions)
                            rng_rank{r}.pt  python / numpy / torch RNG states of rank r
                            stream_rank{r}.json  rank r's data position (clips consumed per loader worker)
                            COMPLETE        JSON (step, world size, ZeRO stage), written last
    latest                  the name of the newest complete checkpoint; replaced atomically (rename)

A checkpoint counts only once every rank has written its files (barrier) and rank 0 has written ``COMPLETE``; only
then does ``latest`` move. A crash or SIGKILL in the middle of a save leaves the previous checkpoint as ``latest``.
Resuming with another number of ranks: ZeRO optimizer partitions do not fit, so the fp32 weights are consolidated
from the checkpoint (DeepSpeed's zero_to_fp32) and the optimizer moments start afresh; the run says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import random
import shutil
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.files import atomic_save, atomic_write_bytes, atomic_write_figure, atomic_write_text  # noqa: F401
from launch import distributed
from models.checkpoint import load_file

log = logging.getLogger(__name__)

PREFIX = "step_"


def check_writable(folder: str, flag: str = "--output-dir") -> None:
    """Create ``folder`` if needed and prove a file can be written in it (a probe, removed again).

    Raises:
        UserError: one line naming the folder, the reason (a file in the way, read-only, ...) and the fix.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder} is a file, not a folder; give a folder you can write to")
    probe = os.path.join(folder, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w") as fh:
            fh.write("ok\n")
        os.remove(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"{flag} {folder} cannot be written ({reason}: {err.filename or folder}); give a folder you "
                        "can write to") from None


RUN_LOCK = ".run-lock"
_held_locks: list[int] = []  # descriptors of the run-folder locks this process holds, open until it ends


def _try_lock(folder: str) -> dict | None:
    """None when this process now holds ``folder``'s lock, else what the holder wrote (``{}`` when unreadable)."""
    try:
        fd = os.open(os.path.join(folder, RUN_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None  # a lock file this user cannot open (another user's run left it): no protection, nothing refused
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        text = os.pread(fd, 512, 0).decode(errors="replace") if err.errno in (errno.EACCES, errno.EAGAIN) else None
        os.close(fd)  # this process holds no lock on the file: closing drops nothing
        if text is None:
            return None  # a file system without record locks: no protection, nothing refused
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}
        return holder if isinstance(holder, dict) else {}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _held_locks.append(fd)
    return None


def lock_run_folder(folder: str, wait_s: float = 10.0) -> tuple[str, str]:
    """Take ``folder``'s run lock (``.run-lock``): ``(refusal, note)``, both "" when this process now holds it.

    A POSIX record lock (``lockf``): it belongs to this process, so loader workers forked from it do not hold it, and
    the kernel drops it when the process ends however it ends (SIGKILL included), so a killed run leaves no stale
    lock; a holder still exiting gets ``wait_s`` seconds. ``refusal`` names a live holder on this machine. A holder
    on another machine is not refused, only noted: a network file system keeps the lock of a node that died for a
    while (an NFSv4 lease: about 90 s), and a job requeued after such a failure must not be turned away. A file
    system without record locks gives no protection.
    """
    deadline = time.monotonic() + wait_s
    while True:
        holder = _try_lock(folder)
        if holder is None:
            return "", ""
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        if holder.get("host", socket.gethostname()) != socket.gethostname():
            return "", f"note: {folder} is locked by {who}: another machine, perhaps one that died; going on"
        if time.monotonic() >= deadline:
            return who, ""
        time.sleep(0.5)


def rng_state() -> dict:
    """This process's RNG states as plain data (ints, floats, tensors), so the file loads with weights_only=True."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> bool:
    """Restore what `rng_state` saved; False (nothing restored but torch's) for files of the older pickled format,
    which are not unpickled."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    py, npy = state.get("python"), state.get("numpy")
    if not isinstance(py, dict) or not isinstance(npy, dict):
        return False
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    return True


def deepspeed_safe_globals() -> tuple[type, ...]:
    """The DeepSpeed classes its own ZeRO optimizer-state files pickle. Allowed by the safe loader: restored as
    plain attribute holders or enum members; unlike a REDUCE of an arbitrary callable, none of them runs code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def safe_load(path: str, map_location: Any = "cpu") -> dict:
    """A checkpoint file of a run (ours or DeepSpeed's) with ``weights_only=True``: a tampered file is refused with
    one line naming it, and nothing in it runs."""
    return load_file(path, allow=deepspeed_safe_globals(), map_location=map_location)


def make_loads_safe(engine) -> None:
    """Route every file DeepSpeed's engine loads through `safe_load` (its own loader unpickles fully).

    Only ``load`` of the engine's checkpoint engine is replaced; saving is untouched.
    """
    engine.checkpoint_engine.load = lambda path, map_location=None: safe_load(path, map_location or "cpu")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, I/O error); the previous complete one is untouched."""


def fsync_tree(folder: str) -> None:
    """fsync every file under ``folder`` and the folders themselves (no-op for a missing folder).

    Other ranks write into the same folder meanwhile: a file that vanishes between listing and opening was a
    temporary file renamed by its writer (`atomic_save`, which fsyncs it itself), so it is passed over.
    """
    for root, _, files in os.walk(folder):
        for path in [*(os.path.join(root, name) for name in files), root]:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class CheckpointManager:
    def __init__(self, output_dir: str, *, rank: int, keep_last: int = 2):
        self.root = os.path.join(output_dir, "checkpoints")
        self.rank = rank
        self.keep_last = max(1, keep_last)

    def complete_tags(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        if not os.path.isdir(self.root):
            return []
        tags = [t for t in os.listdir(self.root) if t.startswith(PREFIX) and self.is_complete(t)]
        return sorted(tags)

    def is_complete(self, tag: str) -> bool:
        return os.path.isfile(os.path.join(self.root, tag, "COMPLETE"))

    def save(self, engine, step: int, client_state: dict, info: dict, stream: dict | None = None) -> str:
        """Collective: every rank calls it. Returns the checkpoint folder.

        Every rank's files are fsynced before rank 0 writes ``COMPLETE``, so a checkpoint that says it is complete
        is on disk. A write that fails (a full disk: torch says "unexpected pos", the OS "No space left") raises
        `CheckpointWriteError` naming the folder, the free space and the last complete checkpoint, which is kept.
        ``stream`` (this rank's data position, plain data) goes to ``stream_rank{r}.json``.
        """
        tag = f"{PREFIX}{step:08d}"
        folder = os.path.join(self.root, tag)
        if self.rank == 0 and os.path.isdir(folder) and not self.is_complete(tag):
            shutil.rmtree(folder)  # leftovers of an interrupted save of the same step
        distributed.barrier()
        try:
            engine.save_checkpoint(self.root, tag=tag, client_state=client_state, save_latest=False)
            atomic_save(rng_state(), os.path.join(folder, f"rng_rank{self.rank}.pt"))
            if stream is not None:
                atomic_write_text(os.path.join(folder, f"stream_rank{self.rank}.json"), json.dumps(stream) + "\n")
            fsync_tree(folder)
        except (RuntimeError, OSError) as err:
            raise self._write_failed(folder, err) from None
        distributed.barrier()
        if self.rank == 0:
            atomic_write_text(os.path.join(folder, "COMPLETE"), json.dumps({"step": step, **info}) + "\n")
            atomic_write_text(os.path.join(self.root, "latest"), tag + "\n")
            for old in self.complete_tags()[: -self.keep_last]:
                shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)
        distributed.barrier()
        return folder

    def _write_failed(self, folder: str, err: BaseException) -> CheckpointWriteError:
        """The error for a checkpoint that could not be written; its partial files are removed (rank 0)."""
        if self.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        try:
            free = f"{shutil.disk_usage(self.root).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "free space unknown"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "unexpected pos" in reason or getattr(err, "errno", None) == errno.ENOSPC:
            reason = f"no space left on the device ({reason})"
        latest = self.complete_tags()
        kept = os.path.join(self.root, latest[-1]) if latest else "none"
        return CheckpointWriteError(f"could not write checkpoint {folder}: {reason}; {free}. The last complete "
                                    f"checkpoint is {kept}: free some space and resume with --resume auto")

    def find(self, resume: str) -> str | None:
        """The checkpoint folder to resume from: ``auto`` (newest complete, if any), ``none``, or a folder."""
        if resume == "none":
            return None
        if resume == "auto":
            tags = self.complete_tags()
            latest = os.path.join(self.root, "latest")
            if os.path.isfile(latest):
                with open(latest) as fh:
                    tag = fh.read().strip()
                if tag in tags:
                    return os.path.join(self.root, tag)
            return os.path.join(self.root, tags[-1]) if tags else None
        folder = resume.rstrip("/")
        if not os.path.isfile(os.path.join(folder, "COMPLETE")):
            raise UserError(
                f"--resume {resume} is not a complete checkpoint folder (no COMPLETE file); give a step_* folder from "
                "<output-dir>/checkpoints, or --resume auto"
            )
        return folder

    def prepare_resume(self, folder: str | None, model: torch.nn.Module, *, world_size: int, zero_stage: int,
                       log: Callable[[str], None], consolidated: bool = False) -> bool:
        """Before ``deepspeed.initialize``: whether DeepSpeed's own load can resume ``folder`` (from `find`).

        That needs the world size and ZeRO stage it was saved with. Otherwise, or with ``consolidated``, the
        consolidated fp32 weights go into ``model`` now, the optimizer moments start afresh, and ``log`` says so.

        Returns:
            True when `resume_state` should use DeepSpeed's load; False without ``folder``.
        """
        if not folder:
            return False
        saved = self.read_info(folder)
        same_world = saved.get("world_size") == world_size and saved.get("zero_stage") == zero_stage
        if not same_world or consolidated:
            model.load_state_dict(self.consolidated_weights(folder))
            log(f"resuming from {folder} with consolidated fp32 weights (saved with {saved.get('world_size')} ranks / "
                f"ZeRO-{saved.get('zero_stage')}, now {world_size} / ZeRO-{zero_stage}): the optimizer moments start "
                "afresh")
        return same_world

    def resume_state(self, engine, folder: str, same_world: bool) -> dict:
        """After ``deepspeed.initialize``: the run's client state (``"timemae"``), restoring everything DeepSpeed
        saved (optimizer, loss scaler) and this rank's RNG states when `prepare_resume` said it can."""
        return self.load(engine, folder)["timemae"] if same_world else self.client_state(folder)

    def stream_position(self, folder: str, *, num_workers: int, same_world: bool,
                        log: Callable[[str], None]) -> dict[int, int] | None:
        """This rank's data position saved in ``folder`` (`data.stream.ShardDataset.position`), or None when the
        stream cannot continue from it exactly (another world size or worker count, or an older checkpoint): the
        stream then skips by batch count, and ``log`` says why."""
        path = os.path.join(folder, f"stream_rank{self.rank}.json")
        if not same_world or not os.path.isfile(path):
            return None
        try:
            with open(path) as fh:
                saved = json.load(fh)
            position = {int(k): int(v) for k, v in saved["position"].items()}
            saved_workers = int(saved["num_workers"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise UserError(f"{path} is unreadable ({err}); resume from another checkpoint") from None
        if saved_workers != num_workers:
            log(f"the checkpoint's data stream was read by {saved_workers} loader workers, this run has "
                f"{num_workers}: the stream goes on by batch count, not exactly as the interrupted run would have")
            return None
        return position

    @staticmethod
    def read_info(folder: str) -> dict:
        with open(os.path.join(folder, "COMPLETE")) as fh:
            return json.load(fh)

    def load(self, engine, folder: str) -> dict:
        """Same world size: DeepSpeed's own load (weights, optimizer, loss scaler) and this rank's RNG states."""
        root, tag = os.path.split(folder)
        _, client_state = engine.load_checkpoint(root, tag=tag, load_lr_scheduler_states=False)
        if client_state is None:
            raise UserError(f"DeepSpeed could not load the checkpoint {folder}; start afresh with --resume none")
        rng_file = os.path.join(folder, f"rng_rank{self.rank}.pt")
        if os.path.isfile(rng_file) and not set_rng_state(safe_load(rng_file)):
            log.warning("%s is in the older pickled format: the python / numpy RNG states start afresh", rng_file)
        return client_state

    @staticmethod
    def consolidated_weights(folder: str) -> dict:
        """fp32 model weights from a checkpoint written with any number of ranks and any ZeRO stage."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        root, tag = os.path.split(folder)
        info = CheckpointManager.read_info(folder)
        if info.get("zero_stage", 0) == 0:
            state = safe_load(os.path.join(folder, "mp_rank_00_model_states.pt"))
            return {k: v.float() for k, v in state["module"].items()}
        # DeepSpeed's consolidation unpickles fully: every file it reads is first proven to be plain data.
        for name in sorted(os.listdir(folder)):
            if name.endswith(".pt"):
                safe_load(os.path.join(folder, name), map_location="meta")
        return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)

    @staticmethod
    def client_state(folder: str) -> dict:
        """The client state (step, data position, config) stored with DeepSpeed's model file of rank 0."""
        for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):  # ZeRO 0-2 / 3
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return safe_load(path).get("timemae", {})
        raise UserError(f"{folder} holds no DeepSpeed model-state file; resume from another checkpoint")
