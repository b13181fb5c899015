"""`timemae reconstruct`: reconstructions of one video by a pretrained VideoMAE, over grid sizes and mask ratios.

For each TIME grid side N and mask ratio, the video's TIME clip is masked with a tube mask (seeded), the model fills
it in, and ``DIR/recon_n{N}_mask{ratio}.png`` shows the original, the masked input, the target and the prediction in
norm-pix space, the reconstruction and the per-patch error (`pretrain.visualize.reconstruction_panel`: the honest
view by default, ``--view oracle`` labelled). ``DIR/errors.csv`` has one row per setting: the mean masked-patch error
in the loss's target space, and the same for predicting zeros (about 1 under norm-pix), so a reader can tell a model
that predicts from one that does not.

The model comes from ``--checkpoint``: a pretraining run folder (its newest complete checkpoint and its config), a
checkpoint folder ``step_*``, or a pretraining weights file (ours, `models.videomae_weights.save_pretrain_weights`,
or the official release's). An encoder export has no decoder and cannot reconstruct: that is a one-line error.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from typing import Any

import torch

from common.errors import UserError
from common.memory import check_clips_fit

FILE_KINDS = ("official_pretrain", "timemae_checkpoint")


def load_pretrain_model(checkpoint: str, *, model: str | None = None, input_size: int | None = None,
                        num_frames: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A `models.videomae.VideoMAEPretrain` with the weights of ``checkpoint``, in eval mode, and the config it was
    trained with as far as the checkpoint says (``model``, ``input_size``, ``num_frames`` given here win; defaults
    vit_base, 224, 16).

    Raises:
        UserError: a path that does not exist, a run folder without a complete checkpoint, a file without a decoder,
            weights that do not fit the model.
    """
    from launch import config as config_lib
    from launch.checkpoint import CheckpointManager
    from models import build_pretrain

    config: dict[str, Any] = {}
    state: dict[str, torch.Tensor] | None = None
    path = checkpoint.rstrip("/")
    if os.path.isdir(path):
        folder: str | None = path
        if not os.path.isfile(os.path.join(path, "COMPLETE")):  # a run folder
            if os.path.isfile(os.path.join(path, "config.yaml")):
                config = config_lib.load_yaml(os.path.join(path, "config.yaml"))
            folder = CheckpointManager(path, rank=0).find("auto")
            if folder is None:
                raise UserError(f"--checkpoint {checkpoint} holds no complete checkpoint (checkpoints/step_*/"
                                "COMPLETE); give a pretraining run folder that saved one, or a weights file")
        config = {**(CheckpointManager.read_info(folder).get("config") or {}), **config}
        state = CheckpointManager.consolidated_weights(folder)
    elif os.path.isfile(path):
        from models.checkpoint import load_file
        from models.videomae_weights import SOURCE_NAMES, detect_source

        obj = load_file(path, allow=(argparse.Namespace,))
        named = obj.get("config", {}).get("model") if isinstance(obj.get("config"), dict) else None
        if named is not None and _family(str(named)) not in (None, "videomae"):
            raise UserError(f"--checkpoint {checkpoint} holds a {named}: reconstructions need a VideoMAE pretraining "
                            "model (encoder and decoder); use `timemae attention` for other backbones")
        kind, _ = detect_source(obj, path)
        if kind not in FILE_KINDS:
            raise UserError(f"--checkpoint {checkpoint} is a {SOURCE_NAMES[kind]}: it has no decoder, so it cannot "
                            "reconstruct; give a pretraining run folder or pretraining weights")
        if isinstance(obj.get("config"), dict):
            config = dict(obj["config"])
    else:
        raise UserError(f"--checkpoint {checkpoint} does not exist; give a pretraining run folder or weights file")
    chosen = {"model": model, "input_size": input_size, "num_frames": num_frames}
    config.update({k: v for k, v in chosen.items() if v is not None})
    config.setdefault("model", "vit_base")
    config.setdefault("input_size", 224)
    config.setdefault("num_frames", 16)
    name = str(config["model"])
    check_clips_fit(1, int(config["num_frames"]), int(config["input_size"]), batch_flag="")  # before the model's tables
    net = build_pretrain(name, img_size=int(config["input_size"]), num_frames=int(config["num_frames"]))
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"--checkpoint {checkpoint} does not fit a {name} pretraining model (missing "
                            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); is it a pretraining run?")
    else:
        from models.videomae_weights import init_pretrain_from

        init_pretrain_from(net, path)
    net.eval()
    return net, config


def _family(name: str) -> str | None:
    """The registry family of a model name (None for a name the registry does not know)."""
    from models import get_entry

    try:
        return get_entry(name).family
    except (UserError, KeyError):
        return None


