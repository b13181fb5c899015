"""TSN baselines: timm's image ResNets and ViT-B/16 run per frame, with the TSN consensus (mean of frame logits).

A clip ``x: (B, 3, T, H, W)`` is folded into a batch of ``B * T`` images, each image goes through the 2D backbone,
global pooling, dropout and the classifier, and the ``T`` frame logits of a clip are averaged (Wang et al., "Temporal
Segment Networks", ECCV 2016; the head the STW, TRM and ATR papers use).

Temporal modules (``models.temporal``: ``tsm``, ``stw``, ``trm``, ``atr``) go into the ResNet's residual blocks at the
point each declares (``insertion``): ``before_conv1`` (start of the residual branch, the shortcut takes the unmodified
input) or ``after_last_bn`` (after ``bn3`` / ``bn2``, before the shortcut is added). Each is registered under its
block as ``layer{s}.{i}.temporal``; every other key is timm's / torchvision's, so ImageNet ResNet weights from either
load with only the temporal modules missing.

Weights from other code bases go through one filter per source (`TSN_FILTERS`), and `init_tsn_from` loads a file
with the exact check and report of ``models.checkpoint``:

* ``imagenet_resnet``: a timm or torchvision ResNet state_dict (the two use the same key names);
* ``imagenet_vit``: a timm ViT state_dict; ``pos_embed`` is resized to the model's patch grid;
* ``timemae_best``: our fine-tuning ``best.pth`` of one of these models.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from common.errors import UserError
from models.checkpoint import KeyMapping, grouped, load_file, load_mapping, prefix_label, state_dict_of
from models.temporal import TEMPORAL_MODULES, build_temporal

RESNET_STAGES = (1, 2, 3, 4)
OPTIONS = ("temporal", "temporal_stages", "temporal_options", "dropout", "timm_kwargs")
# timm's `vit_base_patch16_224` architecture; everything else is VisionTransformer's default.
VIT_B16_ARGS = {"patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}
# Spec (stw.md, "Head"): the TSN classifier starts near zero, so the first steps do not undo the backbone.
FC_INIT_STD = 0.001
VIT_NO_TEMPORAL = "temporal modules insert into ResNet blocks; --model vit_b16 takes none (use --temporal none)"


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _init_fc(fc: nn.Module) -> None:
    if isinstance(fc, nn.Linear):
        nn.init.normal_(fc.weight, std=FC_INIT_STD)
        nn.init.zeros_(fc.bias)


def _check_clip(x: Tensor) -> int:
    if x.dim() != 5:
        raise ValueError(f"input must be a clip (B, C, T, H, W); got shape {tuple(x.shape)}")
    return x.shape[2]


def tsn_consensus(logits: Tensor, num_frames: int) -> Tensor:
    """``(B * T, K)`` frame outputs, frames of a clip adjacent -> ``(B, K)``, their mean over the ``T`` frames."""
    if logits.shape[0] % num_frames:
        raise ValueError(f"{logits.shape[0]} frame outputs are not a whole number of clips of {num_frames} frames")
    return rearrange(logits, "(b t) k -> b t k", t=num_frames).mean(dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# Temporal modules in ResNet blocks


def _out_size(size: tuple[int, int], m: nn.Module) -> tuple[int, int]:
    """Spatial size after ``m`` for convolutions and pools; every other layer keeps it."""
    if not isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return size
    kernel, stride = _pair(m.kernel_size), _pair(m.stride)
    dilation = _pair(getattr(m, "dilation", 1))
    padding = m.padding
    if padding == "same":
        return size
    padding = (0, 0) if padding == "valid" else _pair(padding)
    ceil = getattr(m, "ceil_mode", False)
    out = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True):
        span = n + 2 * p - d * (k - 1) - 1
        out.append((-(-span // s) if ceil else span // s) + 1)
    return out[0], out[1]


def _residual_out_size(block: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    # timm registers a block's convolutions and anti-aliasing pool in forward order, and `downsample` is a Sequential,
    # so the direct children give the residual branch alone.
    for child in block.children():
        size = _out_size(size, child)
    return size


def _last_bn(block: nn.Module) -> nn.Module:
    """``bn3`` of a Bottleneck, ``bn2`` of a BasicBlock: the last norm of the residual branch."""
    return block.bn3 if hasattr(block, "bn3") else block.bn2


# Hooks are module-level functions bound with functools.partial, not closures: a deep copy of the model (an EMA copy)
# then rebinds them to the copied temporal module through deepcopy's memo.
def _before_conv1(temporal: nn.Module, conv: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (temporal(args[0]), *args[1:])


def _after_last_bn(temporal: nn.Module, bn: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
    # timm adds the shortcut in place onto what this returns (``x += shortcut``), so a module placed here must not
    # end in an op that saves its own output for backward.
    return temporal(out)


class TSNResNet(nn.Module):
    """TSN on a timm ResNet: per-frame backbone, global average pool, dropout, ``fc``, mean of the frame logits.

    State dict: timm's / torchvision's ResNet keys (``conv1.*``, ``bn1.*``, ``layer{s}.{i}.*``, ``fc.*``) plus
    ``layer{s}.{i}.temporal.*`` for each inserted temporal module.

    Temporal modules are attached with forward hooks (a pre-hook on the block's ``conv1``, or a hook on its last BN)
    rather than by wrapping or replacing layers: wrapping would rename ``conv1.weight`` / ``bn3.*`` and break loading
    ImageNet weights, and replacing the block's forward would tie us to one timm version's block code. In timm's
    blocks the shortcut is taken before ``conv1`` runs and added after the last BN, which is exactly TSM's residual
    position and ATR's position.

    Args:
        arch: timm ResNet name (``resnet18``, ``resnet50``, ``resnet101``; any timm ResNet with a one-conv stem).
        num_classes: classifier outputs (0: no ``fc``; the head returns pooled features).
        num_frames: frames per clip T; fixed when temporal modules are inserted, any T otherwise.
        img_size: input ``H, W`` (sizes the temporal modules that depend on it, e.g. cTRM).
        temporal: a name of ``models.temporal.TEMPORAL_MODULES``, or None for plain TSN.
        temporal_stages: the ResNet stages (torchvision's layer1..layer4 = 1..4) that get a module in every block;
            None = the module's ``default_stages``.
        temporal_options: keyword options of the temporal module's constructor.
        dropout: dropout before ``fc`` (TSN / TSM default 0.5).
        drop_path: timm's ``drop_path_rate`` (stochastic depth of the residual branches, temporal modules included).
        timm_kwargs: further keyword arguments of ``timm.create_model`` (e.g. ``zero_init_last``).
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        num_frames: int,
        img_size: int | tuple[int, int] = 224,
        *,
        temporal: str | None = None,
        temporal_stages: tuple[int, ...] | None = None,
        temporal_options: dict[str, Any] | None = None,
        dropout: float = 0.5,
        drop_path: float = 0.0,
        timm_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        kwargs = _timm_kwargs(timm_kwargs, ("num_classes", "global_pool", "drop_rate", "drop_path_rate"))
        # No pooling and no fc in timm's model: the TSN head below pools, drops out and classifies per frame.
        net = timm.create_model(
            arch, pretrained=False, num_classes=0, global_pool="", drop_path_rate=drop_path, **kwargs
        )
        if not isinstance(net, ResNet) or not isinstance(net.conv1, nn.Conv2d):
            raise UserError(f"{arch} is not a timm ResNet with a one-conv stem; use resnet18, resnet50 or resnet101")
        self.arch = arch
        self.num_classes = num_classes
        self.num_frames = int(num_frames)
        self.img_size = _pair(img_size)
        self.num_features = net.num_features
        self.grad_checkpointing = False
        # timm's modules themselves, so that the key names stay timm's / torchvision's (no wrapper prefix).
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.drop = nn.Dropout(dropout)
        self.fc = self._new_fc(num_classes)
        self.temporal_name, self.temporal_stages = self._insert(temporal, temporal_stages, temporal_options or {})

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def _new_fc(self, num_classes: int) -> nn.Module:
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        _init_fc(fc)
        return fc

    def _insert(
        self, name: str | None, stages: tuple[int, ...] | None, options: dict[str, Any]
    ) -> tuple[str | None, tuple[int, ...]]:
        name = None if name in (None, "none") else name
        if name is None:
            if stages is not None or options:
                raise UserError("temporal stages / options are given without a temporal module; pass --temporal NAME")
            return None, ()
        if name not in TEMPORAL_MODULES:
            raise UserError(f"unknown temporal module {name!r}; choose one of {', '.join(TEMPORAL_MODULES)} or none")
        cls = TEMPORAL_MODULES[name]
        stages = tuple(cls.default_stages if stages is None else stages)
        if not stages or len(set(stages)) != len(stages) or not set(stages) <= set(RESNET_STAGES):
            raise UserError(f"temporal stages {stages} must be distinct ResNet stages among {RESNET_STAGES}")
        if cls.insertion not in ("before_conv1", "after_last_bn"):
            raise ValueError(f"temporal module {name!r} declares an unknown insertion {cls.insertion!r}")
        size = _out_size(_out_size(self.img_size, self.conv1), self.maxpool)  # (H, W) entering layer1
        for s, stage in zip(RESNET_STAGES, self.stages, strict=True):
            for block in stage:
                out = _residual_out_size(block, size)
                if s in stages:
                    block.temporal = self._attach(block, name, cls.insertion, size, out, options)
                size = out
        return name, tuple(sorted(stages))

    def _attach(
        self, block: nn.Module, name: str, insertion: str, size_in: tuple[int, int], size_out: tuple[int, int],
        options: dict[str, Any],
    ) -> nn.Module:
        """Build temporal module ``name`` for ``block`` and hook it in; ``size_in`` / ``size_out``: the block's
        input and residual-branch output (H, W) at ``img_size``."""
        if insertion == "before_conv1":
            channels, size, layer = block.conv1.in_channels, size_in, block.conv1
        else:
            layer = _last_bn(block)
            channels, size = layer.num_features, size_out
        module = build_temporal(name, channels, self.num_frames, spatial_size=size, **options)
        if insertion == "before_conv1":
            layer.register_forward_pre_hook(functools.partial(_before_conv1, module))
        else:
            layer.register_forward_hook(functools.partial(_after_last_bn, module))
        return module

    @property
    def temporal_paths(self) -> list[str]:
        """Module names of the inserted temporal modules, e.g. ``layer3.0.temporal``."""
        return [name for name, _ in self.named_modules() if name.endswith(".temporal")]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block in the backward pass.

        BatchNorm's running statistics are updated again during the recomputation (as with timm's checkpointing).
        """
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: (B, 3, T, H, W)`` -> feature maps ``(B * T, C, h, w)``, the frames of a clip adjacent."""
        t = _check_clip(x)
        if self.temporal_name is not None and t != self.num_frames:
            raise ValueError(
                f"the clip has {t} frames but the temporal modules were built for {self.num_frames}; "
                "build the model with num_frames equal to the clip length"
            )
        x = rearrange(x, "b c t h w -> (b t) c h w")  # frames folded into the batch, row b * T + t
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            for block in stage:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False, num_frames: int | None = None) -> Tensor:
        """``x: (B * T, C, h, w)`` -> logits ``(B, num_classes)`` averaged over T, or with ``pre_logits`` the
        ``(B, C)`` mean of the per-frame pooled features. ``num_frames`` defaults to the model's."""
        t = num_frames or self.num_frames
        x = x.mean(dim=(2, 3))  # (B*T, C): global average pool
        if pre_logits:
            return tsn_consensus(x, t)
        return tsn_consensus(self.fc(self.drop(x)), t)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, 3, T, H, W)`` -> ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x), num_frames=x.shape[2])

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh ``fc`` for ``num_classes`` classes (0: identity), initialised like the original one."""
        self.num_classes = num_classes
        self.fc = self._new_fc(num_classes).to(self.conv1.weight.device)

    def no_weight_decay(self) -> set[str]:
        """No named exemptions: biases and norms (1-D tensors) are exempt by shape in the optimizer groups."""
        return set()

    @property
    def num_layer_ids(self) -> int:
        """Layer ids for layer-wise lr decay: stem, the four stages, ``fc``."""
        return len(RESNET_STAGES) + 2

    def get_layer_id(self, name: str) -> int:
        """Stem 0, ``layer{s}.*`` (their temporal modules included) s, ``fc`` 5."""
        root = name.split(".")[0]
        if root.startswith("layer") and root[len("layer") :].isdigit():
            return int(root[len("layer") :])
        if root in ("conv1", "bn1"):
            return 0
        return self.num_layer_ids - 1

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's grouping hook (``timm.optim.param_groups_layer_decay``): the same ids as `get_layer_id`."""
        return self.get_layer_id

    def lr_scales(self) -> dict[str, float]:
        """Full parameter name -> lr multiplier, as the temporal modules ask (e.g. TRM's offset predictor)."""
        scales: dict[str, float] = {}
        for path in self.temporal_paths:
            module = self.get_submodule(path)
            if hasattr(module, "lr_scales"):
                scales.update({f"{path}.{k}": float(v) for k, v in module.lr_scales().items()})
        return scales


