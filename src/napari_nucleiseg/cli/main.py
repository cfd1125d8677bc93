"""``nucleiseg``: the headless face of the plugin.

Subcommands: ``info`` (levels and µm/px of slides), ``tissue`` (tissue mask and tile list),
``demo`` (write the demo slide), ``view`` (napari with the plugin docked, on a slide or the demo),
``segment``/``eval``/``train``/``release-model`` (nuclei), ``normalize`` (stain normalisation),
``project``/``retrain``/``models`` (projects and model versions), ``train-classifier``/
``classify``/``heatmap`` (tissue classifiers and tumour heatmaps).
Errors about input files print one line naming the file and exit non-zero, never a traceback.
The commands' glue lives in this package (:mod:`.segment`, :mod:`.normalize`, :mod:`.evaluate`,
:mod:`.info`, :mod:`.project`, :mod:`.classify`, :mod:`.heatmap`); the core they call returns
results and raises typed errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

#: ``nucleiseg --help``'s description (plain text: the module docstring is reStructuredText).
DESCRIPTION = (
    "napari-nucleiseg without a window: slide information, tissue masks, nuclei segmentation of "
    "images, slides and cohorts, stain normalisation, evaluation and training. Input errors "
    "print one line naming the file and exit non-zero."
)


def open_with_warnings(path, mpp=None):
    """``open_slide``, its warnings (no µm/px, an implausible one) printed as lines, and a note
    when ``mpp`` replaces a different µm/px the file states."""
    from ..io import open_slide

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slide = open_slide(path, mpp=mpp)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    note_override(path, slide.mpp_file, mpp)
    return slide


def note_override(path, stated, mpp) -> None:
    """A note when ``--mpp`` replaces the µm/px ``path`` states by another value."""
    if mpp is not None and stated is not None and abs(stated - mpp) > 0.01 * stated:
        print(
            f"note: {Path(path).name} states {stated:.4g} µm/px; --mpp {mpp:g} is used instead",
            file=sys.stderr,
        )


def note_mpp_overrides(paths, mpp) -> None:
    """A note for each of ``paths`` whose stated µm/px ``--mpp`` replaces by another value (a
    wrong --mpp otherwise went unseen: a quarter of the nuclei, no error)."""
    from ..io import SlideError, open_slide

    if mpp is None:
        return
    from ..io.image_backend import read_header

    for path in paths:
        try:
            if Path(path).suffix.lower() in (".png", ".jpg", ".jpeg"):
                stated = read_header(Path(path))[1]  # opening one would decode it
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # this is only a look at the header
                    slide = open_slide(path)
                stated = slide.mpp_file
                slide.close()
        except (SlideError, OSError):  # said by the command itself, in its turn
            continue
        note_override(path, stated, mpp)


def cmd_info(args) -> int:
    from .info import cmd_info as run

    return run(args)


#: A tissue tile under this many pixels is a typo in --tile-um, not a grid anyone wants.
MIN_TILE_PX = 16


def cmd_tissue(args) -> int:
    import numpy as np
    from PIL import Image

    from ..io import SlideError
    from ..io.output import OutputError, check_output_file, write_together
    from ..tiling import slide_grid
    from ..tissue import tissue_mask

    outputs = {"--out": args.out, "--tiles": args.tiles}
    try:
        for flag, target in outputs.items():
            if target is None:
                continue
            if Path(target).resolve() == Path(args.slide).resolve():
                raise OutputError(target, f"{flag} would overwrite the slide")
            check_output_file(target)
        if args.out and args.tiles and Path(args.out).resolve() == Path(args.tiles).resolve():
            raise OutputError(args.out, "--out and --tiles are the same file")
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        slide = open_with_warnings(args.slide, args.mpp)
    except SlideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tile_um = 256.0 if args.tile_um is None else args.tile_um
    try:
        if args.tile_um is not None and slide.mpp is not None and tile_um / slide.mpp < MIN_TILE_PX:
            print(
                f"error: --tile-um {tile_um:g} is {tile_um / slide.mpp:.3g} px at "
                f"{slide.mpp:.4g} µm/px; give a tile of at least {MIN_TILE_PX} px "
                f"({MIN_TILE_PX * slide.mpp:.3g} µm)",
                file=sys.stderr,
            )
            return 2
        mask = tissue_mask(slide)
        if slide.mpp is not None:
            grid = slide_grid(slide, tile_um=tile_um)
        else:
            grid = slide_grid(slide, tile_px=args.tile_px)
        tiles = grid.tissue_tiles(mask)
    except SlideError as exc:  # damage the open-time probe did not reach
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        slide.close()
    print(
        f"{slide.path.name}: tissue {100 * mask.fraction:.1f} %, {len(tiles)} of {len(grid)} tiles "
        f"of {grid.tile} px hold tissue (mask at {mask.downsample:.3g}x)"
    )
    writers = {}
    if args.out:
        image = Image.fromarray((mask.mask * 255).astype(np.uint8))
        fmt = Image.registered_extensions().get(Path(args.out).suffix.lower(), "PNG")
        writers[Path(args.out)] = lambda tmp: image.save(tmp, format=fmt)
    if args.tiles:
        text = json.dumps(
            {"slide": str(slide.path), "tile_px": grid.tile, "tiles": [t.box for t in tiles]}
        )
        writers[Path(args.tiles)] = lambda tmp: tmp.write_text(text)
    try:
        write_together(writers)  # both or neither
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for target in writers:
        print(f"wrote {target}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import demo_slide
    from ..io.output import OutputError, check_output_dir, describe_os_error

    try:
        if args.out is not None:
            check_output_dir(args.out)
        d = demo_slide(args.out)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the user cache, or a folder that became unwritable meanwhile
        where = exc.filename or args.out
        print(
            f"error: {where}: cannot write the demo slide ({describe_os_error(exc)})",
            file=sys.stderr,
        )
        return 1
    print(f"demo slide: {d.slide}\nground truth: {d.labels}\n{d.nuclei} nuclei at {d.mpp} µm/px")
    return 0


def no_display() -> str | None:
    """Why napari cannot open a window here (Linux without a display), or None. Checked before
    Qt starts: Qt's own message is a page about platform plugins, then an abort."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return (
        "no display to open napari on (DISPLAY is not set): run it on a desktop, over ssh -X, "
        "or under xvfb-run"
    )


