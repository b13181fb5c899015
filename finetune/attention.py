"""`timemae attention`: where a classifier looks, layer by layer (TIME paper Sec. 3.3, Fig. 6, Figs. 25-27).

``timemae attention --checkpoint CKPT --video V --out DIR`` builds the video's TIME clip as the model was trained on
it and writes:

- ``layers.png`` (ViTs): for every encoder layer, the attention each patch receives, averaged over heads, queries
  and time, on the patch grid (Fig. 6 rows 1-2).
- ``class_weight.png``: the per-patch "class weight" heatmap of every shown frame and its overlay on the frame (Fig. 6
  rows 3-6). VideoMAE (mean pooling, no class token): the mean attention each patch receives in the last layer over
  heads and queries. Image ViT (TSN): the class token's attention to the patches in the last layer, per frame.
  ResNet (TSN): the class activation map of the last stage for the predicted class (the head's weights over the
  channels; without a trained head, the channels' mean activation, labelled so).
  ``--compare CKPT2`` adds the second model's rows under the first's (e.g. a baseline and a TIME model).
- ``feature_maps.png`` (ResNets, ``--feature-maps``): the first channels of conv1's output and of each stage's first
  convolution, first frame (Figs. 26-27).
- ``attention.json``: the numbers behind the pictures (per-layer maps, class-weight maps, predicted class).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import UserError

FEATURE_CHANNELS = 8


def collect_attention(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Softmax attention weights of every block of a ViT classifier for ``x``, and the number of prefix (class /
    register) tokens in front of the patches. Each entry is (B', heads, N, N); B' = B for VideoMAE, B x T for the TSN
    image ViT (frames folded into the batch)."""
    from models.videomae import VideoMAEClassifier

    weights: list[torch.Tensor] = []
    undo = []
    if isinstance(model, VideoMAEClassifier):
        for block in model.blocks:
            attn = block.attn

            def explicit(inp, attn=attn):
                out, w = attn.forward_with_weights(inp)
                weights.append(w)
                return out

            attn.forward = explicit
            undo.append(lambda attn=attn: attn.__dict__.pop("forward"))
        prefix = 0
    elif hasattr(model, "blocks") and hasattr(model, "num_prefix_tokens"):  # timm's image ViT
        for block in model.blocks:
            fused = block.attn.fused_attn
            block.attn.fused_attn = False
            hook = block.attn.attn_drop.register_forward_hook(lambda m, i, o: weights.append(o))
            undo.append(lambda a=block.attn, f=fused, h=hook: (setattr(a, "fused_attn", f), h.remove()))
        prefix = int(model.num_prefix_tokens)
    else:
        raise UserError(f"{type(model).__name__} has no attention layers; attention maps need a ViT (VideoMAE or "
                        "vit_b16), a ResNet gets its class activation map and --feature-maps")
    try:
        with torch.no_grad():
            model(x)
    finally:
        for fn in undo:
            fn()
    return weights, prefix


def layer_maps(weights: list[torch.Tensor], prefix: int, grid: tuple[int, int, int]) -> np.ndarray:
    """(layers, h, w): the attention each patch receives, mean over heads, queries, time (and frames)."""
    t, h, w = grid
    out = []
    for a in weights:
        received = a.float().mean(dim=(1, 2))[:, prefix:]  # (B', N_patches)
        out.append(received.reshape(-1, h, w).mean(0))
    return torch.stack(out).numpy()


