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


def load_target_file(method: str | None, target):
    """:func:`~.normalise.load_target`, with any error a damaged profile ``.json`` raises (junk
    where numbers belong, a list where a table belongs) as one :class:`StainError` naming the
    file. A profile is also tried once on a small synthetic H&E field, so a profile that loads
    but cannot normalise is refused here, not on the first image of a batch."""
    from .errors import StainError
    from .normalise import load_target, normalise_image

    path = Path(target)
    is_profile = path.suffix.lower() == ".json" and not path.is_dir()
    try:
        normaliser = load_target(method, path)
        if is_profile:
            normalise_image(_probe_field(), normaliser)
    except StainError as exc:
        if is_profile and exc.path is None:
            raise exc.for_path(path) from None
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        if not is_profile:
            raise
        raise StainError(
            f"not a usable stain profile ({type(exc).__name__}: {exc})", path
        ) from None
    return normaliser


def _probe_field() -> np.ndarray:
    """A 64 px field of haematoxylin-blue nuclei on eosin-pink stroma with some glass."""
    rng = np.random.default_rng(0)
    field = np.empty((64, 64, 3), np.float32)
    field[:] = (235, 150, 190)  # eosin
    yy, xx = np.mgrid[:64, :64]
    for cy, cx in rng.integers(6, 58, size=(10, 2)):
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = (80, 60, 150)  # haematoxylin
    field[:, :8] = 245  # glass
    field += rng.normal(0, 4, field.shape)
    return np.clip(field, 0, 255).astype(np.uint8)


def check_outputs(input_path, out_path, save_profile=None, target=None) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other, or whose
    folder cannot be made (``OutputError``/``SlideError`` naming the output)."""
    from ..io import SlideError
    from ..io.output import OutputError, check_output_file, replaceable_image_store, same_file

    def same(a, b) -> bool:
        return a is not None and b is not None and same_file(a, b)

    out = Path(out_path)
    if same(out, input_path):
        raise SlideError(out, "the output would overwrite the input")
    if same(out, target):
        raise SlideError(out, "the output would overwrite the --target reference")
    if save_profile is not None:
        if same(save_profile, out):
            raise SlideError(save_profile, "--save-profile and --out are the same file")
        if same(save_profile, input_path):
            raise SlideError(save_profile, "--save-profile would overwrite the input")
    check_output_file(out, directory=out.name.lower().endswith(".zarr"))
    if out.name.lower().endswith(".zarr"):
        problem = replaceable_image_store(out)  # replacing it deletes the folder
        if problem:
            raise OutputError(out, problem)
    if save_profile is not None:
        check_output_file(save_profile)


def normalize_file(
    input_path,
    out_path,
    method: str | None,
    target,
    save_profile=None,
    mpp=None,
    progress=None,
    model=None,
    project=None,
    calibration: float | None = None,
) -> dict:
    """Normalise ``input_path`` to ``target`` (a reference image/slide or profile .json) and write
    ``out_path`` (then ``save_profile``, the fitted target profile, if given). With ``method``
    ``"learned"`` the target is the style a trained normaliser learnt: ``model`` (name or card
    path; None: ``project``'s current normaliser, else the shipped one) and ``calibration``
    its colour pull (:mod:`.learned_normaliser`; None: default). Returns what was
    recorded (target and source profiles). Raises ``SlideError`` or ``StainError`` (both name
    the file) for bad input, and ``OutputError`` (a ``SlideError`` naming the output) when an
    output cannot be written; an output is written whole or not at all."""
    from ..io import SlideError, open_slide
    from ..io.output import OutputError, describe_os_error, write_together
    from ..io.pyramid_writer import write_ome_zarr, write_pyramidal_tiff
    from .errors import StainError
    from .lazy import adapt_to_slide, normalise_levels

    out = Path(out_path)
    suffix = ".zarr" if out.name.lower().endswith(".zarr") else out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + PYRAMID_SUFFIXES:
        raise SlideError(
            out, "write .tif/.tiff (pyramidal TIFF), .zarr (OME-Zarr) or .png/.jpg/.bmp"
        )
    learned = method == "learned"
    if calibration is not None and not learned:
        raise StainError("--calibration is for --method learned (a trained normaliser)")
    if model is not None and not learned:  # was silently ignored
        raise StainError("--model is for --method learned (a trained normaliser)")
    if learned and (target is not None or save_profile):
        raise StainError(
            "a learned normaliser has no --target or --save-profile: it maps to the style it "
            "learnt (choose it with --model)"
        )
    if not learned and target is None:
        raise StainError("give --target (a reference image, folder or profile .json)")
    check_outputs(input_path, out, save_profile, target)
    if project is not None:  # a folder that is no project was ignored: the shipped one ran
        from ..project import Project, ProjectError

        try:
            Project(project)
        except ProjectError as exc:
            raise StainError(str(exc)) from None
    if learned:
        from .learned_normaliser import load_learned

        normaliser = load_learned(model, project=project, calibration=calibration)
    else:
        normaliser = load_target_file(method, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = open_slide(input_path, mpp=mpp)
    try:
        try:
            adapted = adapt_to_slide(normaliser, slide)
        except StainError as exc:
            raise exc.for_path(input_path) from None
        record = {"source": str(input_path), "stain": adapted.describe()}
        if adapted.source is not None:
            record["source_profile"] = adapted.source.to_dict()
        if suffix in IMAGE_SUFFIXES:
            h, w = slide.shape
            if h * w > MAX_IMAGE_PIXELS:
                raise SlideError(
                    input_path, f"{w}x{h} px is a whole slide; write a .tif or .zarr pyramid"
                )
            region = slide.read_region(0, 0, w, h, 0)
            rgb = adapted.transform(region, mpp=slide.mpp) if learned else adapted.transform(region)
            write_together({out: lambda tmp: _save_image(tmp, rgb, record, slide.mpp)})
        else:
            levels, downsamples = pyramid_levels(slide)
            mpps = None if slide.mpp is None else [slide.mpp * d for d in downsamples]
            levels = normalise_levels(levels, adapted, mpps=mpps)
            try:
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
            except SlideError:  # reading the input failed, and said so
                raise
            except OSError as exc:
                raise OutputError(out, f"cannot write ({describe_os_error(exc)})") from None
    finally:
        slide.close()
    if save_profile:
        # After the output: a failed run leaves no profile that seems to go with a result.
        try:
            write_together({Path(save_profile): lambda tmp: normaliser.profile.save(tmp)})
        except OutputError as exc:
            raise OutputError(
                exc.path, f"{exc.problem}; the normalised image {out} was written"
            ) from None
    return record


def _save_image(out: Path, rgb: np.ndarray, record: dict, mpp) -> None:
    """Write ``out`` (format by its suffix) directly: the caller writes to a temporary name."""
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
    img.save(out, format=Image.registered_extensions()[out.suffix.lower()], **kw)
