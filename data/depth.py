"""Depth formats: the MSRAction3D ``.bin`` file, gray conversion, and the scaling of raw depth to 8 bits."""

from __future__ import annotations

import os

import numpy as np

from common.errors import DecodeError


def depth_to_uint8(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """Depth frames as 3-channel uint8 images (spec, Modalities).

    Spec decision, in three steps:

    1. Valid range: a value is valid when it is > 0 (0, or anything negative, is "no reading" on Kinect-style
       sensors); valid values above ``max_depth`` (when given) are clipped to ``max_depth``.
    2. Per-video scaling: the smallest valid value maps to 1 and the largest to 255, linearly (near = dark,
       far = bright); invalid pixels are 0, so "no reading" stays distinguishable from the nearest surface. If all
       valid values are equal they map to 255; with no valid value at all the output is all 0. "Per video" means over
       all frames passed in one call: `data.prep.shards` passes the whole video; `Video.get_batch` on a depth source
       passes the frames it decoded (the sampled clip), since a reader that decodes a few frames has no more.
    3. The gray image is replicated to 3 channels so RGB-pretrained models apply unchanged.

    Args:
        depth: (T, H, W) depth, any integer or float dtype (uint16 millimetres, int32 from ``.bin``, uint8 gray).
        max_depth: optional upper clip, in the units of ``depth``.

    Returns:
        (T, H, W, 3) uint8.
    """
    d = np.asarray(depth)
    if d.ndim != 3:
        raise ValueError(f"depth must be (T, H, W), got shape {d.shape}")
    d = d.astype(np.float64)
    valid = d > 0
    if max_depth is not None:
        d = np.minimum(d, float(max_depth))
    gray = np.zeros(d.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = d[valid].min(), d[valid].max()
        if hi > lo:
            gray[valid] = np.rint(1.0 + (d[valid] - lo) * (254.0 / (hi - lo))).astype(np.uint8)
        else:
            gray[valid] = 255
    return np.repeat(gray[..., None], 3, axis=-1)


def read_msr_bin(source: str | os.PathLike | bytes) -> np.ndarray:
    """Read an MSRAction3D depth ``.bin``.

    Layout (the MSRAction3D release's format): int32 little-endian header (frames, width, height), then
    frames x height x width int32 little-endian depth values, row-major.

    Args:
        source: a path, or the file's bytes.

    Returns:
        (T, H, W) int32.

    Raises:
        DecodeError: missing, truncated or oversized file, or a header that is not three positive numbers.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = f"<{len(source)} bytes of bin>", bytes(source)
    else:
        name = os.fspath(source)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as err:
            raise DecodeError(f"{name}: {err.strerror or err}") from err
    if len(data) < 12:
        raise DecodeError(f"{name}: {len(data)} bytes, shorter than the 12-byte header (frames, width, height)")
    frames, width, height = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    if frames <= 0 or width <= 0 or height <= 0:
        raise DecodeError(f"{name}: header frames={frames} width={width} height={height} is not an MSRAction3D header")
    expected = 12 + 4 * frames * width * height
    if len(data) < expected:
        raise DecodeError(
            f"{name}: truncated: the header announces {frames} frames of {width}x{height} ({expected} bytes) "
            f"but the file has {len(data)} bytes"
        )
    if len(data) > expected:
        raise DecodeError(
            f"{name}: {len(data) - expected} bytes after the {frames} frames of {width}x{height} the header "
            "announces; not an MSRAction3D depth .bin"
        )
    values = np.frombuffer(data, dtype="<i4", count=frames * height * width, offset=12)
    return values.reshape(frames, height, width).astype(np.int32)


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) uint8, the channel mean (a depth video stores gray as R = G = B)."""
    return np.rint(rgb.astype(np.float32).mean(axis=-1)).astype(np.uint8)

