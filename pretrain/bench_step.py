"""``timemae bench-step``: time and peak memory of one pretraining step, SDPA vs. explicit softmax attention.

A step is what the training loop does per batch apart from the optimizer: draw a tube mask, forward the real
`VideoMAEPretrain`, the norm-pix `reconstruction_loss`, backward (gradients set to None before each step, so every
step allocates them as training does). Inputs are random clips of the configured geometry.

* CPU: float32. CUDA: bf16 autocast (the training precision), with a device sync around each step.
* Time: ``--warmup`` untimed then ``--repeats`` timed steps per configuration, the whole sweep run ``--rounds``
  times one after another; s/step is the median of the timed steps, min s the fastest. Other processes on the
  machine stretch wall-clock steps: every step time and the load average are printed, and the speed-up of SDPA
  over explicit softmax is given on the medians and on the fastest steps.
* Memory: the peak during the steps (warm-up included), absolute and as the increase over what was resident just
  before them (model, input). CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache).
  CPU: the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` before the steps), which
  counts everything resident, including freed memory the C allocator keeps. That is only meaningful in a process
  that has run nothing else, so each configuration runs in a freshly spawned process; ``--in-process`` skips that
  (faster) and then reports no CPU memory.

With ``--model`` a frame-level classifier (``resnet50``, ``vit_b16``, ...) the command benchmarks fine-tuning steps
of that classifier per ``--temporal`` module instead (`launch.bench_models`).

Example: ``timemae bench-step --model vit_base --mask-ratio 0.9 0.75 --batch-size 1 2 --threads 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from dataclasses import asdict, dataclass

import torch

from common.errors import UserError
from launch.bench_models import (
    StepSettings,
    check_counts,
    print_header,
    resolve_device,
    run_classifier_bench,
    run_fresh,
    run_rounds,
    step_settings,
    time_steps,
    with_defaults,
)
from launch.flops import count_clip_flops, mfu, peak_tflops
from launch.loop import compile_in_place
from models import linear
from models.registry import CLASSIFIERS, build_pretrain, check_input, get_entry, get_size
from models.temporal import TEMPORAL_MODULES
from models.videomae import PATCH_SIZE, TUBELET_SIZE
from models.vit_layers import ATTN_IMPLS
from pretrain.loss import reconstruction_loss
from pretrain.masking import token_counts, tube_mask, validate_mask_ratio

MIB = 2**20
# Per-family defaults of the flags the classifier benchmark shares (None on the command line).
VIDEOMAE_DEFAULTS = {"num_frames": 16, "batch_size": [1], "checkpointing": ["off", "on"]}


@dataclass(frozen=True)
class StepConfig(StepSettings):
    """One benchmarked configuration (plain data, so it crosses to a spawned process)."""

    model: str
    mask_ratio: float
    batch_size: int
    attn_impl: str
    checkpointing: bool
    num_frames: int = 16
    input_size: int = 224
    compile: bool = False


@dataclass(frozen=True)
class StepResult:
    """Measurements of one `StepConfig`; memory in bytes, None where not measured."""

    config: StepConfig
    seconds: tuple[float, ...]
    peak_bytes: int | None
    step_bytes: int | None
    sdpa_backend: str
    visible_tokens: int
    decoded_tokens: int
    train_flops: float = 0.0  # per clip, forward + backward (`launch.flops`)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# ---------------------------------------------------------------------------------------------------------------------
# Attention kernel


def _sdpa_backend(q: torch.Tensor, scale: float) -> str:
    """Which fused kernel ``scaled_dot_product_attention`` picks for ``q = k = v`` (dispatcher's own choice)."""
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, q, q, None, 0.0, False, scale=scale)).name.lower()
    except (AttributeError, ImportError, RuntimeError, TypeError, ValueError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------------
# One configuration


def measure(cfg: StepConfig, fresh_process: bool = False) -> StepResult:
    """Build the model for ``cfg`` and time ``cfg.warmup + cfg.repeats`` pretraining steps.

    ``fresh_process``: this process has run nothing else (CPU memory is measured only then).
    """
    device = cfg.start()
    torch.manual_seed(cfg.seed)
    model = build_pretrain(
        cfg.model,
        img_size=cfg.input_size,
        num_frames=cfg.num_frames,
        attn_impl=cfg.attn_impl,
        use_checkpoint=cfg.checkpointing,
    ).to(device)
    model.train()
    grid = model.token_grid
    counts = token_counts("tube", cfg.mask_ratio, 0.0, grid)  # as the trainer: no mask is read back to the host

    def one_clip_loss(m: torch.nn.Module) -> torch.Tensor:
        xm = torch.zeros(1, 3, cfg.num_frames, cfg.input_size, cfg.input_size, device="meta")
        mm = tube_mask(1, grid, cfg.mask_ratio, torch.Generator().manual_seed(0)).to("meta")
        return reconstruction_loss(m(xm, mm, counts=counts), xm, mm, patch_size=m.patch_size,
                                   tubelet_size=m.tubelet_size, num_decoded=counts[1])

    flops = count_clip_flops(model, one_clip_loss)
    if cfg.compile:
        compile_in_place(model)
    x = torch.randn(cfg.batch_size, 3, cfg.num_frames, cfg.input_size, cfg.input_size, device=device)
    generator = torch.Generator().manual_seed(cfg.seed)  # masks are drawn on the CPU, as in the loader
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    masked = validate_mask_ratio(cfg.mask_ratio, grid) * grid[0]
    visible = model.num_tokens - masked
    attn = model.encoder.blocks[0].attn
    head_dim = model.num_features // attn.num_heads
    q = torch.randn(cfg.batch_size, attn.num_heads, visible, head_dim, device=device)
    backend = _sdpa_backend(q.bfloat16() if device.type == "cuda" else q, attn.scale) if cfg.attn_impl == "sdpa" else ""
    del q

    def step() -> None:
        model.zero_grad(set_to_none=True)
        mask = tube_mask(cfg.batch_size, grid, cfg.mask_ratio, generator).to(device)  # as the trainer does
        with autocast:
            pred = model(x, mask, counts=counts)
        loss = reconstruction_loss(pred, x, mask, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
                                   num_decoded=counts[1])
        loss.backward()

    seconds, peak, during = time_steps(step, device, cfg.warmup, cfg.repeats, fresh_process)
    return StepResult(
        config=cfg,
        seconds=seconds,
        peak_bytes=peak,
        step_bytes=during,
        sdpa_backend=backend,
        visible_tokens=visible,
        decoded_tokens=masked,
        train_flops=flops.train if flops else 0.0,
    )


def _measure_fresh(cfg_dict: dict) -> dict:
    """Spawned-process entry: plain dicts in and out."""
    return asdict(measure(StepConfig(**cfg_dict), fresh_process=True))


def _run_fresh(cfg: StepConfig) -> StepResult:
    out = run_fresh(_measure_fresh, asdict(cfg))
    return StepResult(**{**out, "config": StepConfig(**out["config"]), "seconds": tuple(out["seconds"])})


# ---------------------------------------------------------------------------------------------------------------------
# Command


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.0f}"


