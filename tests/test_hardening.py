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


def _bad_record_shards(demo_dir, folder):
    """A shard folder (no index.json) whose first shard is not a tar, and whose other shard holds an unterminated
    JSON record and a label of 1e400 among good records."""
    import io
    import tarfile

    from data.stream import iter_tar

    folder.mkdir()
    (folder / "a_not_a_tar.tar").write_bytes(b"this is not a tar archive\n" * 50)
    good = []
    for path in sorted((demo_dir / "shards" / "train").glob("*.tar")):
        good += list(iter_tar(str(path)))
        if len(good) >= 6:
            break
    video_ext = next(e for e in good[0] if e not in ("__key__", "json"))
    records = [(s["__key__"], s["json"], s[video_ext]) for s in good[:6]]
    records.insert(1, ("bad_json", b'{"label": 1, "modality": "rgb"', good[0][video_ext]))
    records.insert(4, ("huge_label", b'{"label": 1e400, "modality": "rgb"}', good[1][video_ext]))
    with tarfile.open(folder / "b_records.tar", "w") as tar:
        for key, meta, video in records:
            for ext, data in (("json", meta), (video_ext, video)):
                info = tarfile.TarInfo(f"{key.replace('/', '_')}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder


def test_bad_records_and_shards_are_skipped_from_start_up_on(demo_dir, tmp_path):
    # Start-up reads records too (the modality check, the class count): an unterminated JSON record, a label that
    # overflows int and a first shard that is no tar must be passed over there as the stream skips them, not stop
    # the run with a traceback.
    data = _bad_record_shards(demo_dir, tmp_path / "shards")
    for script, extra in (("pretrain/run.py", TINY), ("finetune/run.py", [
            "--model", "resnet18", "--input-size", "32", "--num-frames", "4", "--batch-size", "4", "--log-every", "1",
            "--shuffle-buffer", "8", "--val-data", "none"])):
        run = tmp_path / script.split("/")[0]
        out = run_script([script, *extra, "--num-workers", "2", "--data", str(data), "--max-steps", "4",
                          "--output-dir", str(run)], demo=demo_dir)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert "skipping sample" in out.stderr or "unreadable" in out.stderr  # skipped, and said so


def test_an_output_dir_that_cannot_be_written_is_one_line_and_exit_2(demo_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [("pretrain/run.py", TINY, a_file, "is a file"), ("pretrain/run.py", TINY, a_file / "under", "Not a dir"),
             ("pretrain/run.py", TINY, "/proc/timemae-run", "cannot be written"),
             ("finetune/run.py", TINY[:-2], a_file, "is a file")]  # the check is the shared trainer's
    for script, extra, folder, reason in cases:
        out = run_script([script, *extra, "--max-steps", "1", "--output-dir", str(folder)], demo=demo_dir)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1 and str(folder) in lines[0] and reason in lines[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_complete_one(tmp_path):
    # A full disk makes torch's writer fail with "unexpected pos" deep inside DeepSpeed's save: the run must say what
    # happened and where its last complete checkpoint is, and leave no partial folder behind.
    import pytest

    from launch.checkpoint import CheckpointManager, CheckpointWriteError

    class Engine:
        def __init__(self, fail: bool):
            self.fail = fail

        def save_checkpoint(self, root, tag, client_state, save_latest):
            (tmp_path / "checkpoints" / tag).mkdir(parents=True, exist_ok=True)
            (tmp_path / "checkpoints" / tag / "mp_rank_00_model_states.pt").write_bytes(b"partial")
            if self.fail:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    ckpt = CheckpointManager(str(tmp_path), rank=0)
    good = ckpt.save(Engine(fail=False), 1, {}, {"world_size": 1})
    with pytest.raises(CheckpointWriteError) as err:
        ckpt.save(Engine(fail=True), 2, {}, {"world_size": 1})
    assert "no space left on the device" in str(err.value) and good in str(err.value)
    assert ckpt.find("auto") == good and not (tmp_path / "checkpoints" / "step_00000002").exists()


def test_resume_logs_each_step_once_and_refuses_flags_that_change_the_model_or_data(demo_dir, tmp_path):
    import json
    import shutil

    run = tmp_path / "run"
    common = ["pretrain/run.py", *TINY, "--max-steps", "4", "--save-every", "2", "--output-dir", str(run)]
    out = run_script(common, demo=demo_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if killed after step 4 was logged, before its save
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    for flags, changed in ((["--batch-size", "2"], "--batch-size 4 -> 2"), (["--model", "vit_small"], "--model")):
        out = run_script([*common, *flags], demo=demo_dir)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1 and "cannot resume" in lines[0] and changed in lines[0], out.stderr[-2000:]
    out = run_script(common, demo=demo_dir)
    assert out.returncode == 0 and "resumed at step 2" in out.stdout, out.stderr[-2000:]
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the replayed steps 3 and 4 appear once


class _Payload:
    """Unpickling this creates a file: proof that code from a checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_tampered_checkpoint_file_is_refused_and_runs_nothing(demo_dir, tmp_path):
    import shutil

    import torch

    run = tmp_path / "run"
    common = ["pretrain/run.py", *TINY, "--zero-stage", "2", "--max-steps", "2", "--save-every", "1"]
    out = run_script([*common, "--output-dir", str(run)], demo=demo_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    marker = tmp_path / "code_ran"
    for name, resume in (("mp_rank_00_model_states.pt", "auto"), ("zero_pp_rank_0_mp_rank_00_optim_states.pt", "auto"),
                         ("rng_rank0.pt", "auto"), ("mp_rank_00_model_states.pt", "PATH")):
        copy = tmp_path / f"copy_{name}_{resume}"
        shutil.copytree(run, copy)
        tampered = copy / "checkpoints" / "step_00000002" / name
        original = torch.load(tampered, weights_only=False)
        torch.save({**original, "payload": _Payload(str(marker))}, tampered)
        where = str(copy / "checkpoints" / "step_00000002") if resume == "PATH" else "auto"
        out = run_script([*common, "--max-steps", "3", "--output-dir", str(copy), "--resume", where], demo=demo_dir)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1 and str(tampered) in lines[0] and "refused" in lines[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr and not marker.exists()


def test_timemae_commands_refuse_an_output_path_they_cannot_create_in_one_line(tmp_path, capsys):
    # Every `timemae` command that writes a folder: a path under a file (or anywhere the file system refuses) is one
    # line naming the path, exit 2, whichever command meets it first.
    from videos import write_index_video

    from launch.cli import main

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    video = tmp_path / "clip.mp4"
    write_index_video(video, 32)
    for argv in (["demo", "--out", str(a_file / "demo")],
                 ["preview", "--video", str(video), "--out", str(a_file / "preview")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(a_file) in err[0] and "Not a directory" in err[0], err


def test_a_second_run_into_a_folder_in_use_stops_and_a_killed_holder_leaves_no_lock(demo_dir, tmp_path):
    # A command started twice: the second run must not write into the folder of the first.
    import signal
    import subprocess
    import sys

    from launch.checkpoint import lock_run_folder

    run = tmp_path / "run"
    run.mkdir()
    code = ("import time; from launch.checkpoint import lock_run_folder; "
            f"assert lock_run_folder({str(run)!r}) == ('', ''); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refusal, note = lock_run_folder(str(run), wait_s=0.0)  # another live process on this machine: who it is
        assert f"pid {holder.pid} on " in refusal and not note
        out = run_script(["pretrain/run.py", *TINY, "--max-steps", "1", "--output-dir", str(run)], demo=demo_dir)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1 and "is in use by another run" in lines[0] and f"pid {holder.pid}" in lines[0]
        assert "Traceback" not in out.stderr and not (run / "log.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the killed holder's lock: the same command now runs
    out = run_script(["pretrain/run.py", *TINY, "--max-steps", "1", "--output-dir", str(run)], demo=demo_dir)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_run_lock_held_on_another_machine_is_only_noted(tmp_path, monkeypatch):
    # A network file system keeps a dead node's lock for a while: a requeued job must not be turned away by it.
    import socket

    from launch import checkpoint

    monkeypatch.setattr(checkpoint, "_try_lock", lambda folder: {"pid": 7, "host": "node-that-died", "since": "then"})
    refusal, note = checkpoint.lock_run_folder(str(tmp_path))
    assert refusal == "" and "pid 7 on node-that-died" in note and "going on" in note
    monkeypatch.setattr(checkpoint, "_try_lock", lambda folder: {"pid": 7, "host": socket.gethostname()})
    refusal, note = checkpoint.lock_run_folder(str(tmp_path), wait_s=0.0)
    assert refusal.startswith("pid 7 on ") and note == ""


def test_a_lock_file_that_cannot_be_opened_refuses_nothing(tmp_path):
    from launch.checkpoint import RUN_LOCK, lock_run_folder

    (tmp_path / RUN_LOCK).mkdir()  # stands in for a lock file of another user: opening it for writing fails
    assert lock_run_folder(str(tmp_path), wait_s=0.0) == ("", "")