def cmd_view(args) -> int:
    problem = no_display()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.slide:  # opened here first: a bad file is one line and exit 1, not a dialog
        from ..io import SlideError

        try:
            open_with_warnings(args.slide).close()
        except SlideError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    import napari

    from .._napari._start import first_screen

    viewer = napari.Viewer(title="napari-nucleiseg")
    # The slide filling most of the window; the panels in one narrow dock, Nuclei in front.
    first_screen(viewer, args.slide)
    if args.screenshot:  # for docs and smoke tests: render once, save, quit
        from qtpy.QtCore import QTimer

        def shoot():
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(int(args.screenshot_delay * 1000), shoot)
    napari.run()
    return 0


def cmd_segment(args) -> int:
    # Plain images keep their contract (DIR/<stem>.tif + .csv); whole slides and cohorts go to
    # the whole-slide job.
    from .segment import cmd_segment as run

    return run(args)


def cmd_normalize(args) -> int:
    from .normalize import cmd_normalize as run

    return run(args)


def cmd_eval(args) -> int:
    from .evaluate import cmd_eval as run

    return run(args)


def missing_training_packages(what: str) -> str | None:
    """None when PyTorch and ONNX (the ``train`` extra) are installed, else the one-line error:
    inference runs on ONNX Runtime alone, training and exporting need them."""
    import importlib.util

    missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"{what} needs {' and '.join(missing)}, not installed (segmenting does not): "
        "pip install 'napari-nucleiseg[train]', or bash scripts/setup.sh train (CPU PyTorch)"
    )