def reconstruct(checkpoint: str, video: str, out_dir: str, *, grid_ns: list[int], mask_ratios: list[float],
                view: str = "honest", seed: int = 0, modality: str | None = None, arrangement: str = "spatial",
                max_columns: int = 8, **model_flags: Any) -> list[dict[str, Any]]:
    """Write one panel per (N, mask ratio) and ``errors.csv``; returns the CSV's rows."""
    from data.clip import ClipSpec, as_model_input, load_clip
    from data.decode import open_video
    from launch.checkpoint import check_writable
    from pretrain.masking import tube_mask, validate_mask_ratio
    from pretrain.visualize import reconstruction_panel

    if not os.path.exists(video):
        raise UserError(f"--video {video} does not exist; give a video file or a frame folder")
    check_writable(out_dir, "--out")
    model, config = load_pretrain_model(checkpoint, **model_flags)
    grid = model.token_grid
    for ratio in mask_ratios:
        validate_mask_ratio(ratio, grid, "tube")
    norm_pix = bool(config.get("norm_pix_loss", True))
    modality = modality or str(config.get("modality", "rgb"))
    size, frames = int(config["input_size"]), int(config["num_frames"])
    rows = []
    for n in grid_ns:
        spec = ClipSpec(num_frames=frames, grid_n=n, input_size=size, arrangement=arrangement, train=False,
                        crop="center")
        with open_video(video, modality=modality, short_side=spec.decode_short_side()) as opened:
            x = as_model_input(load_clip(opened, spec, rng=None, uint8=True)[None])  # (1, 3, T, H, W)
        for ratio in mask_ratios:
            mask = tube_mask(1, grid, ratio, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                pred = model(x, mask)
                zeros = torch.zeros_like(pred)
            panel = reconstruction_panel(model, x, mask, pred, normalize_target=norm_pix, view=view,
                                         max_columns=max_columns, error_row=True)
            baseline = reconstruction_panel(model, x, mask, zeros, normalize_target=norm_pix, labels=False)
            name = f"recon_n{n}_mask{ratio:g}.png"
            _save_png(panel.image, os.path.join(out_dir, name))
            rows.append({"grid_n": n, "mask_ratio": ratio, "masked_error": round(panel.masked_error, 6),
                         "zero_prediction_error": round(baseline.masked_error, 6),
                         "target": "norm-pix" if norm_pix else "pixels", "view": view if norm_pix else "pixels",
                         "image": name})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    from common.files import atomic_write_text

    atomic_write_text(os.path.join(out_dir, "errors.csv"), buf.getvalue())
    return rows


def _save_png(image, path: str) -> None:
    from pretrain.engine import save_png

    save_png(image, path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="pretraining run folder, checkpoint folder step_*, or weights "
                                                       "file (ours or the official release's pretraining file)")
    p.add_argument("--video", required=True, help="video file or frame folder")
    p.add_argument("--out", required=True, help="output folder for the panels and errors.csv")
    p.add_argument("--grid-n", type=int, nargs="+", default=[2], help="TIME grid sides N, e.g. 1 2 4 7 14")
    p.add_argument("--mask-ratio", type=float, nargs="+", default=[0.75], help="mask ratios, e.g. 0.5 0.75 0.9")
    p.add_argument("--view", choices=("honest", "oracle"), default="honest",
                   help="honest: hidden patches' mean/std from visible neighbours; oracle: from the hidden patch")
    p.add_argument("--arrangement", choices=("spatial", "temporal"), default="spatial", help="TIME block arrangement")
    p.add_argument("--modality", choices=("rgb", "depth"), default=None, help="how to read the video (default: the "
                                                                              "run's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the tube mask")
    p.add_argument("--frames", type=int, default=8, help="frames shown per panel")
    p.add_argument("--model", default=None, help="model size, for a weights file without a config (default vit_base)")
    p.add_argument("--input-size", type=int, default=None, help="input size, for a weights file without a config")
    p.add_argument("--num-frames", type=int, default=None, help="frames, for a weights file without a config")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise UserError(f"--frames {args.frames} is < 1; show at least one frame")
    rows = reconstruct(args.checkpoint, args.video, args.out, grid_ns=args.grid_n, mask_ratios=args.mask_ratio,
                       view=args.view, seed=args.seed, modality=args.modality, arrangement=args.arrangement,
                       max_columns=args.frames, model=args.model, input_size=args.input_size,
                       num_frames=args.num_frames)
    for row in rows:
        print(f"N={row['grid_n']} mask {row['mask_ratio']:g}: masked error {row['masked_error']:.4f} "
              f"(predicting zeros: {row['zero_prediction_error']:.4f}) -> {row['image']}")
    print(f"wrote {len(rows)} panels and errors.csv to {args.out}")
    return 0


CLI = {"reconstruct": (add_arguments, run)}
