"""How this process was started, and distributed initialisation to match.

One place knows the launchers: plain ``python`` (one process), ``torchrun``, the ``deepspeed`` launcher (both set
RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT), and SLURM's ``srun`` (SLURM_PROCID / SLURM_LOCALID /
SLURM_NTASKS; the master is the first host of the job, the port is derived from the job id so that two jobs on one
node do not collide). No hostfile to edit, no ssh between nodes.

The backend is NCCL when CUDA is present and gloo otherwise (DeepSpeed's CPU accelerator), never chosen by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys

import torch

from common.dist import is_distributed


@dataclasses.dataclass(frozen=True)
class DistInfo:
    launcher: str  # "python", "torchrun", "deepspeed", "slurm" or "env"
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list ("node[01-04,07]" -> "node01"), via scontrol when available."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def detect(env: dict | None = None) -> DistInfo:
    """Read the launcher's environment (``env`` defaults to ``os.environ``)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        if "TORCHELASTIC_RUN_ID" in env:
            launcher = "torchrun"
        elif "CROSS_RANK" in env or "DS_LAUNCHER" in env or "LOCAL_SIZE" in env:
            launcher = "deepspeed"
        else:
            launcher = "env"
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        return DistInfo(launcher, rank, local, world, env.get("MASTER_ADDR", "127.0.0.1"),
                        int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", 1)) >= 1:
        job = int(env.get("SLURM_JOB_ID", 0))
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or socket.gethostname()
        master = env.get("MASTER_ADDR") or _first_slurm_host(nodelist)
        port = int(env.get("MASTER_PORT") or 20000 + job % 20000)
        return DistInfo("slurm", int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)),
                        int(env.get("SLURM_NTASKS", 1)), master, port)
    # One process: any free port, so that several single-process runs on one machine do not collide.
    return DistInfo("python", 0, 0, 1, "127.0.0.1", int(env.get("MASTER_PORT") or _free_port()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cores_per_rank(info: DistInfo, env: dict | None = None) -> tuple[int, int]:
    """(CPU cores this rank may use, ranks on this node sharing them).

    The cores are the process's affinity mask (``os.sched_getaffinity``: what ``taskset``, cgroups or SLURM allow),
    divided among the ranks on this node that share it. torchrun and the ``deepspeed`` launcher start every local rank
    with the same mask and say how many there are (LOCAL_WORLD_SIZE, LOCAL_SIZE); srun gives each task its own cores,
    so its mask is its share already (at most SLURM_CPUS_PER_TASK, where srun does not bind tasks to cores). Other
    launchers: the mask is taken as this rank's.
    """
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0))
    ranks = 1
    if info.launcher == "slurm":
        per_task = env.get("SLURM_CPUS_PER_TASK", "")
        if per_task.isdigit() and int(per_task) > 0:
            cores = min(cores, int(per_task))
    else:
        local = env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or ""
        if local.isdigit() and int(local) > 0:
            ranks = int(local)
    return max(1, cores // ranks), ranks


def device_for(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init(info: DistInfo) -> torch.device:
    """Initialise torch.distributed through DeepSpeed (also for one process, which DeepSpeed's engine expects)."""
    import deepspeed  # heavy; only runs need it

    for key, value in {
        "RANK": info.rank, "LOCAL_RANK": info.local_rank, "WORLD_SIZE": info.world_size,
        "MASTER_ADDR": info.master_addr, "MASTER_PORT": info.master_port,
    }.items():
        os.environ[key] = str(value)
    device = device_for(info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not is_distributed():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
        _release_deepspeed_shm_buffer(info)
    return device


def _release_deepspeed_shm_buffer(info: DistInfo) -> None:
    """Unlink the shared-memory file DeepSpeed's CPU communication op made for this rank (it never does).

    When every rank runs on one machine (the ``deepspeed`` launcher sets LOCAL_SIZE), that op creates
    ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (69 MB) per rank, and nothing removes it: each
    such run leaves its files in memory-backed /dev/shm until the machine reboots. Every rank maps every peer's file
    before ``init_distributed`` returns, so after a barrier each rank unlinks its own name: the mappings stay valid,
    and the memory goes back when the last process unmaps it, however the run ends (SIGKILL included).
    """
    if info.world_size > 1:
        barrier()  # every rank, whether or not its file exists: a barrier some ranks skip would hang the others
    name = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{info.master_addr}_{info.master_port}_{info.rank}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def barrier() -> None:
    """Wait for every rank (no-op in one process). Under NCCL it names this rank's GPU, so NCCL need not guess it."""
    if not is_distributed():
        return
    if torch.distributed.get_backend() == "nccl":
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
    else:
        torch.distributed.barrier()


def shutdown() -> None:
    """Tear the process group down at the end of a run (NCCL warns about, and may leak, one left open)."""
    if is_distributed():
        torch.distributed.destroy_process_group()


def exit_now(code: int) -> None:
    """End a finished run's process with ``code``: close its process group, skip the interpreter's teardown.

    Call it once everything the run writes is closed and its loader workers are joined (a training script's ``main``
    has returned). Only then: after an error, with a rank gone, NCCL's teardown can wait for it forever. What the
    interpreter's teardown would add is C++ destructors of the distributed stack (gloo, DeepSpeed's CPU
    communication op), one of which now and then aborts a finished rank with "terminate called without an active
    exception" (about 1 in 10 two-rank ZeRO-3 runs on CPU), which the launcher reports as a failed run.
    """
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def rank_map(info: DistInfo, device: torch.device) -> list[tuple[str, int, int, str]]:
    """(host, rank, local rank, device) of every rank, gathered on all ranks."""
    mine = (socket.gethostname(), info.rank, info.local_rank, str(device))
    if not is_distributed():
        return [mine]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, mine)
    return out


def format_rank_map(rows: list[tuple[str, int, int, str]], launcher: str) -> str:
    lines = [f"launcher: {launcher}, world size {len(rows)}", f"{'host':<24}{'rank':>6}{'local':>7}  device"]
    lines += [f"{host:<24}{rank:>6}{local:>7}  {dev}" for host, rank, local, dev in sorted(rows, key=lambda r: r[1])]
    return "\n".join(lines)
