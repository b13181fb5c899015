"""Fine-tuning: layer decay, mixup / CutMix, multi-view evaluation, and the script end to end on the demo shards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import check_usage_error, checkpoint_on_sigusr1, kill_after_checkpoint, run_script

TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--batch-size", "4",
        "--num-workers", "0", "--log-every", "1", "--shuffle-buffer", "8"]
DEEPSPEED = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port"]


def read_log(run: Path, kind: str) -> dict[int, dict]:
    """step -> last record of ``kind`` ("train" or "eval") logged for it (a resumed run logs some steps twice)."""
    records = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == kind:
            records[rec["step"]] = rec
    return records


def check_ok(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------------
# Units


def test_layer_decay_groups_follow_the_release():
    from finetune.engine import layer_decay_groups
    from models import build_classifier

    model = build_classifier("vit_tiny", 5, img_size=32, all_frames=4)
    groups = layer_decay_groups(model, 0.05, 0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len(by_param) == len(params)
    depth = model.depth
    assert by_param[id(params["patch_embed.proj.weight"])]["lr_scale"] == 0.5 ** (depth + 1)
    assert by_param[id(params["blocks.0.mlp.fc1.weight"])]["lr_scale"] == 0.5**depth
    assert by_param[id(params[f"blocks.{depth - 1}.attn.qkv.weight"])]["lr_scale"] == 0.5
    assert by_param[id(params["head.weight"])]["lr_scale"] == 1.0
    assert by_param[id(params["fc_norm.weight"])]["lr_scale"] == 1.0
    assert by_param[id(params["head.weight"])]["weight_decay"] == 0.05
    for name in ("head.bias", "fc_norm.weight", "blocks.3.attn.q_bias", "blocks.3.norm1.bias"):
        assert by_param[id(params[name])]["weight_decay"] == 0.0, name


def test_mix_batch_targets_and_video_cutmix():
    from finetune.engine import mix_batch, soft_cross_entropy

    x = torch.randn(4, 3, 4, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    same, target = mix_batch(x, labels, 5, smoothing=0.1, mixup=0, cutmix=0, switch_prob=0.5,
                             rng=np.random.default_rng(0))
    assert same is x
    logits = torch.randn(4, 5)
    ref = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(soft_cross_entropy(logits, target), ref, atol=1e-6)

    mixed, target = mix_batch(x, labels, 5, smoothing=0.0, mixup=0.8, cutmix=0, switch_prob=0.5,
                              rng=np.random.default_rng(1))
    lam = float(target[0, 0])
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(4))

    cut, target = mix_batch(x, labels, 5, smoothing=0.0, mixup=0, cutmix=1.0, switch_prob=0.5,
                            rng=np.random.default_rng(2))
    pasted = (cut != x).any(0).any(0)  # (T, H, W): where any sample or channel changed
    assert pasted.any()
    assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # the same box in every frame, never a slice of time
    area = float(pasted[0].float().mean())
    assert float(target[0, 0]) == pytest.approx(1 - area)  # label weight = area kept


def test_evaluate_averages_views_and_counts_each_video_once():
    from finetune.engine import evaluate

    class Fixed(torch.nn.Module):
        """Logits read off the input: class = the clip's first value (0..C-1), as a one-hot times 10."""

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0, 0].round().long(), 4).float() * 10

    def batch(values, labels, keys):
        # (B, V, 3, T, H, W): view v of sample b is filled with values[b][v]
        clip = torch.tensor(values, dtype=torch.float32)[:, :, None, None, None, None].expand(-1, -1, 3, 2, 2, 2)
        return {"clip": clip, "label": torch.tensor(labels), "meta": {"key": keys, "shard": ["s0"] * len(keys)}}

    # video a: views 1, 1, 2 -> class 1 (label 1); video b: views 3, 0, 0 -> class 0 (label 3, top-5 only)
    first = [batch([[1, 1, 2], [3, 0, 0]], [1, 3], ["a", "b"])]
    second = [batch([[2, 2, 2]], [2], ["c"])]
    out = evaluate(Fixed(), [first, second], device=torch.device("cpu"), dtype=torch.float32, num_classes=4)
    assert out["num_videos"] == 3 and out["num_views"] == 3 and out["duplicate_videos"] == 0
    assert out["top1"] == pytest.approx(2 / 3) and out["top5"] == 1.0
    assert out["view_top1"] == pytest.approx((2 + 1 + 3) / 9)


