"""Fine-tuning the frame-level backbones: recipes, the step schedule, bad input, and two-rank runs of a TSN ResNet with
each temporal module through the deepspeed launcher, resumed bitwise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import check_usage_error, kill_after_checkpoint, read_log, run_script

R18 = ["--model", "resnet18", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--batch-size", "2",
       "--num-workers", "1", "--log-every", "1", "--shuffle-buffer", "8"]
DEEPSPEED = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port"]


def check_ok(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------------
# Units


def test_recipes_fill_only_what_the_flags_leave_unset():
    from finetune import recipes
    from finetune.config import FinetuneConfig
    from launch import config as config_lib

    cfg = config_lib.parse(FinetuneConfig, ["--model", "resnet50", "--base-lr", "0.02", "--lr-steps", "10", "20"])
    eff, filled = recipes.resolve(cfg, "resnet")
    assert (eff.optimizer, eff.schedule, eff.weight_decay, eff.clip_grad, eff.dropout, eff.train_crop) == (
        "sgd", "step", 5e-4, 20.0, 0.5, "multiscale")
    assert (eff.base_lr, eff.lr_steps, eff.mixup, eff.rand_augment) == (0.02, (10.0, 20.0), 0.0, "")
    assert "base_lr" not in filled and "lr_steps" not in filled and filled["optimizer"] == "sgd"
    # the VideoMAE family keeps the official fine-tuning recipe, the old defaults
    eff, _ = recipes.resolve(config_lib.parse(FinetuneConfig, []), "videomae")
    assert (eff.optimizer, eff.base_lr, eff.layer_decay, eff.drop_path, eff.mixup, eff.train_crop) == (
        "adamw", 1e-3, 0.75, 0.1, 0.8, "rrc")
    assert set(recipes.RECIPE_FIELDS) == set(recipes.RECIPES["resnet"]) == set(recipes.RECIPES["vit"])


def test_step_schedule_divides_by_ten_at_each_milestone():
    from finetune.config import Derived
    from launch.loop import lr_at

    d = Derived(world_size=1, global_batch=64, lr=0.01, min_lr=0.0, num_samples=640, steps_per_epoch=10,
                total_steps=500, warmup_steps=0, num_val_samples=0, num_classes=5, eval_every=10, num_views=1,
                zero_stage=0, precision="fp32", token_grid=None, family="resnet", schedule="step",
                lr_milestones=(300, 400, 450))
    assert [lr_at(s, d) for s in (0, 299, 300, 399, 400, 450, 499)] == pytest.approx(
        [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5])


def test_sgd_groups_scale_trm_offsets_and_skip_decay_on_norms():
    from finetune.engine import layer_decay_groups
    from models import build_classifier

    model = build_classifier("resnet18", 5, num_frames=4, img_size=32, temporal="trm",
                             temporal_options={"offset_lr_mult": 0.1})
    groups = layer_decay_groups(model, 5e-4, 1.0)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    offsets = [n for n in named if ".temporal." in n and "offset" in n]
    assert offsets and all(by_param[id(named[n])]["lr_scale"] == pytest.approx(0.1) for n in offsets)
    assert by_param[id(named["fc.weight"])]["lr_scale"] == 1.0 and by_param[id(named["fc.weight"])]["weight_decay"]
    assert by_param[id(named["bn1.weight"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


# ---------------------------------------------------------------------------------------------------------------------
# The script


def _timm_resnet18(path: Path, num_classes: int = 1000, extra: bool = False) -> None:
    import timm

    state = timm.create_model("resnet18", pretrained=False, num_classes=num_classes).state_dict()
    if extra:
        state["layer9.weight"] = torch.zeros(1)
    torch.save(state, path)


def test_resnet_from_a_torchvision_style_file_with_reset_head(demo_dir, tmp_path):
    weights = tmp_path / "resnet18.pth"
    _timm_resnet18(weights)
    run = tmp_path / "run"
    out = run_script(["finetune/run.py", *R18, "--temporal", "tsm", "--max-steps", "1", "--init-from", str(weights),
                      "--reset-head", "--output-dir", str(run)], demo=demo_dir, timeout=300)
    check_ok(out)
    assert "recipe resnet:" in out.stdout and "optimizer='sgd'" in out.stdout
    derived = json.loads((run / "derived.json").read_text())
    assert derived["family"] == "resnet" and derived["recipe"]["optimizer"] == "sgd"
    assert derived["schedule"] == "step" and derived["recipe"]["lr_steps"] == [30.0, 40.0, 45.0]


@pytest.mark.parametrize(("model", "temporal", "modality"), [("resnet18", "atr", "depth"), ("vit_b16", "none", "rgb")])
def test_each_family_fine_tunes_and_evaluates(demo_dir, tmp_path, model, temporal, modality):
    run = tmp_path / "run"
    args = [a if a != "resnet18" else model for a in R18]
    out = run_script(["finetune/run.py", *args, "--temporal", temporal, "--modality", modality, "--max-steps", "2",
                      "--output-dir", str(run)], demo=demo_dir, timeout=300)
    check_ok(out)
    assert sorted(read_log(run, "train")) == [1, 2] and read_log(run, "eval")[2]["num_videos"] == 32
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["config"]["model"] == model and best["config"]["modality"] == modality
    assert ("fc.weight" if model == "resnet18" else "head.weight") in best["model"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--model", "resnet7"], "unknown model 'resnet7'; choose one of"),
        (["--model", "vit_b16", "--temporal", "trm"], "--model vit_b16 takes none"),
        (["--model", "vit_tiny", "--temporal", "stw"], "--model vit_tiny takes none"),
        (["--temporal", "trm", "--temporal-options", "variant=xtrm"], "xtrm"),
        (["--temporal", "trm", "--temporal-options", "colour=red"], "colour"),
        (["--temporal", "atr", "--temporal-options", "reasoner"], "is not key=value"),
        (["--temporal", "tsm", "--num-frames", "1"], "needs --num-frames >= 2"),
        (["--temporal-stages", "5", "--temporal", "tsm"], "stages are 1-4"),
        (["--init-from", "R18_1000"], "pass --reset-head"),
        (["--init-from", "R18_EXTRA", "--reset-head"], "layer9.weight"),
    ],
)
def test_bad_backbone_input_is_one_line_and_exit_2(demo_dir, tmp_path, flags, message):
    if "R18_1000" in flags:
        _timm_resnet18(tmp_path / "r18.pth")
    if "R18_EXTRA" in flags:
        _timm_resnet18(tmp_path / "r18x.pth", extra=True)
    swap = {"R18_1000": str(tmp_path / "r18.pth"), "R18_EXTRA": str(tmp_path / "r18x.pth")}
    flags = [swap.get(f, f) for f in flags]
    args = [*R18]
    if "--model" in flags:  # the flag given last wins; keep the small geometry
        args = [a for i, a in enumerate(R18) if a != "--model" and (i == 0 or R18[i - 1] != "--model")]
    out = run_script(["finetune/run.py", *args, "--max-steps", "1", "--output-dir", str(tmp_path / "r"), *flags],
                     demo=demo_dir, timeout=300)
    check_usage_error(out, message)
    assert "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("temporal", ["tsm", "stw", "trm", "atr"])
def test_two_ranks_fine_tune_resnet18_with_each_module_and_resume_bitwise(demo_dir, tmp_path, temporal):
    """Two ranks (deepspeed launcher, gloo), ZeRO-2, resnet18 + the module: metrics, best.pth, and a run killed with
    SIGKILL after its step-2 checkpoint and resumed logs bitwise the same losses as the uninterrupted one, and the
    same evaluation (each rank evaluates its share of the videos with the batch-norm statistics averaged over the
    ranks, which the checkpoint holds)."""
    port = str(29400 + (os.getpid() + hash(temporal)) % 500)
    common = ["finetune/run.py", *R18, "--temporal", temporal, "--zero-stage", "2", "--max-steps", "4",
              "--save-every", "2", "--eval-every", "4", "--dropout", "0.5", "--num-workers", "2", "--accum-steps", "3"]
    launcher = [*DEEPSPEED, port]
    straight = tmp_path / "straight"
    many = {"TIMEMAE_MAX_WORKERS": "2"}  # 2 workers per rank even on a 2-core machine: the resume under test
    out = run_script([*common, "--output-dir", str(straight)], demo=demo_dir, launcher=launcher, env=many)
    check_ok(out)
    assert "world size 2" in out.stdout
    train = read_log(straight, "train")
    assert sorted(train) == [1, 2, 3, 4] and all(r["loss"] == r["loss"] for r in train.values())
    assert read_log(straight, "eval")[4]["num_videos"] == 32
    assert (straight / "best.pth").is_file() and (straight / "best.json").is_file()
    best = torch.load(straight / "best.pth", weights_only=True)["model"]
    assert "fc.weight" in best and (temporal == "tsm" or any(".temporal." in k for k in best))  # tsm: no weights

    resumed = tmp_path / "resumed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TIMEMAE_DEMO_DIR": str(demo_dir), **many}
    kill_after_checkpoint([*launcher, *common, "--output-dir", str(resumed)], resumed, 2, env)
    out = run_script([*common, "--output-dir", str(resumed)], demo=demo_dir, launcher=launcher, env=many)
    check_ok(out)
    assert "resumed at step 2" in out.stdout
    again = read_log(resumed, "train")
    assert [train[s]["loss"] for s in (3, 4)] == [again[s]["loss"] for s in (3, 4)]  # bitwise
    assert read_log(straight, "eval")[4]["top1"] == read_log(resumed, "eval")[4]["top1"]