# ---------------------------------------------------------------------------------------------------------------------
# ViT


class TSNViT(VisionTransformer):
    """TSN on timm's image ViT-B/16: per-frame class-token features, dropout, ``head``, mean of the frame logits.

    A subclass of timm's `VisionTransformer` built with ``vit_base_patch16_224``'s arguments, so its state_dict has
    timm's key names and an ImageNet ViT loads into it. timm's own ``head`` is the per-frame classifier and its
    ``head_drop`` (``drop_rate``) the dropout before it; the head is re-initialised N(0, 0.001) like the ResNet's.

    Args:
        num_classes: classifier outputs (0: no head).
        num_frames: frames per clip T (any T is accepted; the head averages over the clip's own T).
        img_size: input ``H, W``; the learned ``pos_embed`` has this grid (`filter_imagenet_vit` resizes a file's).
        dropout: dropout before ``head``.
        drop_path: stochastic depth rate (linear over the blocks, timm's ``drop_path_rate``).
        timm_kwargs: overrides of timm's `VisionTransformer` arguments (e.g. ``depth=1`` in tests).
    """

    def __init__(
        self,
        num_classes: int,
        num_frames: int,
        img_size: int | tuple[int, int] = 224,
        *,
        dropout: float = 0.5,
        drop_path: float = 0.0,
        timm_kwargs: dict[str, Any] | None = None,
    ):
        kwargs = _timm_kwargs(timm_kwargs, ("num_classes", "img_size", "drop_rate", "drop_path_rate"))
        super().__init__(
            img_size=_pair(img_size), num_classes=num_classes, drop_rate=dropout, drop_path_rate=drop_path,
            **{**VIT_B16_ARGS, **kwargs},
        )  # fmt: skip
        self.arch = "vit_b16"
        self.temporal_name = None
        self.num_frames = int(num_frames)
        self.img_size = _pair(img_size)
        _init_fc(self.head)

    @property
    def num_layer_ids(self) -> int:
        """Layer ids for layer-wise lr decay: embeddings, one per block, everything after (depth + 2)."""
        return len(self.blocks) + 2

    @property
    def temporal_paths(self) -> list[str]:
        return []

    def forward_features(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``x: (B, 3, T, H, W)`` -> tokens ``(B * T, L, D)``, the frames of a clip adjacent."""
        _check_clip(x)
        return super().forward_features(rearrange(x, "b c t h w -> (b t) c h w"))

    def forward_head(self, x: Tensor, pre_logits: bool = False, num_frames: int | None = None) -> Tensor:
        """``x: (B * T, L, D)`` -> logits ``(B, num_classes)`` averaged over T, or with ``pre_logits`` the
        ``(B, D)`` mean of the per-frame pooled features. ``num_frames`` defaults to the model's."""
        t = num_frames or self.num_frames
        x = self.fc_norm(self.pool(x))  # (B*T, D)
        if pre_logits:
            return tsn_consensus(x, t)
        return tsn_consensus(self.head(self.head_drop(x)), t)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        """``x: (B, 3, T, H, W)`` -> ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x), num_frames=x.shape[2])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh ``head`` for ``num_classes`` classes (0: identity), initialised like the original one."""
        super().reset_classifier(num_classes, global_pool)
        _init_fc(self.head)

    def get_layer_id(self, name: str) -> int:
        """Embeddings (``cls_token``, ``pos_embed``, ``patch_embed``, ``norm_pre``) 0, block i -> i + 1, rest last."""
        root = name.split(".")[0]
        if root in ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"):
            return 0
        if root == "blocks":
            return int(name.split(".")[1]) + 1
        return self.num_layer_ids - 1

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:  # type: ignore[override]
        """timm's grouping hook (``timm.optim.param_groups_layer_decay``): the same ids as `get_layer_id`."""
        return self.get_layer_id

    def lr_scales(self) -> dict[str, float]:
        return {}


# ---------------------------------------------------------------------------------------------------------------------
# Factories: one signature, name -> model


def _timm_kwargs(kwargs: dict[str, Any] | None, reserved: tuple[str, ...]) -> dict[str, Any]:
    kwargs = dict(kwargs or {})
    taken = [k for k in reserved + ("pretrained",) if k in kwargs]
    if taken:
        raise UserError(f"timm_kwargs may not set {', '.join(taken)}; use the factory's own arguments")
    return kwargs


def _check_options(options: dict[str, Any], factory: str) -> None:
    unknown = [k for k in options if k not in OPTIONS]
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for model {factory}; the options are {', '.join(OPTIONS)}")


def _resnet(arch: str, num_classes: int, num_frames: int, img_size: int | tuple[int, int], drop_path: float,
            options: dict[str, Any]) -> TSNResNet:
    _check_options(options, arch)
    return TSNResNet(arch, num_classes, num_frames, img_size, drop_path=drop_path, **options)


def resnet18(num_classes: int, num_frames: int, img_size: int | tuple[int, int], drop_path: float = 0.0,
             **options: Any) -> TSNResNet:
    """TSN ResNet-18; ``options``: temporal, temporal_stages, temporal_options, dropout, timm_kwargs."""
    return _resnet("resnet18", num_classes, num_frames, img_size, drop_path, options)


def resnet50(num_classes: int, num_frames: int, img_size: int | tuple[int, int], drop_path: float = 0.0,
             **options: Any) -> TSNResNet:
    """TSN ResNet-50; ``options``: temporal, temporal_stages, temporal_options, dropout, timm_kwargs."""
    return _resnet("resnet50", num_classes, num_frames, img_size, drop_path, options)


def resnet101(num_classes: int, num_frames: int, img_size: int | tuple[int, int], drop_path: float = 0.0,
              **options: Any) -> TSNResNet:
    """TSN ResNet-101; ``options``: temporal, temporal_stages, temporal_options, dropout, timm_kwargs."""
    return _resnet("resnet101", num_classes, num_frames, img_size, drop_path, options)


def vit_b16(num_classes: int, num_frames: int, img_size: int | tuple[int, int], drop_path: float = 0.0,
            **options: Any) -> TSNViT:
    """TSN ViT-B/16; ``options``: dropout, timm_kwargs (temporal must be None / "none", with no stages or options)."""
    _check_options(options, "vit_b16")
    temporal = options.pop("temporal", None)
    stages, temporal_options = options.pop("temporal_stages", None), options.pop("temporal_options", None)
    if temporal not in (None, "none") or stages is not None or temporal_options:
        raise UserError(VIT_NO_TEMPORAL)
    return TSNViT(num_classes, num_frames, img_size, drop_path=drop_path, **options)


TSN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "vit_b16": vit_b16,
}


