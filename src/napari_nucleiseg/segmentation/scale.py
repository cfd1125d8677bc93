"""Do the nuclei found say the µm/px is wrong?

A slide's µm/px decides the scale the model sees. Given 0.5 µm/px for a slide scanned at about
1 µm/px, every nucleus looks half its size to a 0.5 µm/px model, and the model finds few of them
(1,154 nuclei instead of 26,444 on the TCGA slide of ``../shared/data``) without any error. H&E
nuclei have a known size range, so the median area of the nuclei found, in µm² at the stated
µm/px, says whether that µm/px is plausible.

Measured with the shipped model (``benchmarks/mpp_sanity.py``, 20 MoNuSeg images and two real
slides; ``nuclei-unet-v5``): at the right µm/px the median area is 18.8-57.4 µm² on every image;
stated 2x too fine it is 10.5-17.4 (19 of 21 images below 17: the CMU slide 12.2, the TCGA slide
11.2); stated 2x too coarse 34-114 (11 of 21 above 66). (``nuclei-unet-v4``: 19.7-53.2, 10.8-22.0
and 42-91.) The model partly adapts to a wrong scale (it finds the nuclei it can see at its
own), so the median area moves about linearly with the µm/px, not with its square: the
suggestion is ``stated * reference / median``. It is a rough guide: on images of known µm/px the
suggestion was 0.56-1.6x the truth.
A wrong µm/px that is not flagged still gives a warning-free result, as before; a flagged one is
wrong far more often than not. Other labs' slides, whose nuclei the model draws small, sit nearer
the lower bound: the message says "check", not "wrong".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Median nucleus area (µm²) the shipped model finds on H&E at the right µm/px (geometric mean
#: over 20 MoNuSeg images at 0.25 µm/px: 28.4 for nuclei-unet-v5, 29 for v4; see the module
#: docstring).
REFERENCE_AREA_UM2 = 28.0
#: Median areas (µm²) outside this range are implausible for H&E at the stated µm/px: below the
#: smallest median seen at the right µm/px (18.8) by 10 %, above the largest (57.4) by 15 %.
PLAUSIBLE_MEDIAN_UM2 = (17.0, 66.0)
#: Fewer nuclei than this say nothing reliable about the scale.
MIN_NUCLEI = 50


@dataclass(frozen=True)
class ScaleVerdict:
    """What the nuclei of one result say about its µm/px."""

    stated_mpp: float
    count: int
    median_area_um2: float
    suggested_mpp: float | None  # None: too few nuclei to tell
    implausible: bool

    def message(
        self, name: str, advice: str = "Check its µm/px (set it and segment again)."
    ) -> str:
        """One line for the user, naming ``name`` (a slide, an image), ending with ``advice``
        (what to do, in the words of where it is read)."""
        return (
            f"{name}: the nuclei found are {self.median_area_um2:.0f} µm² (median of "
            f"{self.count:,}) at {self.stated_mpp:g} µm/px, where H&E nuclei measure about "
            f"{REFERENCE_AREA_UM2:.0f} µm²: the slide is more likely about "
            f"{self.suggested_mpp:.2g} µm/px. {advice}"
        )


def nuclei_scale(labels: np.ndarray, mpp: float) -> ScaleVerdict:
    """The verdict for instance ``labels`` (0 = background) segmented at ``mpp`` µm/px."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return scale_from_areas(areas * float(mpp) ** 2, mpp)


def scale_from_areas(areas_um2: np.ndarray, mpp: float) -> ScaleVerdict:
    """The verdict from nucleus areas (µm², measured at ``mpp`` µm/px), e.g. a result's table."""
    areas = np.asarray(areas_um2, np.float64)
    count = int(areas.size)
    if count == 0:
        return ScaleVerdict(float(mpp), 0, 0.0, None, False)
    median = float(np.median(areas))
    if count < MIN_NUCLEI:
        return ScaleVerdict(float(mpp), count, median, None, False)
    suggested = float(mpp) * REFERENCE_AREA_UM2 / median
    low, high = PLAUSIBLE_MEDIAN_UM2
    implausible = not (low <= median <= high)
    return ScaleVerdict(float(mpp), count, median, suggested, implausible)
