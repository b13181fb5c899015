"""What a clumsy or hostile user can do to a run, and what the run does about it."""

from conftest import run_script

TINY = ["--model", "vit_tiny", "--input-size", "32", "--num-frames", "4", "--grid-n", "2", "--batch-size", "4",
        "--num-workers", "0", "--log-every", "1", "--shuffle-buffer", "8", "--recon-every", "0"]


def test_divergence_with_overflowing_gradients_stops_the_run(demo_dir, tmp_path):
    # At lr 1e6 the loss stays finite (~1e15) while the gradients overflow; DeepSpeed's ZeRO-2 optimizer skips each
    # such step. Those count as bad steps: the run stops with exit 1, naming its last good checkpoint, and writes no
    # checkpoint or encoder export of the diverged model.
    run = tmp_path / "run"
    out = run_script(["pretrain/run.py", *TINY, "--zero-stage", "2", "--base-lr", "1e6", "--max-steps", "30",
                      "--save-every", "20", "--max-bad-steps", "3", "--output-dir", str(run)], demo=demo_dir)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "optimizer steps in a row were skipped for inf / NaN gradients" in out.stdout
    assert "last good checkpoint: none" in out.stdout
    assert not (run / "checkpoints").exists() and not (run / "encoder.pth").exists()
