"""``nucleiseg normalize`` and ``segment --normalize``, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory, he_rgb):
    """A reference PNG, a differently stained source PNG, and a two-level pyramidal slide of it."""
    from PIL import Image

    from napari_nucleiseg.demo.slides import write_pyramidal_tiff
    from napari_nucleiseg.stain.augment import hed_jitter

    d = tmp_path_factory.mktemp("stain_cli")
    ref = he_rgb[0]
    src = hed_jitter(ref, np.random.default_rng(11), sigma=0.08, bias=0.03)
    Image.fromarray(ref).save(d / "ref.png")
    Image.fromarray(src).save(d / "src.png")
    write_pyramidal_tiff(d / "slide.tif", np.tile(src, (2, 2, 1)), mpp=0.5)  # 1200x1600, 300x400
    return d, ref, src


def test_normalize_image_and_save_profile(files):
    from PIL import Image

    from napari_nucleiseg.stain import StainProfile, make_normaliser

    d, ref, src = files
    out = run(
        "normalize",
        d / "src.png",
        "--method",
        "vahadane",
        "--target",
        d / "ref.png",
        "--out",
        d / "out.png",
        "--save-profile",
        d / "lab.json",
    )
    assert out.returncode == 0, out.stderr
    got = np.asarray(Image.open(d / "out.png"))
    expected = make_normaliser("vahadane").fit(ref).transform(src)
    np.testing.assert_array_equal(got, expected)
    profile = StainProfile.load(d / "lab.json")
    assert profile.method == "vahadane" and profile.fitted_on["name"] == "ref.png"
    assert json.loads(Image.open(d / "out.png").text["nucleiseg"])["stain"]["method"] == "vahadane"


def test_normalize_slide_to_pyramids(files, quiet):
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.stain import make_normaliser, normalise_levels

    d, ref, _ = files
    (d / "p.json").write_text(json.dumps(make_normaliser("macenko").fit(ref).profile.to_dict()))
    for name in ("out.tif", "out.zarr"):
        out = run("normalize", d / "slide.tif", "--target", d / "p.json", "--out", d / name)
        assert out.returncode == 0, out.stderr
        # Progress on a log: whole lines, about one per tenth (never carriage returns).
        lines = out.stderr.splitlines()
        assert "\r" not in out.stderr and 2 <= len(lines) <= 11, out.stderr
        assert all(line.startswith("slide.tif: ") and " tiles (" in line for line in lines)
        assert lines[-1].endswith("(100 %)")
    slide = open_slide(d / "slide.tif")
    expected = [
        lv.compute()
        for lv in normalise_levels(slide.pyramid(), make_normaliser("macenko").fit(ref))
    ]
    for name in ("out.tif", "out.zarr"):
        result = open_slide(d / name)
        assert result.level_shapes == slide.level_shapes and result.mpp == 0.5
        for i, exp in enumerate(expected):
            h, w = exp.shape[:2]
            got = result.read_region(0, 0, w, h, i)
            if name.endswith(".zarr"):  # lossless
                np.testing.assert_array_equal(got, exp)
            else:  # JPEG tiles: close, not equal
                assert np.abs(got.astype(int) - exp).mean() < 3
        result.close()
    slide.close()


def test_segment_records_normalisation(files):
    import tifffile

    d, _, _ = files
    out = run(
        "segment",
        d / "src.png",
        "--mpp",
        "0.5",
        "--method",
        "classical",
        "--normalize",
        "macenko",
        "--target",
        d / "ref.png",
        "--out",
        d / "seg",
    )
    assert out.returncode == 0, out.stderr
    with tifffile.TiffFile(d / "seg" / "src.tif") as tf:
        meta = json.loads(tf.pages[0].description)
    assert meta["method"] == "classical" and meta["stain"]["method"] == "macenko"
    assert meta["stain"]["profile"]["fitted_on"]["name"] == "ref.png"


def test_bad_references_are_named(files):
    from PIL import Image

    d, _, _ = files
    Image.fromarray(np.full((64, 64, 3), 248, np.uint8)).save(d / "glass.png")
    out = run(
        "normalize",
        d / "src.png",
        "--method",
        "macenko",
        "--target",
        d / "glass.png",
        "--out",
        d / "x.png",
    )
    assert out.returncode == 1 and "glass.png: cannot be used as a macenko reference" in out.stderr
    assert "Traceback" not in out.stderr and not (d / "x.png").exists()
    out = run(
        "segment",
        d / "src.png",
        "--mpp",
        "0.5",
        "--method",
        "classical",
        "--normalize",
        "macenko",
        "--target",
        d / "missing.json",
        "--out",
        d / "seg2",
    )
    assert out.returncode == 2 and "missing.json: no such stain profile file" in out.stderr
    out = run(
        "normalize",
        d / "src.png",
        "--method",
        "macenko",
        "--target",
        d / "ref.png",
        "--out",
        d / "x.gif",
    )
    assert out.returncode == 1 and "x.gif" in out.stderr


def test_slide_normalisation_memory_stays_flat(tmp_path, files, quiet):
    """An 8192² slide (200 MB of pixels) is normalised to a pyramid holding only a few windows."""
    import tracemalloc

    from napari_nucleiseg.demo import make_large_slide
    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.stain.commands import normalize_file

    d, _, _ = files
    slide_path = make_large_slide(tmp_path / "big.tif", size=(8192, 8192), tile=256)
    done = []
    # warm-up on the small slide: first imports (dask, tifffile, codecs) allocate tens of MB once
    normalize_file(d / "slide.tif", tmp_path / "small_norm.tif", "macenko", d / "ref.png")
    tracemalloc.start()
    try:
        normalize_file(
            slide_path,
            tmp_path / "big_norm.tif",
            "macenko",
            d / "ref.png",
            progress=lambda i, n: done.append((i, n)),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done[-1][0] == done[-1][1] > 256  # every tile of every level reported
    assert peak < 50e6, f"peak {peak / 1e6:.0f} MB"
    with open_slide(slide_path) as src, open_slide(tmp_path / "big_norm.tif") as out:
        assert out.level_shapes == src.level_shapes
        a, b = src.read_region(4000, 4000, 256, 256), out.read_region(4000, 4000, 256, 256)
        assert np.abs(a.astype(int) - b).mean() > 2  # the colours did change
