"""Reference 004's pathologist-free intermediate data set: Phansalkar nuclei on haematoxylin,
watershed, per-patch (density, area fraction), k-means into two clusters.

Real data from ../shared (skipped when absent): MoNuSeg test images with their instance masks
for the nuclei themselves, LC25000 tumour/normal tiles for the pseudo labels. The bars sit a
little below what was measured (noted beside each), so a broken threshold direction,
normalisation, scale conversion or cluster ordering fails them.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image

from napari_nucleiseg.classification.intermediate import (
    PhansalkarSettings,
    intermediate_labels,
    kmeans_labels,
    nuclei_instances,
    nuclei_mask,
    patch_features,
)

MONUSEG = SHARED / "data" / "nuclei" / "monuseg2018_test"
TISSUE = SHARED / "data" / "tissue"
LC25000_MPP = 1.37  # 224² tiles resized from 768² at ~0.4 µm/px: an estimate


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _monuseg_crops():
    if not (MONUSEG / "images").is_dir():
        pytest.skip(f"{MONUSEG} not available (../shared is absent on this machine)")
    return _read_monuseg_crops()


@functools.cache
def _read_monuseg_crops(size: int = 500):
    """Centre crops of all 14 MoNuSeg test images (every organ, light enough for a test)."""
    import tifffile

    out = []
    for img in sorted((MONUSEG / "images").glob("*.png")):
        rgb, gt = _rgb(img), tifffile.imread(MONUSEG / "labels" / (img.stem + ".tif"))
        y0, x0 = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
        sl = np.s_[y0 : y0 + size, x0 : x0 + size]
        out.append((img.stem, rgb[sl], gt[sl]))
    return out


def _lc25000(organ: str, n: int):
    """n tumour then n normal tiles, one per source image ('group': LC25000 tiles are augmented
    copies of ~250 sources per class), in a fixed order."""
    index = TISSUE / "index.json"
    if not index.exists():
        pytest.skip(f"{index} not available (../shared is absent on this machine)")
    rows = sorted(json.loads(index.read_text())["images"], key=lambda r: r["file"])
    patches, truth = [], []
    for label in ("tumour", "normal"):
        first = {}
        for r in rows:
            if r["organ"] == organ and r["label"] == label:
                first.setdefault(r["group"], r["file"])
        for f in sorted(first.values())[:n]:
            patches.append(_rgb(TISSUE / f))
            truth.append(label == "tumour")
    return patches, np.array(truth)


def test_phansalkar_nuclei_match_monuseg_foreground_and_counts():
    dice, ratio = [], []
    for _, rgb, gt in _monuseg_crops():
        lab = nuclei_instances(rgb, 0.25)
        m, g = lab > 0, gt > 0
        dice.append(2 * (m & g).sum() / (m.sum() + g.sum()))
        ratio.append(lab.max() / len(np.unique(gt[g])))
        assert lab.dtype == np.uint32
        assert not (m & ~nuclei_mask(rgb, 0.25)).any()  # instances only split the mask
    dice, ratio = np.array(dice), np.array(ratio)
    # measured on the 500² crops: Dice mean 0.78 (0.70-0.83); found/true count median 0.90
    # (0.61-1.05; the truth also counts the slivers of nuclei cut by the crop edge)
    assert dice.mean() >= 0.74, dice.round(3)
    assert dice.min() >= 0.64, dice.round(3)
    assert 0.75 <= np.median(ratio) <= 1.15, ratio.round(2)
    assert ((ratio > 0.5) & (ratio < 1.3)).all(), ratio.round(2)


def test_blank_and_flat_patches_have_no_nuclei():
    for colour in ((255, 255, 255), (200, 150, 200), (60, 40, 110)):
        flat = np.full((224, 224, 3), colour, np.uint8)
        assert not nuclei_mask(flat, LC25000_MPP).any()
        np.testing.assert_array_equal(patch_features(flat, LC25000_MPP), [0.0, 0.0])


def test_features_survive_a_2x_rescale_given_the_matching_mpp():
    # measured on these crops: density ratio 0.91-1.12, area-fraction ratio 1.01-1.04
    for stem, rgb, _ in _monuseg_crops()[:4]:
        rgb = rgb[:496, :496]
        half = rgb.reshape(248, 2, 248, 2, 3).mean((1, 3)).round().astype(np.uint8)
        full_f, half_f = patch_features(rgb, 0.25), patch_features(half, 0.5)
        assert full_f[0] > 1000 and full_f[1] > 0.05, (stem, full_f)
        np.testing.assert_allclose(half_f, full_f, rtol=0.25, err_msg=stem)
        np.testing.assert_allclose(half_f[1], full_f[1], rtol=0.1, err_msg=stem)
    # Ignoring mpp must break it: the same half-size patch read as 0.25 µm/px is 4x too dense.
    wrong = patch_features(half, 0.25)
    assert abs(wrong[0] / full_f[0] - 1) > 0.5


def test_kmeans_separates_blobs_orders_by_density_and_is_deterministic():
    rng = np.random.default_rng(3)
    sparse = rng.normal([800.0, 0.05], [60.0, 0.01], (30, 2))
    dense = rng.normal([3000.0, 0.25], [150.0, 0.02], (20, 2))
    x = np.vstack([dense, sparse])
    labels = kmeans_labels(x, seed=0)
    np.testing.assert_array_equal(labels, [1] * 20 + [0] * 30)
    perm = rng.permutation(len(x))
    np.testing.assert_array_equal(kmeans_labels(x[perm], seed=7), labels[perm])
    three = kmeans_labels(np.vstack([x, rng.normal([9000.0, 0.5], [50, 0.01], (10, 2))]), k=3)
    assert set(three[:20]) == {1} and set(three[20:50]) == {0} and set(three[50:]) == {2}
    assert kmeans_labels(np.ones((5, 2))).tolist() == [0] * 5  # no spread: one cluster
    assert kmeans_labels(np.zeros((0, 2))).shape == (0,)


def _check_lc25000(organ, n, min_agree, min_area_auc):
    patches, tumour = _lc25000(organ, n)
    calls = []
    labels, feats = intermediate_labels(
        patches, LC25000_MPP, progress=lambda i, k: calls.append((i, k))
    )
    assert calls == [(i + 1, len(patches)) for i in range(len(patches))]
    assert feats.shape == (len(patches), 2) and labels.shape == (len(patches),)
    # Cluster 1 is the denser one by construction; no flipping to the better of two matchings.
    assert feats[labels == 1, 0].mean() > feats[labels == 0, 0].mean()
    agree = float((labels == tumour).mean())
    area_auc = float((feats[tumour, 1][:, None] > feats[~tumour, 1][None]).mean())
    assert agree >= min_agree, (organ, agree)
    assert area_auc >= min_area_auc, (organ, area_auc)


def test_lc25000_colon_clusters_agree_with_tumour_label_better_than_chance():
    # measured: agreement 0.64 on 60 + 60 tiles (0.65 on 200 + 200); area-fraction AUC 0.71.
    # Weak because colon adenocarcinoma nuclei are large and pale, normal mucosa is dense with
    # small dark lamina-propria nuclei: nuclear counts alone barely separate them.
    _check_lc25000("colon", 60, min_agree=0.58, min_area_auc=0.62)


def test_lc25000_lung_clusters_agree_with_tumour_label():
    # measured: agreement 0.81 on 40 + 40 tiles (0.85 on 200 + 200); area-fraction AUC 1.0
    _check_lc25000("lung", 40, min_agree=0.72, min_area_auc=0.9)


def test_settings_are_used():
    _, rgb, _ = _monuseg_crops()[0]
    base = nuclei_mask(rgb, 0.25).mean()
    # Larger k lowers T (σ/r < 1 in tissue), so fewer pixels pass; bigger min size removes more.
    assert nuclei_mask(rgb, 0.25, PhansalkarSettings(k=0.5)).mean() < base
    assert nuclei_mask(rgb, 0.25, PhansalkarSettings(min_nucleus_um2=60.0)).mean() < base