def test_evaluation_views_spread_over_the_video():
    from data import sampling

    centre = sampling.segment_indices(100, 16, train=False)
    assert np.array_equal(sampling.segment_indices(100, 16, train=False, view=(0, 1)), centre)
    views = [sampling.segment_indices(100, 16, train=False, view=(k, 3)) for k in range(3)]
    assert all(np.all(np.diff(v) >= 0) for v in views)
    assert views[0][0] < centre[0] < views[2][0] and np.array_equal(views[1], centre)
    starts = [int(sampling.stride_indices(100, 16, 4, train=False, view=(k, 5))[0]) for k in range(5)]
    assert starts == [0, 10, 20, 29, 39]  # evenly from the first to the last start (room 39)


def test_config_flags_and_yaml(tmp_path):
    from data.errors import UserError
    from finetune.config import FinetuneConfig
    from finetune.recipes import resolve
    from launch import config as config_lib

    # the effective config of the default (VideoMAE) model: unset flags from its recipe
    cfg, _ = resolve(config_lib.parse(FinetuneConfig, ["--test-crops", "3", "--layer-decay", "0.7"]), "videomae")
    assert (cfg.test_crops, cfg.layer_decay, cfg.zero_stage, cfg.base_lr, cfg.label_smoothing) == (3, 0.7, 0, 1e-3,
                                                                                                  0.1)
    yaml_file = tmp_path / "ft.yaml"
    config_lib.dump_yaml(cfg, str(yaml_file))
    assert config_lib.parse(FinetuneConfig, ["--config", str(yaml_file)]) == cfg
    yaml_file.write_text("mixup_alpha: 0.8\n")
    with pytest.raises(UserError, match="unknown key 'mixup_alpha'"):
        config_lib.parse(FinetuneConfig, ["--config", str(yaml_file)])


def test_a_label_that_is_no_class_index_stops_before_a_head_of_that_size(tmp_path):
    from data.errors import UserError
    from finetune.build import resolve_num_classes
    from finetune.config import FinetuneConfig
    from launch import config as config_lib

    cfg = config_lib.parse(FinetuneConfig, [])
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "index.json").write_text(json.dumps({"num_classes": 10**12, "shards": []}))
    with pytest.raises(UserError, match="the --data shards hold label 999999999999, not a class index"):
        resolve_num_classes(cfg, [(str(shards), None, "--data")])
    (shards / "index.json").write_text(json.dumps({"num_classes": 60, "shards": []}))
    assert resolve_num_classes(cfg, [(str(shards), None, "--data")]) == 60


# ---------------------------------------------------------------------------------------------------------------------
# The script


