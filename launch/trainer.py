"""The one trainer both stages use: distributed start-up, DeepSpeed, the step loop, checkpoints, resume, preemption.

A stage (pretraining, fine-tuning) supplies only what is its own, as a `Stage`: the optimizer's parameter groups,
the loss of one micro-batch, and optional hooks (after a step: evaluation or reconstructions; after a checkpoint:
an export; extra client state such as the best accuracy). Everything else happens here, the same way for both:

    trainer = Trainer(cfg)                  # reads the launcher's environment (rank, world size)
    trainer.start()                         # process group, device, precision, logger
    dataset = trainer.train_dataset(source, spec)
    trainer.fit(stage, model, dataset, derived, summary)

One optimizer step = ``cfg.accum_steps`` good micro-batches. DeepSpeed counts micro-steps and applies the optimizer
at the accumulation boundary (it divides the loss by ``accum_steps`` inside ``engine.backward``). A micro-batch whose
loss is not finite on any rank is skipped by every rank and counted (`launch.loop.LoopState`). The randomness of a
micro-batch (masks, mixup) is seeded by its position (seed, rank, step, micro-batch), and the data stream resumes at
the consumed position, so a run killed and resumed logs the same losses as one that was not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

from common.dist import is_distributed
from common.errors import UserError, one_line
from launch import config as config_lib
from launch import distributed
from launch.checkpoint import CheckpointManager, CheckpointWriteError, make_loads_safe
from launch.ds_config import make_ds_config, merge_extra, resolve_precision
from launch.flops import ClipFlops, count_clip_flops, mfu, peak_tflops
from launch.logger import RunLogger
from launch.loop import (
    LoopState,
    NonFiniteLoss,
    average_norm_statistics,
    compile_in_place,
    device_memory,
    lr_at,
    step_seed,
)

DEMO_DIR = os.environ.get("TIMEMAE_DEMO_DIR", os.path.join("runs", "demo"))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Stage(Protocol):
    """What a training stage supplies to `Trainer.fit`. Hooks a stage does not need can be inherited from
    `StageHooks`."""

    def make_optimizer(self, model: torch.nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
        """The optimizer over the model's parameter groups; a group's ``lr_scale`` multiplies the scheduled lr."""

    def micro_loss(self, engine, batch: dict, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one micro-batch through ``engine``; returns the scalar loss and counts to sum (e.g. correct)."""

    def step_values(self, sums: dict[str, float]) -> dict[str, Any]:
        """Values to log from the counts `micro_loss` returned, summed over micro-batches and ranks."""

    def after_step(self, trainer: Trainer, engine, step: int) -> None:
        """Every rank, after each optimizer step (evaluation, reconstructions); its time is not counted as training."""

    def after_checkpoint(self, trainer: Trainer, engine) -> str:
        """Every rank, after each checkpoint (an export); returns text for the checkpoint's log line."""

    def client_state(self) -> dict:
        """Extra plain data stored in every checkpoint."""

    def load_client_state(self, state: dict) -> str:
        """Restore what `client_state` stored; returns text for the resume log line."""

    def summary(self) -> str:
        """The end of the run's last log line."""

    def one_clip_loss(self, model: torch.nn.Module) -> torch.Tensor | None:
        """The scalar loss of one clip through ``model`` (a meta copy), for `launch.flops`; None to skip counting."""


class StageHooks:
    """No-op defaults for the optional parts of `Stage`."""

    def step_values(self, sums: dict[str, float]) -> dict[str, Any]:
        return {}

    def after_step(self, trainer: Trainer, engine, step: int) -> None:
        return None

    def after_checkpoint(self, trainer: Trainer, engine) -> str:
        return ""

    def client_state(self) -> dict:
        return {}

    def load_client_state(self, state: dict) -> str:
        return ""

    def summary(self) -> str:
        return ""

    def one_clip_loss(self, model: torch.nn.Module) -> torch.Tensor | None:
        """The loss of one clip through ``model`` (a meta copy: shapes only), for counting FLOPs; None: not counted."""
        return None


