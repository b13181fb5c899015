"""`timemae preview`: the TIME clip of one video as PNG frames plus a contact sheet, to see what the model sees.

Evaluation sampling (segment centres), centre crop, no random augmentation, no normalisation in the output.
"""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import torch
from PIL import Image

from common.errors import UserError
from common.memory import check_clips_fit
from data.clip import ClipSpec, load_clip
from data.decode import open_video


def contact_sheet(frames: torch.Tensor, columns: int | None = None, gap: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8 -> one image with the T frames in rows of ``columns`` (default ~sqrt(T)), white gaps."""
    t, h, w, _ = frames.shape
    columns = columns or math.ceil(math.sqrt(t))
    rows = math.ceil(t / columns)
    sheet = np.full((rows * h + (rows + 1) * gap, columns * w + (columns + 1) * gap, 3), 255, dtype=np.uint8)
    for k in range(t):
        r, c = divmod(k, columns)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        sheet[y : y + h, x : x + w] = frames[k].numpy()
    return sheet


def write_preview(
    video_path: str,
    out_dir: str,
    *,
    grid_n: int = 2,
    arrangement: str = "spatial",
    num_frames: int = 16,
    input_size: int = 224,
    modality: str = "rgb",
) -> list[str]:
    """Write ``out_dir/frame_XX.png`` for each TIME frame and ``out_dir/sheet.png``; returns the paths written."""
    spec = ClipSpec(
        num_frames=num_frames, grid_n=grid_n, input_size=input_size, arrangement=arrangement, train=False, crop="center"
    )
    if not os.path.exists(video_path):
        raise UserError(f"--video {video_path} does not exist; give a video file or a frame folder")
    check_clips_fit(1, num_frames, input_size, batch_flag="", bytes_per_value=1, copies=3)  # decoded, clip, sheet
    with open_video(video_path, modality=modality, short_side=spec.decode_short_side()) as video:
        frames = load_clip(video, spec, rng=None, uint8=True)  # (T*, H*, W*, 3)
    os.makedirs(out_dir, exist_ok=True)
    digits = max(2, len(str(num_frames - 1)))
    paths = []
    for t in range(num_frames):
        path = os.path.join(out_dir, f"frame_{t:0{digits}d}.png")
        Image.fromarray(frames[t].numpy()).save(path)
        paths.append(path)
    sheet = os.path.join(out_dir, "sheet.png")
    Image.fromarray(contact_sheet(frames)).save(sheet)
    return [*paths, sheet]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", required=True, help="video file, JPEG/PNG frame folder, depth PNG folder or .bin file")
    p.add_argument("--grid-n", type=int, default=2, help="TIME grid side N (1 = no grid)")
    p.add_argument("--arrangement", choices=["spatial", "temporal"], default="spatial", help="TIME block arrangement")
    p.add_argument("--num-frames", type=int, default=16, help="T*, output frames")
    p.add_argument("--input-size", type=int, default=224, help="H* = W*, output resolution")
    p.add_argument("--modality", choices=["rgb", "depth"], default="rgb", help="how to read the video")
    p.add_argument("--out", required=True, help="output folder for frame_XX.png and sheet.png")


def run(args: argparse.Namespace) -> int:
    paths = write_preview(
        args.video,
        args.out,
        grid_n=args.grid_n,
        arrangement=args.arrangement,
        num_frames=args.num_frames,
        input_size=args.input_size,
        modality=args.modality,
    )
    print(f"wrote {len(paths) - 1} TIME frames and the contact sheet {paths[-1]}")
    return 0


CLI = {"preview": (add_arguments, run)}