def format_table(results: list[StepResult], peak: float | None = None) -> str:
    """The per-configuration table and the SDPA-over-explicit speed-ups (explicit s/step divided by SDPA s/step).

    ``peak``: the device's dense TFLOP/s (`launch.flops.peak_tflops`); with it an ``MFU`` column (training FLOPs per
    clip x clips/s over the peak)."""
    head = f"{'model':<10} {'mask':>5} {'batch':>5} {'attention':<9} {'ckpt':<4} {'compile':<7} {'s/step':>8} "
    head += f"{'min s':>7} {'clips/s':>8} {'GFLOP/clip':>10} {'peak MiB':>9} {'+step MiB':>9}"
    head += f" {'MFU':>6}" if peak else ""
    rows = [head, "-" * len(head)]
    for r in results:
        c = r.config
        ckpt = "on" if c.checkpointing else "off"
        clips = c.batch_size / r.median
        row = (f"{c.model:<10} {c.mask_ratio:>5.2f} {c.batch_size:>5d} {c.attn_impl:<9} {ckpt:<4} "
               f"{'on' if c.compile else 'off':<7} {r.median:>8.3f} {min(r.seconds):>7.3f} {clips:>8.2f} "
               f"{r.train_flops / 1e9:>10.1f} {_mib(r.peak_bytes):>9} {_mib(r.step_bytes):>9}")
        if peak:
            row += f" {mfu(r.train_flops, clips, peak) * 100:>5.1f}%"
        rows.append(row)
    by_key = {
        (r.config.mask_ratio, r.config.batch_size, r.config.checkpointing, r.config.attn_impl): r for r in results
        if not r.config.compile
    }
    pairs = []
    for (mask, batch, ckpt, impl), r in by_key.items():
        other = by_key.get((mask, batch, ckpt, "eager"))
        if impl == "sdpa" and other is not None:
            speedup = other.median / r.median
            fastest = min(other.seconds) / min(r.seconds)
            mem = ""
            if r.step_bytes is not None and other.step_bytes is not None:
                mem = f"; +step memory {_mib(r.step_bytes)} vs {_mib(other.step_bytes)} MiB"
            pairs.append(
                f"{mask:>5.2f} {batch:>5d} {'on' if ckpt else 'off':<4} {speedup:>7.2f}x "
                f"({(speedup - 1) * 100:+.0f}% clips/s; fastest steps {fastest:.2f}x){mem}"
            )
    if pairs:
        rows += [
            "",
            "SDPA over explicit softmax (explicit s/step / SDPA s/step, medians):",
            " mask batch ckpt speed-up",
        ]
        rows += pairs
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="vit_base",
        choices=list(CLASSIFIERS),
        help="VideoMAE size (default vit_base), or a frame-level classifier (resnet50, vit_b16, ...) to time "
        "fine-tuning steps per --temporal module",
    )
    parser.add_argument(
        "--temporal",
        nargs="+",
        choices=["none", *TEMPORAL_MODULES],
        default=["none"],
        help="temporal modules of a ResNet classifier, one row each (default none); VideoMAE models take none",
    )
    parser.add_argument(
        "--mask-ratio", type=float, nargs="+", default=[0.9], help="tube mask ratios (default 0.9; VideoMAE only)"
    )
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=None, help="clips per step (default 1; classifiers 2)"
    )
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip T (default 16; classifiers 8)")
    parser.add_argument("--input-size", type=int, default=224, help="clip height = width (default 224)")
    parser.add_argument(
        "--attention",
        nargs="+",
        choices=ATTN_IMPLS,
        default=list(ATTN_IMPLS),
        help="attention paths: sdpa (fused scaled_dot_product_attention), eager (explicit softmax); VideoMAE only",
    )
    parser.add_argument(
        "--checkpointing",
        nargs="+",
        choices=["off", "on"],
        default=None,
        help="gradient checkpointing of every block (default: both; classifiers off)",
    )
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=["off", "on"],
        default=["off"],
        help="torch.compile the model in place, as the trainer's --compile (default off; VideoMAE only)",
    )
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's dense peak TFLOP/s for the MFU column (0 = from the table of known GPUs)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (median; default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--rounds", type=int, default=1, help="sweeps over all configurations, pooled (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, input and masks")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration in this process (faster; CPU memory is then not reported)",
    )