class Trainer:
    """Run plumbing for one config made of the `launch.fields` groups.

    Attributes (after `start`): ``info`` (rank, world size, launcher), ``device``, ``precision`` and ``dtype`` (the
    compute precision), ``log`` (`RunLogger`, writing on rank 0 only).
    """

    def __init__(self, cfg: Any):
        self.info = distributed.detect()
        self.cfg, self.workers_note = cap_workers(cfg, self.info)
        self.device: torch.device | None = None
        self.precision = "fp32"
        self.dtype = torch.float32
        self.log: RunLogger | None = None
        self.lock_note = ""  # a run lock held on another machine (see `_hold_run_folder`)

    # -----------------------------------------------------------------------------------------------------------------
    # Start-up

    def start(self, data: dict[str, str] | None = None, files: dict[str, str] | None = None) -> None:
        """Check the inputs, check the run folder can be written, join the process group, pick the device and
        precision, open the run log.

        Every input check comes first, before anything is created and before the process group (where a bad path
        would be a hung or slow start): ``data`` maps a flag to the shards it names (they exist, hold shards of the
        run's modality), ``files`` a flag to a file it names (it exists and can be read), and ``--resume`` must name
        a complete checkpoint. Empty values are not checked (the demo data, no ``--init-from``).
        """
        from launch.checkpoint import check_writable

        for flag, path in (files or {}).items():
            if path:
                check_readable(path, flag)
        for flag, source in (data or {}).items():
            if source:
                check_data(source, self.cfg.modality, flag)
        self.checkpoints().find(self.cfg.resume)  # a --resume folder that is no checkpoint: one line, nothing made
        check_writable(self.cfg.output_dir)  # before the process group: a bad path is one line, not a hung rank
        self.device = distributed.init(self.info)
        self._hold_run_folder()
        self.precision = resolve_precision(self.cfg.precision, self.device)
        self.dtype = DTYPES[self.precision]
        self.log = RunLogger(self.cfg.output_dir, enabled=self.info.is_main)
        self.log.info(distributed.format_rank_map(distributed.rank_map(self.info, self.device), self.info.launcher))
        if self.workers_note:
            self.log.info(self.workers_note)
        if self.lock_note:
            self.log.info(self.lock_note)

    def _hold_run_folder(self) -> None:
        """Rank 0 takes the run folder's lock (`launch.checkpoint.lock_run_folder`) and every rank learns the answer:
        a second run into a folder another run on this machine is using (a command started twice) stops with one
        line on every rank, before it writes anything there. ``--eval-only`` only reads the folder's checkpoints and
        takes no lock."""
        from launch.checkpoint import lock_run_folder

        if getattr(self.cfg, "eval_only", False):
            return
        box = [lock_run_folder(self.cfg.output_dir) if self.info.is_main else ("", "")]
        if self.info.world_size > 1:
            torch.distributed.broadcast_object_list(box, src=0)
        refusal, self.lock_note = box[0]
        if refusal:
            raise UserError(f"--output-dir {self.cfg.output_dir} is in use by another run ({refusal}); wait for it to "
                            "end, or pass another --output-dir")

    def seed(self) -> None:
        """Identical initial weights on every rank; numpy's global state differs per rank."""
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed + self.info.rank)

    def demo_shards(self, split: str) -> str:
        """The embedded demo data's shards of ``split`` in the run's modality (rank 0 generates them once)."""
        from data.prep.demo import demo_shards, ensure_demo

        if self.info.is_main:
            if not demo_ready(DEMO_DIR):
                self.log.info(f"no --data: making the demo data in {os.path.abspath(DEMO_DIR)} (once; a minute or "
                              "two on a laptop; TIMEMAE_DEMO_DIR puts it elsewhere)")
            ensure_demo(DEMO_DIR, reuse_any=True)
        distributed.barrier()
        return demo_shards(ensure_demo(DEMO_DIR, reuse_any=True), split, self.cfg.modality)  # only reads the stamp

    def train_dataset(self, source: str, spec, **options: Any):
        """The endless, shuffled training stream of this rank (`data.stream.ShardDataset`): ``--data-mode exact`` is
        its ``epochs`` mode, ``resampled`` its resampled mode."""
        from data.stream import ShardDataset

        cfg = self.cfg
        mode = "epochs" if cfg.data_mode == "exact" else "resampled"
        dataset = ShardDataset(source, spec, mode=mode, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
                               rank=self.info.rank, world_size=self.info.world_size, output="uint8", **options)
        check_modality(dataset.shards, cfg.modality, "--data")
        return dataset

    # -----------------------------------------------------------------------------------------------------------------
    # Weights

    def checkpoints(self) -> CheckpointManager:
        return CheckpointManager(self.cfg.output_dir, rank=self.info.rank, keep_last=self.cfg.keep_last)

    def load_for_eval(self, model: torch.nn.Module) -> str | None:
        """Without an engine (evaluation only): the resumed checkpoint's consolidated weights into ``model``."""
        ckpt = self.checkpoints()
        folder = ckpt.find(self.cfg.resume)
        ckpt.prepare_resume(folder, model, world_size=self.info.world_size, zero_stage=self.cfg.zero_stage,
                            log=self.log.info, consolidated=True)
        return folder

    def full_state_dict(self, engine) -> dict[str, torch.Tensor] | None:
        """The whole model's weights in fp32 on the CPU on rank 0 (None elsewhere). Collective: every rank calls it.

        Under ZeRO-3 the weights are partitioned over the ranks; the engine gathers them.
        """
        if engine.zero_optimization_partition_weights():
            state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank takes part
        else:
            state = engine.module.state_dict() if self.info.is_main else None
        if not self.info.is_main:
            return None
        return {k: v.detach().float().cpu() for k, v in state.items()}  # like released files, whatever the precision

    # -----------------------------------------------------------------------------------------------------------------
    # Training

    def fit(self, stage: Stage, model: torch.nn.Module, dataset, d: Any, summary: str) -> int:
        """Train ``model`` on ``dataset`` for ``d.total_steps`` steps; resume, checkpoint and stop as flagged.

        Args:
            stage: the stage's own parts (`Stage`).
            model: the model, on the CPU, initial weights loaded (a resume replaces them).
            dataset: the training `ShardDataset` (`train_dataset`).
            d: the derived values (``global_batch``, ``lr``, ``total_steps``, ``steps_per_epoch``, schedule, ...).
            summary: the run's description, logged once before the first step.

        Returns:
            The exit code: 0 when done or stopped by a signal (checkpoint written), 1 after too many non-finite
            losses or skipped optimizer steps, or when a checkpoint cannot be written.
        """
        cfg, info, log, device = self.cfg, self.info, self.log, self.device
        ckpt = self.checkpoints()
        resume_dir = ckpt.find(cfg.resume)
        if resume_dir:
            check_resume_config(ckpt.read_info(resume_dir).get("config"), cfg, resume_dir)
        same_world = ckpt.prepare_resume(resume_dir, model, world_size=info.world_size, zero_stage=cfg.zero_stage,
                                         log=log.info)
        ds_cfg = merge_extra(make_ds_config(micro_batch=cfg.batch_size, accum_steps=cfg.accum_steps,
                                            world_size=info.world_size, precision=self.precision,
                                            zero_stage=cfg.zero_stage, clip_grad=cfg.clip_grad,
                                            bf16_overflow_check=cfg.bf16_overflow_check), cfg.ds_config)
        flops = self.count_flops(stage, model) if info.is_main else None  # only rank 0 writes derived.json / logs
        peak = peak_tflops(device, self.precision, cfg.peak_tflops)
        if info.is_main:
            config_lib.write_run_files(cfg.output_dir, cfg, ds_cfg, d, extra={
                "flops_per_clip_forward": flops.forward if flops else None,
                "flops_per_clip_train": flops.train if flops else None,
                "peak_tflops": peak,
            })
        log.info(summary)
        if cfg.compile:
            compile_in_place(model)

        import deepspeed

        optimizer = stage.make_optimizer(model, d.lr, device)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
        make_loads_safe(engine)
        state = LoopState()
        position = None
        if resume_dir:
            client = ckpt.resume_state(engine, resume_dir, same_world)
            state.step, state.micro_batches = int(client["step"]), int(client["micro_batches"])
            state.last_good_checkpoint = resume_dir
            log.info(f"resumed at step {state.step} from {resume_dir}{stage.load_client_state(client)}")
            log.drop_after(state.step)
            position = ckpt.stream_position(resume_dir, num_workers=cfg.num_workers, same_world=same_world,
                                            log=log.info)
        from data.stream import make_loader

        dataset.resume_from(state.micro_batches, cfg.batch_size, position)
        loader = make_loader(dataset, cfg.batch_size, cfg.num_workers)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            batches = dataset.tracked(iter(loader))  # the loader's base seed must not move the training RNG

        def save() -> None:
            average_norm_statistics(engine.module)
            client = {"timemae": {"step": state.step, "micro_batches": state.micro_batches,
                                  "epoch": state.step / d.steps_per_epoch, "config": config_lib.to_dict(cfg),
                                  **stage.client_state()}}
            folder = ckpt.save(engine, state.step, client, {"config": config_lib.to_dict(cfg),
                                                            "world_size": info.world_size,
                                                            "zero_stage": cfg.zero_stage, "precision": self.precision},
                               stream={"num_workers": loader.num_workers, "position": dataset.position()})
            state.last_good_checkpoint = folder
            log.info(f"checkpoint {folder}{stage.after_checkpoint(self, engine)}")

        from launch.preemption import StopRequest, requeue

        stop = StopRequest(announce=info.is_main)
        log.open_progress(d.total_steps, state.step)
        first_step = state.step + 1  # logged as soon as it is done: the user sees the run is training
        window_t, window_clips = time.perf_counter(), 0
        try:
            while state.step < d.total_steps:
                step_t = time.perf_counter()
                record = self.train_step(engine, batches, stage, d, state, stop.received is not None)
                window_clips += d.global_batch
                # Every rank learnt in its last micro-batch check whether any rank has a signal (a signal that
                # arrives later on another rank is seen in the next step); one process can ask its own handler.
                stopping = state.step < d.total_steps and (
                    state.stop_requested if is_distributed() else stop.received is not None)
                logged = None  # the stopped step is logged too
                if state.step % cfg.log_every == 0 or state.step in (first_step, d.total_steps) or stopping:
                    out = logged = self.read_step(record, stage, engine)
                    now = time.perf_counter()
                    out["clips_per_s"] = window_clips / (now - window_t)
                    out["step_time_s"] = (now - window_t) / max(1, window_clips // d.global_batch)
                    out["epoch"] = state.step / d.steps_per_epoch
                    if flops and peak:
                        out["mfu"] = mfu(flops.train, out["clips_per_s"] / info.world_size, peak)
                    out.update(device_memory(device))
                    out.update({f"data_{k}": v for k, v in dataset.stats().items()})
                    if dataset.mode == "epochs":  # clips taken over all ranks, in passes over the training set
                        taken = state.micro_batches * cfg.batch_size * info.world_size
                        out["data_epoch"], out["data_epoch_videos"] = divmod(taken, max(1, d.num_samples))
                    log.log_step(state.step, out)
                    window_t, window_clips = now, 0
                log.advance(state.step, d.global_batch / (time.perf_counter() - step_t),
                            loss=logged["loss"] if logged else None)
                hook_t = time.perf_counter()
                stage.after_step(self, engine, state.step)
                window_t += time.perf_counter() - hook_t  # clips/s counts training only
                saved = state.step % cfg.save_every == 0 or state.step == d.total_steps
                if saved:
                    save()
                if stopping:
                    log.info(f"received {stop.name}: checkpointing at step {state.step}")
                    if not saved:
                        save()
                    if info.is_main and stop.received != signal.SIGINT:  # Ctrl-C: the user stopped it, no requeue
                        log.info(requeue())
                    log.info(f"stopped at step {state.step}: the same command continues from "
                             f"{state.last_good_checkpoint} (--resume auto)")
                    return 0
        except (NonFiniteLoss, CheckpointWriteError) as err:
            log.info(f"stopping: {err}")
            if not info.is_main:  # the log speaks for rank 0 only; a reason seen only here must still be read
                print(f"rank {info.rank}: stopping: {err}", file=sys.stderr, flush=True)
            return 1
        finally:
            log.close()
        log.info(f"done: {state.step} steps{stage.summary()}; run folder {cfg.output_dir}")
        return 0

    def count_flops(self, stage: Stage, model: torch.nn.Module) -> ClipFlops | None:
        """One training clip's FLOPs (`launch.flops`), or None when the stage does not say how to run one clip or
        counting fails (an op the meta device cannot run): the run goes on without ``mfu``."""
        one_clip_loss = getattr(stage, "one_clip_loss", None)
        if one_clip_loss is None:
            return None
        try:
            return count_clip_flops(model, one_clip_loss)
        except Exception as err:  # noqa: BLE001 - a diagnostic never stops a run (e.g. an op without a meta kernel)
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            self.log.info(f"FLOPs not counted ({reason}); no mfu in the log")
            return None

    def train_step(self, engine, batches: Iterator[dict], stage: Stage, d: Any, state: LoopState,
                   stop_received: bool = False) -> StepRecord:
        """One optimizer step over ``accum_steps`` good micro-batches. Returns its values, still on the device.

        The only host read is each micro-batch's non-finite check (`LoopState.loss_is_finite`), which also tells
        every rank whether any has ``stop_received``. The loss, the stage's counts and the grad norm are read by
        `read_step`, at log steps only. The logged ``lr`` is the scheduled one (scale 1); a parameter group with
        ``lr_scale`` (layer decay, TRM's offsets) gets ``lr x lr_scale``.
        """
        cfg = self.cfg
        lr = lr_at(state.step, d)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        record = StepRecord(lr=lr)
        while record.good < cfg.accum_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            record.data_wait_s += time.perf_counter() - t0
            micro = record.good + record.skipped
            state.micro_batches += 1
            loss, counts = stage.micro_loss(engine, batch, step_seed(cfg.seed, self.info.rank, state.step, micro))
            if not state.loss_is_finite(loss, cfg.max_bad_steps, stop=stop_received):
                record.skipped += 1
                continue
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary and cfg.zero_stage == 0 and self.precision == "fp32":
                record.own_norm = grad_norm(engine.module)  # DeepSpeed computes it in fp16 / bf16 / ZeRO only
            skipped_before = engine.skipped_steps
            engine.step()
            if boundary:
                state.optimizer_step_taken(engine.skipped_steps > skipped_before, cfg.max_bad_steps,
                                           scale_search=self._scale_searching(engine))
            record.add(loss, counts)
        state.step += 1
        return record

    def read_step(self, record: StepRecord, stage: Stage, engine) -> dict:
        """The values to log for one step (`train_step`): the loss and counts summed over ranks (a collective: every
        rank calls it at the same steps) and read from the device, with the grad norm."""
        keys = sorted(record.sums)
        values = [record.loss_sum / record.good, *(record.sums[k] for k in keys)]
        totals = all_reduce_sum(values, self.device)
        norm = engine.get_global_grad_norm()
        norm = record.own_norm if norm is None else norm
        out = {
            "kind": "train",
            "loss": totals[0] / self.info.world_size,  # mean over ranks
            "lr": record.lr,
            "grad_norm": float(norm) if norm is not None else None,
            "data_wait_s": record.data_wait_s,
            **stage.step_values(dict(zip(keys, totals[1:], strict=True))),
            "skipped_micro_batches": record.skipped,
        }
        if self.precision == "fp16" and hasattr(engine.optimizer, "cur_scale"):
            out["loss_scale"] = float(engine.optimizer.cur_scale)
        return out

    def _scale_searching(self, engine) -> bool:
        """fp16: whether the loss scaler can still lower its scale (its skipped steps are the search, not a fault)."""
        if self.precision != "fp16":
            return False
        scale = getattr(engine.optimizer, "cur_scale", None)
        floor = getattr(engine.optimizer, "min_loss_scale", 1.0)
        return scale is None or scale > floor


# Flags a checkpoint cannot be resumed under once changed: the weights' shapes, or the data position and schedule.
RESUME_FIXED = ("model", "temporal", "temporal_stages", "temporal_options", "num_frames", "input_size", "num_classes",
                "batch_size", "accum_steps", "seed", "samples_per_decode", "data_mode")


def check_resume_config(saved: dict | None, cfg: Any, folder: str) -> None:
    """Refuse to resume ``folder`` under flags that change the model or the data position (one line naming them).

    Checkpoints written before configs were recorded next to ``COMPLETE`` (``saved`` None) are not checked.
    """
    if not isinstance(saved, dict):
        return
    now = config_lib.to_dict(cfg)
    changed = [k for k in RESUME_FIXED if k in saved and k in now and saved[k] != now[k]]
    if changed:
        diffs = ", ".join(f"{config_lib.flag_name(k)} {saved[k]} -> {now[k]}" for k in changed)
        raise UserError(f"cannot resume {folder} with other flags ({diffs}): they change the model or the data "
                        "position; resume with the checkpoint's values, or start afresh with another --output-dir or "
                        "--resume none")


def check_modality(paths: list[str], modality: str, flag: str, *, records: int = 16, shards: int = 4) -> None:
    """The first readable records (up to ``records`` of the first ``shards`` shards) must hold ``modality`` videos.

    Unreadable shards and records with no valid JSON are passed over here, as the stream skips and counts them:
    one bad record never stops a run at start-up.

    Raises:
        UserError: the records hold another modality, or none of them is readable.
    """
    import tarfile
    from collections import Counter

    from data.stream import iter_tar

    found: Counter[str] = Counter()
    for path in paths[:shards]:
        try:
            for sample in iter_tar(path):
                try:
                    found[str(json.loads(sample["json"]).get("modality", "rgb"))] += 1
                except (KeyError, ValueError, TypeError, AttributeError):
                    continue  # the stream skips and counts it
                if sum(found.values()) >= records:
                    break
        except (tarfile.TarError, OSError, EOFError):
            continue  # the stream skips and counts it
        if sum(found.values()) >= records:
            break
    where = f"{paths[0]}{', ...' if len(paths) > 1 else ''}"
    if not found:
        raise UserError(f"the {flag} shards ({where}) hold no readable record in their first {shards} shards; "
                        "rewrite them with `timemae shards`")
    other = [m for m in found if m != modality]
    if other:
        top = max(other, key=found.get)
        raise UserError(f"--modality {modality} but the {flag} shards hold {top} videos ({where}); "
                        f"use --modality {top} or other {flag}")


def check_data(source: str, modality: str, flag: str) -> None:
    """``source`` (a shard folder, tar or pattern) exists, holds shards, and they hold ``modality`` videos.

    Raises:
        UserError: one line naming the path or the modality found.
    """
    from data.stream import resolve_shards

    check_modality(resolve_shards(source)[0], modality, flag)


def check_readable(path: str, flag: str) -> None:
    """``path`` is a file this process can read.

    Raises:
        UserError: one line naming the flag, the path and the reason.
    """
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path} does not exist or is not a file; give the path of a weights file")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as err:
        raise UserError(f"{flag} {path} cannot be read ({err.strerror or type(err).__name__}); check its "
                        "permissions") from None