def cmd_train(args) -> int:

    problem = missing_training_packages("training")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from ..io.output import OutputError, check_output_dir
    from ..training.nuclei_data import DataSetError, split_spec
    from ..training.seg_train import train

    specs = [args.data, *(split_spec(spec)[0] for spec in args.extra_data or [])]
    problem = next(filter(None, map(data_set_problem, specs)), None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    try:
        check_output_dir(args.out)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cfg, problem = _train_config(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for all
        for _ in train(cfg):
            pass
        end_distributed_process(0)
        return 0
    # The log lines are the progress on a log; a terminal also gets a bar.
    try:
        return _train_with_progress(cfg, args)
    except DataSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _train_config(args):
    """``(TrainConfig, None)`` for ``train``'s options, or ``(None, why)`` when they cannot make
    a run: checked before any work, so a bad value is one line (exit 2) and leaves no run
    folder."""
    cfg = None
    import json

    from ..models import WeightsError, find_card
    from ..training.seg_train import TrainConfig

    def numbers(option, text):
        try:
            return tuple(int(v) for v in text.split(",")) if text else ()
        except ValueError:
            raise ValueError(
                f"{option}: give whole numbers separated by commas, got {text!r}"
            ) from None

    try:
        widths, cycles = numbers("--widths", args.widths), numbers("--cycles", args.cycles)
        cfg = TrainConfig(
            data=args.data, out=args.out, iters=args.iters, batch=args.batch, patch=args.patch,
            threads=args.threads, seed=args.seed, mpp=args.model_mpp, widths=widths,
            decoder=args.decoder, lr=args.lr, cycles=cycles, cycle_lr_decay=args.cycle_lr_decay,
            init_from=args.init_from, extra_data=args.extra_data or [],
            extra_share=args.extra_share, augment=args.augment, align_labels=args.align_labels,
        )  # fmt: skip
        if args.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {args.log_every}")
    except ValueError as exc:  # the config's words for a value, as the option that set it
        first, _, rest = str(exc).partition(" ")
        options = {
            "mpp": "--model-mpp",
            "extra_share": "--extra-share",
            "cycle_lr_decay": "--cycle-lr-decay",
            "log_every": "--log-every",
        }
        known = first in options or first in ("iters", "batch", "threads", "patch", "lr")
        known = known or first in ("widths", "cycles", "seed")
        rest = rest.replace("extra_data", "--extra-data")
        return None, f"{options.get(first, '--' + first)} {rest}" if known else str(exc)
    if args.init_from:
        if args.init_from.endswith(".safetensors"):
            if not Path(args.init_from).is_file():
                return None, f"--init-from {args.init_from}: no such weights file"
        else:
            try:
                find_card(args.init_from)
            except WeightsError as exc:
                return None, f"--init-from: {exc}"
    saved = Path(args.out) / "config.json"
    if saved.is_file():  # continuing a run: the same network, or its checkpoint cannot load
        try:
            old = json.loads(saved.read_text())
        except (OSError, ValueError):
            return None, f"{saved}: cannot be read; give another --out for a new run"
        # A run from before the decoder option was a "double" one (as train() reads it).
        if tuple(old.get("widths", ())) != widths or old.get("decoder", "double") != args.decoder:
            return None, (
                f"{args.out} holds a run of another network (--widths "
                f"{','.join(map(str, old.get('widths', ())))} --decoder "
                f"{old.get('decoder', 'double')}): "
                "give those to continue it, or another --out for a new run"
            )
    return cfg, None


def _train_with_progress(cfg, args) -> int:
    from ..training.seg_train import train
    from .progress import Progress

    with Progress("train", "iters", min_total=1) as bar:
        for info in train(cfg):
            if bar.tty:
                bar.update(info["iter"], cfg.iters, f"loss {info['loss']:.4f}")
            if info["iter"] % args.log_every == 0 or "val" in info or info["iter"] == cfg.iters:
                eta = (
                    info["elapsed_s"]
                    / max(1, info["iter"] - info.get("start", 0))
                    * (cfg.iters - info["iter"])
                )
                val = f"  val {info['val']}" if "val" in info else ""
                if "val_extra" in info:
                    val += f"  val (other sources) {info['val_extra']}"
                bar.write(
                    f"iter {info['iter']}/{cfg.iters}  loss {info['loss']:.4f}  "
                    f"lr {info['lr']:.2e}  eta {eta / 60:.1f} min{val}",
                    sys.stdout,
                )
    print(f"checkpoint: {Path(args.out) / 'checkpoint.pt'}")
    end_distributed_process(0)
    return 0


def end_distributed_process(code: int) -> None:
    """Under torchrun (``WORLD_SIZE`` > 1), end this rank now that its work is written, without
    Python's shutdown: about one run in fifteen under load, a rank aborted there inside torch's
    distributed teardown ("terminate called without an active exception", exit -6), after the
    process group was destroyed and with nothing left to do, and torchrun failed the run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _number(text, kind=float):
    """``kind(text)`` for an option's value; argparse's own words for a failure would name the
    checking function ("invalid _mpp value")."""
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _positive(kind):
    def parse(text):
        import math

        value = _number(text, kind)
        # NaN compares false with everything, so "not > 0" (not "<= 0") refuses it too.
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be greater than 0 and finite, got {text}")
        return value

    return parse


def _share(text):
    """A share between 0 and 1 inclusive."""
    import math

    value = _number(text)
    if not (0 <= value <= 1 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _mpp(text):
    """``--mpp``: a level-0 pixel size a microscope or scanner can have."""
    from ..io.slide import MPP_RANGE

    value = _positive(float)(text)
    lo, hi = MPP_RANGE
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(
            f"{text} µm/px is not a plausible pixel size; give the level-0 µm/px, between "
            f"{lo:g} and {hi:g} (0.25 at 40x, 0.5 at 20x)"
        )
    return value


def data_set_problem(folder) -> str | None:
    """Why ``folder`` is not a nuclei data set (images/, labels/, index.json), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder"
    if not (folder / "index.json").is_file():
        return f"{folder}: not a nuclei data set (no index.json beside images/ and labels/)"
    return None


def cmd_release(args) -> int:
    problem = missing_training_packages("release-model")
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from ..io.output import OutputError, check_output_dir
    from ..training.export import CheckpointError
    from ..training.nuclei_data import DataSetError
    from ..training.release import ModelExistsError, check_model_name, release

    try:
        check_model_name(args.name)
    except ValueError as exc:
        print(f"error: --name: {exc}", file=sys.stderr)
        return 2
    run = Path(args.run)
    if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
        print(
            f"error: {run}: not a training run (no config.json and checkpoint.pt; "
            "`nucleiseg train --out` makes one)",
            file=sys.stderr,
        )
        return 1
    problem = data_set_problem(args.train_data) or data_set_problem(args.test_data)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.out_dir:
        try:
            check_output_dir(args.out_dir)
        except OutputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    try:
        card = release(
            args.run,
            args.name,
            args.version,
            args.train_data,
            args.test_data,
            args.out_dir,
            replace=args.replace,
        )
    except (CheckpointError, DataSetError) as exc:  # a damaged checkpoint, a data set's file
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModelExistsError as exc:
        print(
            f"error: {exc.args[0]} exists: releasing would replace that model; give --out-dir "
            "(e.g. runs/release) or another --name, or --replace to replace it",
            file=sys.stderr,
        )
        return 1
    print(Path(card).read_text())
    return 0


def stain_methods() -> tuple[str, ...]:
    """The stain normalisers, from the one list in :mod:`napari_nucleiseg.stain`."""
    from ..stain import STAIN_METHODS

    return tuple(STAIN_METHODS)


class HelpFormatter(argparse.HelpFormatter):
    """Fills ``{nuclei_methods}`` in a help text when help is shown, not when the parser is built:
    the registry is asked only then, and a model added since is listed. Lines are not broken at
    hyphens (``nuclei-unet-v4``, ``--screenshot-delay`` stay whole)."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _expand_help(self, action):
        text = super()._expand_help(action)
        if "{nuclei_methods}" in text:
            from .segment import nuclei_method_names

            text = text.replace("{nuclei_methods}", ", ".join(nuclei_method_names()))
        return text


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .info import JSON_SIZES_HELP

    stains = stain_methods()
    p = argparse.ArgumentParser(
        prog="nucleiseg", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=f"napari-nucleiseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, text):
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    s = command("info", "levels, µm/px and format of slides")
    s.add_argument("slides", nargs="+", metavar="SLIDE", help="slides or images to describe")
    s.add_argument("--mpp", type=_mpp, help="µm/px override (0.05-50)")
    s.add_argument("--json", action="store_true", help=JSON_SIZES_HELP)
    s.set_defaults(func=cmd_info)

    s = command(
        "tissue",
        "tissue mask and the tiles of a grid that hold tissue (the rule whole-slide jobs use to "
        "skip glass, on their own, larger tiles)",
    )
    s.add_argument("slide", help="the slide")
    s.add_argument("--mpp", type=_mpp, help="µm/px override (0.05-50)")
    s.add_argument("--tile-um", type=_positive(float), help="tile edge in µm (default 256)")
    s.add_argument(
        "--tile-px",
        type=_positive(int),
        default=512,
        help="tile edge in px when the slide has no µm/px (default 512)",
    )
    s.add_argument("--out", help="write the mask as PNG")
    s.add_argument("--tiles", help="write the tissue tiles as JSON")
    s.set_defaults(func=cmd_tissue)

    s = command("demo", "generate the demo slide and print where it is")
    s.add_argument("--out", help="directory (default: the user cache)")
    s.set_defaults(func=cmd_demo)

    s = command("segment", "segment nuclei: DIR/<stem>.tif labels + DIR/<stem>.csv measurements")
    s.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="images or slides, folders of them, or .txt lists of paths",
    )
    s.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (created when there is something to write): <stem>.tif labels and "
        "<stem>.csv per image, <stem>.nuclei.zarr/.csv/.parquet/.geojson per whole slide; "
        "<stem> is the input's name less its last suffix (case.1.png: case.1). Inputs whose "
        "results would share a name (a/x.png and b/x.png) are not segmented: each clash is "
        "one error line naming them; give them separate --out folders",
    )
    s.add_argument(
        "--mpp",
        type=_mpp,
        help="µm/px of the inputs (0.05-50): for inputs that state none, and over what "
        "an input states (a note says so)",
    )
    s.add_argument(
        "--method",
        default=None,
        metavar="NAME",
        help="nuclei method: {nuclei_methods} (default: the first), or a model card .json",
    )
    s.add_argument(
        "--detection-threshold",
        type=float,
        metavar="P",
        help="a learned model's foreground probability for a nucleus pixel (default: the "
        "model's own, 0.4 for the default model): lower finds fainter nuclei and draws them "
        "larger, higher keeps only the clearest; recorded in the output",
    )
    s.add_argument(
        "--project",
        metavar="DIR",
        help="a project folder: its current model is the default method, and its models are "
        "found by name",
    )
    s.add_argument(
        "--normalize",
        metavar="METHOD",
        choices=stains,
        help="normalise stains first: " + ", ".join(stains) + " (recorded in the output)",
    )
    s.add_argument(
        "--target",
        metavar="REF_OR_PROFILE",
        help="for --normalize: reference image, folder of references (averaged) or profile .json",
    )
    s.add_argument(
        "--whole-slide",
        action="store_true",
        help="use the whole-slide job (automatic above 120 MP): "
        "DIR/<stem>.nuclei.zarr/.csv/.parquet/.geojson",
    )
    s.add_argument(
        "--scheduler",
        help="run on this dask.distributed cluster (tcp://HOST:PORT), or 'local' "
        "for a local cluster of processes; implies --whole-slide",
    )
    s.add_argument(
        "--workers", type=_positive(int), help="threads (default 2) or local-cluster processes"
    )
    s.add_argument(
        "--tile-um",
        type=_positive(float),
        help="whole-slide tile edge in µm (default: the model's tile, e.g. 1344 px at its µm/px "
        "for nuclei-unet-v5)",
    )
    s.set_defaults(func=cmd_segment)

    s = command("normalize", "stain-normalise an image or a whole slide (pyramidal output)")
    s.add_argument("input", help="image or slide to normalise")
    s.add_argument(
        "--method",
        choices=[*stains, "learned"],
        help="normaliser: "
        + ", ".join([*stains, "learned"])
        + " (required unless --target is a profile .json; learned: a trained network, see --model)",
    )
    s.add_argument(
        "--target",
        metavar="REF_OR_PROFILE",
        help="reference image or slide to fit, a folder of them (profiles averaged), "
        "or a saved stain profile .json (not for --method learned)",
    )
    s.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="--method learned: a normaliser model (name or card path; default: the project's "
        "current normaliser, else the shipped one)",
    )
    s.add_argument("--project", metavar="DIR", help="a project whose normaliser models to use")
    s.add_argument(
        "--calibration",
        type=_share,
        metavar="0-1",
        help="--method learned: how far the network's output colour statistics are pulled to "
        "the style's (0: the network alone, 1: matched; default 0.5)",
    )
    s.add_argument(
        "--out",
        required=True,
        help=".png/.jpg/.bmp (image), .tif (pyramidal tiled TIFF) or .zarr (OME-Zarr)",
    )
    s.add_argument("--save-profile", metavar="JSON", help="also save the fitted target profile")
    s.add_argument(
        "--mpp",
        type=_mpp,
        help="µm/px of the input (0.05-50): for an input that states none, and over what "
        "it states (a note says so)",
    )
    s.set_defaults(func=cmd_normalize)

    s = command("eval", "score predicted label maps against ground truth")
    s.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted label maps <stem>.tif")
    s.add_argument(
        "gt_dir",
        metavar="GT_DIR",
        help="folder of ground-truth label maps <stem>.tif (or a data set with labels/)",
    )
    s.set_defaults(func=cmd_eval)

    s = command("train", "train the nuclei network (resumable: re-run the same command)")
    s.add_argument("--data", required=True, help="data set folder (images/, labels/, index.json)")
    s.add_argument("--out", required=True, help="run folder: checkpoint.pt, train.log, config.json")
    s.add_argument("--iters", type=int, default=1100, help="iterations (default 1100)")
    s.add_argument("--batch", type=int, default=8, help="patches per iteration (default 8)")
    s.add_argument("--patch", type=int, default=256, help="patch edge in px (default 256)")
    s.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument(
        "--model-mpp", type=float, default=0.5, help="µm/px the model works at (default 0.5)"
    )
    s.add_argument(
        "--widths", default="8,24,48,96", help="channels per U-Net level (default 8,24,48,96)"
    )
    s.add_argument(
        "--decoder",
        choices=("double", "light"),
        default="double",
        help="decoder blocks: double or light convolutions (default double)",
    )
    s.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    s.add_argument(
        "--cycles",
        default="",
        help="cosine cycles with warm restarts, e.g. 2000,2000 "
        "(replaces --iters by their sum); a run stopped after a cycle continues from it",
    )
    s.add_argument(
        "--cycle-lr-decay",
        type=float,
        default=0.5,
        help="peak learning rate of each cycle relative to the one before",
    )
    s.add_argument(
        "--init-from",
        default="",
        help="start from a model (a registry name, a model card .json or a "
        ".safetensors file): every level it shares with --widths is copied, the rest starts "
        "from random weights",
    )
    s.add_argument(
        "--extra-data",
        action="append",
        metavar="PATH[:KIND]",
        help="another labelled data set (repeatable); :KIND keeps the index rows of that kind "
        "(e.g. dsb2018_stage1_train:colour). Images without a stated µm/px get one from their "
        "labels; a quarter of them is held out as whole look-alike clusters",
    )
    s.add_argument(
        "--extra-share",
        type=float,
        default=0.0,
        help="share of each batch drawn from --extra-data (default 0)",
    )
    s.add_argument(
        "--augment",
        choices=("standard", "wide", "wider"),
        default="standard",
        help="augmentation: standard; wide (scale ±35 %%, stains ×0.6-1.4, blur, JPEG); wider "
        "(wide, and on half the patches the stain colours turned up to 15°, amounts ×0.5-1.8)",
    )
    s.add_argument(
        "--align-labels",
        action="store_true",
        help="move each data set's labels onto its nuclei first (the move that puts the most "
        "haematoxylin under them, found per data set; recorded in the run's config.json)",
    )
    s.add_argument("--log-every", type=int, default=25, help="print a log line every N iterations")
    s.set_defaults(func=cmd_train)

    s = command("release-model", "tune, export and measure a training run as a shipped model")
    s.add_argument("run", help="training run folder (what train --out wrote)")
    s.add_argument("--name", required=True, help="model name, e.g. nuclei-unet-v5")
    s.add_argument("--version", required=True, help="model version, e.g. 5.0.0")
    s.add_argument(
        "--train-data",
        required=True,
        help="the training data set (its held-out images tune the post-processing)",
    )
    s.add_argument("--test-data", required=True, help="measured only, never tuned on")
    s.add_argument("--out-dir", help="default: the package's models folder")
    s.add_argument(
        "--replace",
        action="store_true",
        help="replace a model of the same name in --out-dir (refused without it)",
    )
    s.set_defaults(func=cmd_release)

    s = command("view", "open napari with the plugin docked, on a slide or the demo")
    s.add_argument("slide", nargs="?", help="slide or image to open (default: the demo slide)")
    s.add_argument(
        "--screenshot",
        metavar="PNG",
        help="save the window to this file after --screenshot-delay seconds, then quit",
    )
    s.add_argument(
        "--screenshot-delay",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="wait before --screenshot (default 3)",
    )
    s.set_defaults(func=cmd_view)

    from .project import add_parser as add_project_parser

    add_project_parser(sub, HelpFormatter)
    from .classify import add_parsers as add_classify_parsers

    add_classify_parsers(sub, HelpFormatter, _positive, _mpp)
    from .heatmap import add_parser as add_heatmap_parser

    add_heatmap_parser(sub, HelpFormatter)
    from .normaliser import add_parser as add_normaliser_parser

    add_normaliser_parser(sub, HelpFormatter)
    return p


def _environment_problem() -> str | None:
    """A setting given by environment variable that no command could use, or None: refused
    like a bad option, before any work."""
    from ..models.runtime import tta_mode

    try:
        tta_mode()
    except ValueError as exc:
        return str(exc)
    return None


def main(argv=None) -> int:
    """Run one command; its exit code. Ctrl-C anywhere is ``interrupted`` and 130 (what a shell
    reports for SIGINT), so ``nucleiseg ... && next`` stops."""
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning  # a repaired store, a taken-over lock: one line
    try:
        args = build_parser().parse_args(argv)
        problem = _environment_problem()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not stdout_gone():  # another pipe or socket of the job: an error to report
            raise
        # The reader went away (``nucleiseg models list | head``): stop quietly, as other
        # command-line tools do. Python would print a traceback, then another at exit when
        # it flushes stdout, unless stdout goes somewhere that accepts it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    finally:
        warnings.showwarning = shown
    return code


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone away (Linux says POLLERR, macOS and the
    BSDs POLLHUP). Where that cannot be asked (Windows has no poll), assume it is: a broken
    pipe there is almost always stdout's, and was always a quiet exit."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = select.POLLERR | select.POLLHUP
        return any(ev & gone for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as the command line says everything: ``warning: <what, naming the file>``
    (Python's default adds the source line that raised it, which means nothing to a user)."""
    print(f"warning: {message}", file=file if file is not None else sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
