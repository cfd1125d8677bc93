"""Metrics on cases checkable by hand."""

import numpy as np
import pytest

from napari_nucleiseg.metrics import aggregate, score_image


def squares(*boxes, shape=(20, 20)):
    lab = np.zeros(shape, np.int32)
    for i, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        lab[y0:y1, x0:x1] = i
    return lab


def test_identical_maps_score_perfectly():
    gt = squares((1, 1, 5, 5), (8, 8, 12, 14), (15, 2, 19, 6))
    pred = gt * 7  # ids do not matter
    s = score_image(gt, pred)
    for k in (
        "pixel_accuracy",
        "mean_accuracy",
        "mean_iu",
        "dice",
        "f1",
        "aji",
        "pq",
        "ap",
        "dq",
        "sq",
    ):
        assert getattr(s, k) == pytest.approx(1.0), k


def test_one_nucleus_split_in_two():
    gt = squares((0, 0, 4, 8))  # one 4x8 nucleus (32 px)
    pred = squares((0, 0, 4, 4), (0, 4, 4, 8))  # predicted as two 4x4 halves
    s = score_image(gt, pred)
    # IoU of each half with the nucleus is 16/32 = 0.5, not > 0.5: no true positive.
    assert s.f1 == 0 and s.pq == 0 and s.ap == 0
    # AJI: best half gives inter 16, union 32; the other half (16 px) is unused -> union 48.
    assert s.aji == pytest.approx(16 / 48)
    # Pixels are all right.
    assert s.dice == 1 and s.pixel_accuracy == 1


def test_empty_prediction():
    gt = squares((1, 1, 5, 5), (8, 8, 12, 12))
    s = score_image(gt, np.zeros_like(gt))
    assert s.f1 == 0 and s.aji == 0 and s.pq == 0 and s.ap == 0 and s.dice == 0
    assert s.recall == 0 and s.n_pred == 0
    # Background is all correct: 400 - 32 of 400 pixels.
    assert s.pixel_accuracy == pytest.approx(368 / 400)
    assert s.mean_accuracy == pytest.approx(0.5)


def test_partial_overlap_by_hand():
    gt = squares((0, 0, 4, 4), (10, 10, 14, 14))  # two 16 px nuclei
    pred = squares((0, 1, 4, 5), (15, 15, 18, 18))  # one shifted by 1 px, one false positive
    s = score_image(gt, pred)
    iou = 12 / 20
    assert s.counts["tp"] == 1 and s.counts["fp"] == 1 and s.counts["fn"] == 1
    assert s.f1 == pytest.approx(2 / 4)
    assert (
        s.sq == pytest.approx(iou)
        and s.dq == pytest.approx(0.5)
        and s.pq == pytest.approx(0.5 * iou)
    )
    # AP: matched at thresholds 0.5 and 0.55 (IoU 0.6 > both), not from 0.6 on.
    assert s.ap == pytest.approx((1 / 3 + 1 / 3) / 10)
    # AJI: inter 12; unions 20 (first) + 16 (second, unmatched) + 9 (unused prediction).
    assert s.aji == pytest.approx(12 / (20 + 16 + 9))


def test_aggregate_sums_numerators_and_denominators():
    a = score_image(squares((0, 0, 4, 4)), squares((0, 0, 4, 4)))  # AJI 16/16
    b = score_image(squares((0, 0, 4, 8)), squares((0, 0, 4, 4), (0, 4, 4, 8)))  # AJI 16/48
    agg = aggregate([a, b])
    assert agg["aji"] == pytest.approx((16 + 16) / (16 + 48))
    assert agg["mean_per_image"]["aji"] == pytest.approx((1 + 1 / 3) / 2)
    assert agg["tp"] == 1 and agg["fp"] == 2 and agg["fn"] == 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        score_image(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_large_ids_and_speed_independent_of_id_values():
    gt = squares((1, 1, 5, 5)).astype(np.int64) * 4_000_000_000
    pred = squares((1, 1, 5, 5)) * 123456
    assert score_image(gt, pred).aji == 1


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_error_budget_classes_each_true_nucleus_once():
    """Seven true nuclei: two matched, one missed, one split, one too small, two merged; and a
    spurious blob on background."""
    from napari_nucleiseg.metrics.errors import error_budget, pooled_budget

    shape = (120, 200)
    true = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    centres = [(20, 20), (20, 60), (20, 100), (20, 140), (70, 20), (70, 60), (70, 80)]
    for k, (cy, cx) in enumerate(centres, 1):
        true[_disk(shape, cy, cx, 8)] = k
    pred[_disk(shape, 20, 20, 8)] = 1  # matched exactly
    pred[_disk(shape, 20, 61, 8)] = 2  # matched, shifted by 1 px
    # nucleus 3 missed: nothing drawn
    xx = np.mgrid[:120, :200][1]
    pred[_disk(shape, 20, 140, 8) & (xx < 138)] = 4  # split in three
    pred[_disk(shape, 20, 140, 8) & (xx >= 138) & (xx < 143)] = 5
    pred[_disk(shape, 20, 140, 8) & (xx >= 143)] = 9
    pred[_disk(shape, 70, 20, 3)] = 6  # drawn far too small: boundary
    pred[_disk(shape, 70, 60, 9) | _disk(shape, 70, 80, 9)] = 7  # nuclei 6 and 7 merged
    pred[_disk(shape, 105, 180, 6)] = 8  # spurious
    b = error_budget(true, pred)
    assert (b["matched"], b["missed"], b["split"], b["boundary"], b["merged"]) == (2, 1, 1, 1, 2)
    assert b["spurious"] == 1 and b["n_true"] == 7 and b["n_pred"] == 8
    pooled = pooled_budget([b, error_budget(true, true)])
    assert pooled["n_true"] == 14 and pooled["matched"] == 9
    assert sum(
        pooled[f"{k}_share"] for k in ("matched", "missed", "merged", "split", "boundary")
    ) == (pytest.approx(1.0))
    # Matched nuclei drawn one pixel too small each way read as an area ratio below 1.
    from scipy import ndimage as ndi

    shrunk = np.where(ndi.binary_erosion(true > 0), true, 0)
    assert pooled_budget([error_budget(true, shrunk)])["matched_area_ratio"] < 0.9