# ---------------------------------------------------------------------------------------------------------------------
# One checkpoint filter per weight source


TSN_SOURCE_NAMES = {
    "imagenet_resnet": "ImageNet ResNet state_dict (timm / torchvision)",
    "imagenet_vit": "ImageNet ViT state_dict (timm)",
    "timemae_best": "timemae fine-tuned TSN weights (best.pth)",
}
_TEMPORAL_FRESH = "temporal modules start as their identity / shift"


@dataclass
class TSNKeyMapping(KeyMapping):
    """`KeyMapping` plus ``resized``: ``(key, file shape, model shape, how)`` for tensors resampled to fit."""

    resized: list[tuple[str, tuple[int, ...], tuple[int, ...], str]] = field(default_factory=list)


def _head(m: TSNKeyMapping, model: nn.Module, prefix: str, reset_head: bool) -> None:
    """Keep, drop (``reset_head``) or refuse the file's classifier ``prefix*``."""
    target = model.state_dict()
    key = prefix + "weight"
    if key not in target:
        m.drop(prefix, "the model has no classifier (num_classes 0)")
        return
    if key not in m.state:
        m.fresh.append((prefix, "the file has no classifier"))
        return
    if reset_head:
        m.drop(prefix, "--reset-head: a new classifier is trained")
        m.fresh.append((prefix, "new classifier (--reset-head)"))
        return
    have, want = m.state[key].shape[0], target[key].shape[0]
    if have != want:
        raise UserError(
            f"its classifier {key} has {have} classes, the model {want}; pass --reset-head to train a new head"
        )


