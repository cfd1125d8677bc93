"""The demo slide: deterministic, H&E-like, nuclei of realistic size, some touching."""

import numpy as np

from napari_nucleiseg.demo import demo_slide, read_label_pyramid
from napari_nucleiseg.demo.render import render_he
from napari_nucleiseg.io import open_slide


def test_render_is_deterministic():
    a = render_he((256, 256), 0.5, seed=3)
    b = render_he((256, 256), 0.5, seed=3)
    c = render_he((256, 256), 0.5, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_demo_is_generated_once_and_reused(tmp_path, demo):
    first = demo_slide(tmp_path)
    stamp = first.slide.stat().st_mtime_ns
    again = demo_slide(tmp_path)
    assert again.slide.stat().st_mtime_ns == stamp
    # Same labels as the session's demo generated elsewhere: deterministic.
    a = read_label_pyramid(first.labels)[0].compute()
    b = read_label_pyramid(demo.labels)[0].compute()
    assert np.array_equal(a, b)
    assert not list(tmp_path.glob("*.part"))


def test_demo_nuclei_are_realistic(demo):
    from skimage.measure import regionprops

    labels = read_label_pyramid(demo.labels)[0].compute()
    assert labels.shape == (3072, 4096)
    ids = np.unique(labels[labels > 0])
    assert len(ids) == demo.nuclei > 2000
    props = regionprops(labels)
    diam_um = np.array([p.equivalent_diameter_area for p in props]) * demo.mpp
    assert 4.0 < np.median(diam_um) < 9.0 and diam_um.max() < 11.0
    # Some nuclei touch: a different id directly to the right or below.
    right = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    down = (labels[:-1] > 0) & (labels[1:] > 0) & (labels[:-1] != labels[1:])
    pairs = set(zip(labels[:, :-1][right], labels[:, 1:][right])) | set(
        zip(labels[:-1][down], labels[1:][down])
    )
    assert len(pairs) > 50


def test_demo_looks_like_he(demo):
    slide = open_slide(demo.slide)
    rgb = slide.read_region(0, 0, 4096, 3072, 0).astype(np.float32)
    labels = read_label_pyramid(demo.labels)[0].compute()
    nuclei = rgb[labels > 0].mean(axis=0)
    tissue_bg = rgb[(labels == 0) & (rgb.min(axis=2) < 225)].mean(axis=0)
    # Nuclei are dark purple-blue (blue above red above green); stroma pink (red, blue > green).
    assert nuclei.sum() < tissue_bg.sum() - 150
    assert nuclei[2] > nuclei[0] > nuclei[1]
    assert tissue_bg[0] > tissue_bg[1] + 40 and tissue_bg[2] > tissue_bg[1] + 40
    # The label pyramid lines up with the slide pyramid level by level.
    pyr = read_label_pyramid(demo.labels)
    assert [p.shape for p in pyr] == [s for s in slide.level_shapes]