def _configs(args: argparse.Namespace) -> list[StepConfig]:
    get_size(args.model)
    if args.temporal != ["none"]:
        raise UserError(
            f"--temporal {' '.join(args.temporal)} inserts into ResNet classifiers (resnet18, resnet50, "
            f"resnet101); --model {args.model} takes --temporal none"
        )
    device = resolve_device(args.device)
    if args.input_size <= 0 or args.num_frames <= 0:
        raise UserError(f"--num-frames {args.num_frames} --input-size {args.input_size}: both must be positive")
    check_input(args.model, args.num_frames, args.input_size)
    check_counts(args)
    grid = (args.num_frames // TUBELET_SIZE, args.input_size // PATCH_SIZE, args.input_size // PATCH_SIZE)
    for ratio in args.mask_ratio:
        validate_mask_ratio(ratio, grid)
    common = dict(num_frames=args.num_frames, input_size=args.input_size, **step_settings(args, device))
    return [
        StepConfig(args.model, ratio, batch, impl, ckpt == "on", **common, compile=comp == "on")
        for ratio in args.mask_ratio
        for batch in args.batch_size
        for ckpt in args.checkpointing
        for impl in args.attention
        for comp in dict.fromkeys(args.compile)
    ]


def _label(cfg: StepConfig) -> str:
    on = {True: "on ", False: "off"}
    return (f"{cfg.attn_impl:<5} ckpt {on[cfg.checkpointing]} compile {on[cfg.compile]} mask {cfg.mask_ratio:.2f} "
            f"batch {cfg.batch_size}")


def _note(cfg: StepConfig, result: StepResult) -> str:
    kernel = f"SDPA kernel {result.sdpa_backend}" if cfg.attn_impl == "sdpa" else "explicit softmax"
    return f"{result.visible_tokens} encoder tokens, {result.decoded_tokens} decoded per clip; {kernel}; "


def run(args: argparse.Namespace) -> int:
    if get_entry(args.model).family != "videomae":
        return run_classifier_bench(args)
    args = with_defaults(args, VIDEOMAE_DEFAULTS)
    configs = _configs(args)
    first = configs[0]
    device = torch.device(first.device)
    print_header(first, args.in_process)
    print(
        f"clip 3 x {first.num_frames} x {first.input_size} x {first.input_size}; step = tube mask + forward + "
        f"norm-pix loss + backward (no optimizer); {args.rounds} round(s) of {first.warmup} warm-up + "
        f"{first.repeats} timed steps per configuration, s/step = median over the timed steps"
    )
    if device.type == "cpu":
        gemm = "oneDNN (models.linear)" if linear.ENABLED else "F.linear (MKL; TIMEMAE_CPU_LINEAR=onednn for oneDNN)"
        print(f"linear layers: {gemm}; the same on both attention paths")
    # Other processes on the machine stretch wall-clock steps: the load average and the min/max show how much.
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    results = run_rounds(configs, args.rounds, measure if args.in_process else _run_fresh, _label, _note)
    print()
    peak = peak_tflops(device, "bf16" if device.type == "cuda" else "fp32", args.peak_tflops)
    print(format_table(results, peak))
    return 0


CLI = {"bench-step": (add_arguments, run)}
