"""Stain normalisation, deconvolution and augmentation: the core, on real and synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED

from napari_nucleiseg.stain import (
    RGB_FROM_HED,
    StainError,
    StainProfile,
    deconvolve,
    hed_to_rgb,
    load_target,
    make_normaliser,
    normalise_levels,
    normaliser_from_profile,
    rgb_to_hed,
)
from napari_nucleiseg.stain.augment import hed_jitter
from napari_nucleiseg.stain.sparse_nmf import nonneg_lasso_2, sparse_nmf_2

STAIN_DATA = SHARED / "data" / "stain"
from napari_nucleiseg.stain import STAIN_METHODS as METHODS  # noqa: E402


def _png(name):
    from PIL import Image

    p = STAIN_DATA / name
    if not p.exists():
        pytest.skip(f"{p} not available (../shared is absent on this machine)")
    return np.asarray(Image.open(p).convert("RGB"))


@pytest.fixture(scope="module")
def pair(he_rgb):
    """A synthetic reference and a differently stained copy of it (the source)."""
    ref = he_rgb[0]
    src = hed_jitter(ref, np.random.default_rng(3), sigma=0.08, bias=0.03)
    return ref, src


# ------------------------------------------------------------------ regression on shared data
@pytest.mark.parametrize("method", METHODS)
def test_matches_reference_toolbox_outputs(method):
    """Within 0.01 mean absolute difference (0-1 scale) of the other toolbox's outputs."""
    src, tgt, ref = _png("source_image.png"), _png("target_image.png"), _png(f"norm_{method}.png")
    out = make_normaliser(method).fit(tgt).transform(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    mae = float(np.mean(np.abs(out / 255.0 - ref / 255.0)))
    assert mae < 0.01, f"{method}: MAE {mae:.4f}"
    # ... and normalising does something: the source itself is much further from the reference.
    assert float(np.mean(np.abs(src / 255.0 - ref / 255.0))) > 3 * mae


def test_vahadane_stain_vectors_are_sparse_nmf_optimum():
    """Our solver's vectors agree with Macenko's plane and do not move under more iterations."""
    from napari_nucleiseg.stain.extract import vahadane_stains
    from napari_nucleiseg.stain.optical import OD_LUT32, sample_pixels, tissue_selection

    px = sample_pixels(_png("target_image.png"), 50_000)
    od = OD_LUT32[px[tissue_selection(px)]]
    w, iters = vahadane_stains(od)
    assert iters < 300
    w_more, _ = sparse_nmf_2(od, w, lam=0.02, max_iter=200, tol=1e-9)
    assert np.min(np.sum(w * w_more, axis=1)) > 0.9999
    assert (w >= 0).all() and np.allclose(np.linalg.norm(w, axis=1), 1)


# ------------------------------------------------------------------ the solver
def test_nonneg_lasso_2_is_exact():
    """Against a slow projected-gradient reference on random pixels and stains."""
    rng = np.random.default_rng(0)
    w = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
    x = rng.uniform(-0.2, 2.0, (3, 300)).astype(np.float32)
    for lam in (0.0, 0.05, 0.3):
        c0, c1 = nonneg_lasso_2(x, w, lam)
        c = np.stack([c0, c1], 1).astype(np.float64)
        assert (c >= 0).all()
        # reference: projected gradient descent, many iterations
        ref = np.zeros_like(c)
        g = w @ w.T
        step = 1.0 / np.linalg.eigvalsh(g).max()
        for _ in range(5000):
            grad = ref @ g - x.T.astype(np.float64) @ w.T + lam
            ref = np.maximum(ref - step * grad, 0)

        def obj(cc, lam=lam):
            r = x.T - cc @ w
            return 0.5 * (r * r).sum(1) + lam * cc.sum(1)

        assert np.all(obj(c) <= obj(ref) + 1e-4)
        np.testing.assert_allclose(c, ref, atol=2e-3)


def test_sparse_nmf_recovers_known_stains():
    rng = np.random.default_rng(1)
    w_true = np.array([[0.62, 0.72, 0.31], [0.12, 0.86, 0.50]])
    w_true /= np.linalg.norm(w_true, axis=1, keepdims=True)
    n = 20_000
    c = rng.gamma(1.5, 0.4, (n, 2)) * (rng.random((n, 2)) < [0.5, 0.8])  # sparse concentrations
    od = (c @ w_true + rng.normal(0, 0.01, (n, 3))).astype(np.float32)
    w0 = np.array([[0.7, 0.6, 0.4], [0.3, 0.8, 0.5]])
    w, _ = sparse_nmf_2(od, w0, lam=0.001)
    assert np.min(np.sum(w * w_true, axis=1)) > 0.999


# ------------------------------------------------------------------ profiles
@pytest.mark.parametrize("method", METHODS)
def test_profile_json_round_trip(tmp_path, pair, method):
    ref, src = pair
    n = make_normaliser(method).fit(ref, name="ref.png")
    path = n.profile.save(tmp_path / f"{method}.json")
    assert path.stat().st_size < 1500  # small enough to mail around
    loaded = StainProfile.load(path)
    assert loaded == n.profile and loaded.fitted_on["name"] == "ref.png"
    n2 = normaliser_from_profile(loaded)
    np.testing.assert_array_equal(n2.transform(src), n.transform(src))
    n3 = load_target(None, path)
    assert n3.method == method and n3.profile == n.profile


def test_folder_of_references_is_averaged(tmp_path, pair):
    from PIL import Image

    from napari_nucleiseg.stain import average_profiles

    ref, src = pair
    (tmp_path / "refs").mkdir()
    for i, img in enumerate((ref, src, ref[::-1])):
        Image.fromarray(img).save(tmp_path / "refs" / f"r{i}.png")
    (tmp_path / "refs" / "notes.txt").write_text("not an image")
    n = load_target("macenko", tmp_path / "refs")
    singles = [make_normaliser("macenko").fit(img).profile for img in (ref, src, ref[::-1])]
    w = np.mean([p.stain_matrix for p in singles], axis=0)
    np.testing.assert_allclose(
        n.profile.stain_matrix, w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-6
    )
    np.testing.assert_allclose(
        n.profile.max_concentrations,
        np.median([p.max_concentrations for p in singles], axis=0),
        atol=1e-6,
    )
    assert n.profile.fitted_on["images"] == ["r0.png", "r1.png", "r2.png"]
    lab = average_profiles([make_normaliser("reinhard").fit(img).profile for img in (ref, src)])
    assert lab.method == "reinhard" and len(lab.lab_mean) == 3
    with pytest.raises(StainError, match="different methods"):
        average_profiles([singles[0], lab])
    with pytest.raises(StainError, match="empty: no reference images"):
        (tmp_path / "empty").mkdir()
        load_target("macenko", tmp_path / "empty")


def test_profile_errors_name_the_file(tmp_path):
    with pytest.raises(StainError, match="missing.json: no such stain profile"):
        StainProfile.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StainError, match="bad.json: not a readable JSON"):
        StainProfile.load(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(
        json.dumps({"method": "macenko", "stain_matrix": [[1, 0, 0]], "max_concentrations": [1, 1]})
    )
    with pytest.raises(StainError, match="wrong.json: stain_matrix must be two rows"):
        StainProfile.load(wrong)
    nan = tmp_path / "nan.json"
    nan.write_text('{"method": "reinhard", "lab_mean": [NaN, 0, 0], "lab_std": [1, 1, 1]}')
    with pytest.raises(StainError, match="nan.json: lab_mean must be finite"):
        StainProfile.load(nan)
    other = tmp_path / "other.json"
    make_normaliser("reinhard").fit(
        np.random.default_rng(0).integers(0, 200, (64, 64, 3)).astype(np.uint8)
    ).profile.save(other)
    with pytest.raises(
        StainError, match="other.json: the profile was fitted with reinhard, not macenko"
    ):
        load_target("macenko", other)


# ------------------------------------------------------------------ chunk safety and laziness
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_transform_is_chunk_safe(pair, method):
    import dask.array as da

    ref, src = pair
    n = make_normaliser(method).fit(ref).adapt(src)
    whole = n.transform(src)
    lazy = normalise_levels([da.from_array(src, chunks=(97, 131, 3))], n)[0]
    assert lazy.chunks == da.from_array(src, chunks=(97, 131, 3)).chunks and lazy.dtype == np.uint8
    np.testing.assert_array_equal(lazy.compute(), whole)
    # a block transformed alone gives the same pixels as inside the whole image
    np.testing.assert_array_equal(n.transform(src[100:150, 40:90]), whole[100:150, 40:90])


def test_unadapted_view_adapts_once_to_the_whole_image(pair):
    import dask.array as da

    ref, src = pair
    n = make_normaliser("macenko").fit(ref)
    lazy = normalise_levels([da.from_array(src, chunks=(128, 128, 3))], n)[0]
    np.testing.assert_array_equal(lazy.compute(), n.adapt(src).transform(src))
    np.testing.assert_array_equal(
        lazy.compute(), n.transform(src)
    )  # unadapted: the image is its source


@pytest.fixture(scope="module")
def pyramid_slide(tmp_path_factory):
    """16384² px pyramidal slide (levels 16384, 4096, 1024, 256) with tissue in an ellipse."""
    from napari_nucleiseg.demo import make_large_slide

    return make_large_slide(
        tmp_path_factory.mktemp("stain") / "pyr.tif", size=(16384, 16384), tile=256
    )


def test_normalised_pyramid_is_lazy(pyramid_slide, pair, quiet):
    from napari_nucleiseg.io import open_slide

    slide = open_slide(pyramid_slide)
    levels = slide.pyramid()
    n = make_normaliser("macenko").fit(pair[0])
    slide.stats.reset()
    views = normalise_levels(levels, n)
    # adapting sampled the coarsest level and at most 16 level-0 blocks, nothing more
    sampled = slide.stats.chunks
    assert 0 < sampled <= 16 + levels[-1].numblocks[0] * levels[-1].numblocks[1]
    assert [v.shape for v in views] == [lv.shape for lv in levels]
    assert [v.chunks for v in views] == [lv.chunks for lv in levels]
    slide.stats.reset()
    views = normalise_levels(levels, n.adapt(pair[1]))  # adapted: no read at all until asked
    assert slide.stats.chunks == 0
    y, x = 8192, 8192
    block = views[0][y : y + 300, x : x + 300].compute()
    assert slide.stats.chunks == 1  # one 512² chunk holds that window
    raw = levels[0][y : y + 300, x : x + 300].compute()
    np.testing.assert_array_equal(block, n.adapt(pair[1]).transform(raw))
    slide.close()


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("method", METHODS)
def test_mostly_glass_reference_is_refused(method, pair):
    glass = np.full((200, 200, 3), 244, np.uint8)
    glass[:10, :10] = pair[0][:10, :10]
    with pytest.raises(StainError, match="mostly glass"):
        make_normaliser(method).fit(glass)


@pytest.mark.parametrize("method", ["reinhard", "macenko", "vahadane"])
def test_single_colour_reference_is_refused(method):
    flat = np.empty((100, 100, 3), np.uint8)
    flat[:] = (190, 110, 170)
    with pytest.raises(StainError, match="single flat colour"):
        make_normaliser(method).fit(flat)


@pytest.mark.parametrize("method", ["macenko", "vahadane"])
def test_reference_without_eosin_is_refused(method):
    rng = np.random.default_rng(0)
    hed = np.zeros((120, 120, 3), np.float32)
    hed[..., 0] = rng.uniform(0.05, 0.6, (120, 120))  # haematoxylin only
    with pytest.raises(StainError, match="one stain only"):
        make_normaliser(method).fit(hed_to_rgb(hed))


def test_load_target_names_the_reference(tmp_path):
    from PIL import Image

    p = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(p)
    with pytest.raises(
        StainError, match=r"blank.png: cannot be used as a macenko reference: only \d+"
    ):
        load_target("macenko", p)
    with pytest.raises(StainError, match="unknown stain normalisation method 'spams'"):
        make_normaliser("spams")
    with pytest.raises(StainError, match="no target yet"):
        make_normaliser("macenko").transform(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("method", METHODS)
def test_saturated_and_non_finite_pixels(method, pair):
    ref, src = pair
    ref = ref.copy()
    ref[:40] = 0  # clipped black rows
    ref[40:80] = 255  # blown-out rows
    n = make_normaliser(method).fit(ref)
    assert all(np.isfinite(v).all() for v in n.profile.to_dict().values() if isinstance(v, list))
    f = src.astype(np.float32) / 255.0
    f[:5, :5] = np.nan
    f[5:10, :5] = np.inf
    f[10:15, :5] = -np.inf
    out = n.transform(f)
    assert out.dtype == np.uint8 and out.shape == src.shape
    assert (out[:5, :5] == out[5:10, :5]).all()  # NaN and +inf read as glass alike
    extreme = np.zeros((50, 50, 3), np.uint8)
    extreme[::2] = 255
    assert n.adapt(src).transform(extreme).dtype == np.uint8


# ------------------------------------------------------------------ deconvolution
def test_deconvolution_recovers_known_concentrations():
    rng = np.random.default_rng(2)
    hed = np.stack(
        [
            rng.uniform(0, 1.0, (64, 64)),
            rng.uniform(0, 0.8, (64, 64)),
            rng.uniform(0, 0.5, (64, 64)),
        ],
        -1,
    )
    od = hed @ RGB_FROM_HED
    rgb = np.clip(np.rint(255.0 * 10.0 ** (-od)), 0, 255).astype(np.uint8)
    got = deconvolve(rgb)
    assert got.dtype == np.float32 and got.shape == hed.shape
    # 8-bit quantisation limits the precision: half a level of a dark channel (value ~8 at OD 1.5)
    # is 0.03 OD, times the inverse matrix's gain (~2)
    assert np.abs(got - hed).max() < 0.06 and np.abs(got - hed).mean() < 0.005
    np.testing.assert_allclose(
        got, rgb_to_hed(rgb), atol=1e-5
    )  # the table path = the direct formula
    assert np.abs(hed_to_rgb(got).astype(int) - rgb).max() <= 1


def test_deconvolution_separates_pure_stains():
    h_only = hed_to_rgb(np.broadcast_to(np.array([0.8, 0, 0], np.float32), (8, 8, 3)))
    d = deconvolve(h_only).reshape(-1, 3).mean(0)
    assert d[0] > 0.75 and abs(d[1]) < 0.03 and abs(d[2]) < 0.03


# ------------------------------------------------------------------ augmentation (behaviour frozen)
def test_hed_jitter_is_seeded_and_stays_hed_like(pair):
    ref = pair[0]
    a = hed_jitter(ref, np.random.default_rng(5))
    b = hed_jitter(ref, np.random.default_rng(5))
    c = hed_jitter(ref, np.random.default_rng(6))
    assert a.dtype == np.uint8 and a.shape == ref.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # with no jitter the image comes back (up to 8-bit round-off in the OD round trip)
    same = hed_jitter(ref, np.random.default_rng(0), sigma=0.0, bias=0.0)
    assert np.abs(same.astype(int) - ref).max() <= 1
    # the change is a per-stain scale and shift: haematoxylin still correlates with the original
    h0, h1 = deconvolve(ref)[..., 0].ravel(), deconvolve(a)[..., 0].ravel()
    assert np.corrcoef(h0, h1)[0, 1] > 0.95


# ------------------------------------------------------------------ pipeline option
def test_segmentation_records_the_normalisation(pair):
    from napari_nucleiseg.segmentation.api import describe_method, segment_image

    ref, src = pair
    n = make_normaliser("macenko").fit(ref, name="ref.png")
    info = describe_method("classical", n)
    assert info["method"] == "classical" and info["stain"]["method"] == "macenko"
    assert StainProfile.from_dict(info["stain"]["profile"]) == n.profile
    assert "stain" not in describe_method("classical")
    labels = segment_image(src, 0.5, "classical", normaliser=n)
    assert labels.shape == src.shape[:2] and labels.max() > 10
    # normalising first is what the result says it is: the same as segmenting the normalised image
    np.testing.assert_array_equal(labels, segment_image(n.transform(src), 0.5, "classical"))
