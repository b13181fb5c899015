"""Training-loop pieces both stages share: the lr schedule, per-position seeds, the loop state, non-finite losses.

Pretraining and fine-tuning warm up, decay, seed their per-micro-batch randomness and resume the same way, so these
live here, in the run plumbing both stages use, rather than in one stage's engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from common.dist import is_distributed


class Schedule(Protocol):
    """What `lr_at` reads: the `Derived` values of either stage."""

    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    schedule: str  # "cosine" or "step"
    lr_milestones: tuple[int, ...]  # step schedule: the steps from which the lr is divided by 10 once more


def lr_at(step: int, d: Schedule) -> float:
    """Linear warm-up from 0 to ``d.lr`` over ``d.warmup_steps``, then per step either a half-cosine to ``d.min_lr``
    (VideoMAE) or ``d.lr / 10^k`` after the k-th of ``d.lr_milestones`` (the TSN recipes' step schedule)."""
    if step < d.warmup_steps:
        return d.lr * (step + 1) / d.warmup_steps
    if d.schedule == "step":
        return d.lr * 0.1 ** sum(step >= m for m in d.lr_milestones)
    span = max(1, d.total_steps - d.warmup_steps)
    progress = min(1.0, (step - d.warmup_steps) / span)
    return d.min_lr + 0.5 * (d.lr - d.min_lr) * (1 + math.cos(math.pi * progress))


def step_seed(seed: int, rank: int, step: int, micro: int) -> int:
    """Seed of one micro-batch's randomness: a function of the position only, so a resumed run draws the same."""
    return int(np.random.SeedSequence([seed, rank, step, micro]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed from this rank's data stream
    bad_steps: int = 0  # consecutive steps with a non-finite loss
    skipped_steps: int = 0  # all steps skipped for a non-finite loss
    overflow_steps: int = 0  # consecutive optimizer steps DeepSpeed skipped for inf / NaN gradients
    last_good_checkpoint: str = ""

    stop_requested: bool = False  # a stop signal reached some rank (as of this rank's latest micro-batch check)

    def loss_is_finite(self, loss: torch.Tensor, max_bad_steps: int, *, stop: bool = False) -> bool:
        """Whether to use this micro-batch: its loss is finite on every rank (a collective when distributed).

        A non-finite loss anywhere makes every rank skip the micro-batch (no backward, no step, so the ranks and
        DeepSpeed's micro-step counter stay in step); it is counted, and `NonFiniteLoss` stops the run after
        ``max_bad_steps`` in a row, naming the last good checkpoint. ``stop`` (this rank has received a stop signal)
        rides on the same collective, so that ``stop_requested`` says whether any rank has one without a second
        collective and host read per step.
        """
        finite, self.stop_requested = check_micro_batch(loss, stop)
        if finite:
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        self.skipped_steps += 1
        if self.bad_steps >= max_bad_steps:
            raise NonFiniteLoss(
                f"{self.bad_steps} micro-batches in a row gave a non-finite loss at step {self.step}; last good "
                f"checkpoint: {self.last_good_checkpoint or 'none'} (lower --base-lr, or set --clip-grad, and resume "
                "from it)"
            )
        return False

    def optimizer_step_taken(self, skipped: bool, max_bad_steps: int, *, scale_search: bool = False) -> None:
        """Count an optimizer step DeepSpeed skipped because its gradients held inf / NaN.

        A finite loss can still give overflowing gradients (a diverging run at a huge lr: the loss at 1e19, the
        gradients beyond fp32). DeepSpeed then skips the step and training would go on without moving, writing
        checkpoints of the diverged model; ``max_bad_steps`` such steps in a row raise `NonFiniteLoss`. fp16's loss
        scaler skips steps by design while it searches for its scale (``scale_search``): those are not counted.
        """
        if not skipped:
            self.overflow_steps = 0
            return
        if scale_search:
            return
        self.overflow_steps += 1
        if self.overflow_steps >= max_bad_steps:
            raise NonFiniteLoss(
                f"{self.overflow_steps} optimizer steps in a row were skipped for inf / NaN gradients (the run "
                f"diverges) at step {self.step}; last good checkpoint: {self.last_good_checkpoint or 'none'} (lower "
                "--base-lr, or set --clip-grad, and resume from it)"
            )


def check_micro_batch(loss: torch.Tensor, stop: bool = False) -> tuple[bool, bool]:
    """(``loss`` is finite on every rank, ``stop`` is set on some rank): one collective and one host read.

    This read is the one host synchronisation of a steady-state micro-batch: whether to run the backward pass must
    be known on the host. Everything else a step produces (losses, counts, grad norms) stays on the device until a
    log step reads it.
    """
    flags = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
    if not is_distributed():
        return flags.item() == 0.0, stop
    # torch.full fills on the device: no host-to-device copy of the stop flag
    flags = torch.cat([flags, torch.full((1,), float(stop), device=flags.device)])
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad, stop_any = flags.tolist()
    return bad == 0.0, stop_any > 0.0


NORM_STATISTICS = ("running_mean", "running_var")


def average_norm_statistics(module: torch.nn.Module) -> None:
    """Set every rank's batch-norm running statistics to their mean over the ranks, in place (one process: nothing).

    Each rank updates its running statistics from its own batches, and DeepSpeed, unlike DDP, broadcasts no buffers:
    without this, each rank would evaluate its share of the validation videos with its own statistics, and the
    checkpoint (rank 0's module) would hold rank 0's alone. Called where the statistics are read, before every
    evaluation and every checkpoint, so the evaluated model is the saved one on every rank, and a resumed run (every
    rank loads the checkpoint's, i.e. the mean) matches an uninterrupted one bitwise. Training is unaffected: in
    training mode batch norm uses the batch's statistics. The mean over ranks of the running means is the running
    mean of all batches; of the running variances, the mean within-rank variance (as timm's ``distribute_bn``).
    """
    if not is_distributed():
        return
    stats = [b for name, b in module.named_buffers() if name.endswith(NORM_STATISTICS) and b.is_floating_point()]
    for dtype in dict.fromkeys(b.dtype for b in stats):  # in module order: the same collectives on every rank
        group = [b for b in stats if b.dtype == dtype]
        flat = torch.cat([b.reshape(-1) for b in group])
        torch.distributed.all_reduce(flat)
        flat.div_(torch.distributed.get_world_size())
        for b, part in zip(group, flat.split([b.numel() for b in group]), strict=True):
            b.copy_(part.view_as(b))


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """torch's AdamW: its fused CUDA kernel on a GPU, the default (foreach) implementation elsewhere.

    Not DeepSpeed's FusedAdam: that one is compiled on first use and needs the CUDA toolkit (nvcc) on the training
    machine, which a pip-installed environment often lacks; torch ships its fused kernel prebuilt. Both run the same
    AdamW update, and DeepSpeed's ZeRO stages accept torch's AdamW as it is.
    """
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device.type == "cuda" or None)


def sgd(groups: list[dict], lr: float, momentum: float) -> torch.optim.SGD:
    """torch's SGD with momentum (the TSN recipes'); weight decay per group, as the groups say."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


class NonFiniteLoss(RuntimeError):
    """Too many consecutive micro-batches with a non-finite loss."""


def device_memory(device: torch.device) -> dict[str, float]:
    """``{"max_mem_gib": ...}``: the most GPU memory tensors have held on ``device`` so far (empty on the CPU)."""
    if device.type != "cuda":
        return {}
    return {"max_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def compile_in_place(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile`` ``model``'s forward in place (``nn.Module.compile``): parameters, state_dict keys and
    checkpoints stay those of the eager model. Static shapes (``dynamic=False``): a run's clips and token counts never
    change, so it compiles once per geometry."""
    model.compile(backend=backend, dynamic=False)
    return model
