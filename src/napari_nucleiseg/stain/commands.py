"""What ``nucleiseg normalize`` does: an image or a whole slide in, its stain-normalised copy out
(the command line, :mod:`napari_nucleiseg.cli.normalize`, adds the lines and the progress bar).

Images (PNG/JPEG out) are normalised in memory. Anything written as ``.tif``/``.tiff`` or
``.zarr`` goes through the lazy path — the slide's statistics sampled from its tissue, every
pyramid level mapped chunk by chunk and streamed to a pyramidal TIFF or OME-Zarr — so memory stays
flat for gigapixel slides and the output opens again with ``open_slide``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PYRAMID_SUFFIXES = (".tif", ".tiff", ".zarr")
#: Images written whole (PNG/JPEG) must fit in memory: above this, write a pyramidal TIFF.
MAX_IMAGE_PIXELS = 120_000_000
#: A pyramid-less input gets ×4 levels down to this edge so the output opens fast in napari.
SMALLEST_LEVEL = 1024


def pyramid_levels(slide) -> tuple[list, list[float]]:
    """The slide's dask levels and downsamples, with ×4 levels added when it has none."""
    import dask.array as da

    levels = slide.pyramid()
    downsamples = list(slide.level_downsamples)
    while max(levels[-1].shape[:2]) > 2 * SMALLEST_LEVEL and len(levels) < 12:
        prev = levels[-1]
        h, w = (prev.shape[0] // 4) * 4, (prev.shape[1] // 4) * 4
        if h == 0 or w == 0:
            break
        small = da.coarsen(np.mean, prev[:h, :w].astype(np.float32), {0: 4, 1: 4}, trim_excess=True)
        levels.append(da.round(small).astype(np.uint8))
        downsamples.append(downsamples[-1] * 4)
    return levels, downsamples


def normalize_file(
    input_path, out_path, method: str | None, target, save_profile=None, mpp=None, progress=None
) -> dict:
    """Normalise ``input_path`` to ``target`` (a reference image/slide or profile .json) and write
    ``out_path``. Returns what was recorded (target and source profiles). Raises ``SlideError``
    or ``StainError`` (both name the file) for bad input."""
    from ..io import SlideError, open_slide
    from ..io.pyramid_writer import write_ome_zarr, write_pyramidal_tiff
    from .lazy import adapt_to_slide, normalise_levels
    from .normalise import load_target

    out = Path(out_path)
    suffix = ".zarr" if out.name.lower().endswith(".zarr") else out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + PYRAMID_SUFFIXES:
        raise SlideError(out, "write .tif/.tiff (pyramidal TIFF), .zarr (OME-Zarr) or .png/.jpg")
    if out.resolve() == Path(input_path).resolve():
        raise SlideError(out, "the output would overwrite the input")
    normaliser = load_target(method, target)
    if save_profile:
        normaliser.profile.save(save_profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = open_slide(input_path, mpp=mpp)
    try:
        from .errors import StainError

        try:
            adapted = adapt_to_slide(normaliser, slide)
        except StainError as exc:
            raise exc.for_path(input_path) from None
        record = {
            "source": str(input_path),
            "stain": adapted.describe(),
            "source_profile": adapted.source.to_dict(),
        }
        if suffix in IMAGE_SUFFIXES:
            h, w = slide.shape
            if h * w > MAX_IMAGE_PIXELS:
                raise SlideError(
                    input_path, f"{w}x{h} px is a whole slide; write a .tif or .zarr pyramid"
                )
            rgb = adapted.transform(slide.read_region(0, 0, w, h, 0))
            out.parent.mkdir(parents=True, exist_ok=True)
            _save_image(out, rgb, record, slide.mpp)
        else:
            levels, downsamples = pyramid_levels(slide)
            levels = normalise_levels(levels, adapted)
            out.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".zarr":
                write_ome_zarr(
                    out,
                    levels,
                    slide.mpp,
                    downsamples,
                    attrs={"nucleiseg": record},
                    progress=progress,
                )
            else:
                write_pyramidal_tiff(
                    out,
                    levels,
                    slide.mpp,
                    downsamples,
                    description=json.dumps({"nucleiseg": record}),
                    progress=progress,
                )
        return record
    finally:
        slide.close()


def _save_image(out: Path, rgb: np.ndarray, record: dict, mpp) -> None:
    from PIL import Image, PngImagePlugin

    img = Image.fromarray(rgb)
    kw = {}
    if mpp:
        kw["dpi"] = (25400.0 / mpp, 25400.0 / mpp)
    if out.suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        info.add_text("nucleiseg", json.dumps(record))
        kw["pnginfo"] = info
    elif out.suffix.lower() in (".jpg", ".jpeg"):
        kw["quality"] = 95
    tmp = out.with_name(out.name + ".part")
    img.save(tmp, format=Image.registered_extensions()[out.suffix.lower()], **kw)
    tmp.replace(out)
