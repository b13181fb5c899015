"""VideoMAE ViTs: the masked-autoencoder pretraining model and the fine-tuning classifier.

Both follow the official VideoMAE release (Tong et al., NeurIPS 2022) parameter for parameter, so its checkpoints load
with ``load_state_dict(..., strict=True)`` and give the same outputs:

* tubelet embedding ``Conv3d(3, D, (tubelet, patch, patch))``; tokens flattened ``t * (h * w) + y * w + x``
  (raster order, time slowest);
* a fixed 1-D sinusoid position table over the flattened token index, computed from the geometry (memoised)
  and never stored in the state_dict. A model built for another clip length or resolution gets the table for its own
  token count, which is what the official code computes when it is built with that geometry; no stored table exists
  to interpolate, and no weight depends on the geometry, so one state_dict loads into any geometry;
* pre-norm blocks, LayerNorm eps 1e-6, exact GELU, ``qkv`` without bias plus separate ``q_bias`` / ``v_bias`` (the key
  has no bias).

Mask convention everywhere: ``mask`` is ``(B, L)`` bool, True = masked = not seen by the encoder, and every sample
has the same number of visible tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from common.constants import IMAGENET_MEAN, IMAGENET_STD
from models.linear import Linear
from models.vit_layers import LN_EPS, BlockConfig, init_trunc_normal, init_xavier, make_blocks, run_blocks

# ---------------------------------------------------------------------------------------------------------------------
# Geometry, position table, targets


# Token geometry of every VideoMAE size (the release's): 16 x 16 pixel patches over tubelets of 2 frames.
PATCH_SIZE = 16
TUBELET_SIZE = 2

def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def sinusoid_table(num_positions: int, dim: int, device: torch.device | str | None = None) -> Tensor:
    """The fixed 1-D sinusoid table: ``(num_positions, dim)`` float32.

    ``angle(pos, j) = pos / 10000^(2 * (j // 2) / dim)``; sin on even channels, cos on odd ones (interleaved).
    Computed in float64 and rounded once, as the official numpy code does: at 1568 positions a float32 angle would
    be off by up to 1e-4. The result is memoised per (positions, dim, device) and shared between calls: callers must
    not modify it in place.
    """
    return _sinusoid_table(num_positions, dim, str(torch.device(device) if device is not None else "cpu"))


@functools.lru_cache(maxsize=16)
def _sinusoid_table(num_positions: int, dim: int, device: str) -> Tensor:
    # Memoised: the float64 sin / cos of both tables would otherwise be recomputed in every training step.
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]
    j = torch.arange(dim, dtype=torch.float64, device=device)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (L, dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def patchify_target(
    x: Tensor,
    patch_size: int = PATCH_SIZE,
    tubelet_size: int = TUBELET_SIZE,
    normalize: bool = True,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Tensor:
    """Reconstruction target for every token, in float32 and without gradient.

    Args:
        x: ``(B, 3, T, H, W)`` model input, normalised with ``mean`` / ``std``.
        patch_size: spatial patch side (the model's ``patch_size``).
        tubelet_size: frames per token (the model's ``tubelet_size``).
        normalize: norm-pix target: each patch normalised per channel over its ``tubelet * patch^2`` pixels with its
            mean and unbiased std (eps 1e-6 added to the std). False: the un-normalised pixels in [0, 1].
        mean, std: the per-channel normalisation that ``x`` carries; undone first.

    Returns:
        ``(B, L, tubelet * patch^2 * 3)``, tokens in raster order, each flattened ``(p c)``: pixel-major, channel last.
    """
    with torch.no_grad():
        x = x.detach().float()
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1, 1)
        pixels = x * s + m  # (B, C, T, H, W) in [0, 1]
        patches = rearrange(  # (B, L, P, C): P = tubelet * patch * patch pixels of one token
            pixels,
            "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c",
            p0=tubelet_size,
            p1=patch_size,
            p2=patch_size,
        )
        if normalize:
            mu = patches.mean(dim=-2, keepdim=True)
            sigma = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
            patches = (patches - mu) / (sigma + 1e-6)
        return rearrange(patches, "b l p c -> b l (p c)")


def _common_count(select: Tensor, what: str, known: int | None = None) -> int:
    """The number of True entries per row of ``select (B, L)`` bool, which must be the same in every row.

    ``known``: the count the caller's masker guarantees (validated once when it was built), returned without
    reading the mask back to the host; None counts and checks (one host sync).
    """
    if select.dtype != torch.bool or select.dim() != 2:
        raise ValueError(f"{what} must be a (B, L) bool tensor; got {tuple(select.shape)} {select.dtype}")
    if known is not None:
        return known
    counts = select.sum(dim=1)
    lo, hi = torch.stack([counts.min(), counts.max()]).tolist()  # one host sync for both counts
    if lo != hi:
        raise ValueError(f"{what} must select the same number of tokens in every sample; got {lo} to {hi}")
    return lo


def token_positions(select: Tensor, what: str = "mask", count: int | None = None) -> Tensor:
    """Indices of the True entries of every row, in raster order.

    Args:
        select: ``(B, L)`` bool; every row must hold the same number ``n`` of True entries.
        what: what ``select`` is, for the error message.
        count: ``n`` when the caller knows it (no host read-back), else None (counted and checked).

    Returns:
        ``(B, n)`` int64 token indices, ascending in each row.
    """
    n = _common_count(select, what, count)
    # A stable sort of "not selected" puts the selected tokens first and keeps their raster order, like
    # `x[select].reshape(B, -1, D)` in the official code but with fixed shapes.
    return torch.argsort((~select).to(torch.int32), dim=1, stable=True)[:, :n]


def split_tokens(mask: Tensor, num_masked: int | None = None) -> tuple[Tensor, Tensor]:
    """Visible and masked token indices of a mask, each in raster order.

    Args:
        mask: ``(B, L)`` bool, True = masked; every row must mask the same number of tokens.
        num_masked: that number when the caller knows it (no host read-back), else None (counted and checked).

    Returns:
        ``visible (B, L - n)`` and ``masked (B, n)`` int64 indices.
    """
    num_visible = mask.shape[1] - _common_count(mask, "mask", num_masked)
    order = torch.argsort(mask.to(torch.int32), dim=1, stable=True)  # visible first, then masked
    return order[:, :num_visible], order[:, num_visible:]


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x: (B, L, D)``, ``index: (B, n)`` -> ``(B, n, D)``; ``x`` may have batch size 1 (broadcast)."""
    x = x.expand(index.shape[0], -1, -1)
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ---------------------------------------------------------------------------------------------------------------------
# Layers (the generic ViT ones live in models/vit_layers.py)


class PatchEmbed(nn.Module):
    """Tubelet embedding: ``(B, C, T, H, W)`` -> ``(B, L, D)``, L = (T/ts) * (H/ps) * (W/ps) in raster order."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        embed_dim: int = 768,
        num_frames: int = 16,
        tubelet_size: int = TUBELET_SIZE,
    ):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = int(patch_size)
        self.tubelet_size = int(tubelet_size)
        self.num_frames = int(num_frames)
        self.in_chans = int(in_chans)
        self.embed_dim = int(embed_dim)
        (height, width), ps, ts = self.img_size, self.patch_size, self.tubelet_size
        if height % ps or width % ps or self.num_frames % ts:
            raise ValueError(
                f"geometry {self.num_frames}x{height}x{width} is not a multiple of the tubelet {ts}x{ps}x{ps}"
            )
        self.token_grid = (self.num_frames // ts, height // ps, width // ps)
        self.num_patches = math.prod(self.token_grid)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(ts, ps, ps), stride=(ts, ps, ps))

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_chans, self.num_frames, *self.img_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"input (B, C, T, H, W) = {tuple(x.shape)} does not match the model's (C, T, H, W) = {expected}; "
                "build the model with that num_frames / img_size (the same weights load into any geometry)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, t, h, w) -> (B, L, D)


def _official_layer_id(name: str, num_layer_ids: int) -> int:
    """The release's layer ids for layer-wise lr decay, on classifier names (no ``encoder.`` prefix)."""
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layer_ids - 1


# ---------------------------------------------------------------------------------------------------------------------
# Models


class TokenGeometry:
    """The token geometry of a model, read off its patch embedding so that no caller re-types it."""

    def _patch_embedding(self) -> PatchEmbed:
        raise NotImplementedError

    @property
    def patch_size(self) -> int:
        return self._patch_embedding().patch_size

    @property
    def tubelet_size(self) -> int:
        return self._patch_embedding().tubelet_size

    @property
    def img_size(self) -> tuple[int, int]:
        return self._patch_embedding().img_size

    @property
    def num_frames(self) -> int:
        return self._patch_embedding().num_frames

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """``(T / tubelet, H / patch, W / patch)``."""
        return self._patch_embedding().token_grid

    @property
    def num_tokens(self) -> int:
        return self._patch_embedding().num_patches


class VideoMAEEncoder(TokenGeometry, nn.Module):
    """Tubelet embedding + sinusoid positions + blocks + final norm (identity when ``final_norm`` is False).

    Built by the two models from their own (the release's) keywords: ``patch_embed`` sets the geometry and width,
    ``blocks`` the settings of the ``depth`` blocks. Dropout on the embedded tokens (``pos_drop_rate``) exists in the
    release's classifier only.

    State dict: ``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*`` (the pretraining model's ``encoder.`` part, and
    the top level of the classifier).
    """

    def __init__(
        self,
        patch_embed: PatchEmbed,
        depth: int,
        num_heads: int,
        blocks: BlockConfig,
        final_norm: bool = True,
        pos_drop_rate: float = 0.0,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        embed_dim = patch_embed.embed_dim
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.patch_embed = patch_embed
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.blocks = make_blocks(embed_dim, depth, num_heads, blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if final_norm else nn.Identity()
        self.grad_checkpointing = use_checkpoint

    def _patch_embedding(self) -> PatchEmbed:
        return self.patch_embed

    @property
    def num_layer_ids(self) -> int:
        """Layer ids for layer-wise lr decay: patch embedding, one per block, everything after (depth + 2)."""
        return self.depth + 2

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def embed(self, x: Tensor) -> Tensor:
        """``x: (B, C, T, H, W)`` -> tokens with positions ``(B, L, D)``."""
        tokens = self.patch_embed(x)
        pos = sinusoid_table(tokens.shape[1], tokens.shape[2], tokens.device).to(tokens.dtype)
        return self.pos_drop(tokens + pos)

    def encode(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        """``x: (B, C, T, H, W)``, ``visible: (B, n)`` token indices or None (all) -> normed tokens ``(B, n, D)``."""
        tokens = self.embed(x)
        if visible is not None:
            tokens = gather_tokens(tokens, visible)
        return self.norm(run_blocks(self.blocks, tokens, self.grad_checkpointing))

    def attention_maps(self, x: Tensor, visible: Tensor | None = None) -> list[Tensor]:
        """Per-block attention weights, explicit softmax: a list of ``depth`` tensors ``(B, heads, n, n)``."""
        tokens = self.embed(x)
        if visible is not None:
            tokens = gather_tokens(tokens, visible)
        maps = []
        for blk in self.blocks:
            tokens, attn = blk.forward_with_weights(tokens)
            maps.append(attn)
        return maps


class VideoMAEPretrain(TokenGeometry, nn.Module):
    """VideoMAE masked autoencoder: an encoder on the visible tokens, a narrow decoder predicting the masked ones.

    Keyword names follow the official ``PretrainVisionTransformer`` (plus ``num_frames`` and ``attn_impl``); the
    defaults are ViT-B/16 at 16 x 224 x 224. State dict (ViT-B: 218 keys): ``mask_token``, ``encoder.patch_embed.*``,
    ``encoder.blocks.{i}.*``, ``encoder.norm.*``, ``encoder_to_decoder.weight``, ``decoder.blocks.{i}.*``,
    ``decoder.norm.*``, ``decoder.head.*``. No position table is stored.

    ``forward(x, mask)`` with ``x: (B, 3, T, H, W)`` and ``mask: (B, L)`` bool (True = masked) returns
    ``(B, L_masked, 3 * tubelet * patch^2)``: predictions for the masked tokens in raster order.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = PATCH_SIZE,
        num_frames: int = 16,
        tubelet_size: int = TUBELET_SIZE,
        encoder_in_chans: int = 3,
        encoder_embed_dim: int = 768,
        encoder_depth: int = 12,
        encoder_num_heads: int = 12,
        decoder_num_classes: int | None = None,
        decoder_embed_dim: int = 384,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float = 0.0,
        use_checkpoint: bool = False,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        target_dim = encoder_in_chans * tubelet_size * patch_size**2
        if decoder_num_classes is not None and decoder_num_classes != target_dim:
            raise ValueError(
                f"decoder_num_classes={decoder_num_classes} but a {tubelet_size}x{patch_size}x{patch_size} tubelet of "
                f"{encoder_in_chans} channels has {target_dim} values"
            )
        # Encoder and decoder blocks share these settings, as in the release.
        blocks = BlockConfig(mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, init_values, attn_impl)
        self.encoder = VideoMAEEncoder(
            PatchEmbed(img_size, patch_size, encoder_in_chans, encoder_embed_dim, num_frames, tubelet_size),
            encoder_depth, encoder_num_heads, blocks, final_norm=True, use_checkpoint=use_checkpoint,
        )  # fmt: skip
        self.encoder_to_decoder = Linear(encoder_embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder = nn.Module()
        self.decoder.blocks = make_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, blocks)
        self.decoder.norm = nn.LayerNorm(decoder_embed_dim, eps=LN_EPS)
        self.decoder.head = Linear(decoder_embed_dim, target_dim)
        self.decoder_embed_dim = decoder_embed_dim
        self.num_classes = target_dim
        self.grad_checkpointing = use_checkpoint

        # Initialisation as in the release: xavier inside encoder and decoder; `encoder_to_decoder` and the Conv3d
        # keep torch's default; the mask token is N(0, 0.02) truncated at +-0.02 (one std, the release's bounds).
        self.encoder.apply(init_xavier)
        self.decoder.apply(init_xavier)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def _patch_embedding(self) -> PatchEmbed:
        return self.encoder.patch_embed

    @property
    def num_features(self) -> int:
        return self.encoder.embed_dim

    @property
    def num_layer_ids(self) -> int:
        return self.encoder.num_layer_ids

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every encoder and decoder block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable
        self.encoder.set_grad_checkpointing(enable)

    # timm interface
    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Encoder on the visible tokens.

        Args:
            x: ``(B, 3, T, H, W)``, ImageNet-normalised.
            mask: ``(B, L)`` bool, True = masked; None encodes every token.

        Returns:
            ``(B, L_visible, D_enc)`` after the encoder's final norm, raster order.
        """
        visible = None if mask is None else split_tokens(self._check_mask(mask, x.device))[0]
        return self.encoder.encode(x, visible)

    def forward_head(
        self, x: Tensor, pre_logits: bool = False, *, mask: Tensor, decoder_mask: Tensor | None = None
    ) -> Tensor:
        """Decoder: visible features + mask tokens -> predictions for the decoded tokens.

        Args:
            x: ``(B, L_visible, D_enc)`` from `forward_features` with the same ``mask``.
            pre_logits: return the decoder's normed features ``(B, L_dec, D_dec)`` instead of pixel predictions.
            mask: ``(B, L)`` bool, True = masked (the encoder's mask).
            decoder_mask: VideoMAE V2 decoder masking, ``(B, L)`` bool, True = not reconstructed; the decoder
                predicts the tokens where it is False (see ``pretrain.masking.running_cell_mask``). None: the decoder
                predicts exactly the masked tokens (VideoMAE).

        Returns:
            ``(B, L_dec, 3 * tubelet * patch^2)`` in raster order, ``L_dec`` = the masked count (or the count that
            ``decoder_mask`` leaves).
        """
        visible, decoded = self._token_indices(mask, decoder_mask, x.device)
        return self._decode(x, visible, decoded, pre_logits)

    def forward(self, x: Tensor, mask: Tensor, decoder_mask: Tensor | None = None, *,
                counts: tuple[int, int] | None = None) -> Tensor:
        """``x: (B, 3, T, H, W)``, ``mask: (B, L)`` bool (True = masked) -> ``(B, L_masked, 3 * ts * ps^2)``.

        ``decoder_mask`` as in `forward_head`. ``counts``: (masked tokens, decoded tokens) per sample when the
        masker guarantees them (`pretrain.masking.token_counts`): the step then never reads the masks back to the
        host; None counts and checks them (one host sync each).
        """
        visible, decoded = self._token_indices(mask, decoder_mask, x.device, counts)
        return self._decode(self.encoder.encode(x, visible), visible, decoded)

    def _token_indices(self, mask: Tensor, decoder_mask: Tensor | None, device: torch.device,
                       counts: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(visible, decoded)`` token indices on ``device``, each ``(B, n)`` in raster order."""
        num_masked, num_decoded = counts if counts is not None else (None, None)
        visible, masked = split_tokens(self._check_mask(mask, device), num_masked)
        if decoder_mask is None:
            return visible, masked
        return visible, token_positions(~self._check_mask(decoder_mask, device), "~decoder_mask", num_decoded)

    def _decode(self, x: Tensor, visible: Tensor, decoded: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.encoder_to_decoder(x)  # (B, Nv, D_dec)
        # The release casts the table to the input's dtype: fp32 under autocast, bf16 when the model runs in bf16.
        pos = sinusoid_table(self.num_tokens, self.decoder_embed_dim, x.device).to(self.mask_token.dtype)[None]
        # Visible tokens first, then the decoded (mask) tokens, each in raster order; positions travel with tokens.
        full = torch.cat([x + gather_tokens(pos, visible), self.mask_token + gather_tokens(pos, decoded)], dim=1)
        full = run_blocks(self.decoder.blocks, full, self.grad_checkpointing)
        out = self.decoder.norm(full[:, -decoded.shape[1] :])  # (B, L_dec, D_dec)
        return out if pre_logits else self.decoder.head(out)

    def get_classifier(self) -> nn.Module:
        return self.decoder.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the decoder's output layer: ``num_classes`` values per predicted token (another target)."""
        self.num_classes = num_classes
        head = Linear(self.decoder_embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        head.apply(init_xavier)
        self.decoder.head = head.to(self.mask_token.device)

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay, as in the release (absent names are harmless)."""
        return {"pos_embed", "cls_token", "mask_token"}

    def get_layer_id(self, name: str) -> int:
        """Layer id of a parameter name for layer-wise lr decay, in ``[0, depth + 1]``.

        Encoder names get the release's ids (patch embedding 0, block i -> i + 1, encoder norm depth + 1); the
        decoder side (``decoder.*``, ``encoder_to_decoder``, ``mask_token``) belongs to the top id.
        """
        if name.startswith("encoder."):
            return _official_layer_id(name[len("encoder.") :], self.num_layer_ids)
        return self.num_layer_ids - 1

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's grouping hook (``timm.optim.param_groups_layer_decay``): the same ids as `get_layer_id`."""
        return self.get_layer_id

    def attention_maps(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Encoder attention weights per block (explicit softmax): ``depth`` tensors ``(B, heads, Nv, Nv)``."""
        visible = None if mask is None else split_tokens(self._check_mask(mask, x.device))[0]
        return self.encoder.attention_maps(x, visible)

    def _check_mask(self, mask: Tensor, device: torch.device) -> Tensor:
        """The mask, checked against the token count and moved to ``device`` (masks are drawn on the CPU)."""
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != self.num_tokens:
            raise ValueError(
                f"mask must be (B, {self.num_tokens}) bool (True = masked); got {tuple(mask.shape)} {mask.dtype}"
            )
        return mask.to(device, non_blocking=True)


class VideoMAEClassifier(VideoMAEEncoder):
    """VideoMAE fine-tuning model: encoder, mean pooling, ``fc_norm``, dropout, linear ``head``.

    Keyword names follow the official ``VisionTransformer`` of ``modeling_finetune.py`` (plus ``attn_impl``);
    defaults are ViT-B/16 at 16 x 224 x 224. State dict: ``patch_embed.*``, ``blocks.{i}.*``, ``fc_norm.*``,
    ``head.*`` (``norm.*`` instead of ``fc_norm.*`` when ``use_mean_pooling`` is False). ``init_scale`` multiplies
    the initial head (the release's fine-tuning default 0.001).

    ``forward(x)`` with ``x: (B, 3, T, H, W)`` returns logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = PATCH_SIZE,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        fc_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float = 0.0,
        init_scale: float = 0.001,
        all_frames: int = 16,
        tubelet_size: int = TUBELET_SIZE,
        use_checkpoint: bool = False,
        use_mean_pooling: bool = True,
        attn_impl: str = "sdpa",
    ):
        super().__init__(
            PatchEmbed(img_size, patch_size, in_chans, embed_dim, all_frames, tubelet_size), depth, num_heads,
            BlockConfig(mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, drop_path_rate, init_values, attn_impl),
            final_norm=not use_mean_pooling, pos_drop_rate=drop_rate, use_checkpoint=use_checkpoint,
        )  # fmt: skip
        self.use_mean_pooling = use_mean_pooling
        self.num_classes = num_classes
        self.init_scale = init_scale
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if use_mean_pooling else None
        self.fc_dropout = nn.Dropout(fc_drop_rate)
        self.head = self._new_head(num_classes)
        self.apply(init_trunc_normal)
        self._scale_head()

    def _new_head(self, num_classes: int) -> nn.Module:
        return Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _scale_head(self) -> None:
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(self.init_scale)
                self.head.bias.mul_(self.init_scale)

    def forward_features(self, x: Tensor) -> Tensor:
        """``x: (B, 3, T, H, W)`` -> tokens ``(B, L, D)`` (after ``norm``, which is the identity with mean pooling)."""
        return self.encode(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``x: (B, L, D)`` -> logits ``(B, num_classes)``, or the pooled ``(B, D)`` with ``pre_logits``."""
        if self.fc_norm is not None:
            x = self.fc_norm(x.mean(dim=1))
        else:
            # Without mean pooling the release reads the first token (there is no class token).
            x = x[:, 0]
        x = self.fc_dropout(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` classes (0: identity), initialised like the original one."""
        self.num_classes = num_classes
        head = self._new_head(num_classes)
        head.apply(init_trunc_normal)
        self.head = head.to(self.patch_embed.proj.weight.device)
        self._scale_head()

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay, as in the release (absent names are harmless)."""
        return {"pos_embed", "cls_token"}

    def get_layer_id(self, name: str) -> int:
        """Layer id for layer-wise lr decay, as in the release: patch embedding 0, block i -> i + 1, rest depth + 1."""
        return _official_layer_id(name, self.num_layer_ids)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """timm's grouping hook (``timm.optim.param_groups_layer_decay``): the same ids as `get_layer_id`."""
        return self.get_layer_id

    def attention_maps(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        """Attention weights per block (explicit softmax): ``depth`` tensors ``(B, heads, L, L)``."""
        return super().attention_maps(x)
