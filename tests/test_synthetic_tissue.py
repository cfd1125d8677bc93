"""The non-tumour renders (fat, blood, mucus, debris, lymphoid, muscle) that
``benchmarks/non_tumour.py`` measures classifiers on: deterministic, at the asked size, and each
with the stain signature that makes it what it is, measured by colour deconvolution of the
rendered pixels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nucleiseg.classification.synthetic_tissue import KINDS, render_tissue
from napari_nucleiseg.stain.deconvolution import deconvolve


def stats(kind: str, seed: int = 3):
    rgb = render_tissue(kind, 160, 1.0, seed)
    hed = deconvolve(rgb)
    od = -np.log10(np.clip(rgb.astype(np.float32), 1, 255) / 255.0)
    return rgb, hed[..., 0], hed[..., 1], od


@pytest.mark.parametrize("kind", KINDS)
def test_render_is_deterministic_and_sized(kind):
    a = render_tissue(kind, 96, 1.0, seed=5)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_tissue(kind, 96, 1.0, seed=5))
    assert not np.array_equal(a, render_tissue(kind, 96, 1.0, seed=6))


def test_each_kind_has_its_stain_signature():
    fat, blood, mucus, debris, lymph, muscle = (stats(k) for k in KINDS)
    # Fat is mostly empty: most pixels nearly white.
    assert np.mean(fat[3].sum(-1) < 0.1) > 0.7
    # Blood absorbs blue as well as green (orange-red), unlike eosin alone.
    rbc = blood[3][..., 1] > 0.3
    assert rbc.mean() > 0.3 and np.median(blood[3][rbc][:, 2] / blood[3][rbc][:, 1]) > 0.6
    # Mucus is pale: little stain anywhere.
    assert np.percentile(mucus[3].sum(-1), 90) < 0.6
    # Lymphoid tissue: a large share of strongly haematoxylin-stained pixels, more than muscle.
    h_share = [np.mean(s[1] > 0.3) for s in (lymph, muscle, debris)]
    assert h_share[0] > 0.3 and h_share[0] > 3 * max(h_share[1:])
    # Muscle and debris are mostly eosin.
    for s in (muscle, debris):
        assert np.median(s[2]) > np.median(fat[2]) + 0.05


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown tissue kind 'bone'"):
        render_tissue("bone", 64, 1.0)
