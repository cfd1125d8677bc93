"""Segmenting one region of a slide (the widget's "current view"), without napari."""

import numpy as np
import pytest

from napari_nucleiseg.segmentation.region import (
    EmptyRegionError,
    RegionTooLargeError,
    keep_centred,
    plan_region,
    run,
    segment_region,
)


@pytest.fixture(scope="module")
def demo_open(demo):
    from napari_nucleiseg.io import open_slide

    return open_slide(demo.slide)


def _truth(demo, x0, y0, w, h):
    from napari_nucleiseg.demo import read_label_pyramid

    return np.asarray(read_label_pyramid(demo.labels)[0][y0 : y0 + h, x0 : x0 + w])


def test_plan_reads_the_level_at_the_models_resolution_with_a_halo(demo_open):
    plan = plan_region(demo_open, (1000.4, 1200.0, 1500.0, 1700.2), "classical")
    assert plan.level == 0 and plan.downsample == 1.0 and plan.mpp == 0.5
    assert plan.halo == 48  # 24 µm of context at 0.5 µm/px
    assert plan.box == (1000, 1200, 1500, 1701)
    assert plan.origin == (1000 - 48, 1200 - 48)
    assert plan.shape == (501 + 96, 500 + 96)
    # Clipped to the slide.
    assert plan_region(demo_open, (-50, -50, 100, 100), "classical").box == (0, 0, 100, 100)


def test_region_labels_sit_on_the_true_nuclei(demo, demo_open):
    box = (1200, 1100, 1712, 1612)
    result = run(segment_region(demo_open, box, "classical"))
    plan = result.plan
    assert result.labels.shape == plan.shape and result.labels.dtype == np.uint32
    ox, oy = (int(v) for v in plan.origin)
    truth = _truth(demo, ox, oy, plan.shape[1], plan.shape[0])
    fg, gt = result.labels > 0, truth > 0
    dice = 2 * (fg & gt).sum() / (fg.sum() + gt.sum())
    assert dice > 0.7, dice
    # Shifted by two pixels the overlap drops: the placement, not just the content, is tested.
    shifted = 2 * (fg[2:, 2:] & gt[:-2, :-2]).sum() / (fg[2:, 2:].sum() + gt[:-2, :-2].sum())
    assert shifted < dice - 0.05
    # Only nuclei centred in the view are kept, whole (some reach into the halo).
    table = result.measure()
    assert len(table["label"]) == result.count > 20
    cx = table["centroid_x_um"] / 0.5
    cy = table["centroid_y_um"] / 0.5
    assert cx.min() >= box[0] and cx.max() < box[2] and cy.min() >= box[1] and cy.max() < box[3]
    assert (
        (result.labels[:48] > 0).any()
        or (result.labels[:, :48] > 0).any()
        or (result.labels[-48:] > 0).any()
        or (result.labels[:, -48:] > 0).any()
    )


def test_a_coarser_model_resolution_resamples_and_places_the_labels(demo):
    from napari_nucleiseg.io import open_slide

    # The same pixels declared at 0.25 µm/px: the classical method (0.5 µm/px) reads at 2x down.
    slide = open_slide(demo.slide, mpp=0.25)
    result = run(segment_region(slide, (1200, 1100, 1712, 1612), "classical"))
    plan = result.plan
    assert plan.downsample == pytest.approx(2.0) and plan.mpp == pytest.approx(0.5)
    assert plan.shape == (256 + 2 * plan.halo, 256 + 2 * plan.halo)
    ox, oy = (int(v) for v in plan.origin)
    truth = _truth(demo, ox, oy, 2 * plan.shape[1], 2 * plan.shape[0])[::2, ::2]
    fg, gt = result.labels > 0, truth > 0
    assert 2 * (fg & gt).sum() / (fg.sum() + gt.sum()) > 0.5


def test_glass_outside_and_too_large_views_say_so(demo_open):
    with pytest.raises(EmptyRegionError, match="only glass"):
        run(segment_region(demo_open, (0, 0, 400, 300), "classical"))
    with pytest.raises(EmptyRegionError, match="outside the slide"):
        run(segment_region(demo_open, (5000, 0, 6000, 100), "classical"))
    with pytest.raises(RegionTooLargeError, match="whole-slide job") as refused:
        run(segment_region(demo_open, (0, 0, 4096, 3072), "classical", max_megapixels=4))
    # The view as the user sees it (on the slide), not with the margins read around it.
    assert "the view is 4096 x 3072 px at the model's 0.5 µm/px" in str(refused.value)
    # Zoomed in as it says, the view fits (the context around it does not shrink).
    import re

    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.segmentation.region import plan_region

    zoom = float(re.search(r"zoom in about ([0-9.]+)x", str(refused.value)).group(1))

    def megapixels_at(z):
        w, h = 4096 / z, 3072 / z
        box = (2048 - w / 2, 1536 - h / 2, 2048 + w / 2, 1536 + h / 2)
        return plan_region(demo_open, box, get_method("classical")).megapixels

    assert megapixels_at(zoom) <= 4 < megapixels_at(zoom - 0.1)  # enough, and not more
    # A limit the context alone exceeds is refused too (the zoom advice looped for ever).
    with pytest.raises(RegionTooLargeError, match="whole-slide job"):
        run(segment_region(demo_open, (0, 0, 4096, 3072), "classical", max_megapixels=1e-6))


def test_a_tiled_region_yields_per_tile_and_stops_when_closed(demo_open):
    steps = segment_region(demo_open, (1000, 1000, 2600, 2200), "classical", max_megapixels=8)
    assert next(steps) == (0, 1)
    # The finished tile's count comes with its nuclei, so a run cancelled as soon as it has
    # reported one tile done still leaves that tile's nuclei.
    first = next(steps)
    assert first.done == 1 and first.total > 1
    partial = first.so_far
    assert (
        partial.partial and partial.labels.max() > 0 and partial.labels.shape == partial.plan.shape
    )
    steps.close()  # cancelling: no error, nothing more runs
    with pytest.raises(StopIteration):
        next(steps)


def test_keep_centred_drops_nuclei_owned_by_the_neighbouring_view():
    lab = np.zeros((10, 10), np.uint32)
    lab[1:3, 1:3] = 5  # centred at (2, 2): inside
    lab[7:10, 7:10] = 9  # centred at (8.5, 8.5): outside
    lab[3:6, 5:9] = 2  # reaches outside, centred inside
    out = keep_centred(lab, (0, 0, 8, 8))
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert (out[3:6, 5:9] > 0).all() and not out[7:, 7:].any()


def test_a_view_of_a_slide_at_an_implausible_mpp_is_refused_before_reading(demo):
    """The view is read at the method's µm/px, so the slide's own is checked in the plan: a 40
    µm/px override would otherwise be upsampled 80x."""
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.tiling.plan import ResolutionError

    slide = open_slide(demo.slide, mpp=40.0)
    with pytest.raises(ResolutionError, match="40 µm/px is 80x coarser"):
        plan_region(slide, (0, 0, 50, 50), "nuclei-unet-v4")
