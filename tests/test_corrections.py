"""Label corrections as an annotator makes them: each returns new labels and the ids touched,
leaves the input alone, and refuses what cannot be done with a message in the user's words."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nucleiseg.correction import EditError, add, delete, fresh_id, merge, split


@pytest.fixture
def labels():
    lab = np.zeros((60, 80), np.uint32)
    lab[10:30, 10:50] = 1  # a long nucleus (to split)
    lab[40:50, 10:20] = 2
    lab[40:50, 21:30] = 3  # touches 2 across a one-pixel seam (to merge)
    return lab


def test_delete_and_add(labels):
    out, touched = delete(labels, 2)
    assert touched == [2] and not (out == 2).any() and (labels == 2).any()
    with pytest.raises(EditError, match="no nucleus"):
        delete(labels, 0)
    drawn = np.zeros_like(labels, bool)
    drawn[35:55, 55:70] = True
    drawn[10:12, 10:12] = True  # over nucleus 1: not taken from it
    out, (new,) = add(labels, drawn)
    assert new == fresh_id(labels) == 4
    assert (out == 4).sum() == 20 * 15 and (out == 1).sum() == (labels == 1).sum()
    with pytest.raises(EditError, match="no background"):
        add(labels, labels == 1)


def test_merge_joins_two_nuclei_across_their_seam(labels):
    out, touched = merge(labels, 2, 3)
    assert touched == [2, 3] and not (out == 3).any()
    from scipy import ndimage as ndi

    assert ndi.label(out == 2)[1] == 1  # one piece: the seam was filled
    assert (out[41:49, 20] == 2).all()  # the seam between them
    assert (out == 2).sum() <= (labels == 2).sum() + (labels == 3).sum() + 10  # and nothing else
    with pytest.raises(EditError, match="two different"):
        merge(labels, 2, 2)


def test_split_cuts_along_the_stroke_into_two_with_a_fresh_id(labels):
    out, touched = split(labels, np.array([[5, 30], [35, 30]]))  # a vertical stroke at col 30
    assert touched == [1, 4]
    assert (out == 1).sum() + (out == 4).sum() == (labels == 1).sum()  # no pixel lost
    assert set(np.unique(out[10:30, 10:29])) == {1} or set(np.unique(out[10:30, 10:29])) == {4}
    left, right = out[20, 15], out[20, 45]
    assert {left, right} == {1, 4}
    with pytest.raises(EditError, match="crosses none"):
        split(labels, np.array([[55, 60], [58, 75]]))
    with pytest.raises(EditError, match="crosses 2"):
        split(labels, np.array([[20, 30], [45, 15]]))
    with pytest.raises(EditError, match="does not cut"):
        split(labels, np.array([[5, 12], [12, 12]]))  # only nicks the corner
