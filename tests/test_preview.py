"""`timemae preview`: the TIME clip of one video as PNG frames and a contact sheet, cells holding the right frames."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from videos import read_index, write_index_video

from data import sampling


@pytest.mark.parametrize("arrangement", ["spatial", "temporal"])
def test_preview_writes_frames_and_sheet_with_the_right_cells(tmp_path, arrangement):
    video = write_index_video(tmp_path / "v.mp4", 100, width=128, height=96)
    out = tmp_path / "preview"
    cmd = [sys.executable, "-m", "launch.cli", "preview", "--video", str(video), "--grid-n", "2", "--arrangement",
           arrangement, "--num-frames", "4", "--input-size", "192", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    frames = [np.asarray(Image.open(out / f"frame_{t:02d}.png")) for t in range(4)]
    assert all(f.shape == (192, 192, 3) and f.dtype == np.uint8 for f in frames)
    sheet = np.asarray(Image.open(out / "sheet.png"))
    assert sheet.shape[0] > 2 * 192 and sheet.shape[1] > 2 * 192  # 2 x 2 frames with gaps
    source = sampling.segment_indices(100, 16, train=False)  # evaluation sampling: segment centres
    for t, frame in enumerate(frames):
        for r in range(2):
            for c in range(2):
                # The index pattern fills the frame; the centre crop keeps its middle 96 x 96, which still reads.
                cell = frame[r * 96 : (r + 1) * 96, c * 96 : (c + 1) * 96]
                k = (r * 2 + c) * 4 + t if arrangement == "spatial" else t * 4 + r * 2 + c
                assert read_index(np.asarray(Image.fromarray(cell).resize((128, 96)))) == source[k]


def test_preview_bad_input_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "launch.cli", "preview", "--video", str(tmp_path / "missing.mp4"), "--out",
           str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    cmd[-2:] = ["--grid-n", "0", "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--grid-n 0" in done.stderr


def test_preview_of_an_undecodable_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video\n" * 100)
    cmd = [sys.executable, "-m", "launch.cli", "preview", "--video", str(bad), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and str(bad) in lines[0] and "not a readable video" in lines[0]