def test_run_folder_logs_checkpoints_best_and_multi_view_eval(demo_dir, tmp_path):
    run = tmp_path / "run"
    out = run_script(["finetune/run.py", *TINY, "--max-steps", "4", "--eval-every", "2", "--save-every", "2",
                      "--output-dir", str(run)], demo=demo_dir)
    check_ok(out)
    for name in ("config.yaml", "ds_config.json", "derived.json", "log.jsonl", "best.json", "best.pth"):
        assert (run / name).is_file(), name
    assert json.loads((run / "ds_config.json").read_text())["zero_optimization"]["stage"] == 0
    derived = json.loads((run / "derived.json").read_text())
    assert derived["num_classes"] == 8 and derived["num_val_samples"] == 32  # inferred from the shards
    train, evals = read_log(run, "train"), read_log(run, "eval")
    assert sorted(train) == [1, 2, 3, 4] and sorted(evals) == [2, 4]
    for rec in train.values():
        assert {"loss", "lr", "grad_norm", "data_wait_s", "clips_per_s"} <= set(rec) and rec["grad_norm"] > 0
    for rec in evals.values():
        assert rec["num_videos"] == 32 and rec["duplicate_videos"] == 0 and rec["num_views"] == 1
        assert 0 <= rec["top1"] <= rec["top5"] <= 1
    assert "eval step 4: top1" in out.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    # --select-on last (the default): best.pth is the final weights, and the run reports the final evaluation
    best = json.loads((run / "best.json").read_text())
    assert best["step"] == 4 and best["top1"] == evals[4]["top1"] and best["selected_on"] == "last"
    final = json.loads((run / "metrics.json").read_text())
    assert (final["step"], final["split"], final["checkpoint"], final["selected_on"]) == (4, "test", "best.pth", "last")
    assert final["top1"] == evals[4]["top1"] and final["reports"] == "reports/step_00000004/test"
    for step in (2, 4):  # every evaluation's report: the counts add up to the videos, trace / sum = top-1
        folder = run / "reports" / f"step_{step:08d}" / "test"
        check_reports(folder, evals[step], names=["move_left", "move_right"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "test/top1", "test/top5", "test/mean_class_acc"} <= set(events.Tags()["scalars"])

    # best.pth is a fine-tuning file: evaluating it again gives the recorded top-1, and 2 clips x 3 crops count
    # every video once with 6 views each.
    again = tmp_path / "again"
    out = run_script(["finetune/run.py", *TINY, "--eval-only", "--init-from", str(run / "best.pth"),
                      "--output-dir", str(again)], demo=demo_dir)
    check_ok(out)
    assert "official VideoMAE fine-tuning checkpoint -> VideoMAEClassifier" in out.stdout
    assert json.loads((again / "eval.json").read_text())["top1"] == best["top1"]
    check_reports(again, json.loads((again / "eval.json").read_text()), names=["move_left"])
    assert json.loads((again / "metrics.json").read_text())["checkpoint"] == str(run / "best.pth")
    views = tmp_path / "views"
    out = run_script(["finetune/run.py", *TINY, "--eval-only", "--init-from", str(run / "best.pth"),
                      "--test-clips", "2", "--test-crops", "3", "--output-dir", str(views)], demo=demo_dir)
    check_ok(out)
    multi = json.loads((views / "eval.json").read_text())
    assert multi["num_videos"] == 32 and multi["num_views"] == 6 and multi["duplicate_videos"] == 0


def check_reports(folder: Path, record: dict, names: list[str]) -> None:
    """An evaluation's report files agree with its logged record (see tests/test_report.py for the details)."""
    import csv

    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["top1"] == record["top1"] and metrics["num_videos"] == record["num_videos"]
    per_class = list(csv.DictReader((folder / "per_class.csv").open()))
    assert [r["class_name"] for r in per_class[: len(names)]] == names  # the records' class names
    assert sum(int(r["videos"]) for r in per_class) == record["num_videos"]
    rows = list(csv.reader((folder / "confusion.csv").open()))
    cm = np.array([[int(x) for x in r[1:]] for r in rows[1:]])
    assert cm.sum() == record["num_videos"] and np.trace(cm) / cm.sum() == pytest.approx(record["top1"])
    assert len((folder / "predictions.csv").read_text().splitlines()) == record["num_videos"] + 1
    assert (folder / "confusion.png").stat().st_size > 0


def _encoder_export(path: Path, name: str = "vit_tiny") -> None:
    from models import build_pretrain
    from models.videomae_weights import save_encoder

    torch.manual_seed(0)
    save_encoder(build_pretrain(name, img_size=32, num_frames=4), str(path), {"model": name})


def test_init_from_an_encoder_export_prints_the_mapping(demo_dir, tmp_path):
    encoder = tmp_path / "encoder.pth"
    _encoder_export(encoder)
    out = run_script(["finetune/run.py", *TINY, "--max-steps", "1", "--init-from", str(encoder), "--output-dir",
                      str(tmp_path / "run")], demo=demo_dir)
    check_ok(out)
    report = out.stdout[out.stdout.index("init from"):]
    assert "timemae encoder export (timemae-encoder-v1) -> VideoMAEClassifier" in report
    assert "loaded: 158 tensors" in report  # 12 blocks x 13 tensors + the patch embedding's 2
    assert "dropped: norm.* (2 tensors)" in report  # mean pooling: the encoder's final norm gives way to fc_norm
    assert "initialised fresh: fc_norm.* (2 tensors)" in report and "initialised fresh: head.* (2 tensors)" in report


def _run_until_checkpoint_then_kill(args: list[str], run: Path, step: int, env: dict) -> None:
    kill_after_checkpoint([sys.executable, *args], run, step, env)


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(demo_dir, tmp_path):
    # Drop path (torch's global RNG), mixup and CutMix (per-position seeds) and evaluation between steps: all of it
    # must come out the same after a restart.
    # --select-on val: the held-out split (and the training stream without it) must come out the same too.
    common = ["finetune/run.py", *TINY, "--num-workers", "2", "--max-steps", "6", "--save-every", "3",
              "--eval-every", "3", "--mixup", "0.8", "--cutmix", "1.0", "--drop-path", "0.2", "--accum-steps", "3",
              "--select-on", "val", "--val-fraction", "0.25"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TIMEMAE_DEMO_DIR": str(demo_dir)}
    straight = tmp_path / "straight"
    check_ok(run_script([*common, "--output-dir", str(straight)], demo=demo_dir))
    resumed = tmp_path / "resumed"
    _run_until_checkpoint_then_kill([*common, "--output-dir", str(resumed)], resumed, 3, env)
    out = run_script([*common, "--output-dir", str(resumed)], demo=demo_dir)
    check_ok(out)
    assert "resumed at step 3" in out.stdout
    a, b = read_log(straight, "train"), read_log(resumed, "train")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    assert [a[s]["loss"] for s in range(1, 7)] == [b[s]["loss"] for s in range(1, 7)]  # bitwise
    assert read_log(straight, "eval")[6]["top1"] == read_log(resumed, "eval")[6]["top1"]
    best = json.loads((straight / "best.json").read_text())
    assert best == json.loads((resumed / "best.json").read_text())
    evals = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    evals = {(r["split"], r["step"]): r for r in evals if r.get("kind") == "eval"}
    assert sorted(evals) == [("test", 3), ("test", 6), ("val", 3), ("val", 6)]
    assert evals["val", 3]["num_videos"] == 16 and evals["test", 3]["num_videos"] == 32  # 2 of 8 per class held out
    assert json.loads((straight / "derived.json").read_text())["num_samples"] == 48
    chosen = 3 if evals["val", 3]["top1"] >= evals["val", 6]["top1"] else 6  # the first best val top-1
    assert (best["step"], best["split"], best["selected_on"]) == (chosen, "val", "val")
    final = json.loads((straight / "metrics.json").read_text())
    assert (final["step"], final["split"], final["selected_on"]) == (chosen, "test", "val")
    assert final["top1"] == evals["test", chosen]["top1"]  # the test numbers of the weights val chose
    assert final == json.loads((resumed / "metrics.json").read_text())


def test_sigusr1_checkpoints_at_the_next_step(demo_dir, tmp_path):
    run = tmp_path / "run"
    args = ["finetune/run.py", *TINY, "--max-steps", "400", "--eval-every", "1000", "--output-dir", str(run)]
    checkpoint_on_sigusr1(args, run, demo_dir)
    stopped = max(read_log(run, "train"))
    assert stopped < 400 and (run / "checkpoints" / f"step_{stopped:08d}" / "COMPLETE").is_file()


@pytest.mark.slow
def test_two_ranks_count_every_val_video_once(demo_dir, tmp_path):
    run = tmp_path / "run"
    port = str(29700 + os.getpid() % 1000)
    # 4 val shards over 2 ranks x 2 workers: each worker reads one shard; 2 clips x 3 crops per video.
    out = run_script(["finetune/run.py", *TINY, "--num-workers", "2", "--zero-stage", "2", "--max-steps", "2",
                      "--save-every", "2", "--test-clips", "2", "--test-crops", "3", "--output-dir", str(run)],
                     demo=demo_dir, launcher=[*DEEPSPEED, port])
    check_ok(out)
    assert "world size 2" in out.stdout
    assert sorted(read_log(run, "train")) == [1, 2]
    evals = read_log(run, "eval")
    assert sorted(evals) == [2]
    assert evals[2]["num_videos"] == 32 and evals[2]["duplicate_videos"] == 0 and evals[2]["num_views"] == 6
    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "rng_rank0.pt").is_file() and (ckpt / "rng_rank1.pt").is_file() and (ckpt / "COMPLETE").is_file()
    assert json.loads((run / "ds_config.json").read_text())["train_batch_size"] == 8
    assert (run / "best.pth").is_file()


@pytest.mark.slow
def test_tiny_model_training_loss_drops_on_demo_shards(demo_dir, tmp_path):
    # From scratch, a tiny ViT fits the 64 training videos only slowly and does not reach above chance on the 32
    # val videos in a test-sized budget (seen: val top-1 0.12-0.22 after 300-400 steps at 32 or 64 px; training loss
    # 2.07 -> 1.82, training top-1 0.19 -> 0.30). So this checks that the training loss drops clearly.
    run = tmp_path / "run"
    args = ["finetune/run.py", "--model", "vit_tiny", "--input-size", "32", "--num-frames", "8", "--grid-n", "1",
            "--batch-size", "8", "--num-workers", "1", "--max-steps", "240", "--eval-every", "120",
            "--save-every", "1000", "--log-every", "1", "--base-lr", "6e-3", "--min-lr", "1e-4", "--warmup-epochs", "1",
            "--layer-decay", "1", "--drop-path", "0", "--label-smoothing", "0", "--train-crop", "multiscale",
            "--mixup", "0", "--cutmix", "0", "--rand-augment", "none", "--reprob", "0", "--output-dir", str(run)]
    check_ok(run_script(args, demo=demo_dir, timeout=900))
    log = read_log(run, "train")
    first = np.mean([log[s]["loss"] for s in range(1, 31)])
    last = np.mean([log[s]["loss"] for s in range(211, 241)])
    assert last < first - 0.1, (first, last)


COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40)]


