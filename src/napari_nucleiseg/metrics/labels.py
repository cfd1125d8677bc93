"""What a label map must be to be scored: 2-D, whole non-negative numbers, one id per nucleus.

The instance metrics accept any array, so a map saved the wrong way (a probability map, a binary
mask, a signed or float export) would be scored without complaint and give a meaningless AJI.
:func:`check_label_map` says what is wrong: a problem that makes the scores meaningless is an
error (the image is not scored), a doubtful one is a warning (scored anyway).
"""

from __future__ import annotations

import numpy as np


class LabelMapError(ValueError):
    """The array cannot be read as instance labels; ``str()`` is the problem, without the file."""


def check_label_map(labels) -> tuple[np.ndarray, list[str]]:
    """``(labels as integers, warnings)`` or :class:`LabelMapError`.

    Refused: not 2-D, not finite, non-integer values, negative values. Warned: a float map
    whose values are whole numbers (scored as integers), and a binary mask — one id for several
    separate regions, where touching nuclei cannot be told apart (scored as it stands).
    """
    arr = np.asarray(labels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise LabelMapError(
            f"not a 2-D label map (shape {arr.shape}); expected one id per pixel, 0 = background"
        )
    notes = []
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise LabelMapError("float label map with NaN or infinite values; not scored")
        if (arr != np.round(arr)).any():
            raise LabelMapError(
                "float label map with non-integer values (a probability map?); instance labels "
                "are whole numbers, 0 = background; not scored"
            )
        notes.append(f"float label map ({arr.dtype}); its values are whole numbers, scored as ids")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "ui":
        raise LabelMapError(f"label map of type {arr.dtype}; expected integer ids")
    if arr.size and arr.dtype.kind in "if" and arr.min() < 0:
        raise LabelMapError(
            f"negative labels (min {arr.min()}); instance labels are 0 (background) and 1, 2, ...; "
            "not scored"
        )
    ids = np.unique(arr)
    ids = ids[ids != 0]
    if len(ids) == 1:
        from scipy import ndimage

        _, regions = ndimage.label(arr == ids[0])
        if regions > 1:
            notes.append(
                f"binary mask (the single id {ids[0]} for {regions} separate regions), not "
                "instance labels: touching nuclei count as one; scored anyway"
            )
    return arr, notes
