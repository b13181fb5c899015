"""Where the pretraining loss is left on the demo: hidden patches on an object against hidden background patches.

    python -m tools.demo_loss_split --demo runs/quickstart/demo --steps 1200          # the quickstart's recipe

Trains `vit_mini` in memory with the quickstart's pretraining geometry and recipe (128 px, N = 2, 4 TIME frames, tube
mask 0.75, norm-pix, batch 8, AdamW at base lr 5e-2 with 1.5 epochs of warm-up and a cosine to 0), on clips cut from
the demo's training videos with the pretraining crop, as `tests/test_learning.py` does. Every ``--eval-every`` steps
it measures the loss on the validation videos under one fixed mask and prints it three ways: over all hidden
patches, over those that show part of an object and over the background ones, each next to the two baselines
computed on the same patches: predicting zeros (~1 under norm-pix) and the mean of the clip's visible tokens.
Which patch shows an object comes from the scene itself: each validation video is drawn again from its seed and
rendered with its objects' coverage masks (`data.prep.demo.render_scene`), which go through the clip geometry with
the frames; a patch is an object patch when any of its pixels (either frame of the tubelet) is at least half
covered. The demo folder must be one `timemae demo` made (its ``demo.json`` has the parameters).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from data.clip import ClipSpec, make_clip, make_frames, sample_indices
from data.decode import open_video
from data.prep.demo import CLASSES, _read_stamp, _stamp_params, render_scene, sample_scene, video_rng
from data.prep.manifest import read_manifest
from models import build_pretrain
from models.videomae import patchify_target
from pretrain.engine import param_groups
from pretrain.loss import reconstruction_loss
from pretrain.masking import token_counts, tube_mask

COLUMNS = ("all", "object", "background")


def _load(root: Path, split: str, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(path, all decoded frames) of the RGB videos of one split, in manifest order."""
    out = []
    for record in read_manifest(root / f"{split}.csv")[:limit]:
        video = open_video(record.path)
        out.append((record.path, video.get_batch(np.arange(video.num_frames))))
    return out


def demo_params(root: Path):
    """The `DemoParams` a demo folder was made with (its ``demo.json``); UserError for any other folder."""
    params = _stamp_params(_read_stamp(root))
    if params is None:
        raise UserError(f"{root} holds no demo made by this version of `timemae demo` (no readable demo.json); "
                        f"make one with: timemae demo --out {root}")
    return params


def scene_of(path: str, params, split: str):
    """The `Scene` of one demo video, drawn again from its seed (the file name gives class and index)."""
    label_name, index = Path(path).stem.rsplit("_", 1)  # e.g. move_left_003
    label = CLASSES.index(label_name)
    return sample_scene(label, video_rng(params.seed, split, label, int(index)), num_frames=params.num_frames,
                        width=params.width, height=params.height, pan=params.pan, background=params.background)


def _object_coverage(path: str, params, split: str) -> np.ndarray:
    """(T, H, W, 3) uint8: 255 where any object covers at least half a pixel of this demo video's frame."""
    _, _, masks = render_scene(scene_of(path, params, split))
    covered = (masks.max(axis=0) >= 0.5).astype(np.uint8) * 255  # (T, H, W)
    return np.repeat(covered[..., None], 3, axis=-1)


def measure(demo: Path, *, steps: int, eval_every: int, model_name: str = "vit_mini", input_size: int = 128,
            num_frames: int = 4, batch_size: int = 8, base_lr: float = 5e-2, mask_ratio: float = 0.75,
            seed: int = 0, val_limit: int | None = None, out=sys.stdout) -> list[dict]:
    """Train and measure (see the module docstring); returns one dict per evaluation."""
    params = demo_params(demo)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_spec = ClipSpec(num_frames=num_frames, grid_n=2, input_size=input_size, train=True, crop="multiscale",
                          flip=False)
    eval_spec = ClipSpec(num_frames=num_frames, grid_n=2, input_size=input_size, train=False)
    train = [frames for _, frames in _load(demo, "train")]
    val_videos = _load(demo, "val", val_limit)
    val, covered = [], []
    for path, frames in val_videos:
        index = sample_indices(len(frames), eval_spec, None)
        val.append(make_clip(frames[index], eval_spec, None))
        covered.append(make_frames(_object_coverage(path, params, "val")[index], eval_spec, None)[..., 0])
    val = torch.stack(val)  # (V, 3, T, H, W)
    covered = torch.stack(covered)  # (V, T, H, W) uint8

    model = build_pretrain(model_name, img_size=input_size, num_frames=num_frames)
    grid = model.token_grid
    ts, ps = model.tubelet_size, model.patch_size
    counts = token_counts("tube", mask_ratio, 0.0, grid)
    lr = base_lr * batch_size / 256
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=lr, betas=(0.9, 0.95))
    warmup = max(int(1.5 * len(train) / batch_size), 1)
    gen = torch.Generator().manual_seed(seed)
    val_mask = tube_mask(len(val), grid, mask_ratio, torch.Generator().manual_seed(12345))
    v, t, h, w = covered.shape
    on_object = covered.view(v, t // ts, ts, h // ps, ps, w // ps, ps).amax(dim=(2, 4, 6)).flatten(1) > 127
    on_object = on_object[val_mask].view(v, -1)  # (V, hidden)
    target = patchify_target(val)
    hidden = target[val_mask].view(v, -1, target.shape[-1])
    visible = target[~val_mask].view(v, -1, target.shape[-1])
    zeros = hidden.pow(2).mean(-1)
    visible_mean = (hidden - visible.mean(1, keepdim=True)).pow(2).mean(-1)

    def evaluate(step: int) -> dict:
        model.eval()
        with torch.no_grad():
            error = (model(val, val_mask, counts=counts) - hidden).pow(2).mean(-1)
        model.train()
        row = {"step": step}
        for name, sel in zip(COLUMNS, (torch.ones_like(on_object), on_object, ~on_object), strict=True):
            row[name] = {"model": float(error[sel].mean()), "visible_mean": float(visible_mean[sel].mean()),
                         "zeros": float(zeros[sel].mean()), "share": float(sel.float().mean())}
        print(f"step {step:5d}  " + "  ".join(
            f"{k}: {r['model']:.3f} (visible mean {r['visible_mean']:.3f}, zeros {r['zeros']:.3f}, "
            f"{100 * r['share']:.0f}% of hidden)" for k, r in row.items() if k != "step"), file=out, flush=True)
        return row

    rows = [evaluate(0)]
    start = time.time()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                                                               max(steps - warmup, 1)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        picks = rng.integers(len(train), size=batch_size)
        x = torch.stack([make_clip(train[i][sample_indices(len(train[i]), train_spec, rng)], train_spec, rng)
                         for i in picks])
        mask = tube_mask(batch_size, grid, mask_ratio, gen)
        loss = reconstruction_loss(model(x, mask, counts=counts), x, mask, patch_size=ps, tubelet_size=ts,
                                   num_decoded=counts[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            rows.append(evaluate(step + 1))
    print(f"{steps} steps in {time.time() - start:.0f} s", file=out)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", required=True, type=Path, help="a folder made by `timemae demo`")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--base-lr", type=float, default=5e-2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or not 0 < args.mask_ratio < 1:
        p.error("--steps and --eval-every must be >= 1 and --mask-ratio in (0, 1)")
    try:
        measure(args.demo, steps=args.steps, eval_every=args.eval_every, mask_ratio=args.mask_ratio,
                base_lr=args.base_lr, seed=args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