def cap_workers(cfg: Any, info: distributed.DistInfo, env: dict | None = None) -> tuple[Any, str]:
    """``cfg`` with ``num_workers`` at most the cores this rank has (at least 1), and the log line saying so (""
    when the flag's value stands).

    More loader workers than cores only makes them take turns (and on a laptop, with the default 8, the first step
    waits for all of them to start). The cores per rank are `distributed.cores_per_rank`; ``TIMEMAE_MAX_WORKERS``
    in the environment replaces that cap (e.g. to try more workers than cores).
    """
    env = os.environ if env is None else env
    cores, ranks = distributed.cores_per_rank(info, env)
    given = env.get("TIMEMAE_MAX_WORKERS", "")
    if given:
        if not given.isdigit():
            raise UserError(f"TIMEMAE_MAX_WORKERS={given!r} is not a whole number; unset it or give e.g. 8")
        cap, why = int(given), "TIMEMAE_MAX_WORKERS"
    else:
        shared = f" (its share of the node's, with {ranks} ranks on it)" if ranks > 1 else ""
        cap, why = cores, f"this rank has {cores} CPU core{'s' if cores > 1 else ''}{shared}"
    cap = max(1, cap)
    if cfg.num_workers <= cap:
        return cfg, ""
    note = f"--num-workers {cfg.num_workers} capped at {cap}: {why} (TIMEMAE_MAX_WORKERS=N sets another cap)"
    return dataclasses.replace(cfg, num_workers=cap), note


