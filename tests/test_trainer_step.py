"""The trainer's step reads nothing back from the device but each micro-batch's non-finite check; log steps read the
rest (`launch.trainer.Trainer.train_step` / `read_step`)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from launch.loop import LoopState, check_micro_batch, lr_at
from launch.trainer import StageHooks, Trainer

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def count_reads():
    """Counts every Tensor -> Python read (``.item()``, ``.tolist()``, ``float()``, ``int()``, ``bool()``)."""
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        def read(self, *args, **kwargs):
            calls.append(name)
            return saved[name](self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


class FakeEngine:
    """What `train_step` asks of a DeepSpeed engine: plain SGD over accumulated gradients, nothing read back."""

    def __init__(self, model: torch.nn.Module, accum: int):
        self.module = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        self.accum, self.micro, self.skipped_steps = accum, 0, 0

    def backward(self, loss):
        (loss / self.accum).backward()
        self.micro += 1

    def is_gradient_accumulation_boundary(self):
        return self.micro % self.accum == 0

    def step(self):
        if self.is_gradient_accumulation_boundary():
            self.optimizer.step()
            self.optimizer.zero_grad()

    def get_global_grad_norm(self):
        return None


class Stage(StageHooks):
    def __init__(self, model):
        self.model = model

    def micro_loss(self, engine, batch, seed):
        out = self.model(batch["x"])
        correct = (out.detach().argmax(-1) == batch["y"]).sum()
        return torch.nn.functional.cross_entropy(out, batch["y"]), {"correct": correct, "seen": batch["y"].numel()}

    def step_values(self, sums):
        return {"train_top1": sums["correct"] / sums["seen"]}


def trainer(accum: int) -> Trainer:
    t = Trainer.__new__(Trainer)  # no launcher environment, no process group: the step alone
    t.cfg = SimpleNamespace(accum_steps=accum, seed=0, max_bad_steps=5, zero_stage=0)
    t.info = SimpleNamespace(rank=0, world_size=1)
    t.device, t.precision = torch.device("cpu"), "fp32"
    return t


def batches(n: int, nan_at: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        x = torch.randn(4, 6, generator=g)
        if i in nan_at:
            x[0, 0] = float("nan")
        out.append({"x": x, "y": torch.randint(0, 3, (4,), generator=g)})
    return out


D = SimpleNamespace(lr=0.1, min_lr=0.0, warmup_steps=0, total_steps=10, schedule="cosine", lr_milestones=())


@pytest.mark.parametrize("nan_at", [(), (1,)])
def test_one_read_per_micro_batch_and_the_rest_at_log_steps(nan_at):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    t, engine, stage, state = trainer(3), FakeEngine(model, 3), Stage(model), LoopState()
    data = batches(4, nan_at)
    good = [i for i in range(len(data)) if i not in nan_at][:3]
    with torch.no_grad():  # the model before the step: the optimizer steps once, after the last micro-batch
        expected = sum(float(torch.nn.functional.cross_entropy(model(data[i]["x"]), data[i]["y"])) for i in good) / 3
        correct = sum(int((model(data[i]["x"]).argmax(-1) == data[i]["y"]).sum()) for i in good)
    with count_reads() as reads:
        record = t.train_step(engine, iter(data), stage, D, state)
    assert reads == ["item"] * (3 + len(nan_at))  # the non-finite check of each micro-batch, nothing else
    assert record.good == 3 and record.skipped == len(nan_at) and state.skipped_steps == len(nan_at)
    assert record.lr == lr_at(0, D) and state.step == 1 and state.micro_batches == 3 + len(nan_at)

    out = t.read_step(record, stage, engine)
    assert out["loss"] == pytest.approx(expected, rel=1e-6)
    assert out["train_top1"] == correct / 12
    assert out["grad_norm"] > 0 and out["skipped_micro_batches"] == len(nan_at)


def test_the_stop_flag_rides_on_the_check():
    assert check_micro_batch(torch.tensor(1.0), True) == (True, True)
    assert check_micro_batch(torch.tensor(float("inf")), False) == (False, False)
    state = LoopState()
    assert state.loss_is_finite(torch.tensor(2.0), 3, stop=True) and state.stop_requested
