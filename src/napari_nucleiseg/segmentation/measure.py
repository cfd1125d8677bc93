"""Per-nucleus measurements in physical units, as a column table.

Whole-slide jobs measure millions of nuclei, so everything that can be is computed for all nuclei
at once from ``bincount`` sums (area, centroid, second moments → eccentricity, haematoxylin);
only the convex hull (for solidity) is per nucleus, on its few boundary points.

Definitions: eccentricity of the ellipse with the nucleus' second moments (as scikit-image);
perimeter as a Crofton estimate, π/4 × the number of pixel edges between the nucleus and anything
else (exact on average for round shapes); solidity = area / area of the convex hull of the
nucleus' pixel squares.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

COLUMNS = ["label", "centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um", "eccentricity",
           "solidity", "mean_haematoxylin_od"]


def _edge_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixel edges each label shares with a different label or the background (or the border)."""
    counts = np.zeros(n + 1, np.int64)
    padded = np.pad(labels, 1)
    for a, b in ((padded[1:, :], padded[:-1, :]), (padded[:, 1:], padded[:, :-1])):
        diff = a != b
        counts += np.bincount(a[diff], minlength=n + 1) + np.bincount(b[diff], minlength=n + 1)
    return counts


def _solidity(labels: np.ndarray, ids: np.ndarray, area: np.ndarray) -> np.ndarray:
    from scipy.spatial import ConvexHull, QhullError

    out = np.ones(len(ids))
    slices = ndi.find_objects(labels)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    for k, i in enumerate(ids):
        sl = slices[i - 1]
        if sl is None:
            continue
        obj = labels[sl] == i
        edge = obj & ~ndi.binary_erosion(obj)
        pts = np.argwhere(edge)
        pts = (pts[:, None, :] + corners[None]).reshape(-1, 2)
        try:
            out[k] = min(1.0, area[k] / ConvexHull(pts).volume)
        except (QhullError, ValueError):
            out[k] = 1.0
    return out


def measure_nuclei(labels: np.ndarray, rgb: np.ndarray | None, mpp: float,
                   origin_px: tuple[float, float] = (0.0, 0.0)) -> dict[str, np.ndarray]:
    """Measure every nucleus of ``labels``.

    ``origin_px`` is the (x, y) of the label map's pixel (0, 0) in slide level-0 pixels, so
    centroids come out in slide µm wherever the region was cut from. Pixel centres are at +0.5.
    """
    from ..stain import haematoxylin_od

    labels = np.asarray(labels).astype(np.int64, copy=False)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return {c: np.zeros(0, np.float64 if c != "label" else np.uint32) for c in COLUMNS}
    fg = labels > 0
    lab = labels[fg]
    ys, xs = np.nonzero(fg)
    area_all = np.bincount(lab, minlength=n + 1).astype(np.float64)
    ids = np.nonzero(area_all)[0]
    ids = ids[ids > 0]
    a = area_all[ids]
    sy = np.bincount(lab, ys, n + 1)[ids]
    sx = np.bincount(lab, xs, n + 1)[ids]
    cy, cx = sy / a, sx / a
    # Central second moments (+1/12: a pixel is a unit square, not a point).
    myy = np.bincount(lab, ys.astype(np.float64) ** 2, n + 1)[ids] / a - cy**2 + 1 / 12
    mxx = np.bincount(lab, xs.astype(np.float64) ** 2, n + 1)[ids] / a - cx**2 + 1 / 12
    mxy = np.bincount(lab, ys.astype(np.float64) * xs, n + 1)[ids] / a - cy * cx
    half_tr, det_root = (myy + mxx) / 2, np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    l1, l2 = half_tr + det_root, np.clip(half_tr - det_root, 0, None)
    ecc = np.sqrt(np.clip(1 - l2 / np.maximum(l1, 1e-12), 0, 1))
    perimeter = _edge_counts(labels, n)[ids] * (np.pi / 4)
    if rgb is not None:
        h = np.clip(haematoxylin_od(np.asarray(rgb)[fg]), 0, None)
        mean_h = np.bincount(lab, h, n + 1)[ids] / a
    else:
        mean_h = np.full(len(ids), np.nan)
    ox, oy = origin_px
    return {
        "label": ids.astype(np.uint32),
        "centroid_x_um": (cx + 0.5 + ox) * mpp,
        "centroid_y_um": (cy + 0.5 + oy) * mpp,
        "area_um2": a * mpp * mpp,
        "perimeter_um": perimeter * mpp,
        "eccentricity": ecc,
        "solidity": _solidity(labels, ids, a),
        "mean_haematoxylin_od": mean_h,
    }


def write_csv(table: dict[str, np.ndarray], path: str | Path) -> None:
    path = Path(path)
    n = len(table["label"])
    tmp = path.with_suffix(path.suffix + ".part")
    cols = [table[c] for c in COLUMNS[1:]]
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(n):
            w.writerow([int(table["label"][i])] + [f"{float(c[i]):.6g}" for c in cols])
    tmp.replace(path)
