"""Sampling, clip-consistent transforms and the whole frames -> clip path on frames labelled by index."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from data import sampling, time_grid, transforms
from data.clip import (
    ClipSpec,
    as_model_input,
    clip_to_uint8_frames,
    load_clip,
    make_clip,
    make_frames,
    normalize_clip,
    sample_indices,
    sampling_uniforms,
)
from data.errors import UserError


# ---------------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("num_frames,length", [(300, 64), (64, 64), (65, 64), (1000, 16), (17, 16)])
def test_segment_sampling_eval_takes_segment_centres(num_frames, length):
    idx = sampling.segment_indices(num_frames, length, train=False)
    seg = num_frames / length
    assert idx.tolist() == [int(seg * i + seg / 2) for i in range(length)]  # TSN's test-time formula


@pytest.mark.parametrize("num_frames,length", [(300, 64), (64, 64), (65, 64), (1000, 16)])
def test_segment_sampling_train_stays_in_segments(num_frames, length):
    rng = np.random.default_rng(0)
    seen = np.zeros(num_frames, dtype=bool)
    for _ in range(1500):
        idx = sampling.segment_indices(num_frames, length, train=True, rng=rng)
        for i in range(length):  # segment i is [floor(i T / L), floor((i + 1) T / L))
            assert (i * num_frames) // length <= idx[i] < ((i + 1) * num_frames) // length
        seen[idx] = True
    assert seen.all()  # every frame can be drawn


@pytest.mark.parametrize("num_frames,length", [(10, 64), (1, 16), (63, 64), (3, 4)])
def test_short_video_repeats_in_order(num_frames, length):
    for train in (False, True):
        idx = sampling.segment_indices(num_frames, length, train=train, rng=np.random.default_rng(0))
        assert idx.tolist() == [i * num_frames // length for i in range(length)]
        assert np.all(np.diff(idx) >= 0) and set(idx.tolist()) == set(range(num_frames))


def test_stride_sampling_matches_videomae():
    idx = sampling.stride_indices(100, 16, 4, train=False)
    assert np.all(np.diff(idx) == 4) and idx[0] == (100 - 61) // 2
    rng = np.random.default_rng(1)
    starts = {int(sampling.stride_indices(100, 16, 4, train=True, rng=rng)[0]) for _ in range(300)}
    assert starts == set(range(0, 100 - 61 + 1))
    short = sampling.stride_indices(20, 16, 4, train=False)
    assert short.max() == 19 and np.all(np.diff(short) >= 0)  # runs out: repeats the last frame


def test_union_indices_positions():
    draws = [np.array([0, 5, 9]), np.array([1, 5, 7])]
    union, pos = sampling.union_indices(draws)
    assert union.tolist() == [0, 1, 5, 7, 9]
    for d, p in zip(draws, pos, strict=True):
        assert union[p].tolist() == d.tolist()
    for draw in ([3, 4, 8], [2, 2, 5], [7]):  # one draw: distinct (its own union) or with repeats
        union, (p,) = sampling.union_indices([np.array(draw)])
        assert union.tolist() == sorted(set(draw)) and union[p].tolist() == draw


def test_sampling_from_uniforms_drawn_in_advance():
    """The uniforms `sampling_uniforms` draws give the samplers' distributions, one row per call."""
    spec = ClipSpec(num_frames=4, grid_n=2)
    u = sampling_uniforms(spec, np.random.default_rng(0), 3)
    assert u.shape == (3, 16) and sampling_uniforms(dataclasses.replace(spec, train=False), None, 3) is None
    for row in u:
        idx = sample_indices(100, spec, row)
        start = (np.arange(16) * 100) // 16
        assert idx.tolist() == (start + (row * ((np.arange(1, 17) * 100) // 16 - start)).astype(int)).tolist()
    assert sampling.segment_indices(10, 16, train=True, rng=u[0]).tolist() == [i * 10 // 16 for i in range(16)]
    stride = ClipSpec(num_frames=16, sampling="stride", sampling_rate=4)
    assert sampling_uniforms(stride, np.random.default_rng(0), 2).shape == (2, 1)
    starts = {int(sample_indices(100, stride, np.array([v]))[0]) for v in np.linspace(0, 1, 500, endpoint=False)}
    assert starts == set(range(0, 100 - 61 + 1))
    assert sample_indices(100, stride, np.array([np.nextafter(1.0, 0.0)]))[0] == 39


# ---------------------------------------------------------------------------------------------------- clips
def video_of_labels(num_frames: int, h: int = 60, w: int = 80) -> np.ndarray:
    """(T, h, w, 3) uint8 whose frame k is uniform with colour (k % 256, k // 256, 0)."""
    k = np.arange(num_frames)
    colour = np.stack([k % 256, k // 256, np.zeros_like(k)], 1).astype(np.uint8)
    return np.broadcast_to(colour[:, None, None, :], (num_frames, h, w, 3)).copy()


def read_cells(frames: torch.Tensor, n: int) -> np.ndarray:
    """(T*, H, W, 3) uint8 -> (T*, N, N) frame label at each cell centre."""
    t, h, w, _ = frames.shape
    out = np.zeros((t, n, n), dtype=np.int64)
    for ti, r, c in itertools.product(range(t), range(n), range(n)):
        px = frames[ti, int((r + 0.5) * h / n), int((c + 0.5) * w / n)].long()
        out[ti, r, c] = int(px[0]) + 256 * int(px[1])
    return out


class FakeVideo:
    def __init__(self, frames):
        self.frames = frames
        self.num_frames = len(frames)
        self.calls = []

    def get_batch(self, indices):
        self.calls.append(list(indices))
        return self.frames[np.asarray(indices)]


@pytest.mark.parametrize("arrangement", ["spatial", "temporal"])
@pytest.mark.parametrize("n,size", [(1, 32), (2, 32), (4, 32), (3, 32), (2, (24, 40))])
def test_every_cell_holds_the_frame_the_paper_says(arrangement, n, size):
    spec = ClipSpec(num_frames=4, grid_n=n, input_size=size, arrangement=arrangement, train=False, crop="center")
    video = FakeVideo(video_of_labels(500))
    clip = load_clip(video, spec, rng=None)
    assert clip.shape == (3, 4, *spec.size) and clip.dtype == torch.float32
    assert len(video.calls) == 1  # one batch decode per clip
    source = sampling.segment_indices(500, 4 * n * n, train=False)
    got = read_cells(clip_to_uint8_frames(clip, spec), n)
    for t, r, c in itertools.product(range(4), range(n), range(n)):
        if arrangement == "spatial":  # Eqs. 1-2 (1-based: block i = rN + c + 1, frame (i-1)T* + t)
            k = (r * n + c) * 4 + t
        else:  # Eqs. 3-5
            k = t * n * n + r * n + c
        assert got[t, r, c] == source[k]


def test_grid_n_1_is_plain_uniform_segment_sampling():
    spec = ClipSpec(num_frames=8, grid_n=1, input_size=32, train=False, crop="center")
    frames = video_of_labels(100)
    clip = load_clip(FakeVideo(frames), spec, None)
    seg = 100 / 8
    expected = [int(seg * t + seg / 2) for t in range(8)]
    assert read_cells(clip_to_uint8_frames(clip, spec), 1)[:, 0, 0].tolist() == expected
    # and the pixels equal a plain centre crop + resize of those frames, i.e. no grid at all
    plain = transforms.resize(torch.from_numpy(frames[expected]).permute(0, 3, 1, 2)[..., :, 10:70], (32, 32))
    assert torch.equal(clip_to_uint8_frames(clip, spec), plain.permute(0, 2, 3, 1))


def test_training_augmentation_is_the_same_for_every_frame():
    rng = np.random.default_rng(0)
    h, w = 60, 80
    base = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    frames = np.broadcast_to(base, (16, h, w, 3)).copy()  # 16 identical frames
    for crop in ("multiscale", "rrc"):
        spec = ClipSpec(num_frames=16, grid_n=1, input_size=32, crop=crop, flip=True, rotation=10)
        clip = make_clip(frames, spec, rng)
        assert torch.equal(clip, clip[:, :1].expand_as(clip))  # identical source frames -> identical output frames


def test_cells_get_their_own_frame_after_flip():
    spec = ClipSpec(num_frames=2, grid_n=2, input_size=32, crop="multiscale", flip=True, scales=(1.0,))
    frames = video_of_labels(8, 40, 40)
    for seed in range(6):  # some seeds flip, some do not: cell order must never change
        clip = make_clip(frames, spec, np.random.default_rng(seed))
        got = read_cells(clip_to_uint8_frames(clip, spec), 2)
        assert got[0].reshape(-1).tolist() == [0, 2, 4, 6] and got[1].reshape(-1).tolist() == [1, 3, 5, 7]


def test_flip_mirrors_content():
    frames = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    frames[:, :, :8] = 255  # white stripe on the left
    spec = ClipSpec(num_frames=1, grid_n=1, input_size=32, crop="multiscale", scales=(1.0,), flip=True)
    sides = set()
    for seed in range(12):
        out = clip_to_uint8_frames(make_clip(frames, spec, np.random.default_rng(seed)), spec)
        sides.add("left" if out[0, 16, 2, 0] > 128 else "right")
    assert sides == {"left", "right"}


def test_multiscale_crop_sizes_follow_videomae():
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(500):
        top, left, h, w = transforms.multiscale_crop_params(240, 320, rng)
        assert 0 <= top <= 240 - h and 0 <= left <= 320 - w
        sizes.add((h, w))
    allowed = [int(240 * s) for s in (1, 0.875, 0.75, 0.66)]
    assert sizes == {(a, b) for i, a in enumerate(allowed) for j, b in enumerate(allowed) if abs(i - j) <= 1}


def test_multiscale_crop_draws_every_size_and_corner_equally():
    rng = np.random.default_rng(1)
    counts: dict[tuple[int, int, int, int], int] = {}
    for _ in range(13000):
        box = transforms.multiscale_crop_params(240, 320, rng)
        counts[box] = counts.get(box, 0) + 1
    # 10 size pairs x 13 corners, but corners coincide where a crop spans the frame's height (top = 0 for all of
    # them), so: every size pair equally often, and no distinct box rare.
    sizes = {(h, w) for _, _, h, w in counts}
    assert len(sizes) == 10
    for h, w in sizes:
        per_size = sum(c for (_, _, hh, ww), c in counts.items() if (hh, ww) == (h, w))
        assert 1100 < per_size < 1500  # expected 1300, sd ~34
    assert len(counts) > 100 and min(counts.values()) > 50


def test_three_crop_covers_long_side():
    boxes = transforms.three_crop_params(60, 100)
    assert [b[1] for b in boxes] == [0, 20, 40] and all(b[2:] == (60, 60) for b in boxes)
    spec = ClipSpec(num_frames=4, grid_n=2, input_size=32, train=False, crop="three")
    assert make_clip(video_of_labels(16, 60, 100), spec, None).shape == (3, 3, 4, 32, 32)


def test_normalize_roundtrip():
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    y = transforms.normalize(x)
    assert torch.allclose(y[:, 0], (x[:, 0] / 255 - 0.485) / 0.229, atol=1e-5)
    assert torch.equal(transforms.denormalize(y), x)


def reference_frames(frames: np.ndarray, spec: ClipSpec, box, flip: bool) -> torch.Tensor:
    """The clip built the slow, obvious way from the pure functions: crop, resize, flip, `time_grid.to_grid`."""
    x = transforms.resize(transforms.crop(torch.from_numpy(frames).permute(0, 3, 1, 2), box), spec.cell)
    if flip:
        x = transforms.hflip(x)
    g = transforms.resize(time_grid.to_grid(x.contiguous(), spec.grid_n, spec.arrangement), spec.size)
    return g.permute(0, 2, 3, 1)  # (T*, H*, W*, 3)


def _crop_and_flip(seed: int, spec: ClipSpec) -> tuple[transforms.Box, bool]:
    """The crop box and flip `make_frames` draws from ``default_rng(seed)`` for 50 x 70 frames (same draw order)."""
    rng = np.random.default_rng(seed)
    flip = spec.flip and bool(rng.random() < 0.5)
    return transforms.multiscale_crop_params(50, 70, rng, spec.scales), flip


@pytest.mark.parametrize("arrangement", ["spatial", "temporal"])
@pytest.mark.parametrize("n,size", [(1, 32), (2, 32), (3, 32), (2, (24, 40)), (2, 80), (2, 86)])
def test_uint8_clip_equals_the_pure_grid_functions(arrangement, n, size):
    frames = np.random.default_rng(0).integers(0, 256, (4 * n * n, 50, 70, 3), dtype=np.uint8)
    spec = ClipSpec(num_frames=4, grid_n=n, input_size=size, arrangement=arrangement, flip=True)
    flips = set()
    for seed in range(4):
        box, flip = _crop_and_flip(seed, spec)
        flips.add(flip)
        got = make_frames(frames, spec, np.random.default_rng(seed))
        assert got.dtype == torch.uint8 and got.shape == (4, *spec.size, 3) and got.is_contiguous()
        assert torch.equal(got, reference_frames(frames, spec, box, flip))
        # the float clip is the same pixels, normalised
        clip = make_clip(frames, spec, np.random.default_rng(seed))
        assert clip.shape == (3, 4, *spec.size) and torch.equal(clip_to_uint8_frames(clip, spec), got)
    assert flips == {False, True}


@pytest.mark.parametrize("arrangement", ["spatial", "temporal"])
@pytest.mark.parametrize("size", [40, 64, 24])
def test_uint8_clip_from_numpy_or_torch_frames(arrangement, size):
    """Cells as large as the crop (no resize), larger or smaller; the same clip from numpy and from torch frames."""
    frames = np.random.default_rng(2).integers(0, 256, (16, 20, 30, 3), dtype=np.uint8)
    spec = ClipSpec(num_frames=4, grid_n=2, input_size=size, arrangement=arrangement, train=False, crop="center")
    box = transforms.center_crop_params(20, 30, spec.size[1] / spec.size[0])
    got = make_frames(frames, spec, None)
    assert got.shape == (4, *spec.size, 3) and got.is_contiguous()
    assert torch.equal(got, reference_frames(frames, spec, box, False))
    assert torch.equal(make_frames(torch.from_numpy(frames), spec, None), got)


def test_uint8_three_crop_views():
    spec = ClipSpec(num_frames=4, grid_n=2, input_size=32, train=False, crop="three")
    frames = np.random.default_rng(1).integers(0, 256, (16, 40, 80, 3), dtype=np.uint8)
    got = make_frames(frames, spec, None)
    assert got.shape == (3, 4, 32, 32, 3)
    for view, box in zip(got, transforms.three_crop_params(40, 80), strict=True):
        assert torch.equal(view, reference_frames(frames, spec, box, False))
    assert torch.equal(normalize_clip(got), make_clip(frames, spec, None))


def test_normalize_clip_matches_per_channel_normalisation():
    x = torch.randint(0, 256, (2, 5, 6, 7, 3), dtype=torch.uint8)  # (B, T, H, W, 3)
    y = normalize_clip(x)
    assert y.shape == (2, 3, 5, 6, 7) and y.is_contiguous()
    for c, (m, s) in enumerate(zip(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD, strict=True)):
        assert torch.allclose(y[:, c], (x[..., c] / 255 - m) / s, atol=1e-5)
    assert torch.equal(as_model_input(x), y)
    assert as_model_input(y) is y or torch.equal(as_model_input(y), y)  # float batches pass through
    assert normalize_clip(x, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="uint8"):
        normalize_clip(y)


def test_decode_short_side_covers_the_smallest_crop():
    assert ClipSpec(grid_n=2, input_size=224).decode_short_side() == 170  # 112 / 0.66
    assert ClipSpec(grid_n=2, input_size=224, train=False).decode_short_side() == 112
    assert ClipSpec(grid_n=1, input_size=224, crop="rrc").decode_short_side() == 448


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(grid_n=0), "--grid-n 0"),
        (dict(num_frames=0), "--num-frames 0"),
        (dict(grid_n=4, input_size=3), "smaller than --grid-n"),
        (dict(arrangement="diagonal"), "--grid-arrangement"),
        (dict(sampling="stride", grid_n=2), "needs --grid-n 1"),
        (dict(sampling_rate=0), "--sampling-rate 0"),
        (dict(crop="zoom"), "crop 'zoom'"),
    ],
)
def test_bad_specs_name_the_flag(kwargs, match):
    with pytest.raises(UserError, match=match):
        ClipSpec(**kwargs)


def test_stride_clip_for_n_1():
    spec = ClipSpec(num_frames=4, sampling="stride", sampling_rate=3, input_size=16, train=False, crop="center")
    clip = load_clip(FakeVideo(video_of_labels(40, 20, 20)), spec, None)
    got = read_cells(clip_to_uint8_frames(clip, spec), 1)[:, 0, 0]
    assert np.diff(got).tolist() == [3, 3, 3]
