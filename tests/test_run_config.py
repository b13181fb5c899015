"""Config flags generated from the dataclass, YAML precedence, DeepSpeed config generation and merging."""

import json

import pytest
import torch

from data.errors import UserError
from launch import config as config_lib
from launch import distributed
from launch.ds_config import make_ds_config, merge_extra, resolve_precision
from pretrain.config import PretrainConfig, derive


def test_every_field_is_a_kebab_case_flag():
    parser = __import__("argparse").ArgumentParser()
    config_lib.add_dataclass_arguments(parser, PretrainConfig)
    flags = {a.option_strings[0] for a in parser._actions if a.option_strings}
    for name in PretrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in flags


def test_defaults_yaml_then_flags(tmp_path):
    cfg = config_lib.parse(PretrainConfig, [])
    assert cfg == PretrainConfig()
    y = tmp_path / "run.yaml"
    y.write_text("mask_ratio: 0.8\nbatch-size: 4\nbetas: [0.9, 0.999]\ngrad_checkpointing: true\n")
    cfg = config_lib.parse(PretrainConfig, ["--config", str(y), "--batch-size", "8", "--no-grad-checkpointing"])
    assert (cfg.mask_ratio, cfg.batch_size, cfg.betas, cfg.grad_checkpointing) == (0.8, 8, (0.9, 0.999), False)


def test_yaml_round_trip(tmp_path):
    cfg = PretrainConfig(mask_ratio=0.75, grid_n=4, betas=(0.8, 0.9), model="vit_tiny")
    path = tmp_path / "c.yaml"
    config_lib.dump_yaml(cfg, str(path))
    assert config_lib.parse(PretrainConfig, ["--config", str(path)]) == cfg


@pytest.mark.parametrize(
    "text,match",
    [
        ("mask_rato: 0.8\n", r"unknown key 'mask_rato' \(did you mean mask_ratio\?\)"),
        ("lr: 0.001\n", r"unknown key 'lr' \(did you mean base_lr\?\)"),
        ("batch_size: eight\n", "batch_size"),
        ("grad_checkpointing: 1\n", "true or false"),
        ("- a\n- b\n", "mapping"),
        ("precision: fp8\n", "--precision 'fp8'"),
    ],
)
def test_bad_yaml_is_a_user_error(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        config_lib.parse(PretrainConfig, ["--config", str(path)])


def test_deepspeed_launcher_local_rank_is_accepted():
    assert config_lib.parse(PretrainConfig, ["--local_rank=1", "--seed", "3"]).seed == 3


def test_unknown_flag_exits_2():
    with pytest.raises(SystemExit) as exc:
        config_lib.parse(PretrainConfig, ["--mask-rato", "0.5"])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv, hint", [
    (["--lr", "1e-3"], "(the learning rate is --base-lr, per 256 clips"),  # official VideoMAE's flags
    (["--blr", "1e-3"], "(the learning rate is --base-lr, per 256 clips"),
    (["--batch_size", "4"], "(did you mean --batch-size?)"),
    (["--mask-rato", "0.5"], "(did you mean --mask-ratio?)"),
    (["--mask-r", "0.5"], "unrecognized arguments: --mask-r 0.5"),  # a prefix is not a flag
])
def test_only_whole_flags_and_the_one_meant_is_named(argv, hint, capsys):
    """argparse's default takes any unique prefix of a flag: fine-tuning's ``--lr 1e-3`` set ``--lr-steps`` without a
    word. Only whole flag names are taken, and an unknown one names the flag probably meant."""
    from finetune.config import FinetuneConfig

    cls = PretrainConfig if argv[0].startswith("--mask") else FinetuneConfig
    with pytest.raises(SystemExit) as exc:
        config_lib.parse(cls, argv)
    assert exc.value.code == 2
    assert hint in capsys.readouterr().err