def _temporal_fresh(m: TSNKeyMapping, model: nn.Module, reason: str) -> None:
    for path in model.temporal_paths:
        if not any(k.startswith(path + ".") for k in m.state):
            m.fresh.append((path + ".", reason))


def _resize_pos_embed(m: TSNKeyMapping, model: nn.Module) -> None:
    if not isinstance(model, TSNViT) or "pos_embed" not in m.state:
        return
    have, want = m.state["pos_embed"], model.pos_embed
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    if have.shape == want.shape or have.shape[-1] != want.shape[-1]:
        return  # same grid, or another width: the loader names the shape difference
    side = math.isqrt(have.shape[1] - prefix)
    if side * side != have.shape[1] - prefix:
        raise UserError(f"its pos_embed {tuple(have.shape)} is not a square patch grid; re-save it at a square size")
    grid = list(model.patch_embed.grid_size)
    m.state["pos_embed"] = resample_abs_pos_embed(have, grid, [side, side], num_prefix_tokens=prefix)
    how = f"bicubic, from the file's {side}x{side} patch grid to the model's {grid[0]}x{grid[1]}"
    m.resized.append(("pos_embed", tuple(have.shape), tuple(want.shape), how))


def filter_imagenet_resnet(state: Mapping[str, Tensor], model: nn.Module, reset_head: bool = False) -> TSNKeyMapping:
    """timm / torchvision ResNet keys -> `TSNResNet`: all but the temporal modules, which start fresh."""
    m = TSNKeyMapping(dict(state))
    _head(m, model, "fc.", reset_head)
    _temporal_fresh(m, model, _TEMPORAL_FRESH)
    return m


