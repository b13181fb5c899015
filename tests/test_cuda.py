"""The CUDA paths: bf16 / fp16 training under DeepSpeed with NCCL, every ZeRO stage, fused SDPA kernels, bench-step.

Every test here needs a CUDA GPU and is skipped without one, so the CPU suite (CI) reports them as skipped. On a GPU
node run them with ``bash tests/run.sh tests/test_cuda.py``. bf16 tests also need a GPU with native bf16 (A100, H100);
on a V100 ``--precision auto`` picks fp16, and the fp16 test covers that path.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--mask-ratio", "0.75",
        "--batch-size", "4", "--num-workers", "1", "--log-every", "1", "--shuffle-buffer", "8"]
# The launcher as a module: works whether or not pip put a `deepspeed` script next to this Python.
DEEPSPEED = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port"]


def native_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] >= 8


# Without CUDA every test here is skipped for that reason, not for the bf16 one.
BF16 = "bf16 needs compute capability >= 8 (A100, H100)" if torch.cuda.is_available() else "needs a CUDA GPU"


def read_log(run: Path, kind: str | None = None) -> dict[int, dict]:
    records = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if kind is None or rec.get("kind") == kind:
            records[rec["step"]] = rec
    return records


def check_ok(out) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def finite_positive(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@pytest.mark.skipif(not native_bf16(), reason=BF16)
@pytest.mark.parametrize("zero,extra", [("0", []), ("1", []), ("2", []), ("3", []), ("2", ["--bf16-overflow-check"])])
def test_auto_precision_trains_in_bf16_with_nccl_at_every_zero_stage_and_resumes(demo_dir, tmp_path, zero, extra):
    run = tmp_path / "run"
    common = ["pretrain/run.py", *TINY, *extra, "--zero-stage", zero, "--recon-every", "2", "--output-dir", str(run)]
    out = run_script([*common, "--max-steps", "4", "--save-every", "2"], demo=demo_dir)
    check_ok(out)
    assert "precision bf16" in out.stdout and "cuda:0" in out.stdout
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["bf16"]["enabled"] and "fp16" not in ds and ds["zero_optimization"]["stage"] == int(zero)
    assert ds["bf16"].get("check_grad_overflow", False) == bool(extra)
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    for rec in log.values():
        assert finite_positive(rec["loss"]) and finite_positive(rec["grad_norm"]) and rec["clips_per_s"] > 0
        assert 0 < rec["max_mem_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30
    # The encoder export is plain fp32 tensors on the CPU, whatever the training precision and device.
    export = torch.load(run / "encoder.pth", map_location="cpu", weights_only=True)
    weights = export.get("model", export)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in weights.values() if t.is_floating_point())

    more = run_script([*common, "--max-steps", "6", "--save-every", "6"], demo=demo_dir)
    check_ok(more)
    assert "resumed at step 4" in more.stdout
    assert sorted(read_log(run)) == [1, 2, 3, 4, 5, 6]


def test_fp16_trains_with_dynamic_loss_scaling(demo_dir, tmp_path):
    run = tmp_path / "run"
    out = run_script(["pretrain/run.py", *TINY, "--precision", "fp16", "--max-steps", "4", "--save-every", "4",
                      "--recon-every", "0", "--output-dir", str(run)], demo=demo_dir)
    check_ok(out)
    assert "precision fp16" in out.stdout
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # 0 = dynamic
    log = read_log(run)
    assert sorted(log) == [1, 2, 3, 4]
    for rec in log.values():
        assert finite_positive(rec["loss"]) and finite_positive(rec["loss_scale"])


def test_the_deepspeed_launcher_as_typed(demo_dir, tmp_path):
    """``deepspeed pretrain/run.py --mask-ratio 0.75 --grid-n 2`` on one GPU (tiny model, few steps)."""
    run = tmp_path / "run"
    out = run_script(["pretrain/run.py", *TINY, "--max-steps", "3", "--save-every", "3", "--recon-every", "0",
                      "--output-dir", str(run)], demo=demo_dir, launcher=[*DEEPSPEED, "29731"])
    check_ok(out)
    assert "launcher: deepspeed, world size 1" in out.stdout
    assert sorted(read_log(run)) == [1, 2, 3] and (run / "encoder.pth").is_file()


@pytest.mark.skipif(not native_bf16(), reason=BF16)
def test_fine_tuning_in_bf16(demo_dir, tmp_path):
    run = tmp_path / "run"
    out = run_script(["finetune/run.py", *[a for a in TINY if a != "0.75" and a != "--mask-ratio"], "--max-steps",
                      "4", "--eval-every", "2", "--save-every", "4", "--output-dir", str(run)], demo=demo_dir)
    check_ok(out)
    assert "precision bf16" in out.stdout
    train, evals = read_log(run, "train"), read_log(run, "eval")
    assert sorted(train) == [1, 2, 3, 4] and sorted(evals) == [2, 4]
    assert all(finite_positive(rec["loss"]) for rec in train.values())
    assert all(0 <= rec["top1"] <= rec["top5"] <= 1 and rec["num_videos"] == 32 for rec in evals.values())


@pytest.mark.skipif(not native_bf16(), reason=BF16)
def test_fused_attention_matches_the_explicit_path_in_bf16():
    from models import build_pretrain
    from pretrain.bench_step import _sdpa_backend
    from pretrain.loss import reconstruction_loss
    from pretrain.masking import tube_mask

    torch.manual_seed(0)
    fused = build_pretrain("vit_small", img_size=64, num_frames=8).cuda()
    explicit = build_pretrain("vit_small", img_size=64, num_frames=8, attn_impl="eager").cuda()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 8, 64, 64, device="cuda")
    mask = tube_mask(2, fused.token_grid, 0.75, torch.Generator().manual_seed(0)).cuda()
    results = []
    for model in (fused, explicit):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = model(x, mask)
        loss = reconstruction_loss(pred, x, mask, patch_size=16, tubelet_size=2)
        loss.backward()
        results.append((pred.float(), loss, model.encoder.patch_embed.proj.weight.grad))
    (p1, l1, g1), (p2, l2, g2) = results
    assert ((p1 - p2).norm() / p2.norm()).item() < 2e-2  # bf16 operands: ~1e-3 .. 1e-2 relative
    assert abs(l1.item() - l2.item()) < 2e-2 * l2.item()
    assert ((g1 - g2).norm() / g2.norm()).item() < 5e-2
    attn = fused.encoder.blocks[0].attn
    q = torch.randn(2, attn.num_heads, 128, 64, device="cuda", dtype=torch.bfloat16)
    assert _sdpa_backend(q, attn.scale) in ("flash_attention", "efficient_attention", "cudnn_attention")


def test_bench_step_runs_on_the_gpu():
    out = run_script(["-m", "launch.cli", "bench-step", "--model", "vit_tiny", "--mask-ratio", "0.75", "--batch-size",
                      "2", "--input-size", "64", "--num-frames", "8", "--repeats", "2", "--device", "cuda"])
    check_ok(out)
    assert "bf16 autocast" in out.stdout and "SDPA over explicit softmax" in out.stdout
    assert "torch.cuda.max_memory_allocated" in out.stdout