def test_derived_values():
    d = derive(PretrainConfig(batch_size=8, accum_steps=2, epochs=10, warmup_epochs=2), world_size=4,
               num_samples=1000, precision="fp32", token_grid=(8, 14, 14))
    assert d.global_batch == 64 and d.lr == pytest.approx(1.5e-4 * 64 / 256)
    assert d.steps_per_epoch == 15 and d.total_steps == 150 and d.warmup_steps == 30
    assert derive(PretrainConfig(max_steps=7), world_size=1, num_samples=10, precision="fp32",
                  token_grid=(1, 1, 1)).total_steps == 7


def test_ds_config_from_flags_and_merge(tmp_path):
    cfg = make_ds_config(micro_batch=4, accum_steps=2, world_size=3, precision="bf16", zero_stage=2, clip_grad=1.0)
    assert cfg["train_batch_size"] == 24 and cfg["bf16"]["enabled"] and cfg["zero_optimization"]["stage"] == 2
    # DeepSpeed's per-tensor bf16 overflow scan is off unless asked for (where this DeepSpeed has the key)
    assert cfg["bf16"].get("check_grad_overflow", False) is False
    checked = make_ds_config(micro_batch=1, accum_steps=1, world_size=1, precision="bf16", zero_stage=2, clip_grad=0,
                             bf16_overflow_check=True)
    assert checked["bf16"]["check_grad_overflow"] is True
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}, "wall_clock_breakdown": False}))
    merged = merge_extra(cfg, str(extra))
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    extra.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(UserError, match="zero_optimization.stage=3 but the flags give 2"):
        merge_extra(cfg, str(extra))
    fp16 = make_ds_config(micro_batch=1, accum_steps=1, world_size=1, precision="fp16", zero_stage=1, clip_grad=0)
    assert fp16["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_precision_auto_is_fp32_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        resolve_precision("bf16", cpu)


@pytest.mark.parametrize("capability,auto", [((7, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_precision_on_gpus_follows_the_compute_capability(monkeypatch, capability, auto):
    # V100 (7.0) can emulate bf16, and torch.cuda.is_bf16_supported() says yes to that by default; auto must not
    # pick it there.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu) == auto
    assert resolve_precision("fp16", gpu) == "fp16"
    if auto == "fp16":
        with pytest.raises(UserError, match="not native on this GPU.*use --precision fp16"):
            resolve_precision("bf16", gpu)
    else:
        assert resolve_precision("bf16", gpu) == "bf16"


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, ("python", 0, 0, 1)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"}, ("torchrun", 3, 1, 8)),
        ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "CROSS_RANK": "0"}, ("deepspeed", 1, 1, 2)),
        ({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0",
          "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]"}, ("slurm", 5, 1, 8)),
    ],
)
def test_launcher_detection(env, expected):
    info = distributed.detect(env)
    assert (info.launcher, info.rank, info.local_rank, info.world_size) == expected
    if info.launcher == "slurm":
        assert info.master_addr == "gpu07" and info.master_port == 20000 + 1234


def test_adamw_is_fused_on_cuda_only():
    from launch.loop import adamw

    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))], "weight_decay": 0.05}]
    assert adamw(groups, 1e-3, (0.9, 0.95), torch.device("cuda", 0)).defaults["fused"] is True
    assert not adamw(groups, 1e-3, (0.9, 0.95), torch.device("cpu")).defaults["fused"]


def test_loop_state_skips_non_finite_losses_then_stops():
    from launch.loop import LoopState, NonFiniteLoss

    state = LoopState(step=7, last_good_checkpoint="runs/x/checkpoints/step_00000005")
    assert not state.loss_is_finite(torch.tensor(float("nan")), 3)
    assert state.loss_is_finite(torch.tensor(1.0), 3) and state.bad_steps == 0  # a good one resets the run of bad
    assert not state.loss_is_finite(torch.tensor(float("inf")), 3)
    assert not state.loss_is_finite(torch.tensor(float("nan")), 3)
    with pytest.raises(NonFiniteLoss, match="3 micro-batches in a row .* at step 7; last good checkpoint: "
                                            "runs/x/checkpoints/step_00000005"):
        state.loss_is_finite(torch.tensor(float("nan")), 3)
    assert state.skipped_steps == 4