def filter_imagenet_vit(state: Mapping[str, Tensor], model: nn.Module, reset_head: bool = False) -> TSNKeyMapping:
    """timm ViT keys -> `TSNViT`, ``pos_embed`` resized to the model's patch grid when the two differ."""
    m = TSNKeyMapping(dict(state))
    _head(m, model, "head.", reset_head)
    _resize_pos_embed(m, model)
    return m


def filter_timemae_best(state: Mapping[str, Tensor], model: nn.Module, reset_head: bool = False) -> TSNKeyMapping:
    """Our ``best.pth`` of a TSN model (the model's own keys) -> the same model.

    Temporal modules the file lacks start fresh (TRM's recipe: train plain TSN, then insert the modules); a ViT's
    ``pos_embed`` is resized when the model is built for another input size.
    """
    m = TSNKeyMapping(dict(state))
    _head(m, model, "head." if isinstance(model, TSNViT) else "fc.", reset_head)
    _temporal_fresh(m, model, "the file's network has no temporal module here; it starts as its identity / shift")
    _resize_pos_embed(m, model)
    return m


TSN_FILTERS: dict[str, Callable[..., TSNKeyMapping]] = {
    "imagenet_resnet": filter_imagenet_resnet,
    "imagenet_vit": filter_imagenet_vit,
    "timemae_best": filter_timemae_best,
}


