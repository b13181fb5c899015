"""Clip-consistent RandAugment and random erasing (data/augment.py) and their hook into make_frames."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa

from data import augment
from data.augment import OFFICIAL, Op, RandAugmentConfig, parse_rand_augment
from data.clip import ClipSpec, make_frames, normalize_clip
from data.errors import UserError

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
ALL_OPS = tuple(dict.fromkeys(augment.INCREASING_OPS + augment.ORIGINAL_OPS))


def random_frames(num: int, height: int = 20, width: int = 24, seed: int = 0) -> torch.Tensor:
    """(num, 3, H, W) uint8, every frame different."""
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (num, 3, height, width), dtype=np.uint8))


def smooth_image(height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 without sharp edges, so that two bilinear implementations agree away from the borders."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([128 + 100 * np.sin(xx / 9), 128 + 100 * np.cos(yy / 7), 128 + 80 * np.sin((xx + yy) / 11)],
                    -1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Config strings


@pytest.mark.parametrize("text,expected", [
    (OFFICIAL, RandAugmentConfig(magnitude=7, num_ops=4, magnitude_std=0.5, increasing=True)),
    ("rand-m9-n3-mstd0.5", RandAugmentConfig(magnitude=9, num_ops=3, magnitude_std=0.5)),
    ("rand-inc1-n2-m7-p0.3-mmax12", RandAugmentConfig(magnitude=7, num_ops=2, prob=0.3, magnitude_max=12,
                                                       increasing=True)),
    ("rand-mstd101", RandAugmentConfig(magnitude_std=math.inf)),  # timm: mstd > 100 = uniform magnitude
    ("rand", RandAugmentConfig()),
    ("", None), ("none", None), (" None ", None),
])
def test_parse_good_strings(text, expected):
    assert parse_rand_augment(text) == expected


@pytest.mark.parametrize("text", ["rnd-m7", "rand-m7-x3", "rand-m7-m8", "rand-n0", "rand-n2.5", "rand-p1.5",
                                  "rand-inc2", "rand-tweights", "rand-m-7", "rand-m7--n4", "rand-mmax0"])
def test_parse_bad_strings_name_the_flag(text):
    with pytest.raises(UserError) as err:
        parse_rand_augment(text)
    message = str(err.value)
    assert message.startswith(f"--rand-augment {text!r}") and OFFICIAL in message and "\n" not in message


def test_clip_spec_validates_the_new_fields():
    with pytest.raises(UserError, match="--rand-augment 'rand-q3'"):
        ClipSpec(rand_augment="rand-q3")
    with pytest.raises(UserError, match="--reprob 1.5 is outside"):
        ClipSpec(erase_prob=1.5)


# ---------------------------------------------------------------------------------------------------------------------
# Ops


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_on_a_clip_equals_the_op_on_each_frame(name):
    clip = random_frames(5)
    for negate in (False, True):
        op = Op(name, augment.op_arg(name, 7, negate))
        per_frame = torch.cat([augment.apply_op(frame[None], op) for frame in clip])
        assert torch.equal(augment.apply_op(clip, op), per_frame), op
        # make_frames hands over channels-last cells
        assert torch.equal(augment.apply_op(clip.contiguous(memory_format=torch.channels_last), op), per_frame), op


@pytest.mark.parametrize("name", ALL_OPS)
def test_magnitude_mappings_are_timms(name, monkeypatch):
    for magnitude in (0, 2.5, 7, 10):
        ours = {augment.op_arg(name, magnitude, negate) for negate in (False, True)}
        level_fn = timm_aa.LEVEL_TO_ARG[name]
        if level_fn is None:
            continue  # no argument
        theirs = set()
        for sign in (1, -1):
            monkeypatch.setattr(timm_aa, "_randomly_negate", lambda v, s=sign: s * v)
            theirs.add(float(level_fn(magnitude, timm_aa._HPARAMS_DEFAULT)[0]))
        assert sorted(ours) == pytest.approx(sorted(theirs)), (magnitude, ours, theirs)


@pytest.mark.parametrize("name", ALL_OPS)
def test_ops_match_timms_pil_ops(name):
    image = smooth_image()
    clip = torch.from_numpy(image).permute(2, 0, 1)[None]
    for negate in (False, True):
        arg = augment.op_arg(name, 7, negate)
        args = () if timm_aa.LEVEL_TO_ARG[name] is None else (int(arg) if "Posterize" in name else arg,)
        ref = np.asarray(timm_aa.NAME_TO_OP[name](Image.fromarray(image), *args, fillcolor=(128,) * 3,
                                                  resample=Image.BILINEAR)).astype(int)
        out = augment.apply_op(clip, Op(name, arg))[0].permute(1, 2, 0).numpy().astype(int)
        diff = np.abs(out - ref)
        if name in GEOMETRIC:  # bilinear sampling differs only along the border with the fill
            assert diff.mean() < 1.5 and np.median(diff) <= 1, (name, arg, diff.mean())
        else:
            assert diff.max() <= 1, (name, arg, diff.max())


def test_magnitude_zero_is_identity_where_timms_is():
    clip = random_frames(3)
    for name in augment.INCREASING_OPS:
        out = augment.apply_op(clip, Op(name, augment.op_arg(name, 0, True)))
        if name in ("AutoContrast", "Equalize", "Invert", "PosterizeIncreasing"):
            assert not torch.equal(out, clip), name  # no magnitude, or 4 bits kept at m = 0 (as timm)
        else:
            assert torch.equal(out, clip), name
    assert [augment.op_arg("PosterizeIncreasing", m) for m in (0, 5, 10)] == [4, 2, 0]


def test_identical_frames_stay_identical_after_a_draw():
    clip = random_frames(1).expand(6, -1, -1, -1)
    config, rng = parse_rand_augment(OFFICIAL), np.random.default_rng(0)
    applied = 0
    for _ in range(30):
        ops = augment.draw_rand_augment(config, rng)
        applied += len(ops)
        out = augment.apply_rand_augment(clip, ops)
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert all(torch.equal(frame, out[0]) for frame in out), ops
    assert applied > 30


def test_draws_follow_timms_randaugment():
    config, rng = parse_rand_augment(OFFICIAL), np.random.default_rng(1)
    draws = [augment.draw_rand_augment(config, rng) for _ in range(3000)]
    counts = np.array([len(ops) for ops in draws])
    assert counts.max() <= 4 and abs(counts.mean() - 2.0) < 0.1  # n = 4 ops, each applied with p = 0.5
    ops = [op for d in draws for op in d]
    assert {op.name for op in ops} == set(augment.INCREASING_OPS)
    rotations = np.array([op.arg for op in ops if op.name == "Rotate"])
    assert (rotations > 0).any() and (rotations < 0).any()
    assert abs(np.abs(rotations).mean() - 21.0) < 0.5 and 0.5 < np.abs(rotations).std() < 2.5  # 30 x N(7, 0.5) / 10
    factors = np.array([op.arg for op in ops if op.name == "ColorIncreasing"])
    assert set(np.round(np.abs(factors - 1) / 0.9 * 10)) <= {5.0, 6.0, 7.0, 8.0, 9.0}


# ---------------------------------------------------------------------------------------------------------------------
# Random erasing


def test_erasing_one_box_the_same_on_every_frame():
    clip = random_frames(5, 32, 40)
    rng = np.random.default_rng(0)
    for _ in range(20):
        aug = augment.draw_clip_augment("", 1.0, 5, (32, 40), rng)
        top, left, h, w = aug.erase.box
        assert top >= 0 and left >= 0 and top + h <= 32 and left + w <= 40
        assert aug.erase.noise.shape == (5, 3, h, w) and aug.erase.noise.dtype == torch.uint8
        out = augment.apply_clip_augment(clip, aug)
        inside = torch.zeros(32, 40, dtype=torch.bool)
        inside[top : top + h, left : left + w] = True
        assert torch.equal(out[..., ~inside], clip[..., ~inside])
        assert torch.equal(out[..., top : top + h, left : left + w], aug.erase.noise)
        assert not torch.equal(aug.erase.noise[0], aug.erase.noise[1])  # fresh noise per frame, as VideoMAE's cube mode


def test_erasing_probability_area_and_noise():
    rng = np.random.default_rng(0)
    draws = [augment.draw_clip_augment("", 0.25, 2, (56, 56), rng).erase for _ in range(2000)]
    boxes = [e.box for e in draws if e is not None]
    assert 0.22 < len(boxes) / len(draws) < 0.28
    areas = np.array([h * w / 56**2 for _, _, h, w in boxes])
    aspects = np.array([h / w for _, _, h, w in boxes])
    assert areas.min() > 0.015 and areas.max() < 0.36 and areas.mean() == pytest.approx((0.02 + 1 / 3) / 2, abs=0.03)
    assert aspects.min() > 0.25 and aspects.max() < 4.0
    noise = augment.erase_noise((8, 3, 64, 64), rng)
    z = normalize_clip(noise.permute(0, 2, 3, 1))  # timm fills N(0, 1) in normalised space
    assert abs(float(z.mean())) < 0.05 and 0.85 < float(z.std()) < 1.0


def test_draws_are_determined_by_the_seed():
    a, b = (augment.draw_clip_augment(OFFICIAL, 1.0, 4, (16, 16), np.random.default_rng(7)) for _ in range(2))
    assert a.ops == b.ops and a.erase.box == b.erase.box and torch.equal(a.erase.noise, b.erase.noise)
    c = augment.draw_clip_augment(OFFICIAL, 1.0, 4, (16, 16), np.random.default_rng(8))
    assert (c.ops, c.erase.box) != (a.ops, a.erase.box)


# ---------------------------------------------------------------------------------------------------------------------
# make_frames


@pytest.mark.parametrize("grid_n", [1, 2])
def test_make_frames_with_rand_augment_and_erasing(grid_n):
    frames = random_frames(4 * grid_n**2, 40, 48).permute(0, 2, 3, 1).numpy()  # (L, H, W, 3)
    base = dict(num_frames=4, grid_n=grid_n, input_size=32, crop="rrc")
    on = ClipSpec(**base, rand_augment=OFFICIAL, erase_prob=1.0)
    out = make_frames(frames, on, np.random.default_rng(3))
    assert out.shape == (4, 32, 32, 3) and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, make_frames(frames, on, np.random.default_rng(3)))
    off = make_frames(frames, ClipSpec(**base), np.random.default_rng(3))
    assert not torch.equal(out, off)
    # Drawn after the crop, with every op skipped (p = 0): exactly the output without augmentation.
    never = ClipSpec(**base, rand_augment="rand-n4-p0")
    assert torch.equal(make_frames(frames, never, np.random.default_rng(3)), off)
    # Evaluation ignores both.
    evaluation = dict(base, train=False, crop="center")
    assert torch.equal(make_frames(frames, ClipSpec(**evaluation, rand_augment=OFFICIAL, erase_prob=1.0), None),
                       make_frames(frames, ClipSpec(**evaluation), None))


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning flags


def test_finetune_flags_round_trip(tmp_path):
    from finetune.config import FinetuneConfig
    from finetune.recipes import resolve
    from launch import config as config_lib

    def parse(flags):  # the effective config of a VideoMAE model: unset flags from its recipe
        return resolve(config_lib.parse(FinetuneConfig, flags), "videomae")[0]

    cfg = parse([])
    assert (cfg.rand_augment, cfg.reprob, cfg.mixup, cfg.cutmix) == (OFFICIAL, 0.25, 0.8, 1.0)  # the official recipe
    for flags, expected in ((["--rand-augment", "none", "--reprob", "0"], ("none", 0.0)),
                            (["--rand-augment", "", "--reprob", "0.5"], ("", 0.5)),
                            (["--rand-augment", "rand-m9-n2"], ("rand-m9-n2", 0.25))):
        cfg = parse(flags)
        assert (cfg.rand_augment, cfg.reprob) == expected
        path = tmp_path / "ft.yaml"
        config_lib.dump_yaml(cfg, str(path))
        assert config_lib.parse(FinetuneConfig, ["--config", str(path)]) == cfg
