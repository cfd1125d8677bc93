"""Every kind of bad input gets one clear SlideError naming the file and the problem."""

import shutil

import numpy as np
import pytest
from conftest import shared_slide

from napari_nucleiseg.io import (
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    UnsupportedFormatError,
    open_slide,
)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.svs"
    with pytest.raises(SlideNotFoundError, match="nope.svs: no such file"):
        open_slide(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(CorruptSlideError, match="empty.svs: the file is empty"):
        open_slide(p)


def test_non_image_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("patient 12, slide 3\n" * 50)
    with pytest.raises(UnsupportedFormatError, match="notes.txt: not an image or slide format"):
        open_slide(p)


def test_garbage_with_a_slide_suffix(tmp_path):
    p = tmp_path / "scan.svs"
    p.write_bytes(np.random.default_rng(0).bytes(10_000))
    with pytest.raises(CorruptSlideError, match="scan.svs: .*OpenSlide cannot recognise"):
        open_slide(p)


def test_unsupported_directory(tmp_path):
    d = tmp_path / "folder.zarr"
    d.mkdir()
    with pytest.raises(
        UnsupportedFormatError, match="folder.zarr: a directory that is not an OME-Zarr"
    ):
        open_slide(d)


@pytest.mark.real_slides
@pytest.mark.parametrize("fraction", [0.3, 0.9])
@pytest.mark.parametrize("suffix", [".svs", ".tif"])
def test_truncated_real_slide(tmp_path, fraction, suffix):
    src = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    data = src.read_bytes()
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorruptSlideError, match=f"cut{suffix}: .*(truncated|corrupt)"):
        open_slide(p)


def test_truncated_demo_tiff(tmp_path, demo):
    p = tmp_path / "half.tif"
    p.write_bytes(demo.slide.read_bytes()[: demo.slide.stat().st_size // 2])
    with pytest.raises(CorruptSlideError, match="half.tif: .*truncated or corrupt"):
        open_slide(p)


def test_truncated_png(tmp_path, png_image):
    p = tmp_path / "cut.png"
    p.write_bytes(png_image.read_bytes()[:2000])
    with pytest.raises(CorruptSlideError, match="cut.png: the image is corrupt or truncated"):
        open_slide(p, mpp=0.5)


def test_zero_size_level(tmp_path, ome_zarr):
    import zarr

    root = zarr.open_group(str(ome_zarr), mode="a")
    root.create_array("1", shape=(3, 0, 400), dtype="uint8", chunks=(3, 128, 128), overwrite=True)
    with pytest.raises(SlideError, match="field.zarr: level 1 has zero size"):
        open_slide(ome_zarr)


def test_ome_zarr_without_multiscales(tmp_path):
    import zarr

    p = tmp_path / "plain.zarr"
    zarr.open_group(str(p), mode="w").create_array("0", shape=(10, 10), dtype="uint8")
    with pytest.raises(SlideError, match="plain.zarr: zarr group has no OME-NGFF 'multiscales'"):
        open_slide(p)


def test_bad_override_is_refused(demo):
    with pytest.raises(SlideError, match="override -1"):
        open_slide(demo.slide, mpp=-1)


def test_closed_slide_says_so(demo):
    slide = open_slide(demo.slide)
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region(0, 0, 4, 4)


@pytest.mark.real_slides
def test_copied_real_slide_with_unknown_suffix_still_opens(tmp_path, quiet):
    # Content decides, not the name: an .svs renamed .dat is still read by OpenSlide.
    p = tmp_path / "renamed.dat"
    shutil.copy(shared_slide("CMU-1-Small-Region.svs"), p)
    assert open_slide(p).format == "aperio"


def test_a_label_map_opened_as_a_slide_is_named_for_what_it_is(demo):
    """Was: "the slide is corrupt or truncated: … can not handle images with 32-bit samples" for
    the demo's own, intact, label TIFF."""
    from napari_nucleiseg.io import CorruptSlideError, SlideError, open_slide

    with pytest.raises(
        SlideError, match=r"not an RGB image \(.*32-bit samples\): a label map"
    ) as e:
        open_slide(demo.labels)
    assert not isinstance(e.value, CorruptSlideError)