def unwrap_state(obj: Mapping[str, Any], path: str = "checkpoint") -> dict[str, Tensor]:
    """The state_dict of a loaded file: ``obj['model']``, ``['state_dict']``, ``['module']``, or ``obj`` itself."""
    for wrapper in ("model", "state_dict", "module"):
        if wrapper in obj:
            return state_dict_of(obj[wrapper], path, f"its {wrapper!r} entry")
    return state_dict_of(obj, path, "the file")


def detect_tsn_source(obj: Mapping[str, Any], path: str = "checkpoint") -> str:
    """The source kind (a key of `TSN_SOURCE_NAMES`) of a loaded file or a bare state_dict.

    Our ``best.pth`` carries its run's ``config``; a bare state_dict with temporal modules is ours too. A plain TSN
    ResNet has exactly an ImageNet ResNet's keys, so without the ``config`` it reads as ``imagenet_resnet``, which
    maps it the same way.
    """
    if isinstance(obj.get("model"), Mapping) and isinstance(obj.get("config"), Mapping):
        return "timemae_best"
    state = unwrap_state(obj, path)
    if any(".temporal." in k for k in state):
        return "timemae_best"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "imagenet_resnet"
    if "pos_embed" in state and "blocks.0.attn.qkv.weight" in state and state["pos_embed"].dim() == 3:
        return "imagenet_vit"
    raise UserError(
        f"{path} is not a recognised TSN checkpoint: neither ResNet keys (conv1.*, layer1.*) nor timm ViT keys "
        f"(pos_embed, blocks.*) among {sorted(state)[:5]}; pass an ImageNet ResNet / ViT state_dict or a TSN best.pth"
    )


