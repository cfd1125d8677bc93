"""Per-nucleus measurements in physical units, as a column table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLUMNS = ["label", "centroid_x_um", "centroid_y_um", "area_um2", "perimeter_um", "eccentricity",
           "solidity", "mean_haematoxylin_od"]


def measure_nuclei(labels: np.ndarray, rgb: np.ndarray | None, mpp: float,
                   origin_px: tuple[float, float] = (0.0, 0.0)) -> dict[str, np.ndarray]:
    """Measure every nucleus of ``labels``.

    ``origin_px`` is the (x, y) of the label map's pixel (0, 0) in slide level-0 pixels, so
    centroids come out in slide µm wherever the region was cut from. Pixel centres are at +0.5.
    """
    from skimage.measure import regionprops_table

    from ..stain import rgb_to_hed

    labels = np.asarray(labels)
    if labels.max() == 0:
        return {c: np.zeros(0, np.float64 if c != "label" else np.uint32) for c in COLUMNS}
    intensity = None
    if rgb is not None:
        intensity = np.clip(rgb_to_hed(rgb)[..., 0], 0, None)
    props = ["label", "centroid", "area", "perimeter", "eccentricity", "solidity"]
    if intensity is not None:
        props.append("intensity_mean")
    t = regionprops_table(labels.astype(np.int64), intensity_image=intensity, properties=props)
    ox, oy = origin_px
    return {
        "label": t["label"].astype(np.uint32),
        "centroid_x_um": (t["centroid-1"] + 0.5 + ox) * mpp,
        "centroid_y_um": (t["centroid-0"] + 0.5 + oy) * mpp,
        "area_um2": t["area"] * mpp * mpp,
        "perimeter_um": t["perimeter"] * mpp,
        "eccentricity": t["eccentricity"],
        "solidity": t["solidity"],
        "mean_haematoxylin_od": t["intensity_mean"] if intensity is not None else np.full(len(t["label"]), np.nan),
    }


def write_csv(table: dict[str, np.ndarray], path: str | Path) -> None:
    path = Path(path)
    n = len(table["label"])
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(n):
            w.writerow([int(table["label"][i])] + [f"{float(table[c][i]):.6g}" for c in COLUMNS[1:]])
    tmp.replace(path)
