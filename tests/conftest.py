"""Shared fixtures: real slides from ../shared (skipped when absent) and synthetic slides built
here with known content — the demo slide with its ground truth, a gigapixel slide, OME-TIFF,
OME-Zarr and plain images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared"))
SLIDES = SHARED / "data" / "slides"


def pytest_configure(config):
    # Keep the user's real cache out of tests: the demo slide is generated into a session dir.
    if "NUCLEISEG_CACHE" not in os.environ:
        import tempfile

        os.environ["NUCLEISEG_CACHE"] = tempfile.mkdtemp(prefix="nucleiseg-test-cache-")
    # Nor the user's own models: the registry would list them beside the shipped ones.
    if "NUCLEISEG_MODELS_DIR" not in os.environ:
        import tempfile

        os.environ["NUCLEISEG_MODELS_DIR"] = tempfile.mkdtemp(prefix="nucleiseg-test-models-")


def pytest_collection_modifyitems(config, items):
    has_display = (
        bool(os.environ.get("DISPLAY")) or os.environ.get("QT_QPA_PLATFORM") == "offscreen"
    )
    skip_gui = pytest.mark.skip(
        reason="needs a display with OpenGL: run under xvfb-run (see README)"
    )
    for item in items:
        if "gui" in item.keywords and not has_display:
            item.add_marker(skip_gui)


def shared_slide(name: str) -> Path:
    p = SLIDES / name
    if not p.exists():
        pytest.skip(f"real slide {p} not available (../shared is absent on this machine)")
    return p


@pytest.fixture(scope="session")
def demo():
    from napari_nucleiseg.demo import demo_slide

    return demo_slide()


@pytest.fixture(scope="session")
def big_slide(tmp_path_factory):
    """100,000 x 100,000 px pyramidal slide at 0.5 µm/px (about 0.6 GB, written in seconds)."""
    from napari_nucleiseg.demo import make_large_slide

    return make_large_slide(
        tmp_path_factory.mktemp("big") / "big_100k.tif", size=(100_000, 100_000)
    )


@pytest.fixture(scope="session")
def he_rgb():
    from napari_nucleiseg.demo.render import render_he

    rgb, labels = render_he((600, 800), 0.5, seed=7)
    return rgb, labels


@pytest.fixture
def ome_tiff(tmp_path, he_rgb):
    import tifffile

    rgb = he_rgb[0]
    path = tmp_path / "field.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            rgb,
            tile=(128, 128),
            photometric="rgb",
            subifds=1,
            metadata={
                "axes": "YXS",
                "PhysicalSizeX": 0.25,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": 0.25,
                "PhysicalSizeYUnit": "µm",
            },
        )
        tw.write(rgb[::2, ::2], tile=(128, 128), photometric="rgb", subfiletype=1)
    return path


@pytest.fixture
def ome_zarr(tmp_path, he_rgb):
    """An NGFF 0.4 multiscale (c, y, x) image written with zarr directly."""
    import zarr

    rgb = he_rgb[0]
    path = tmp_path / "field.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = [rgb, rgb[::2, ::2]]
    for i, lv in enumerate(levels):
        root.create_array(
            str(i), data=np.ascontiguousarray(np.moveaxis(lv, 2, 0)), chunks=(3, 128, 128)
        )
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, 0.25 * 2**i, 0.25 * 2**i]}
                    ],
                }
                for i in range(2)
            ],
        }
    ]
    return path


@pytest.fixture
def png_image(tmp_path, he_rgb):
    from PIL import Image

    path = tmp_path / "field.png"
    Image.fromarray(he_rgb[0]).save(path)
    return path


@pytest.fixture(scope="session")
def small_field(he_rgb):
    """A 160 x 200 px H&E crop: classical segmentation of it takes a fraction of a second."""
    return he_rgb[0][100:260, 100:300].copy()


@pytest.fixture
def png(tmp_path, small_field):
    """``png("a/x.png")``: ``small_field`` written at that path under ``tmp_path``."""
    from PIL import Image

    def write(rel: str) -> Path:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small_field).save(p)
        return p

    return write


@pytest.fixture
def quiet():
    """Silence resolution warnings for tests that are not about them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