def _stage_depths(keys: list[str]) -> tuple[int, ...]:
    """Blocks per ResNet stage (or ``(blocks,)`` for a ViT) found among ``keys``."""
    depths = []
    for root in ("layer1.", "layer2.", "layer3.", "layer4.", "blocks."):
        ids = {int(k[len(root) :].split(".")[0]) for k in keys if k.startswith(root)}
        if ids:
            depths.append(max(ids) + 1)
    return tuple(depths)


def _fresh_lines(groups: list[tuple[str, int, str]]) -> list[str]:
    """Report lines, one per reason; a long run of labels (one per temporal module) is shortened to first ... last."""
    by_reason: dict[str, tuple[list[str], int]] = {}
    for label, count, reason in groups:
        labels, total = by_reason.get(reason, ([], 0))
        by_reason[reason] = (labels + [label], total + count)
    lines = []
    for reason, (labels, total) in by_reason.items():
        shown = ", ".join(labels) if len(labels) <= 3 else f"{len(labels)} modules {labels[0]} ... {labels[-1]}"
        lines.append(f"  initialised fresh: {shown} ({total} tensor{'s' if total != 1 else ''}): {reason}")
    return lines


def init_tsn_from(model: TSNResNet | TSNViT, path: str | os.PathLike, reset_head: bool = False) -> str:
    """Initialise a TSN model from a file of any `TSN_SOURCE_NAMES` source, through that source's filter.

    Args:
        model: the model to fill.
        path: a ``torch.save`` file; read with ``weights_only=True`` (`models.checkpoint.load_file`).
        reset_head: drop the file's classifier and keep the model's fresh one (another label set).

    Returns:
        The mapping report (several lines) for the caller to print or log.

    Raises:
        UserError: unreadable file, a classifier for another number of classes without ``reset_head``, keys that do
            not match the filter's promise exactly (the first offending keys), or a shape difference (the key and
            both shapes).
    """
    if not isinstance(model, (TSNResNet, TSNViT)):
        raise TypeError(f"init_tsn_from needs a TSNResNet or TSNViT, got {type(model).__name__}")
    path = os.fspath(path)
    obj = load_file(path)
    kind = detect_tsn_source(obj, path)
    state = unwrap_state(obj, path)
    name = f"{type(model).__name__} ({model.arch}, temporal {model.temporal_name or 'none'})"
    what = f"{path} ({TSN_SOURCE_NAMES[kind]}) does not fit {name}"
    family = {"imagenet_resnet": TSNResNet, "imagenet_vit": TSNViT}.get(kind)
    if family is not None and not isinstance(model, family):
        raise UserError(f"{what}: it is a {'ResNet' if family is TSNResNet else 'ViT'}; pick the matching --model")
    try:
        m = TSN_FILTERS[kind](state, model, reset_head)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None

    def depth_hint(have: list[str], want: list[str]) -> str:
        a, b = _stage_depths(have), _stage_depths(want)
        return f"; the file has {a} blocks per stage, the model {b}" if a != b else ""

    counters = load_mapping(model, m, what, depth_hint=depth_hint, shape_fix="build the model the file was made for")
    target = model.state_dict()
    lines = [f"init from {path}: {TSN_SOURCE_NAMES[kind]} -> {name}", f"  loaded: {len(m.state)} tensors"]
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in m.state.values()} - {"float32", "int64"})
    if dtypes:
        lines.append(f"  cast: {', '.join(dtypes)} tensors in the file to the model's dtype")
    if counters:
        lines.append(f"  set to 0: {len(counters)} BatchNorm num_batches_tracked the file lacks (unused with momentum)")
    lines += [f"  resized: {key} {old} -> {new}: {how}" for key, old, new, how in m.resized]
    lines += grouped("dropped", [(label, len(keys), reason) for label, keys, reason in m.dropped])
    fresh_groups = [(prefix_label(p), sum(k.startswith(p) for k in target), reason) for p, reason in m.fresh]
    lines += _fresh_lines([g for g in fresh_groups if g[1]])
    return "\n".join(lines)
