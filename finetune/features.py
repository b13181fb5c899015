"""`timemae extract` and `timemae probe`: score an encoder without fine-tuning it.

``timemae extract --checkpoint CKPT --data SHARDS --out FILE.npz`` runs a classifier of the registry (any backbone)
over every video of the shards, ``--clips`` temporal clips spread over each video (centre crop), and saves one
feature vector per video: the mean over its clips of the model's pooled features before the head
(``forward_head(forward_features(x), pre_logits=True)``), or with ``--layer NAME`` the output of that submodule
(e.g. ``blocks.5`` of a ViT, ``layer3`` of a ResNet) pooled over everything but channels (``--pool mean|max``).
The file holds ``features`` (N, D) float32, ``labels`` (N,), ``keys`` (N,) and ``meta`` (JSON: checkpoint, layer,
pool, clips, model).

``timemae probe --train A.npz --val B.npz`` fits a linear probe (multinomial logistic regression on standardised
features, L-BFGS, L2 penalty) and a k-NN classifier (k = 20, cosine similarity, votes weighted by similarity) on the
training features and prints top-1 and mean class accuracy of both on the validation features.

``--checkpoint`` is a weights file (an encoder export, a pretraining or fine-tuning file of ours or of the official
releases, a timm / torchvision ImageNet file for the TSN backbones) or a run folder: a pretraining run's
``encoder.pth``, a fine-tuning run's ``best.pth``. The model's name, frames, size and grid come from the run's or the
file's config when it has one; flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

import numpy as np
import torch

from common.errors import UserError
from common.files import atomic_write
from common.memory import check_clips_fit

KNN_K = 20
PROBE_L2 = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Model


def resolve_checkpoint(checkpoint: str) -> tuple[str, dict[str, Any], dict | None]:
    """The weights file of ``checkpoint``, the config known for it (run folder: config.yaml; file: its config) and the
    file's contents when they had to be read for the config (a file; None for a run folder)."""
    from launch import config as config_lib
    from models.checkpoint import load_file

    path = checkpoint.rstrip("/")
    config: dict[str, Any] = {}
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.yaml")):
            config = config_lib.load_yaml(os.path.join(path, "config.yaml"))
        found = [os.path.join(path, n) for n in ("best.pth", "encoder.pth") if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise UserError(f"--checkpoint {checkpoint} holds neither best.pth (fine-tuning) nor encoder.pth "
                            "(pretraining); give a run folder that wrote one, or a weights file")
        return found[0], config, None
    if not os.path.isfile(path):
        raise UserError(f"--checkpoint {checkpoint} does not exist; give a run folder or a weights file")
    obj = load_file(path, allow=(argparse.Namespace,))
    if isinstance(obj.get("config"), dict):
        config = dict(obj["config"])
    return path, config, obj


def head_classes(obj: dict) -> int:
    """Outputs of the classifier head in a weights file's contents (``head.weight`` or ``fc.weight``), 0 without."""
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    for key in ("head.weight", "fc.weight"):
        if isinstance(obj.get(key), torch.Tensor) and obj[key].dim() == 2:
            return int(obj[key].shape[0])
    return 0


def load_model(checkpoint: str, overrides: dict[str, Any], *, keep_head: bool = False
               ) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The classifier with the checkpoint's weights, in eval mode; the config; the line the weights loader reported
    first. With ``keep_head`` a head stored in the file is loaded too (its class count is the file's); otherwise,
    and for files without one, the head is a fresh single output that nothing uses."""
    from models import build_classifier, get_entry

    path, config, contents = resolve_checkpoint(checkpoint)
    config.update({k: v for k, v in overrides.items() if v is not None})
    for key, default in (("model", "vit_base"), ("num_frames", 16), ("input_size", 224), ("grid_n", 2),
                         ("modality", "rgb"), ("temporal", "none")):
        config.setdefault(key, default)
    name = str(config["model"])
    family = get_entry(name).family
    options: dict[str, Any] = {}
    if family == "resnet" and config["temporal"] != "none":
        from finetune.build import parse_options

        options.update(temporal=config["temporal"], temporal_stages=tuple(config.get("temporal_stages") or ()) or None,
                       temporal_options=parse_options(tuple(config.get("temporal_options") or ())))
    if keep_head and contents is None:
        from models.checkpoint import load_file

        contents = load_file(path, allow=(argparse.Namespace,))
    classes = head_classes(contents) if keep_head else 0
    check_clips_fit(1, int(config["num_frames"]), int(config["input_size"]), batch_flag="")  # before the model's tables
    model = build_classifier(name, classes or 1, num_frames=int(config["num_frames"]),
                             img_size=int(config["input_size"]), **options)
    if family == "videomae":
        from models.videomae_weights import init_classifier_from

        report = init_classifier_from(model, path, reset_head=not classes)
    else:
        from models.tsn import init_tsn_from

        report = init_tsn_from(model, path, reset_head=not classes)
    model.eval()
    return model, config, report.splitlines()[0] if report else ""


def pooled(out: torch.Tensor, batch: int, pool: str) -> torch.Tensor:
    """A submodule's output as (batch, channels): tokens (B, L, D) have channels last, feature maps (B [x T], C, ...)
    channels second; frames folded into the batch are pooled with the rest."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() == 3:
        flat = out.reshape(batch, -1, out.shape[-1])
    elif out.dim() >= 4:
        flat = out.reshape(batch, -1, out.shape[1], *out.shape[2:]).movedim(2, -1).reshape(batch, -1, out.shape[1])
    else:
        flat = out.reshape(batch, -1, out.shape[-1])
    return flat.amax(dim=1) if pool == "max" else flat.mean(dim=1)


def extract(checkpoint: str, data: str, out: str, *, clips: int = 2, layer: str = "", pool: str = "mean",
            batch_size: int = 8, num_workers: int = 2, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Features of every video of ``data`` into ``out`` (.npz); returns a summary (videos, dim, seconds)."""
    import time

    from tqdm import tqdm

    from data.clip import ClipSpec, as_model_input
    from data.stream import ShardDataset, make_loader

    if clips < 1:
        raise UserError(f"--clips {clips} is < 1; use 1 or more temporal clips per video")
    if not out.endswith(".npz"):
        raise UserError(f"--out {out} must end in .npz (a numpy archive is written)")
    model, config, loaded = load_model(checkpoint, overrides)
    hooked: dict[str, torch.Tensor] = {}
    if layer:
        modules = dict(model.named_modules())
        if layer not in modules:
            shown = ", ".join(n for n in modules if n and n.count(".") <= 1)[:300]
            raise UserError(f"--layer {layer} is not a submodule of {config['model']}; some there are: {shown}")
        target = modules[layer]
        while isinstance(target, (torch.nn.Sequential, torch.nn.ModuleList)) and len(target):
            target = target[-1]  # a stage's output is its last block's (models may call the blocks one by one)
        target.register_forward_hook(lambda m, i, o: hooked.__setitem__("out", o))
    base = ClipSpec(num_frames=int(config["num_frames"]), grid_n=int(config["grid_n"]),
                    input_size=int(config["input_size"]), train=False, crop="center")
    sets = [ShardDataset(data, dataclasses.replace(base, view=(k, clips)), mode="exact", shuffle_buffer=0, rank=0,
                         world_size=1, output="uint8") for k in range(clips)]
    from launch.trainer import check_modality

    check_modality(sets[0].shards, str(config["modality"]), "--data")
    workers = min(num_workers, len(sets[0].shards))
    sums: dict[str, torch.Tensor] = {}
    labels: dict[str, int] = {}
    start = time.perf_counter()
    bar = tqdm(total=sets[0].num_samples * clips, unit="clip", disable=not progress, desc="extract")
    with torch.no_grad():
        for dataset in sets:
            for batch in make_loader(dataset, batch_size, workers):
                x = as_model_input(batch["clip"])
                feats = model.forward_head(model.forward_features(x), pre_logits=True)
                if layer:
                    feats = pooled(hooked["out"], x.shape[0], pool)
                for i, (shard, key) in enumerate(zip(batch["meta"]["shard"], batch["meta"]["key"], strict=True)):
                    vid = f"{shard}/{key}"
                    sums[vid] = sums.get(vid, 0) + feats[i].float()
                    labels[vid] = int(batch["label"][i])
                bar.update(x.shape[0])
    bar.close()
    if not sums:
        raise UserError(f"--data {data} gave no readable video; check the shards with `timemae check`")
    keys = sorted(sums)
    features = torch.stack([sums[k] / clips for k in keys]).numpy().astype(np.float32)
    meta = {"checkpoint": checkpoint, "model": config["model"], "layer": layer or "pre_logits",
            "pool": pool if layer else "model", "clips": clips, "weights": loaded}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write(out, lambda fh: np.savez(fh, features=features, labels=np.array([labels[k] for k in keys]),
                                          keys=np.array(keys), meta=np.array(json.dumps(meta))))
    return {"videos": len(keys), "dim": features.shape[1], "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------------------------
# Probes


def read_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; write it with `timemae extract`")
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["features"].astype(np.float64), f["labels"].astype(np.int64)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path} is not a features file of `timemae extract` ({err})") from None


def accuracies(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top-1 and mean per-class accuracy (over the classes present in ``labels``)."""
    per_class = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return {"top1": float((pred == labels).mean()), "mean_class_acc": float(np.mean(per_class))}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, *, l2: float = PROBE_L2,
                 steps: int = 200) -> np.ndarray:
    """Predicted classes of ``val_x`` from a multinomial logistic regression fitted on standardised training
    features (L-BFGS, mean cross-entropy + ``l2`` x squared weights)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std)
    y = torch.from_numpy(train_y)
    classes = int(max(train_y.max(), 0)) + 1
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (torch.from_numpy((val_x - mean) / std) @ w + b).argmax(1).numpy()


def knn(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Predicted classes of ``val_x``: the k training features most cosine-similar vote, weighted by similarity."""
    def unit(a: np.ndarray) -> np.ndarray:
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)

    sim = unit(val_x) @ unit(train_x).T  # (V, N)
    k = min(k, train_x.shape[0])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((val_x.shape[0], int(train_y.max()) + 1))
    for i in range(val_x.shape[0]):
        np.add.at(votes[i], train_y[top[i]], np.maximum(sim[i, top[i]], 0) + 1e-9)
    return votes.argmax(1)


def probe(train: str, val: str) -> dict[str, dict[str, float]]:
    """Linear and k-NN probe accuracies of the features in ``val`` after fitting on ``train``."""
    train_x, train_y = read_features(train)
    val_x, val_y = read_features(val)
    if train_x.shape[1] != val_x.shape[1]:
        raise UserError(f"{train} has {train_x.shape[1]}-d features and {val} {val_x.shape[1]}-d; extract both with "
                        "the same checkpoint and --layer")
    if len(np.unique(train_y)) < 2:
        raise UserError(f"{train} holds one class only; a probe needs at least two")
    chance = float(np.bincount(val_y).max() / len(val_y))
    return {"linear": accuracies(linear_probe(train_x, train_y, val_x), val_y),
            "knn": accuracies(knn(train_x, train_y, val_x), val_y),
            "chance": {"top1": chance, "mean_class_acc": 1.0 / len(np.unique(val_y))}}


# ---------------------------------------------------------------------------------------------------------------------
# Commands


def _extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="weights file, or a run folder (best.pth / encoder.pth)")
    p.add_argument("--data", required=True, help="shard folder, tar or brace pattern")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--clips", type=int, default=2, help="temporal clips per video, features averaged (default 2)")
    p.add_argument("--layer", default="", help="submodule whose output is the feature, e.g. blocks.5 or layer3 "
                                               "(default: the pooled features before the head)")
    p.add_argument("--pool", choices=("mean", "max"), default="mean", help="pooling of a --layer output")
    p.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    p.add_argument("--num-workers", type=int, default=2, help="data-loader workers")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag, kind in (("--model", str), ("--num-frames", int), ("--input-size", int), ("--grid-n", int),
                       ("--modality", str), ("--temporal", str)):
        p.add_argument(flag, type=kind, default=None, help="override the checkpoint's config")


def _extract_run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch-size must be >= 1 and --num-workers >= 0")
    summary = extract(args.checkpoint, args.data, args.out, clips=args.clips, layer=args.layer, pool=args.pool,
                      batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress,
                      model=args.model, num_frames=args.num_frames, input_size=args.input_size, grid_n=args.grid_n,
                      modality=args.modality, temporal=args.temporal)
    print(f"wrote {summary['videos']} videos x {summary['dim']} features to {args.out} ({summary['seconds']:.1f} s)")
    return 0


def _probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="features of the training videos (timemae extract)")
    p.add_argument("--val", required=True, help="features of the evaluation videos")
    p.add_argument("--out", default="", help="also write the accuracies as JSON here")


def _probe_run(args: argparse.Namespace) -> int:
    result = probe(args.train, args.val)
    for name in ("linear", "knn", "chance"):
        r = result[name]
        label = {"linear": "linear probe", "knn": f"k-NN (k={KNN_K})", "chance": "chance"}[name]
        print(f"{label:<14} top-1 {r['top1']:.4f}  mean class acc {r['mean_class_acc']:.4f}")
    if args.out:
        from common.files import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


CLI = {"extract": (_extract_arguments, _extract_run), "probe": (_probe_arguments, _probe_run)}
