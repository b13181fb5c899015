"""Which source frames a clip is made of.

Two samplers, both pure functions of (video length, clip spec, random generator):

- ``segment`` (TIME, TSN): L = T* x N^2 frames spread over the whole video (TIME paper, Sec. 3.1).
- ``stride`` (official VideoMAE): T* consecutive frames every ``sampling_rate`` frames; only for N = 1, so that runs
  comparable to the official recipe are possible.

Indices are 0-based and always sorted, so a decoder can read them in one forward pass.

Randomness comes from a ``numpy.random.Generator`` or as uniform variates in [0, 1) drawn in advance (one per frame
for segment sampling, one for stride sampling): `data.stream.decode_clips` draws them in the caller's thread and samples
in its decode thread, which must not touch the caller's generator (an abandoned decode goes on in the background), for
a fraction of the cost of seeding a generator for every decode.
"""

from __future__ import annotations

import functools

import numpy as np

# Where randomness comes from: a generator, or uniform variates in [0, 1) drawn in advance (see above).
Random = np.random.Generator | np.ndarray


def segment_indices(
    num_frames: int, length: int, *, train: bool, rng: Random | None = None, view: tuple[int, int] = (0, 1)
) -> np.ndarray:
    """TIME / TSN segment sampling of ``length`` frames from a video of ``num_frames`` frames.

    Decisions (the TIME paper says only "sample L frames"):
    - short video (num_frames < length): order-preserving repetition ``idx[i] = floor(i * T / L)``, so every frame
      appears, in order, about L / T times;
    - otherwise split [0, T) into L equal segments ``[floor(i T / L), floor((i + 1) T / L))`` and take a uniformly
      random frame of each in training, the segment centre ``floor((i + 0.5) T / L)`` in evaluation.
    - multi-clip evaluation, clip k of K: the frame at ``(k + 0.5) / K`` of every segment, i.e.
      ``floor((i + (k + 0.5) / K) T / L)``; K = 1 is the segment centre.

    Args:
        num_frames: T, frames the video really has (>= 1).
        length: L, frames wanted (>= 1).
        train: random offsets (True) or segment centres (False).
        rng: source of randomness, a generator or ``length`` uniforms in [0, 1); required when ``train``.
        view: ``(k, K)``, evaluation clip k of K (ignored in training).

    Returns:
        (L,) int64, sorted, values in [0, T).
    """
    if num_frames < 1 or length < 1:
        raise ValueError(f"need num_frames >= 1 and length >= 1, got {num_frames} and {length}")
    if num_frames < length:
        return (np.arange(length, dtype=np.int64) * num_frames) // length
    if not train:
        k, num_views = view
        i = np.arange(length, dtype=np.int64)
        return ((2 * num_views * i + 2 * k + 1) * num_frames) // (2 * num_views * length)
    if rng is None:
        raise ValueError("segment sampling in training needs a random generator")
    start, width = _segments(num_frames, length)
    u = rng.random(length) if isinstance(rng, np.random.Generator) else rng[:length]
    return start + (u * width).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _segments(num_frames: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, width) of the L segments of [0, T), T >= L: segment i is [floor(i T / L), floor((i + 1) T / L)).

    Memoised (read-only arrays): a data-loader worker sees few distinct video lengths, and after a decode, with the
    caches cold, each numpy call saved is worth microseconds.
    """
    edges = (np.arange(length + 1, dtype=np.int64) * num_frames) // length
    start, width = edges[:-1], np.diff(edges)  # width >= 1 because T >= L
    start.setflags(write=False)
    width.setflags(write=False)
    return start, width


def stride_indices(
    num_frames: int,
    length: int,
    stride: int,
    *,
    train: bool,
    rng: Random | None = None,
    view: tuple[int, int] = (0, 1),
) -> np.ndarray:
    """Official VideoMAE sampling: ``length`` frames ``stride`` apart from a random (train) or centred (eval) start.

    Evaluation clip k of K > 1 (``view``) starts at ``round(k * room / (K - 1))``, evenly from the first to the last
    possible start, as the official multi-clip test does; K = 1 is the centred start.

    A video shorter than the span repeats its last frame, as the official loader does (it stops advancing the
    frame pointer at the end of the video).

    ``rng`` is a generator or one uniform in [0, 1) (an array), which picks the start as ``floor(u (room + 1))``.

    Returns:
        (length,) int64, sorted, values in [0, T).
    """
    if num_frames < 1 or length < 1 or stride < 1:
        raise ValueError(f"need num_frames, length, stride >= 1, got {num_frames}, {length}, {stride}")
    span = (length - 1) * stride + 1
    room = max(num_frames - span, 0)
    if train:
        if rng is None:
            raise ValueError("stride sampling in training needs a random generator")
        if isinstance(rng, np.random.Generator):
            start = int(rng.integers(0, room + 1))
        else:
            start = min(int(rng[0] * (room + 1)), room)  # min: guards u * (room + 1) rounding up to room + 1
    elif view[1] > 1:
        start = round(view[0] * room / (view[1] - 1))
    else:
        start = room // 2
    return np.minimum(start + np.arange(length, dtype=np.int64) * stride, num_frames - 1)


def union_indices(draws: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Merge several index draws into one sorted decode list, and say where each draw's frames are in it.

    Used when one decode serves several samples (``--samples-per-decode``): ``frames = get_batch(union)`` and then
    ``frames[positions[k]]`` are the frames of draw k.

    Returns:
        (union (U,) sorted unique int64, positions: one (len(draw_k),) int64 array per draw)
    """
    union = np.unique(np.concatenate(draws))
    return union, [np.searchsorted(union, d) for d in draws]
