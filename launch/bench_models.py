"""Cost of the classifiers: ``timemae flops`` (GFLOPs and parameters per view) and the classifier path of
``timemae bench-step`` (forward + backward time and peak memory per temporal module, against the FLOPs overhead).

FLOPs convention: one multiply-add = one FLOP, as the papers (TSN / TSM / STW / TRM / VideoMAE tables) and fvcore
count, so ResNet-50 at 224 is 4.1 G per frame. torch's ``torch.utils.flop_counter.FlopCounterMode`` counts a
multiply-add as 2 FLOPs; its totals are halved here. It counts only matmul- and convolution-like ops (convolutions,
linear layers, matmuls, attention); elementwise ops, normalisation, activations, softmax, pooling and TRM's gather /
interpolation are not counted. TRM's interpolation is counted apart (two multiply-adds per relocated element) and
printed next to the table; it is not added, being far below 0.1% of the total.

Counting builds the model and a one-clip input on the ``meta`` device (shapes only, no arithmetic), so every model
is counted in well under a second; a model with an op the meta device cannot run is counted on a real one-clip
input under ``no_grad`` instead.

The classifier benchmark times what a fine-tuning step does apart from the optimizer: forward in train mode, cross
entropy on random labels, backward, on random clips. Peak memory and the fresh-process mode are the helpers below,
shared with the pretraining benchmark (`pretrain.bench_step`).

Example: ``timemae flops --models tsn tsm trm_ctrm``; ``timemae bench-step --model resnet50 --temporal none tsm``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common.errors import UserError
from common.memory import check_clips_fit
from models.registry import build_classifier, get_entry
from models.temporal import ATR, STFM, TRM

MIB = 2**20
# Something-Something's 174 classes, the count of STW's TSN / STW figures; the classifier is < 0.001 G of a view.
DEFAULT_NUM_CLASSES = 174
# torch's counter counts a multiply-add as two FLOPs (a multiply and an add); the papers count it as one.
FLOPS_PER_MAC = 2
# Linear interpolation between two frames: (1 - w) * a + w * b, two multiply-adds per relocated element.
RELOCATION_MACS_PER_ELEMENT = 2
# A FLOPs overhead below this (TSM's shift has no multiply-adds) is judged as this much, so the time target is not
# "no extra time at all", which timing noise alone would fail.
MIN_FLOPS_OVERHEAD = 0.01
TIME_PER_FLOPS_TARGET = 1.5
HALVING_NOTE = (
    "1 multiply-add = 1 FLOP (the papers' and fvcore's convention); torch's FlopCounterMode counts 2 per "
    "multiply-add, so its totals are halved"
)
COUNTED_NOTE = (
    "counted: convolutions, linear layers, matmuls, attention (what FlopCounterMode sees), and STW's grouped STFM "
    "as the grouped 1x1 convolutions it is and ATR's attention pooling as the matrix-vector product it is (they run as "
    "strided multiply-adds and dot products, which the counter does not see); not "
    "counted: elementwise ops, BN / LayerNorm, activations, softmax, average pooling, TRM's gather / interpolation"
)


# ---------------------------------------------------------------------------------------------------------------------
# Counting


@dataclass(frozen=True)
class FlopCount:
    """Cost of one view (one clip, batch 1) of a classifier."""

    gflops: float  # multiply-adds / 1e9
    mparams: float
    relocation_gflops: float  # TRM's interpolation, not in ``gflops``
    device: str  # "meta" or "cpu": where the counting forward ran


def _options(temporal: str | None, temporal_options: dict[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {"temporal": temporal} if temporal not in (None, "none") else {}
    if temporal_options:
        options["temporal_options"] = temporal_options
    return options


def _count_on(
    device: str, name: str, num_frames: int, img_size: int, num_classes: int, options: dict[str, Any]
) -> FlopCount:
    relocated, unseen = [0], [0]  # unseen: multiply-adds the counter cannot see (STW, ATR)

    def on_trm(module: TRM, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]  # (B*T, C, H, W)
        relocated[0] += x.shape[0] * module.relocated * x.shape[2] * x.shape[3]

    def on_stfm(module: STFM, args: tuple[torch.Tensor, ...]) -> None:
        unseen[0] += module.grouped_macs(args[0])

    def on_atr(module: ATR, args: tuple[torch.Tensor, ...]) -> None:
        unseen[0] += module.pooling_macs(args[0])

    with torch.device(device):
        model = build_classifier(name, num_classes, num_frames=num_frames, img_size=img_size, **options)
        x = torch.randn(1, 3, num_frames, img_size, img_size)  # one view
    model.eval()
    for module in model.modules():
        if isinstance(module, TRM):
            module.register_forward_pre_hook(on_trm)
        if isinstance(module, STFM):
            module.register_forward_pre_hook(on_stfm)
        if isinstance(module, ATR):
            module.register_forward_pre_hook(on_atr)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return FlopCount(
        gflops=(counter.get_total_flops() / FLOPS_PER_MAC + unseen[0]) / 1e9,
        mparams=sum(p.numel() for p in model.parameters()) / 1e6,
        relocation_gflops=relocated[0] * RELOCATION_MACS_PER_ELEMENT / 1e9,
        device=device,
    )


def count_detail(
    name: str, num_frames: int, img_size: int, num_classes: int = DEFAULT_NUM_CLASSES, **options: Any
) -> FlopCount:
    """`FlopCount` of classifier ``name`` (``options`` as `models.build_classifier` takes them)."""
    get_entry(name)
    try:
        return _count_on("meta", name, num_frames, img_size, num_classes, options)
    except (NotImplementedError, RuntimeError):
        # An op without a meta kernel: count on a real clip (a few seconds on the CPU).
        return _count_on("cpu", name, num_frames, img_size, num_classes, options)


def count(
    name: str, num_frames: int, img_size: int, num_classes: int = DEFAULT_NUM_CLASSES, **options: Any
) -> tuple[float, float]:
    """``(GFLOPs, M parameters)`` of one view of classifier ``name``, one multiply-add = one FLOP.

    Example: ``count("resnet50", 8, 224, 174, temporal="trm", temporal_options={"variant": "ctrm"})``.
    """
    c = count_detail(name, num_frames, img_size, num_classes, **options)
    return c.gflops, c.mparams


# ---------------------------------------------------------------------------------------------------------------------
# timemae flops


@dataclass(frozen=True)
class FlopsRow:
    """One row of ``timemae flops``: a classifier at the paper's geometry and the paper's figure (None: none)."""

    key: str
    label: str
    model: str
    temporal: str | None
    temporal_options: dict[str, Any] | None
    num_frames: int
    paper_gflops: float | None


FLOPS_ROWS: tuple[FlopsRow, ...] = (
    FlopsRow("tsn", "TSN ResNet-50", "resnet50", None, None, 8, 33),
    FlopsRow("tsm", "TSM ResNet-50", "resnet50", "tsm", None, 8, 33),
    # The STW paper reports 34 for STW whatever its STFM convs are; the two rows show which form fits it.
    FlopsRow("stw", "STW grouped STFM", "resnet50", "stw", {"stfm_mode": "grouped"}, 8, 34),
    FlopsRow("stw_dense", "STW dense STFM", "resnet50", "stw", {"stfm_mode": "dense"}, 8, 34),
    FlopsRow("trm_ctrm", "TRM cTRM", "resnet50", "trm", {"variant": "ctrm"}, 8, 44),
    FlopsRow("trm_strm", "TRM sTRM", "resnet50", "trm", {"variant": "strm"}, 8, None),
    FlopsRow("trm_ttrm", "TRM tTRM", "resnet50", "trm", {"variant": "ttrm"}, 8, None),
    FlopsRow("atr", "ATR (dense ER)", "resnet50", "atr", None, 8, None),
    FlopsRow("vit_b16", "TSN image ViT-B/16", "vit_b16", None, None, 8, None),
    FlopsRow("vit_base", "VideoMAE ViT-B", "vit_base", None, None, 16, 180),
)
PAPER_SIZE = 224


def _percent(value: float) -> str:
    return f"{value * 100:+.1f}%"


def flops_table(rows: list[FlopsRow], num_frames: int | None, img_size: int, num_classes: int) -> str:
    """The printed table: GFLOPs and parameters per view next to the paper's figure, plus the notes."""
    counts = {}
    for row in rows:
        frames = row.num_frames if num_frames is None else num_frames
        counts[row.key] = (
            frames,
            count_detail(row.model, frames, img_size, num_classes, **_options(row.temporal, row.temporal_options)),
        )
    # frames -> plain TSN ResNet-50 GFLOPs, for the "extra" column
    tsn = {frames: c.gflops for key, (frames, c) in counts.items() if key == "tsn"}

    head = (
        f"{'row':<10} {'model':<20} {'T x size':>9} {'GFLOPs':>8} {'extra':>7} {'paper':>6} {'vs paper':>8} "
        f"{'params M':>9}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        frames, c = counts[row.key]
        extra = "-"
        if row.model == "resnet50" and row.temporal is not None:
            if frames not in tsn:
                tsn[frames] = count("resnet50", frames, img_size, num_classes)[0]
            extra = f"{c.gflops - tsn[frames]:+.2f}"
        at_paper = img_size == PAPER_SIZE and frames == row.num_frames and row.paper_gflops is not None
        paper = f"{row.paper_gflops:g}" if at_paper else "-"
        versus = _percent(c.gflops / row.paper_gflops - 1) if at_paper else "-"
        lines.append(
            f"{row.key:<10} {row.label:<20} {f'{frames} x {img_size}':>9} {c.gflops:>8.2f} {extra:>7} "
            f"{paper:>6} {versus:>8} {c.mparams:>9.2f}"
        )
    lines.append("")
    lines.append(
        "GFLOPs per view (one clip); extra = over plain TSN ResNet-50 at the same geometry; paper figures "
        "are for 8 x 224 (VideoMAE 16 x 224) and shown only there"
    )
    for row in rows:
        c = counts[row.key][1]
        if c.relocation_gflops:
            share = c.relocation_gflops / c.gflops
            lines.append(
                f"{row.key}: relocation's linear interpolation ({RELOCATION_MACS_PER_ELEMENT} multiply-adds "
                f"per relocated element, not seen by the counter) +{c.relocation_gflops:.4f} G "
                f"({share * 100:.2f}%), not added"
            )
    on_cpu = [row.key for row in rows if counts[row.key][1].device != "meta"]
    if on_cpu:
        lines.append(f"counted on a real CPU clip (an op without a meta kernel): {', '.join(on_cpu)}")
    return "\n".join(lines)


def add_flops_arguments(parser: argparse.ArgumentParser) -> None:
    keys = [row.key for row in FLOPS_ROWS]
    parser.add_argument(
        "--models",
        nargs="+",
        choices=keys,
        default=keys,
        metavar="ROW",
        help=f"rows to count (default all): {', '.join(keys)}",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="frames per view T for every row (default: each row's paper setting, 8; VideoMAE 16)",
    )
    parser.add_argument("--input-size", type=int, default=PAPER_SIZE, help="view height = width (default 224)")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=DEFAULT_NUM_CLASSES,
        help=f"classifier outputs (default {DEFAULT_NUM_CLASSES}, Something-Something as in STW)",
    )