def demo_ready(folder: str) -> bool:
    """Whether ``folder`` holds a complete demo dataset (its stamp says so), i.e. `ensure_demo` will not generate."""
    from data.prep.demo import STAMP, STAMP_FORMAT

    try:
        with open(os.path.join(folder, STAMP)) as fh:
            stamp = json.load(fh)
        return bool(stamp.get("complete")) and stamp.get("format") == STAMP_FORMAT  # an older format is remade
    except (OSError, ValueError, AttributeError):
        return False


def all_reduce_sum(values: list, device: torch.device) -> list[float]:
    """Element-wise sums over all ranks of numbers or 0-d tensors (float64; a collective when distributed), read
    from the device in one go."""
    t = torch.stack([torch.as_tensor(v, device=device).to(torch.float64).reshape(()) for v in values])
    if is_distributed():
        torch.distributed.all_reduce(t)
    return t.tolist()


def grad_norm(module: torch.nn.Module) -> torch.Tensor | float:
    """L2 norm of all gradients (before clipping; ZeRO 0 has averaged them over ranks in the backward pass), left on
    the device."""
    grads = [p.grad.detach().float() for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else 0.0


@dataclasses.dataclass
class StepRecord:
    """One optimizer step's values as `Trainer.train_step` leaves them: sums still on the device."""

    lr: float
    good: int = 0  # micro-batches used
    skipped: int = 0  # micro-batches skipped for a non-finite loss
    data_wait_s: float = 0.0
    loss_sum: torch.Tensor | float = 0.0  # float64, on the device
    sums: dict[str, Any] = dataclasses.field(default_factory=dict)  # the stage's counts, tensors or numbers
    own_norm: torch.Tensor | float | None = None

    def add(self, loss: torch.Tensor, counts: dict[str, Any]) -> None:
        """Add one good micro-batch (device adds only: nothing is read back)."""
        self.good += 1
        self.loss_sum = self.loss_sum + loss.detach().to(torch.float64)
        for key, value in counts.items():
            self.sums[key] = self.sums.get(key, 0) + value


def entry(main, prog: str) -> None:
    """A training script's ``__main__``: `UserError` -> one line and exit 2; Ctrl-C before training started (the
    trainer catches it from then on) -> one line and exit 130; a finished run exits without teardown."""
    try:
        code = main()
    except UserError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted before training started; nothing to save", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    distributed.exit_now(code)
