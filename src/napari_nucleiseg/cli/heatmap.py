"""``nucleiseg heatmap SLIDE --out DIR``: a whole slide's tumour heatmap and its outlines.

Writes ``DIR/<stem>.heatmap.zarr`` (the map of every class the classifier knows, resumable: the
same command after Ctrl-C or a kill goes on from the finished blocks) and
``DIR/<stem>.tumour.geojson`` (the ``--threshold`` outline of ``p_tumour`` as QuPath
annotations), then prints one line: ``<slide>: <n> tumour regions, <area> mm² of <tissue> mm²
classified -> <geojson>``. Problems are one line each naming the file (``error: <file>:
<problem>``): exit 1 for the slide or the output folder, 2 for the model; Ctrl-C exits 130 and
says how many blocks are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub, formatter) -> None:
    """The ``heatmap`` command, on ``nucleiseg``'s sub-parsers."""
    from .main import _mpp, _positive

    text = "tumour heatmap of a whole slide (resumable) and its outlines as QuPath GeoJSON"
    p = sub.add_parser(
        "heatmap",
        help=text,
        description=text + ": DIR/<stem>.heatmap.zarr (the probability of every class, per "
        "cell of half a patch) and DIR/<stem>.tumour.geojson (the --threshold outline of "
        "p_tumour). Run the same command again to resume an interrupted run.",
        formatter_class=formatter,
    )
    p.add_argument("slide", metavar="SLIDE", help="the slide (any format nucleiseg reads)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created if missing): <stem>.heatmap.zarr and <stem>.tumour.geojson",
    )
    p.add_argument(
        "--mpp",
        type=_mpp,
        metavar="UM",
        help="µm/px of the slide: for a slide that states none, and over what it states",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="a tissue classifier by name or card path (default: the shipped one)",
    )
    who.add_argument("--project", metavar="DIR", help="use the project's classifier")
    p.add_argument(
        "--threshold",
        type=_probability,
        default=0.5,
        help="p_tumour of the outline (default 0.5)",
    )
    p.add_argument(
        "--stride-um",
        type=_positive(float),
        metavar="S",
        help="µm between heatmap cells (default: half the classifier's patch)",
    )
    p.add_argument(
        "--min-area-um2",
        type=_positive(float),
        metavar="A",
        help="drop tumour regions (and fill holes) smaller than this (default: one patch)",
    )
    p.add_argument(
        "--scheduler",
        help="run on this dask.distributed cluster (tcp://HOST:PORT), or 'local' for a local "
        "cluster of processes",
    )
    p.add_argument(
        "--workers", type=_positive(int), help="threads (default 2) or local-cluster processes"
    )
    p.set_defaults(func=cmd_heatmap)


def _probability(text):
    import argparse

    from .main import _number

    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _model(args):
    """The classifier, or the one-line problem."""
    from ..methods import MethodError, get_method
    from ..models import WeightsError
    from ..project import Project
    from ..project.errors import ProjectError

    try:
        project = Project(args.project).path if args.project else None
        method = get_method(args.model, kind="classifier", project=project)
        method.warm_up()  # loads the weights: a file failing its hash is refused here, once
    except (MethodError, WeightsError, ProjectError) as exc:
        return None, str(exc)
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        return None, (
            f"classifier {args.model or 'the default'!r} has no ONNX model and needs PyTorch, "
            "which is not installed: pip install 'napari-nucleiseg[train]'"
        )
    return method, None


def cmd_heatmap(args) -> int:
    from ..classification.heatmap import HeatmapError, require_tag, stride_from_um
    from ..classification.outlines import (
        slide_bounds,
        tumour_geojson_path,
        tumour_regions,
        write_geojson,
    )
    from ..classification.slide_heatmap import heatmap_slide, open_heatmap
    from ..io import SlideError
    from ..io.output import OutputError, check_output_dir, check_output_file
    from ..methods.classifier import TUMOUR
    from .main import open_with_warnings
    from .progress import Progress

    err = sys.stderr
    out = Path(args.out)
    geojson = tumour_geojson_path(out, args.slide)
    try:
        check_output_dir(out)  # before any work, not after
        check_output_file(geojson)
    except OutputError as exc:
        print(f"error: {exc}", file=err)
        return 1
    try:
        slide = open_with_warnings(args.slide, args.mpp)
    except SlideError as exc:
        print(f"error: {exc}", file=err)
        return 1
    with slide:
        method, problem = _model(args)
        if problem is None:
            try:
                require_tag(method.classes, TUMOUR, f"classifier {method.name!r}")
                stride = stride_from_um(method, args.stride_um)
            except HeatmapError as exc:
                problem = str(exc)
        if problem is not None:
            print(f"error: {problem}", file=err)
            return 2
        name = Path(args.slide).name
        run = heatmap_slide(
            slide,
            out,
            model=str(getattr(method, "card_path", None) or method.name),
            stride_px=stride,
            scheduler=args.scheduler,
            workers=args.workers,
        )
        last = None
        try:
            with Progress(name, "blocks") as bar:
                for last in run:
                    bar.update(last.done, last.total, initial=last.resumed)
        except (SlideError, HeatmapError) as exc:  # unreadable region, store of another run
            run.close()
            print(f"error: {exc}", file=err)
            return 1
        except ConnectionError as exc:  # the dask scheduler
            run.close()
            print(f"error: {exc}", file=err)
            return 2
        except KeyboardInterrupt as exc:  # the job's JobInterrupted says how many are kept
            run.close()  # running blocks finish and are recorded
            print(
                str(exc) or "interrupted: finished blocks are kept; run the same command to resume",
                file=err,
            )
            return 130
        heatmap = open_heatmap(last.store)
        regions = tumour_regions(
            heatmap,
            args.threshold,
            min_area_um2=args.min_area_um2,
            bounds_um=slide_bounds(heatmap, slide.shape),
        )
        try:
            write_geojson(regions, geojson, slide.mpp, id_seed=f"{name}:{args.threshold:g}")
        except OSError as exc:
            print(f"error: {geojson}: cannot write ({exc.strerror or exc})", file=err)
            return 1
    tissue_mm2 = float(heatmap.tissue.sum()) * heatmap.mpp**2 / 1e6
    tumour_mm2 = sum(r.area_um2 for r in regions) / 1e6
    print(
        f"{args.slide}: {len(regions)} tumour regions, {tumour_mm2:.3g} mm² of "
        f"{tissue_mm2:.3g} mm² classified (p_{TUMOUR} ≥ {args.threshold:g}, "
        f"{heatmap.model.get('model', method.name)}) -> {geojson}"
    )
    return 0