def run_flops(args: argparse.Namespace) -> int:
    if args.num_frames is not None and args.num_frames < 1:
        raise UserError(f"--num-frames {args.num_frames} is below 1; raise it")
    if args.input_size < 32:
        raise UserError(f"--input-size {args.input_size} is below 32, the ResNets' total stride; raise it")
    if args.num_classes < 1:
        raise UserError(f"--num-classes {args.num_classes} is below 1; raise it")
    rows = [row for row in FLOPS_ROWS if row.key in args.models]
    print(
        f"timemae flops: multiply-adds per view, torch {torch.__version__} FlopCounterMode, {args.num_classes} classes"
    )
    print(f"convention: {HALVING_NOTE}")
    print(COUNTED_NOTE)
    print()
    print(flops_table(rows, args.num_frames, args.input_size, args.num_classes))
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Shared with pretrain.bench_step: settings, memory probes, the fresh process


@dataclass(frozen=True, kw_only=True)
class StepSettings:
    """How a step benchmark runs each configuration (the flags both benchmarks share), apart from what it measures.

    Keyword-only, so that each configuration's own fields come first and positionally.
    """

    threads: int = 1
    warmup: int = 1
    repeats: int = 3
    device: str = "cpu"
    seed: int = 0

    def start(self) -> torch.device:
        """Set torch's intra-op threads to ``threads``; returns the device to run on."""
        torch.set_num_threads(self.threads)
        return torch.device(self.device)


