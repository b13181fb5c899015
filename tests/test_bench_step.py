"""`timemae bench-step` smoke tests at a tiny geometry (no timing assertions)."""

import argparse
import re

import pytest

from data.errors import UserError
from pretrain.bench_step import CLI, StepConfig, _run_fresh, format_table, measure

TINY = ["--model", "vit_tiny", "--num-frames", "4", "--input-size", "32", "--threads", "1", "--repeats", "1"]


def _args(*argv):
    add_arguments, _ = CLI["bench-step"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_in_process_table(capsys):
    _, run = CLI["bench-step"]
    assert run(_args(*TINY, "--mask-ratio", "0.75", "0.5", "--in-process")) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("vit_tiny")]
    assert len(rows) == 2 * 2 * 2  # masks x checkpointing x attention
    assert "SDPA over explicit softmax" in out
    assert len(re.findall(r"\d\.\d\dx \(", out)) == 4  # one speed-up per (mask, batch, checkpointing)
    assert all(row.split()[-2:] == ["-", "-"] for row in rows)  # no CPU memory in-process


def test_fresh_process_measures_memory():
    cfg = StepConfig("vit_tiny", 0.5, 2, "sdpa", True, num_frames=4, input_size=32, threads=1, repeats=1)
    result = _run_fresh(cfg)
    assert result.config == cfg and len(result.seconds) == 1 and result.seconds[0] > 0
    assert result.peak_bytes > 0 and result.step_bytes is not None
    assert result.visible_tokens == 2 * 2 * 2 - result.decoded_tokens == 4
    assert "vit_tiny" in format_table([result])


def test_measure_eager_with_checkpointing():
    cfg = StepConfig("vit_tiny", 0.75, 1, "eager", True, num_frames=4, input_size=32, threads=1, warmup=0, repeats=2)
    result = measure(cfg)
    assert len(result.seconds) == 2 and result.peak_bytes is None  # not a fresh process: no CPU memory


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mask-ratio", "1.0"], "masks all"),
        (["--input-size", "40"], "tubelets"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--device", "cuda:7"], "no CUDA"),
    ],
)
def test_bad_arguments(argv, message):
    import torch

    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip(reason="a CUDA device exists")
    _, run = CLI["bench-step"]
    with pytest.raises(UserError, match=message):
        run(_args(*TINY, *argv))