def write_colour_video(path: Path, colour: tuple[int, int, int], rng: np.random.Generator) -> str:
    """A 64 x 48, 12-frame H.264 clip tinted ``colour``: any frame tells its class (`videos.write_tinted_video`)."""
    from videos import write_tinted_video

    return write_tinted_video(path, colour, rng, frames=12, size=(64, 48), noise=40.0, brightness=(0.6, 1.0),
                              codec="libx264")


@pytest.mark.slow
def test_fine_tuning_generalises_on_a_signal_it_can_see(tmp_path):
    # The demo's classes differ only in motion, which a ViT from scratch does not pick up in a test-sized budget (see
    # above). Here every frame shows its class (a colour under noise), so a working pipeline (labels, clips, loss,
    # evaluation on videos it never saw) must go well above chance (0.25) on the held-out videos.
    from data.manifest import Record
    from data.shards import write_shards

    rng = np.random.default_rng(0)
    folders = {}
    for split, per_class in (("train", 8), ("val", 4)):
        records = [Record(write_colour_video(tmp_path / f"{split}_{c}_{i}.mp4", colour, rng), c, split=split)
                   for c, colour in enumerate(COLOURS) for i in range(per_class)]
        folders[split] = tmp_path / f"shards_{split}"
        write_shards(records, folders[split], progress=False, short_side=32)
    run = tmp_path / "run"
    args = ["finetune/run.py", "--data", str(folders["train"]), "--val-data", str(folders["val"]), "--model",
            "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "1", "--batch-size", "8",
            "--num-workers", "0", "--max-steps", "60", "--eval-every", "60", "--save-every", "1000", "--log-every",
            "10", "--base-lr", "1e-2", "--warmup-epochs", "1", "--mixup", "0", "--cutmix", "0", "--rand-augment",
            "none", "--reprob", "0", "--output-dir", str(run)]
    check_ok(run_script(args, timeout=900))
    final = read_log(run, "eval")[60]
    assert final["num_videos"] == 16 and final["top1"] >= 0.75, final


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--test-crops", "2"], "--test-crops 2 is not 1 or 3"),
        (["--batch-size", "0"], "--batch-size 0 is < 1"),
        (["--input-size", "40"], "not divisible by the patch size 16"),
        (["--data", "/no/such/shards"], "/no/such/shards"),
        (["--num-classes", "5"], "--num-classes 5 but the --data shards hold labels up to 7 (8 classes)"),
        (["--init-from", "/no/such/encoder.pth"], "--init-from /no/such/encoder.pth does not exist"),
        (["--init-from", "SMALL_ENCODER"], "in the file but"),
        (["--modality", "depth", "--data", "DEMO_RGB"], "--modality depth but the --data shards hold rgb"),
        (["--eval-only", "--val-data", "none"], "--eval-only needs validation data"),
        (["--rand-augment", "rand-m7-x"], "--rand-augment 'rand-m7-x': cannot read the section 'x'"),
        (["--reprob", "2"], "--reprob 2.0 is outside [0, 1]"),
        (["--select-on", "val", "--val-fraction", "1"], "--val-fraction 1.0 is outside (0, 1)"),
        (["--select-on", "val", "--eval-only"], "--select-on val chooses among the evaluations of a training run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(demo_dir, tmp_path, flags, message):
    if "SMALL_ENCODER" in flags:
        _encoder_export(tmp_path / "small.pth", "vit_small")
    swap = {"DEMO_RGB": str(demo_dir / "shards" / "train"), "SMALL_ENCODER": str(tmp_path / "small.pth")}
    flags = [swap.get(f, f) for f in flags]
    out = run_script(["finetune/run.py", *TINY, "--max-steps", "1", "--output-dir", str(tmp_path / "r"), *flags],
                     demo=demo_dir, timeout=300)
    check_usage_error(out, message)
    assert "Traceback" not in out.stderr


def test_fine_tuning_on_one_class_says_it_learns_nothing(tmp_path):
    # Shards whose labels are all 0: training runs (nothing breaks), and the log says why it can learn nothing.
    from data.manifest import Record
    from data.shards import write_shards

    rng = np.random.default_rng(0)
    records = [Record(write_colour_video(tmp_path / f"v{i}.mp4", COLOURS[0], rng), 0) for i in range(2)]
    write_shards(records, tmp_path / "shards", progress=False, short_side=32)
    run = tmp_path / "run"
    out = run_script(["finetune/run.py", "--data", str(tmp_path / "shards"), "--val-data", "none", "--model",
                      "resnet18", "--input-size", "32", "--num-frames", "2", "--batch-size", "2", "--num-workers",
                      "0", "--max-steps", "1", "--output-dir", str(run)])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "warning: one class only" in out.stdout + out.stderr


def test_without_evaluation_data_the_final_weights_are_best_pth_and_evaluate_later(tmp_path):
    from data.manifest import Record
    from data.shards import write_shards

    rng = np.random.default_rng(0)
    records = [Record(write_colour_video(tmp_path / f"v{i}.mp4", COLOURS[i % 2], rng), i % 2) for i in range(4)]
    write_shards(records, tmp_path / "shards", progress=False, short_side=32, shard_samples=1)
    run = tmp_path / "run"
    common = ["--model", "resnet18", "--input-size", "32", "--num-frames", "2", "--batch-size", "2",
              "--num-workers", "0"]
    out = run_script(["finetune/run.py", "--data", str(tmp_path / "shards"), "--val-data", "none", *common,
                      "--max-steps", "2", "--output-dir", str(run)])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best.pth: the final weights (step 2), not evaluated" in out.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["checkpoint_step"], metrics["evaluations"], metrics["split"]) == (2, {}, None)
    assert torch.load(run / "best.pth", map_location="cpu", weights_only=True)["step"] == 2
    out = run_script(["finetune/run.py", "--eval-only", "--init-from", str(run / "best.pth"), "--data",
                      str(tmp_path / "shards"), "--val-data", str(tmp_path / "shards"), *common,
                      "--output-dir", str(tmp_path / "eval")])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["num_videos"] == 4
