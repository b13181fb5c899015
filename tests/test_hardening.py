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
