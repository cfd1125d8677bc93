"""Reading RGB windows out of N-dimensional arrays with named axes (tifffile and OME-Zarr levels).

Axes are one upper-case letter each: Y and X are the plane, S or C the colour samples/channels,
anything else (T, Z, ...) contributes its first plane. Non-uint8 data are mapped to 0-255 with a
display range taken once from a bounded sample of the coarsest level.
"""

from __future__ import annotations

import numpy as np


def to_yxc(block: np.ndarray, axes: str) -> np.ndarray:
    """A block in ``axes`` order to (rows, cols, 3): first plane of other axes, grey repeated,
    two channels padded, extra channels (alpha, ...) dropped."""
    index = tuple(slice(None) if a in "YXSC" else 0 for a in axes)
    block = block[index]
    kept = [a for a in axes if a in "YXSC"]
    order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a in "SC"]
    block = np.transpose(block, order)
    if block.ndim == 2:
        block = block[:, :, None]
    if block.shape[2] == 1:
        block = np.repeat(block, 3, axis=2)
    elif block.shape[2] == 2:
        block = np.concatenate([block, block[:, :, :1]], axis=2)
    return block[:, :, :3]


def read_window(
    array, axes: str, x: int, y: int, width: int, height: int, scale=None
) -> np.ndarray:
    """RGB uint8 window of one level. Every axis is sliced (length 1 for T/Z/...) so the block
    keeps the array's axis order for :func:`to_yxc`."""
    spans = {"Y": slice(y, y + height), "X": slice(x, x + width)}
    index = tuple(spans.get(a, slice(None) if a in "SC" else slice(0, 1)) for a in axes)
    out = to_yxc(np.asarray(array[index]), axes)
    if scale is not None:
        lo, span = scale
        out = np.clip((out.astype(np.float32) - lo) * (255.0 / span), 0, 255)
    return np.ascontiguousarray(out, dtype=np.uint8)


def sample_index(shape, axes: str, size: int = 2048):
    """A centred window of at most ``size`` px in Y and X: enough pixels to set a display range,
    bounded however large the (possibly only) level is."""
    index = []
    for n, a in zip(shape, axes):
        if a in "YX" and n > size:
            start = (n - size) // 2
            index.append(slice(start, start + size))
        else:
            index.append(slice(None))
    return tuple(index)


def display_range(array, axes: str) -> tuple[float, float] | None:
    """``(low, span)`` mapping non-uint8 data to 0-255 (0.1-99.9 percentiles), None for uint8."""
    if np.dtype(array.dtype) == np.uint8:
        return None
    sample = to_yxc(np.asarray(array[sample_index(array.shape, axes)]), axes)
    lo, hi = float(np.percentile(sample, 0.1)), float(np.percentile(sample, 99.9))
    return (lo, max(hi - lo, 1e-6))