def resolve_device(device: str) -> str:
    """``--device``: ``auto`` is cuda when torch sees a CUDA device, else cpu.

    Raises:
        UserError: a cuda device on a machine where torch sees none.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} but torch sees no CUDA device; use --device cpu")
    return device


def check_counts(args: argparse.Namespace, *extra: tuple[str, int, int]) -> None:
    """Each shared count flag, each ``extra`` ``(flag, value, lowest)`` and each batch size is at least its lowest.

    Raises:
        UserError: the first that is not, by its flag.
    """
    checks = [("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0), ("--threads", args.threads or 1, 1),
              ("--rounds", args.rounds, 1), *extra, *(("--batch-size", b, 1) for b in args.batch_size)]
    for name, value, low in checks:
        if value < low:
            raise UserError(f"{name} {value} is below {low}; raise it")
    frames, size = getattr(args, "num_frames", None), getattr(args, "input_size", None)
    if frames and size and frames > 0 and size > 0:  # sizes a machine cannot hold stop here, not in the allocator
        check_clips_fit(max(args.batch_size), frames, size)


def step_settings(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """The `StepSettings` keywords of the shared flags (threads: torch's choice when ``--threads`` is unset)."""
    return dict(threads=args.threads or torch.get_num_threads(), warmup=args.warmup, repeats=args.repeats,
                device=device, seed=args.seed)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def reset_peak(device: torch.device, fresh_process: bool) -> int | None:
    """Reset the peak-memory counter; returns the bytes in use now, or None where the peak cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    if not fresh_process:
        return None
    try:
        # "5" resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0, proc(5)).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kib("VmRSS") * 1024
    except OSError:
        return None


def peak(device: torch.device) -> int:
    """Peak bytes since `reset_peak`: tensors on CUDA, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _proc_status_kib("VmHWM") * 1024


def run_fresh(fn: Callable[[dict], dict], cfg: dict) -> dict:
    """``fn(cfg)`` in a freshly spawned process (plain dicts in and out), so its peak resident set is its own."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, cfg).result()


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def with_defaults(args: argparse.Namespace, defaults: dict[str, Any]) -> argparse.Namespace:
    """A copy of ``args`` with each flag left at None set to its entry of ``defaults`` (per-family defaults)."""
    return argparse.Namespace(**{**vars(args), **{k: v for k, v in defaults.items() if getattr(args, k) is None}})


# ---------------------------------------------------------------------------------------------------------------------
# Classifier benchmark (timemae bench-step --model resnet50 --temporal ...)

# Defaults of the flags bench-step shares with the VideoMAE benchmark: 8-frame views (the TSN papers' setting).
CLASSIFIER_DEFAULTS: dict[str, Any] = {"num_frames": 8, "batch_size": [2], "checkpointing": ["off"]}


@dataclass(frozen=True)
class ClassifierStepConfig(StepSettings):
    """One benchmarked classifier configuration (plain data, so it crosses to a spawned process)."""

    model: str
    temporal: str
    batch_size: int
    checkpointing: bool
    num_frames: int = 8
    input_size: int = 224
    num_classes: int = DEFAULT_NUM_CLASSES


@dataclass(frozen=True)
class ClassifierResult:
    """Measurements of one `ClassifierStepConfig`; memory in bytes, None where not measured."""

    config: ClassifierStepConfig
    seconds: tuple[float, ...]
    peak_bytes: int | None
    step_bytes: int | None
    gflops: float  # per clip, forward

    @property
    def per_clip(self) -> float:
        return statistics.median(self.seconds) / self.config.batch_size

    @property
    def fastest_per_clip(self) -> float:
        return min(self.seconds) / self.config.batch_size


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, repeats: int, fresh_process: bool
               ) -> tuple[tuple[float, ...], int | None, int | None]:
    """Run ``step`` ``warmup`` untimed then ``repeats`` timed times (synchronised on CUDA).

    Returns:
        (seconds of the timed steps, peak memory during all of them, its increase over what was resident before;
        both None where memory is not measured, see `reset_peak`).
    """
    base = reset_peak(device, fresh_process)
    seconds = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    top = None if base is None else peak(device)
    return tuple(seconds), top, None if top is None else top - base


def measure_classifier(cfg: ClassifierStepConfig, fresh_process: bool = False) -> ClassifierResult:
    """Build the classifier for ``cfg`` and time ``cfg.warmup + cfg.repeats`` forward + backward steps.

    ``fresh_process``: this process has run nothing else (CPU memory is measured only then).
    """
    device = cfg.start()
    options = _options(cfg.temporal, None)
    gflops = count(cfg.model, cfg.num_frames, cfg.input_size, cfg.num_classes, **options)[0]
    torch.manual_seed(cfg.seed)
    model = build_classifier(
        cfg.model, cfg.num_classes, num_frames=cfg.num_frames, img_size=cfg.input_size, **options
    ).to(device)
    model.train()
    model.set_grad_checkpointing(cfg.checkpointing)
    x = torch.randn(cfg.batch_size, 3, cfg.num_frames, cfg.input_size, cfg.input_size, device=device)
    labels = torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            logits = model(x)
        F.cross_entropy(logits.float(), labels).backward()

    seconds, top, during = time_steps(step, device, cfg.warmup, cfg.repeats, fresh_process)
    return ClassifierResult(cfg, seconds, top, during, gflops)


def _measure_fresh(cfg_dict: dict) -> dict:
    """Spawned-process entry: plain dicts in and out."""
    return asdict(measure_classifier(ClassifierStepConfig(**cfg_dict), fresh_process=True))


def _run_fresh(cfg: ClassifierStepConfig) -> ClassifierResult:
    out = run_fresh(_measure_fresh, asdict(cfg))
    return ClassifierResult(
        **{**out, "config": ClassifierStepConfig(**out["config"]), "seconds": tuple(out["seconds"])}
    )


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.0f}"


def overhead_lines(results: list[ClassifierResult]) -> list[str]:
    """Per module: time overhead over TSN (``none``) at equal batch and checkpointing, against the FLOPs overhead.

    Overhead = ratio - 1 (of s/clip medians, of GFLOPs); the target is time overhead <= 1.5 x FLOPs overhead, the
    FLOPs overhead floored at `MIN_FLOPS_OVERHEAD`.
    """
    base = {(r.config.batch_size, r.config.checkpointing): r for r in results if r.config.temporal == "none"}
    lines = []
    for r in results:
        c = r.config
        if c.temporal == "none":
            continue
        ref = base.get((c.batch_size, c.checkpointing))
        if ref is None:
            lines.append(f"{c.temporal:<5} batch {c.batch_size}: no TSN row to compare with; add --temporal none")
            continue
        time_over = r.per_clip / ref.per_clip - 1
        fastest_over = r.fastest_per_clip / ref.fastest_per_clip - 1
        flops_over = r.gflops / ref.gflops - 1
        judged = max(flops_over, MIN_FLOPS_OVERHEAD)
        budget = TIME_PER_FLOPS_TARGET * judged
        floor = f" (floored at {_percent(MIN_FLOPS_OVERHEAD)})" if flops_over < MIN_FLOPS_OVERHEAD else ""
        verdict = "met" if time_over <= budget else "not met"
        lines.append(
            f"{c.temporal:<5} batch {c.batch_size}{' ckpt' if c.checkpointing else ''}: time {_percent(time_over)} "
            f"(fastest steps {_percent(fastest_over)}) vs FLOPs {_percent(flops_over)}{floor}; "
            f"time <= {TIME_PER_FLOPS_TARGET:g} x FLOPs overhead ({_percent(budget)}): {verdict}"
        )
    return lines


def format_classifier_table(results: list[ClassifierResult]) -> str:
    """Per-configuration table, then the overhead line of every module."""
    head = (
        f"{'model':<9} {'temporal':<8} {'batch':>5} {'ckpt':<4} {'GFLOPs':>7} {'s/clip':>7} {'min s/clip':>10} "
        f"{'clips/s':>7} {'peak MiB':>9} {'+step MiB':>9}"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        c = r.config
        rows.append(
            f"{c.model:<9} {c.temporal:<8} {c.batch_size:>5d} {'on' if c.checkpointing else 'off':<4} "
            f"{r.gflops:>7.2f} {r.per_clip:>7.3f} {r.fastest_per_clip:>10.3f} {1 / r.per_clip:>7.2f} "
            f"{_mib(r.peak_bytes):>9} {_mib(r.step_bytes):>9}"
        )
    lines = overhead_lines(results)
    if lines:
        rows += [
            "",
            "overhead over TSN (none): time = s/clip ratio - 1 (medians), FLOPs = GFLOPs ratio - 1; "
            f"target: time overhead <= {TIME_PER_FLOPS_TARGET:g} x FLOPs overhead, a FLOPs overhead below "
            f"{_percent(MIN_FLOPS_OVERHEAD)} judged as {_percent(MIN_FLOPS_OVERHEAD)}",
        ]
        rows += lines
    return "\n".join(rows)


def _classifier_configs(args: argparse.Namespace) -> list[ClassifierStepConfig]:
    device = resolve_device(args.device)
    check_counts(args, ("--num-frames", args.num_frames, 1), ("--input-size", args.input_size, 32))
    if len(set(args.temporal)) != len(args.temporal):
        raise UserError(f"--temporal {' '.join(args.temporal)} names a module twice; name each once")
    common = dict(num_frames=args.num_frames, input_size=args.input_size, num_classes=DEFAULT_NUM_CLASSES,
                  **step_settings(args, device))
    configs = [
        ClassifierStepConfig(args.model, temporal, batch, ckpt == "on", **common)
        for batch in args.batch_size
        for ckpt in args.checkpointing
        for temporal in args.temporal
    ]
    for temporal in args.temporal:  # a bad combination (vit_b16 with a module, 1 frame) fails before any timing
        with torch.device("meta"):
            build_classifier(
                args.model, 1, num_frames=args.num_frames, img_size=args.input_size, **_options(temporal, None)
            )
    return configs


def merge_rounds(results: list) -> Any:
    """One result from several rounds of the same configuration (any result dataclass with ``seconds``,
    ``peak_bytes`` and ``step_bytes``): all step times, the largest peaks."""
    peaks = [r.peak_bytes for r in results if r.peak_bytes is not None]
    steps = [r.step_bytes for r in results if r.step_bytes is not None]
    return replace(
        results[0],
        seconds=tuple(t for r in results for t in r.seconds),
        peak_bytes=max(peaks) if peaks else None,
        step_bytes=max(steps) if steps else None,
    )


def run_rounds(configs: list[Any], rounds: int, measure: Callable[[Any], Any], label: Callable[[Any], str],
               note: Callable[[Any, Any], str] = lambda cfg, result: "") -> list[Any]:
    """``rounds`` whole sweeps of ``measure`` over ``configs``; the merged rounds (`merge_rounds`) of each config.

    Prints a line per measurement: ``label(cfg)``, the step times, ``note(cfg, result)`` and the load average.
    """
    results: dict[Any, list[Any]] = {cfg: [] for cfg in configs}
    for i in range(rounds):
        # Whole sweeps one after another, so a busy spell on the machine spreads over every configuration.
        for cfg in configs:
            result = measure(cfg)
            results[cfg].append(result)
            times = " ".join(f"{t:.3f}" for t in result.seconds)
            print(f"  round {i + 1}: {label(cfg)}: {times} s ({note(cfg, result)}load {os.getloadavg()[0]:.2f})",
                  flush=True)
    return [merge_rounds(r) for r in results.values()]


# What README's "Large tensors and glibc's mmap threshold" measured: glibc reads these when a process starts.
HEAP_HINT = ("MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 in the environment keep them in the heap "
             "(ResNet-50 steps 7-31 % faster on CPU, README)")


def print_header(first: Any, in_process: bool) -> None:
    """The first line of a step benchmark (versions, device, threads, precision) and how memory is measured."""
    device = torch.device(first.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    precision = "bf16 autocast" if device.type == "cuda" else "float32"
    print(f"timemae bench-step: torch {torch.__version__}, {first.device} ({where}), {first.threads} threads, "
          f"{precision}")
    if device.type == "cuda":
        memory = "torch.cuda.max_memory_allocated (tensors)"
    elif in_process:
        memory = "not measured on CPU with --in-process"
    else:
        memory = "peak resident set (VmHWM) of a fresh process per configuration"
    print(f"memory: {memory}; peak = during the steps, +step = peak minus what was resident before them")
    if device.type == "cpu" and "MALLOC_MMAP_MAX_" not in os.environ:
        print(f"allocator: glibc maps every tensor above its mmap threshold afresh each step; {HEAP_HINT}")


def _label(cfg: ClassifierStepConfig) -> str:
    return f"{cfg.temporal:<5} ckpt {'on ' if cfg.checkpointing else 'off'} batch {cfg.batch_size}"


def run_classifier_bench(args: argparse.Namespace) -> int:
    """``timemae bench-step`` for a frame-level classifier (``--model resnet50 --temporal none tsm ...``)."""
    args = with_defaults(args, CLASSIFIER_DEFAULTS)
    configs = _classifier_configs(args)
    first = configs[0]
    print_header(first, args.in_process)
    print(
        f"classifier {first.model}, {first.num_classes} classes, clip 3 x {first.num_frames} x {first.input_size} x "
        f"{first.input_size}; step = forward (train mode) + cross entropy + backward (no optimizer); "
        f"{args.rounds} round(s) of {first.warmup} warm-up + {first.repeats} timed steps per configuration, "
        "s/clip = median step / batch"
    )
    print(f"GFLOPs: forward per clip, {HALVING_NOTE}; {COUNTED_NOTE}")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    results = run_rounds(configs, args.rounds, measure_classifier if args.in_process else _run_fresh, _label)
    print()
    print(format_classifier_table(results))
    return 0


CLI = {"flops": (add_flops_arguments, run_flops)}