def test_gpu_memory_is_logged_on_cuda_only(monkeypatch):
    from launch.loop import device_memory

    assert device_memory(torch.device("cpu")) == {}
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    assert device_memory(torch.device("cuda", 0)) == {"max_mem_gib": 3.0}


def test_barrier_and_shutdown_are_no_ops_in_one_process():
    assert not torch.distributed.is_initialized()
    distributed.barrier()
    distributed.shutdown()


@pytest.mark.parametrize("flags,sampling,rate,note", [
    ([], "segment", 4, False),
    (["--sampling", "stride", "--grid-n", "1"], "stride", 4, False),
    (["--sampling", "stride", "--sampling-rate", "2", "--grid-n", "1"], "stride", 2, False),
    (["--sampling-rate", "3", "--grid-n", "1"], "stride", 3, True),  # the older spelling
])
def test_sampling_flag_and_the_older_spelling(capsys, monkeypatch, flags, sampling, rate, note):
    from data.clip import ClipSpec
    from launch.fields import check_sampling

    monkeypatch.delenv("RANK", raising=False)
    cfg = config_lib.parse(PretrainConfig, flags)
    check_sampling(cfg)
    spec = ClipSpec.from_config(cfg)
    assert (spec.sampling, spec.sampling_rate) == (sampling, rate)
    assert ("older spelling of --sampling stride" in capsys.readouterr().err) == note


def test_a_frame_step_with_segment_sampling_is_refused():
    from launch.fields import check_sampling

    with pytest.raises(UserError, match="frame step of --sampling stride"):
        check_sampling(config_lib.parse(PretrainConfig, ["--sampling", "segment", "--sampling-rate", "4"]))


def test_yaml_floats_without_a_dot_are_floats(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; a float field takes it as the number it is, and still refuses words."""
    from finetune.config import FinetuneConfig

    good = tmp_path / "run.yaml"
    good.write_text("base_lr: 1e-3\nweight_decay: 5E-4\n")
    cfg = config_lib.parse(FinetuneConfig, ["--config", str(good)])
    assert cfg.base_lr == 0.001 and cfg.weight_decay == 0.0005
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_lr: fast\n")
    with pytest.raises(UserError, match="config key 'base_lr' needs a float, got 'fast'"):
        config_lib.parse(FinetuneConfig, ["--config", str(bad)])


def test_temporal_option_values_are_literals_not_yaml():
    from finetune.build import parse_options
    from models.temporal import build_temporal

    opts = parse_options(("ratio=4:2:4", "relocate_ratio=1e-3", "motion=false", "stages=[3, 4]", "variant=strm",
                          "order='parallel'"))
    assert opts == {"ratio": "4:2:4", "relocate_ratio": 0.001, "motion": False, "stages": [3, 4], "variant": "strm",
                    "order": "parallel"}
    assert build_temporal("stw", 16, 4, spatial_size=(4, 4), ratio=parse_options(("ratio=8:4/3:8",))["ratio"]).ratio
    assert parse_options(("x=" + "[" * 2000 + "]" * 2000,))["x"].startswith("[[")  # too deep: kept as text


@pytest.mark.parametrize(("argv", "message"), [
    (["--lr-steps", "5,a"],
     "argument --lr-steps: expected a number, got '5,a' (give several values separated by spaces)"),
    (["--num-frames", "8.5"], "argument --num-frames: expected an integer, got '8.5'"),
    (["--base-lr", "nan"], "argument --base-lr: expected a finite number, got 'nan'"),
    (["--base-lr", "x"], "argument --base-lr: expected a number, got 'x'"),
])
def test_flag_values_are_named_when_wrong(argv, message, capsys):
    from finetune.config import FinetuneConfig

    with pytest.raises(SystemExit) as exc:
        config_lib.parse(FinetuneConfig, argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_non_finite_yaml_float_is_refused(tmp_path):
    from finetune.config import FinetuneConfig

    path = tmp_path / "run.yaml"
    path.write_text("base_lr: .inf\n")
    with pytest.raises(UserError, match="config key 'base_lr' needs a float, got inf"):
        config_lib.parse(FinetuneConfig, ["--config", str(path)])
