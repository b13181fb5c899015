"""Token masks for masked-autoencoder pretraining, as pure functions of an explicit ``torch.Generator``.

Convention: every mask here is ``(B, L)`` bool over the token grid ``(t, h, w)`` flattened in raster order
(``t * h * w``, time slowest), and True = masked. For the encoder masks (`tube_mask`, `random_mask`) masked means not
seen by the encoder; for the decoder mask (`running_cell_mask`) it means not reconstructed by the decoder.
The masks live on the generator's device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.errors import UserError

MASK_KINDS = ("tube", "random", "running_cell")
_FLAGS = {"tube": "--mask-ratio", "random": "--mask-ratio", "running_cell": "--decoder-mask-ratio"}


def validate_mask_ratio(ratio: float, grid: tuple[int, int, int], kind: str = "tube", flag: str | None = None) -> int:
    """Check a mask ratio against the token grid before a run starts.

    Args:
        ratio: fraction of tokens to mask, in (0, 1).
        grid: token grid ``(t, h, w)``.
        kind: ``"tube"`` (counted per temporal slice of ``h * w`` tokens), ``"random"`` (over all ``t * h * w``) or
            ``"running_cell"`` (VideoMAE V2 decoder masking, counted per 2 x 2 cell; ``h`` and ``w`` must be even).
        flag: the command-line flag named in the message (default: ``--mask-ratio``, or ``--decoder-mask-ratio``
            for ``running_cell``).

    Returns:
        The masked count: per slice (tube), per sample (random) or per 2 x 2 cell (running_cell).

    Raises:
        UserError: the ratio is outside (0, 1): it leaves no masked token (too small, or <= 0), or no visible one
            (1.0), or is above 1.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}; got {kind!r}")
    flag = flag or _FLAGS[kind]
    t, h, w = grid
    if not 0.0 < ratio <= 1.0:
        raise UserError(f"{flag} {ratio} is outside (0, 1); use a fraction such as 0.9")
    if kind == "running_cell":
        if h % 2 or w % 2:
            raise UserError(
                f"running-cell decoder masking tiles 2x2 cells, but the token grid is {h}x{w}; "
                "use an input size that is an even number of patches, or drop --decoder-mask-ratio"
            )
        count, total, unit = int(4 * ratio), 4, "tokens of each 2x2 running cell"
    else:
        total = h * w if kind == "tube" else t * h * w
        count = int(ratio * total)
        unit = "tokens of a slice" if kind == "tube" else "tokens"
    if count == 0:
        raise UserError(f"{flag} {ratio} masks 0 of the {total} {unit}; raise it")
    # The count is truncated, so any ratio below 1 leaves at least one visible token; only 1.0 masks all.
    if count == total:
        raise UserError(f"{flag} {ratio} masks all {total} {unit}; lower it")
    return count


def token_counts(mask_type: str, mask_ratio: float, decoder_mask_ratio: float, grid: tuple[int, int, int],
                 ) -> tuple[int, int]:
    """(masked, decoded) tokens per sample of every mask the maskers make for these settings, validated once.

    Each masker makes exactly these counts by construction, so a training step passes them to the model and the
    loss (``counts=``, ``num_decoded=``) instead of reading each step's masks back to the host.
    """
    t, h, w = grid
    per = validate_mask_ratio(mask_ratio, grid, mask_type)
    masked = t * per if mask_type == "tube" else per
    if not decoder_mask_ratio:
        return masked, masked
    skipped = validate_mask_ratio(decoder_mask_ratio, grid, "running_cell")  # of each 2 x 2 cell
    return masked, t * h * w - t * (h // 2) * (w // 2) * skipped


def _random_subsets(batch_size: int, n: int, k: int, generator: torch.Generator) -> Tensor:
    """``(B, n)`` bool with exactly ``k`` True per row at uniformly random positions."""
    noise = torch.rand(batch_size, n, generator=generator, device=generator.device)
    chosen = noise.argsort(dim=1)[:, :k]
    return torch.zeros(batch_size, n, dtype=torch.bool, device=generator.device).scatter_(1, chosen, True)


def tube_mask(batch_size: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator) -> Tensor:
    """VideoMAE tube masking: the same ``int(ratio * h * w)`` positions masked in every temporal slice.

    Args:
        batch_size: B; each sample draws its own positions.
        grid: token grid ``(t, h, w)``.
        ratio: masked fraction of each slice (0.9: 176 of 196 per slice, 1408 of 1568 in all).
        generator: the only source of randomness; a seeded generator reproduces the masks.

    Returns:
        ``(B, t * h * w)`` bool, True = masked (not seen by the encoder), raster order.
    """
    t, h, w = grid
    k = validate_mask_ratio(ratio, grid, "tube")
    per_slice = _random_subsets(batch_size, h * w, k, generator)  # (B, h*w)
    return per_slice[:, None, :].expand(batch_size, t, h * w).reshape(batch_size, t * h * w)


def random_mask(batch_size: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator) -> Tensor:
    """Plain random masking: exactly ``int(ratio * t * h * w)`` tokens per sample, anywhere in the clip.

    Returns:
        ``(B, t * h * w)`` bool, True = masked (not seen by the encoder), raster order.
    """
    t, h, w = grid
    k = validate_mask_ratio(ratio, grid, "random")
    return _random_subsets(batch_size, t * h * w, k, generator)


def running_cell_mask(batch_size: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator) -> Tensor:
    """VideoMAE V2 decoder masking ("running cell"): which tokens the decoder does NOT reconstruct.

    Reading of the VideoMAE V2 release: the token grid is tiled with 2 x 2 cells; a cell holds ``int(4 * ratio)``
    masked slots then the rest, read cyclically (row-major over the cell) from a pointer that starts at a random
    offset per sample (one of 4) and advances by one slot per temporal slice, so each position cycles through the
    cell's slots over time (any 4 consecutive slices reconstruct every position at least once). All cells of a slice
    share the pattern. The decoder reconstructs the tokens where this mask is False, chosen over the whole grid
    independently of the encoder mask; the loss counts only those that are also encoder-masked (`pretrain.loss`).
    The release uses ``ratio`` 0.5.

    Args:
        batch_size: B.
        grid: token grid ``(t, h, w)``; ``h`` and ``w`` even.
        ratio: fraction of tokens the decoder skips, ``int(4 * ratio)`` in 1..3.
        generator: the only source of randomness.

    Returns:
        ``(B, t * h * w)`` bool, True = masked for the decoder (not reconstructed), raster order; exactly
        ``(4 - int(4 * ratio)) / 4`` of every slice is False.
    """
    t, h, w = grid
    k = validate_mask_ratio(ratio, grid, "running_cell")
    device = generator.device
    queue = torch.tensor([True] * k + [False] * (4 - k), device=device)
    start = torch.randint(0, 4, (batch_size,), generator=generator, device=device)
    # The release advances the pointer before reading the first slice: slice i reads from start + i + 1.
    step = torch.arange(1, t + 1, device=device)
    slot = torch.arange(4, device=device)
    index = (start[:, None, None] + step[None, :, None] + slot[None, None, :]) % 4  # (B, t, 4)
    cells = queue[index].view(batch_size, t, 2, 2)
    return cells.repeat(1, 1, h // 2, w // 2).reshape(batch_size, t * h * w)  # tile each cell over (h, w)