def class_weights(model: nn.Module, x: torch.Tensor, family: str, frames: int) -> tuple[np.ndarray, int | None, str]:
    """(frames, h, w) class-weight map per input frame, the predicted class (None without a head), and what the map
    is (for the figure)."""
    if family == "resnet":
        with torch.no_grad():
            feats = model.forward_features(x)  # (B*T, C, h, w)
            fc = model.get_classifier()
            if isinstance(fc, nn.Linear) and fc.out_features > 1:
                predicted = int(model.forward_head(feats, num_frames=frames).argmax(1)[0])
                cam = torch.einsum("c,tchw->thw", fc.weight[predicted].float(), feats.float()).clamp_min(0)
                return cam.numpy(), predicted, f"class activation map (class {predicted})"
            return feats.float().mean(1).numpy(), None, "mean activation (no trained head)"
    weights, prefix = collect_attention(model, x)
    last = weights[-1].float().mean(1)  # (B', N, N)
    with torch.no_grad():
        logits = model(x)
    predicted = int(logits.argmax(1)[0]) if logits.shape[1] > 1 else None
    if family == "videomae":
        t, h, w = model.patch_embed.token_grid
        received = last.mean(1).reshape(t, h, w)  # mean over queries
        per_frame = received.repeat_interleave(frames // t, dim=0)
        return per_frame.numpy(), predicted, "mean attention received, last layer"
    side = int(round((last.shape[-1] - prefix) ** 0.5))
    cls = last[:, 0, prefix:].reshape(-1, side, side)  # (T, h, w)
    return cls.numpy(), predicted, "class-token attention, last layer"


def feature_maps(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """conv1's output and each stage's first convolution's output, first frame, first channels: name -> (C, h, w)."""
    if not hasattr(model, "layer1"):
        raise UserError("--feature-maps needs a ResNet (resnet18 / resnet50 / resnet101); this model has no conv "
                        "stages")
    targets = {"conv1": model.conv1, **{f"layer{i}.0.conv1": getattr(model, f"layer{i}")[0].conv1
                                        for i in range(1, 5)}}
    found: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: found.__setitem__(n, o[0, :FEATURE_CHANNELS].numpy()))
             for n, m in targets.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _upsample(maps: np.ndarray, size: tuple[int, int], smooth: bool) -> np.ndarray:
    """(T, h, w) maps to (T, H, W): bilinear for feature maps (``smooth``), one flat square per patch otherwise."""
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    if smooth:
        return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    return torch.nn.functional.interpolate(t, size=size, mode="nearest")[:, 0].numpy()


def _figure(rows: list[tuple[str, list[np.ndarray], str | None]], path: str, title: str,
            titles: list[str] | None = None) -> None:
    """A grid of images: one row per entry (label, images, colormap or None for RGB); ``titles`` name the columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(images) for _, images, _ in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols + 1.2, 1.6 * len(rows) + 0.6), squeeze=False)
    for r, (label, images, cmap) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap=cmap, interpolation="nearest")
                if titles and r == 0 and c < len(titles):
                    ax.set_title(titles[c], fontsize=7)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    from common.files import atomic_write_figure

    atomic_write_figure(fig, path, dpi=100)


def _overlay(frame: np.ndarray, heat: np.ndarray) -> np.ndarray:
    import matplotlib

    colour = matplotlib.colormaps["jet"](heat)[..., :3]
    return (0.5 * frame / 255.0 + 0.5 * colour).clip(0, 1)


def attention(checkpoint: str, video: str, out_dir: str, *, compare: str = "", feature_maps_too: bool = False,
              max_frames: int = 8, **overrides: Any) -> dict[str, Any]:
    """Write the pictures and ``attention.json`` (see the module docstring); returns what was written."""
    from common.files import atomic_write_text
    from data.clip import ClipSpec, as_model_input, load_clip
    from data.decode import open_video
    from finetune.features import load_model
    from launch.checkpoint import check_writable
    from models import get_entry

    if not os.path.exists(video):
        raise UserError(f"--video {video} does not exist; give a video file or a frame folder")
    check_writable(out_dir, "--out")
    results: dict[str, Any] = {"models": []}
    rows: list[tuple[str, list[np.ndarray], str | None]] = []
    written = []
    for which, ckpt in (("", checkpoint), ("compare", compare)):
        if not ckpt:
            continue
        model, config, _ = load_model(ckpt, overrides, keep_head=True)
        family = get_entry(str(config["model"])).family
        spec = ClipSpec(num_frames=int(config["num_frames"]), grid_n=int(config["grid_n"]),
                        input_size=int(config["input_size"]), train=False, crop="center")
        with open_video(video, modality=str(config["modality"]), short_side=spec.decode_short_side()) as opened:
            pixels = load_clip(opened, spec, rng=None, uint8=True)  # (T, H, W, 3)
        x = as_model_input(pixels[None])
        frames = pixels.shape[0]
        shown = np.linspace(0, frames - 1, min(max_frames, frames)).round().astype(int)
        heat, predicted, kind = class_weights(model, x, family, frames)
        heat = _upsample(heat, tuple(pixels.shape[1:3]), smooth=family == "resnet")
        heat = np.stack([_normalise(h) for h in heat])
        name = os.path.basename(ckpt.rstrip("/")) or ckpt
        if not rows:
            rows.append(("frames", [pixels[i].numpy() for i in shown], None))
        rows.append((f"{name}\n{kind}", [heat[i] for i in shown], "jet"))
        rows.append((f"{name}\noverlay", [_overlay(pixels[i].numpy(), heat[i]) for i in shown], None))
        entry: dict[str, Any] = {"checkpoint": ckpt, "model": config["model"], "predicted": predicted,
                                 "class_weight": kind}
        if family != "resnet":
            weights, prefix = collect_attention(model, x)
            grid = model.patch_embed.token_grid if family == "videomae" else (
                frames, *model.patch_embed.grid_size)
            maps = layer_maps(weights, prefix, grid)
            entry["layers"] = maps.round(6).tolist()
            layer_file = f"layers{'_compare' if which else ''}.png"
            _figure([("received", list(maps), "viridis")], os.path.join(out_dir, layer_file),
                    f"{name}: attention each patch receives, per layer", [f"layer {i}" for i in range(len(maps))])
            written.append(layer_file)
        if feature_maps_too and not which:
            fmaps = feature_maps(model, x)
            _figure([(n, [_normalise(c) for c in maps], "gray") for n, maps in fmaps.items()],
                    os.path.join(out_dir, "feature_maps.png"), f"{name}: first {FEATURE_CHANNELS} channels, frame 0")
            written.append("feature_maps.png")
        entry["class_weight_map"] = heat[shown].round(4).tolist()
        results["models"].append(entry)
    _figure(rows, os.path.join(out_dir, "class_weight.png"), "class-weight heatmaps (normalised per frame)")
    written.append("class_weight.png")
    atomic_write_text(os.path.join(out_dir, "attention.json"), json.dumps(results) + "\n")
    written.append("attention.json")
    return {"written": written, "predicted": [m["predicted"] for m in results["models"]]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="weights file, or a run folder (best.pth / encoder.pth)")
    p.add_argument("--video", required=True, help="video file or frame folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--compare", default="", help="a second checkpoint drawn under the first (e.g. baseline vs TIME)")
    p.add_argument("--feature-maps", action="store_true", help="ResNets: conv1 and each stage's first-conv maps")
    p.add_argument("--frames", type=int, default=8, help="frames shown")
    for flag, kind in (("--model", str), ("--num-frames", int), ("--input-size", int), ("--grid-n", int),
                       ("--modality", str), ("--temporal", str)):
        p.add_argument(flag, type=kind, default=None, help="override the checkpoint's config")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise UserError(f"--frames {args.frames} is < 1; show at least one frame")
    done = attention(args.checkpoint, args.video, args.out, compare=args.compare, feature_maps_too=args.feature_maps,
                     max_frames=args.frames, model=args.model, num_frames=args.num_frames,
                     input_size=args.input_size, grid_n=args.grid_n, modality=args.modality, temporal=args.temporal)
    print(f"wrote {', '.join(done['written'])} to {args.out} (predicted class: "
          f"{', '.join('none' if p is None else str(p) for p in done['predicted'])})")
    return 0


CLI = {"attention": (add_arguments, run)}
