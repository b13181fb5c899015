"""launch.flops (FLOPs per clip on a meta copy, peaks, mfu) and --compile's in-place compilation."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from launch import flops
from models import build_pretrain
from pretrain.loss import reconstruction_loss
from pretrain.masking import token_counts, tube_mask


def _tiny():
    torch.manual_seed(0)
    return build_pretrain("vit_tiny", img_size=32, num_frames=4, encoder_depth=2, decoder_depth=1)


def _one_clip_loss(model, device, x=None):
    grid = model.token_grid
    x = torch.randn(1, 3, 4, 32, 32, device=device) if x is None else x
    mask = tube_mask(1, grid, 0.75, torch.Generator().manual_seed(0)).to(device)
    counts = token_counts("tube", 0.75, 0.0, grid)
    pred = model(x, mask, counts=counts)
    return reconstruction_loss(pred, x, mask, patch_size=16, tubelet_size=2, num_decoded=counts[1])


def test_meta_count_equals_a_count_on_a_real_clip(monkeypatch):
    from models import linear

    monkeypatch.setattr(linear, "ENABLED", False)  # the counter sees F.linear, not the private oneDNN op
    model = _tiny()
    counted = flops.count_clip_flops(model, lambda m: _one_clip_loss(m, "meta"))
    with FlopCounterMode(display=False) as real:
        loss = _one_clip_loss(model, "cpu")
        forward = real.get_total_flops()
        loss.backward()
    # Attention is counted through the math path on meta and through the CPU flash kernel on a real clip: the same
    # products up to a fraction of a percent.
    assert counted.forward == pytest.approx(forward, rel=0.01) and forward > 0
    assert counted.train == pytest.approx(real.get_total_flops(), rel=0.01)
    assert counted.train > 2 * counted.forward  # backward costs about twice the forward
    assert next(model.parameters()).device.type == "cpu"  # the model itself is untouched


def test_a_stage_without_a_one_clip_loss_is_not_counted():
    assert flops.count_clip_flops(_tiny(), lambda m: None) is None


def test_peaks_by_device_name(monkeypatch):
    cuda = torch.device("cuda")
    for name, precision, peak in [("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.5),
                                  ("NVIDIA A100-SXM4-40GB", "fp16", 312.0), ("Tesla V100-SXM2-32GB", "fp16", 125.0),
                                  ("Tesla V100-SXM2-32GB", "bf16", None), ("Some New GPU", "bf16", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert flops.peak_tflops(cuda, precision) == peak, name
    assert flops.peak_tflops(torch.device("cpu"), "fp32") is None
    assert flops.peak_tflops(torch.device("cpu"), "fp32", override=2.5) == 2.5
    assert flops.mfu(340.9e9, 1200.0, 989.4) == pytest.approx(0.4135, abs=1e-4)


def test_compile_in_place_matches_eager_and_keeps_the_keys():
    from launch.trainer import compile_in_place

    eager, compiled = _tiny(), _tiny()
    keys = list(compiled.state_dict())
    compile_in_place(compiled, backend="aot_eager")
    assert list(compiled.state_dict()) == keys
    x = torch.randn(1, 3, 4, 32, 32)
    losses = [_one_clip_loss(m, "cpu", x) for m in (eager, compiled)]
    for loss in losses:
        loss.backward()
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name


def test_runs_record_flops_and_log_mfu_with_a_peak(tmp_path, demo_dir):
    from conftest import read_log, run_script

    out = tmp_path / "run"
    done = run_script(["pretrain/run.py", "--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n",
                       "2", "--batch-size", "2", "--num-workers", "0", "--max-steps", "2", "--log-every", "1",
                       "--peak-tflops", "0.5", "--output-dir", str(out)], demo=demo_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    derived = json.loads((out / "derived.json").read_text())
    assert derived["flops_per_clip_train"] > 2 * derived["flops_per_clip_forward"] > 0
    assert derived["peak_tflops"] == 0.5
    records = read_log(out, "train")
    assert sorted(records) == [1, 2]
    for r in records.values():
        assert r["mfu"] == pytest.approx(derived["flops_per_clip_train"] * r["clips_per_s"] / 0.5e12, rel=1e-6)


def test_a_failing_count_is_logged_and_the_run_goes_on():
    import types

    from launch.trainer import Trainer

    said = []
    trainer = Trainer.__new__(Trainer)  # only the log is needed
    trainer.log = types.SimpleNamespace(info=said.append)

    class Stage:
        def one_clip_loss(self, model):
            raise IndexError("no meta kernel for this op")

    assert trainer.count_flops(Stage(), _tiny()) is None
    assert said == ["FLOPs not counted (no meta kernel for this op); no mfu in the log"]
