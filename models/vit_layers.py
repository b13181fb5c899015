"""Generic ViT layers: pre-norm attention blocks (fused SDPA or explicit softmax), MLP, stochastic depth, and the
initialisations of the VideoMAE release.

Shared by the VideoMAE models (`models.videomae`); nothing here knows about tubelets, masks or position tables.
The attention's ``qkv`` has no bias and separate ``q_bias`` / ``v_bias`` (the key has no bias), LayerNorm eps 1e-6 and
exact GELU, as in the release, so its checkpoints load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.linear import Linear, linear

LN_EPS = 1e-6
ATTN_IMPLS = ("sdpa", "eager")


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``, rescale the kept ones."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention with the official parameter layout (``qkv`` weight, ``q_bias``, ``v_bias``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}; got {attn_impl!r}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("q_bias", None)
            self.register_parameter("v_bias", None)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        bias = None
        if self.q_bias is not None:
            # The key has no bias: (q_bias, 0, v_bias), as in the release.
            bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias])
        qkv = linear(x, self.qkv.weight, bias)  # (B, N, 3D)
        qkv = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return qkv[0], qkv[1], qkv[2]

    def _out(self, x: Tensor) -> Tensor:
        x = rearrange(x, "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(x))

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, N, D)`` -> ``(B, N, D)``."""
        if self.attn_impl == "eager":
            return self.forward_with_weights(x)[0]
        q, k, v = self._qkv(x)
        p = self.attn_drop if self.training else 0.0
        return self._out(F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale))

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Explicit softmax attention: ``x: (B, N, D)`` -> ``(B, N, D)`` and the weights ``(B, heads, N, N)``."""
        q, k, v = self._qkv(x)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
        dropped = F.dropout(attn, self.attn_drop, self.training)
        return self._out(dropped @ v), attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        # Dropout after fc2 only, as in the release.
        return self.drop(self.fc2(self.act(self.fc1(x))))


@dataclass(frozen=True)
class BlockConfig:
    """The settings every block of one stack shares, under the release's keyword names: the models take them as
    keywords and pass them down as this one value."""

    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0  # of the last block; see `make_blocks`
    init_values: float = 0.0
    attn_impl: str = "sdpa"


class Block(nn.Module):
    """Pre-norm transformer block; ``init_values > 0`` adds layer scale (``gamma_1`` / ``gamma_2``).

    ``drop_path``: this block's stochastic-depth rate (``config.drop_path_rate`` is the stack's largest).
    """

    def __init__(self, dim: int, num_heads: int, config: BlockConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(
            dim, num_heads, config.qkv_bias, config.attn_drop_rate, config.drop_rate, config.attn_impl
        )
        self.drop_path = drop_path
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), config.drop_rate)
        if config.init_values > 0:
            self.gamma_1 = nn.Parameter(config.init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(config.init_values * torch.ones(dim))
        else:
            self.register_parameter("gamma_1", None)
            self.register_parameter("gamma_2", None)

    def _residual(self, x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
        if gamma is not None:
            branch = gamma * branch
        return x + drop_path(branch, self.drop_path, self.training)

    def forward(self, x: Tensor) -> Tensor:
        x = self._residual(x, self.attn(self.norm1(x)), self.gamma_1)
        return self._residual(x, self.mlp(self.norm2(x)), self.gamma_2)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """As `forward`, through explicit softmax; also returns the attention weights ``(B, heads, N, N)``."""
        out, attn = self.attn.forward_with_weights(self.norm1(x))
        x = self._residual(x, out, self.gamma_1)
        return self._residual(x, self.mlp(self.norm2(x)), self.gamma_2), attn


def make_blocks(dim: int, depth: int, num_heads: int, config: BlockConfig) -> nn.ModuleList:
    # Stochastic depth grows linearly from 0 to drop_path_rate over the blocks.
    rates = torch.linspace(0, config.drop_path_rate, depth, device="cpu").tolist()
    return nn.ModuleList(Block(dim, num_heads, config, rate) for rate in rates)


def run_blocks(blocks: nn.ModuleList, x: Tensor, grad_checkpointing: bool) -> Tensor:
    for blk in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant checkpointing restores the RNG state, so drop path draws the same samples twice.
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


def init_xavier(m: nn.Module) -> None:
    """Pretraining init: xavier-uniform Linear weights, zero biases, LayerNorm 1 / 0 (Conv3d keeps torch's default)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_trunc_normal(m: nn.Module) -> None:
    """Fine-tuning init: Linear weights N(0, 0.02) truncated at +-2 (absolute), zero biases, LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
