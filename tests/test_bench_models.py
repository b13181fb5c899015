"""`timemae flops` and the classifier path of `timemae bench-step`: counts against the papers' figures, smoke runs."""

import pytest

from launch.bench_models import (
    HALVING_NOTE,
    ClassifierResult,
    ClassifierStepConfig,
    _run_fresh,
    count,
    overhead_lines,
)
from launch.cli import main

STW_DENSE = {"temporal": "stw", "temporal_options": {"stfm_mode": "dense"}}


def test_resnet50_frame_is_the_fvcore_figure():
    gflops, mparams = count("resnet50", 1, 224, 1000)
    assert gflops == pytest.approx(4.1, rel=0.03)  # one multiply-add = one FLOP
    assert mparams == pytest.approx(25.56, rel=0.01)  # torchvision's ResNet-50


def test_shift_adds_no_flops_or_parameters():
    assert count("resnet50", 8, 224, temporal="tsm") == count("resnet50", 8, 224)


def test_stw_grouped_fits_the_paper_dense_does_not():
    tsn = count("resnet50", 8, 224)[0]
    grouped = count("resnet50", 8, 224, temporal="stw")[0]
    dense = count("resnet50", 8, 224, **STW_DENSE)[0]
    assert tsn < grouped < 1.02 * tsn  # the paper's "<2% extra"
    assert dense > 1.5 * tsn  # the spec's ~24.8 GMACs of full 1x1 convs


def test_stw_extra_is_its_grouped_convs_and_gate_taps():
    # Per pixel of a block input of width C: STFM's grouped 1x1 convs, C/4 x 4 + C/2 x 2 + C/4 x 4 = 3C multiply-adds
    # (counted although they run as strided multiply-adds), and TWM's C -> 1 conv over three frames, 3C.
    frames = 8
    inputs = [(64, 56 * 56)] + [(256, 56 * 56)] * 3 + [(512, 28 * 28)] * 4 + [(1024, 14 * 14)] * 6 + [(2048, 7 * 7)] * 2
    expected = sum(6 * c * hw for c, hw in inputs) * frames / 1e9
    extra = count("resnet50", frames, 224, temporal="stw")[0] - count("resnet50", frames, 224)[0]
    assert extra == pytest.approx(expected, rel=1e-6)


def test_ctrm_extra_is_its_offset_convs():
    # cTRM's offset conv: H*W -> H*W channels, 3x3 kernel over (C' = C/4, T), once per TRM of layer3 / layer4.
    frames, k = 8, 9
    trms = [(28 * 28, 512)] + [(14 * 14, 1024)] * 6 + [(7 * 7, 2048)] * 2  # (H*W, C) entering each TRM
    offset_gmacs = sum(hw * hw * k * (c // 4) * frames for hw, c in trms) / 1e9
    extra = count("resnet50", frames, 224, temporal="trm")[0] - count("resnet50", frames, 224)[0]
    assert extra == pytest.approx(offset_gmacs, rel=1e-6)
    assert extra == pytest.approx(10, rel=0.1)  # the spec's ~10 GMACs per 8-frame view


def test_videomae_base_counts_attention():
    assert count("vit_base", 16, 224)[0] == pytest.approx(180, rel=0.01)  # without attention it would be ~135


def test_flops_command_small(capsys):
    argv = ["flops", "--input-size", "64", "--num-frames", "2", "--models", "tsn", "tsm", "trm_ctrm", "vit_base"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert HALVING_NOTE in out and "not counted" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["tsn"], ["tsm"])}
    assert rows["tsn"][4] == rows["tsm"][4]  # same GFLOPs
    assert "trm_ctrm: relocation's linear interpolation" in out


def test_bench_step_classifier_overheads(capsys, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    argv = ["bench-step", "--model", "resnet18", "--temporal", "none", "tsm", "--input-size", "32", "--num-frames", "2",
            "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1", "--in-process"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("resnet18")]) == 2
    assert "overhead over TSN (none)" in out
    assert "allocator: glibc maps" in out and "MALLOC_MMAP_MAX_=0" in out  # on CPU without the heap setting
    line = next(line for line in out.splitlines() if line.startswith("tsm   batch 1"))
    assert "FLOPs +0.0% (floored at +1.0%)" in line and line.endswith(("met", "not met"))


def test_bench_step_classifier_fresh_process_memory():
    cfg = ClassifierStepConfig("resnet18", "atr", 1, False, num_frames=2, input_size=32, threads=1, warmup=0)
    result = _run_fresh(cfg)
    assert result.config == cfg and len(result.seconds) == 3 and result.peak_bytes > 0
    assert result.step_bytes is not None and result.gflops > 0


def test_temporal_module_with_videomae_is_one_line_error(capsys):
    assert main(["bench-step", "--model", "vit_tiny", "--temporal", "none", "tsm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--temporal" in err


def _result(temporal, seconds, gflops, batch=1):
    return ClassifierResult(ClassifierStepConfig("resnet50", temporal, batch, False), seconds, None, None, gflops)


def test_overhead_verdicts():
    lines = overhead_lines(
        [
            _result("none", (1.0,), 10.0),
            _result("tsm", (1.02,), 10.0),  # +2% time on no FLOPs: over the floored budget of +1.5%
            _result("trm", (1.4,), 13.0),  # +40% time on +30% FLOPs: within +45%
            _result("atr", (2.0,), 10.5, batch=2),  # no TSN row at batch 2
        ]
    )
    assert lines[0].startswith("tsm") and lines[0].endswith(": not met") and "floored" in lines[0]
    assert lines[1].startswith("trm") and lines[1].endswith(": met") and "FLOPs +30.0%" in lines[1]
    assert "add --temporal none" in lines[2]
