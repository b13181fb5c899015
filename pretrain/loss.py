"""Masked reconstruction loss (VideoMAE norm-pix MSE), always computed in float32."""

from __future__ import annotations

from torch import Tensor

from models.videomae import gather_tokens, patchify_target, token_positions


def reconstruction_loss(
    pred: Tensor,
    x: Tensor,
    mask: Tensor,
    *,
    patch_size: int,
    tubelet_size: int,
    normalize_target: bool = True,
    decoder_mask: Tensor | None = None,
    num_decoded: int | None = None,
) -> Tensor:
    """Mean squared error between the predictions and the (norm-pix) target on masked tokens only.

    Pass the model's geometry (``patch_size=model.patch_size, tubelet_size=model.tubelet_size``). Predictions and
    target are cast to float32 whatever the training precision.

    Args:
        pred: ``(B, L_dec, P)`` model output, ``P = 3 * tubelet * patch^2``, for the decoded tokens in raster order.
        x: ``(B, 3, T, H, W)`` the model input (ImageNet-normalised).
        mask: ``(B, L)`` bool, True = masked (the encoder's mask).
        patch_size, tubelet_size: the model's token geometry.
        normalize_target: norm-pix target (per-patch, per-channel mean / unbiased std); False: raw pixels in [0, 1].
        decoder_mask: VideoMAE V2 decoder mask, ``(B, L)`` bool, True = not reconstructed, or None. With it the
            decoded tokens are those where it is False, and the loss averages only over decoded tokens that are also
            masked (decoded visible tokens get no loss), as in the V2 release.
        num_decoded: decoded tokens per sample when the masker guarantees it (no host read-back), else None.

    Returns:
        Scalar float32 loss. Without ``decoder_mask`` this is the mean over all ``B * L_masked * P`` values, the
        release's ``MSELoss`` on ``target[mask]``.
    """
    target = patchify_target(x, patch_size, tubelet_size, normalize=normalize_target)  # (B, L, P) float32
    mask = mask.to(target.device)
    decoded = mask if decoder_mask is None else ~decoder_mask.to(target.device)
    index = token_positions(decoded, "decoded tokens", num_decoded)  # (B, L_dec)
    target = gather_tokens(target, index)
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} do not match the decoded targets {tuple(target.shape)}")
    err = (pred.float() - target).pow(2).mean(dim=-1)  # (B, L_dec)
    if decoder_mask is None:
        return err.mean()
    weight = mask.gather(1, index).float()  # 1 where a decoded token was hidden from the encoder
    return (err * weight).sum() / weight.sum().clamp_min(1.0)
