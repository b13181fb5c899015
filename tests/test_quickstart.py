"""The README's first command: `bash launch/quickstart.sh`, shortened, and the fine-tuning command it prints."""

import json
import os
import subprocess

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_quickstart_and_the_finetune_command_it_prints(demo_dir):
    out = demo_dir.parent  # the quickstart keeps its demo data in $OUT/demo: the session's demo is reused
    env = {**os.environ, "OUT": str(out), "PYTHONUNBUFFERED": "1", "FT_STEPS": "2", "DEMO_FLAGS": ""}
    flags = ["--max-steps", "4", "--save-every", "4", "--recon-every", "2", "--log-every", "2"]  # appended: they win
    res = subprocess.run(["bash", "launch/quickstart.sh", *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "preview" / "sheet.png").is_file() and (out / "preview" / "frame_03.png").is_file()
    steps = [json.loads(line)["step"] for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 4
    assert (out / "pretrain" / "encoder.pth").is_file() and any((out / "pretrain" / "tensorboard").iterdir())
    for where in ("preview/sheet.png", "pretrain/log.jsonl", "pretrain/tensorboard", "pretrain/encoder.pth"):
        assert f"{out}/{where}" in res.stdout, where  # the closing message points at what was made

    assert "pretraining loss (norm-pix): mean of the first 1 logged steps" in res.stdout  # 3 logged: 1, 2, 4
    assert "fine-tuned top-1" in res.stdout and "(chance 0.125;" in res.stdout
    assert json.loads((out / "finetune" / "metrics.json").read_text())["num_videos"] == 32
    command = res.stdout.split("Fine-tune it again")[1].split(":\n", 1)[1].replace("\\\n", " ").strip()
    assert command.count("\n") == 0, command
    ft = subprocess.run(["bash", "-c", command + " --max-steps 2 --save-every 2 --eval-every 2"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
    assert ft.returncode == 0, ft.stdout[-3000:] + ft.stderr[-3000:]
    assert f"init from {out}/pretrain/encoder.pth" in ft.stdout + ft.stderr  # the mapping report
    best = json.loads((out / "finetune_more" / "best.json").read_text())
    assert best["step"] == 2 and best["num_videos"] == 32
