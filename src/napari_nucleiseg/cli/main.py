"""``nucleiseg``: the headless face of the plugin.

Subcommands: ``info`` (levels and µm/px of slides), ``tissue`` (tissue mask and tile list),
``demo`` (write the demo slide), ``view`` (napari with the plugin docked, on a slide or the demo),
``segment``/``eval``/``train``/``release-model`` (nuclei), ``normalize`` (stain normalisation).
Errors about input files print one line naming the file and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def _open(path, mpp=None):
    from ..io import open_slide

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slide = open_slide(path, mpp=mpp)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return slide


def cmd_info(args) -> int:
    from ..io import SlideError

    failed = 0
    results = []
    for p in args.slides:
        try:
            slide = _open(p, args.mpp)
        except SlideError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            results.append(slide.metadata())
        else:
            print(slide.describe())
        slide.close()
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


def cmd_tissue(args) -> int:
    import numpy as np
    from PIL import Image

    from ..io import SlideError
    from ..tiling import slide_grid
    from ..tissue import tissue_mask

    try:
        slide = _open(args.slide, args.mpp)
    except SlideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        mask = tissue_mask(slide)
    except SlideError as exc:  # damage the open-time probe did not reach
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if slide.mpp is not None:
        grid = slide_grid(slide, tile_um=args.tile_um)
    else:
        grid = slide_grid(slide, tile_px=args.tile_px)
    tiles = grid.tissue_tiles(mask)
    print(
        f"{slide.path.name}: tissue {100 * mask.fraction:.1f} %, {len(tiles)} of {len(grid)} tiles "
        f"of {grid.tile} px hold tissue (mask at {mask.downsample:.3g}x)"
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((mask.mask * 255).astype(np.uint8)).save(out)
        print(f"wrote {out}")
    if args.tiles:
        Path(args.tiles).write_text(
            json.dumps(
                {"slide": str(slide.path), "tile_px": grid.tile, "tiles": [t.box for t in tiles]}
            )
        )
        print(f"wrote {args.tiles}")
    return 0


def cmd_demo(args) -> int:
    from ..demo import demo_slide

    d = demo_slide(args.out)
    print(f"demo slide: {d.slide}\nground truth: {d.labels}\n{d.nuclei} nuclei at {d.mpp} µm/px")
    return 0


def cmd_view(args) -> int:
    import napari

    viewer = napari.Viewer(title="napari-nucleiseg")
    for name in ("Nuclei", "Stain", "Slide"):  # one dock, three tabs; Slide in front
        viewer.window.add_plugin_dock_widget("napari-nucleiseg", name, tabify=True)
    if args.slide:
        viewer.open(args.slide, plugin="napari-nucleiseg")
    else:
        viewer.open_sample("napari-nucleiseg", "demo_slide")
    viewer.scale_bar.visible = True
    viewer.window.resize(1500, 950)
    slides = [
        lyr for lyr in viewer.layers if lyr.metadata.get("nucleiseg", {}).get("kind") == "slide"
    ]
    if slides:
        viewer.layers.selection.active = slides[-1]
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, viewer.reset_view)  # after the window has its final size
    if args.screenshot:  # for docs and smoke tests: render once, save, quit

        def shoot():
            viewer.screenshot(args.screenshot, canvas_only=False)
            viewer.close()

        QTimer.singleShot(int(args.screenshot_delay * 1000), shoot)
    napari.run()
    return 0


def cmd_segment(args) -> int:
    # Plain images keep segment_files' contract; whole slides and cohorts go to the whole-slide job.
    from ..wholeslide.cohort import segment_command

    normaliser = None
    if args.normalize or args.target:
        from ..io import SlideError
        from ..stain import StainError, load_target

        if not args.target:
            print(
                "error: --normalize needs --target (a reference image or a saved profile .json)",
                file=sys.stderr,
            )
            return 2
        try:
            normaliser = load_target(args.normalize, args.target)
        except (SlideError, StainError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return segment_command(args, normaliser=normaliser)


def cmd_normalize(args) -> int:
    from ..stain.commands import normalize_command

    return normalize_command(args)


def cmd_eval(args) -> int:
    from ..segmentation.commands import evaluate_dirs

    return evaluate_dirs(args.pred_dir, args.gt_dir)


def cmd_train(args) -> int:
    from ..training.seg_train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        iters=args.iters,
        batch=args.batch,
        patch=args.patch,
        threads=args.threads,
        seed=args.seed,
        mpp=args.model_mpp,
        widths=tuple(int(w) for w in args.widths.split(",")),
        decoder=args.decoder,
        lr=args.lr,
        cycles=tuple(int(c) for c in args.cycles.split(",")) if args.cycles else (),
        cycle_lr_decay=args.cycle_lr_decay,
        init_from=args.init_from,
    )
    for info in train(cfg):
        if info["iter"] % args.log_every == 0 or "val" in info or info["iter"] == cfg.iters:
            eta = (
                info["elapsed_s"]
                / max(1, info["iter"] - info.get("start", 0))
                * (cfg.iters - info["iter"])
            )
            val = f"  val {info['val']}" if "val" in info else ""
            print(
                f"iter {info['iter']}/{cfg.iters}  loss {info['loss']:.4f}  lr {info['lr']:.2e}  "
                f"eta {eta / 60:.1f} min{val}",
                flush=True,
            )
    print(f"checkpoint: {Path(args.out) / 'checkpoint.pt'}")
    return 0


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    return parse


def cmd_release(args) -> int:
    from ..training.release import release

    card = release(args.run, args.name, args.version, args.train_data, args.test_data, args.out_dir)
    print(Path(card).read_text())
    return 0


#: Stain normalisation methods (napari_nucleiseg.stain.METHODS, listed here to keep --help import-light).
STAIN_METHODS = ("reinhard", "macenko", "vahadane", "ruifrok")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="nucleiseg", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"napari-nucleiseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="levels, µm/px and format of slides")
    s.add_argument("slides", nargs="+")
    s.add_argument("--mpp", type=_positive(float), help="µm/px override")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("tissue", help="tissue mask and the tissue tiles whole-slide jobs visit")
    s.add_argument("slide")
    s.add_argument("--mpp", type=_positive(float), help="µm/px override")
    s.add_argument(
        "--tile-um", type=_positive(float), default=256.0, help="tile edge in µm (default 256)"
    )
    s.add_argument(
        "--tile-px",
        type=_positive(int),
        default=512,
        help="tile edge in px when the slide has no µm/px",
    )
    s.add_argument("--out", help="write the mask as PNG")
    s.add_argument("--tiles", help="write the tissue tiles as JSON")
    s.set_defaults(func=cmd_tissue)

    s = sub.add_parser("demo", help="generate the demo slide and print where it is")
    s.add_argument("--out", help="directory (default: the user cache)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "segment", help="segment nuclei: DIR/<stem>.tif labels + DIR/<stem>.csv measurements"
    )
    s.add_argument(
        "inputs", nargs="+", help="images or slides, folders of them, or .txt lists of paths"
    )
    s.add_argument("--out", required=True)
    s.add_argument("--mpp", type=_positive(float), help="µm/px of inputs that do not state it")
    s.add_argument(
        "--method",
        default=None,
        help="model name (default: the shipped model), 'classical' or 'classical-phansalkar'",
    )
    s.add_argument(
        "--normalize",
        metavar="METHOD",
        choices=STAIN_METHODS,
        help="normalise stains first: " + ", ".join(STAIN_METHODS) + " (recorded in the output)",
    )
    s.add_argument(
        "--target",
        metavar="REF_OR_PROFILE",
        help="for --normalize: reference image, folder of references (averaged) or profile .json",
    )
    s.add_argument(
        "--whole-slide",
        action="store_true",
        help="use the whole-slide job (automatic above 120 MP): DIR/<stem>.nuclei.zarr/.csv/.parquet/.geojson",
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
        help="whole-slide tile edge in µm (default 960 model px)",
    )
    s.set_defaults(func=cmd_segment)

    s = sub.add_parser(
        "normalize", help="stain-normalise an image or a whole slide (pyramidal output)"
    )
    s.add_argument("input")
    s.add_argument(
        "--method", choices=STAIN_METHODS, help="required unless --target is a profile .json"
    )
    s.add_argument(
        "--target",
        required=True,
        metavar="REF_OR_PROFILE",
        help="reference image or slide to fit, a folder of them (profiles averaged), "
        "or a saved stain profile .json",
    )
    s.add_argument(
        "--out",
        required=True,
        help=".png/.jpg (image), .tif (pyramidal tiled TIFF) or .zarr (OME-Zarr)",
    )
    s.add_argument("--save-profile", metavar="JSON", help="also save the fitted target profile")
    s.add_argument("--mpp", type=_positive(float), help="µm/px of an input that does not state it")
    s.set_defaults(func=cmd_normalize)

    s = sub.add_parser("eval", help="score predicted label maps against ground truth")
    s.add_argument("pred_dir")
    s.add_argument("gt_dir")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser(
        "train", help="train the nuclei network (resumable: re-run the same command)"
    )
    s.add_argument("--data", required=True, help="data set folder (images/, labels/, index.json)")
    s.add_argument("--out", required=True, help="run folder: checkpoint.pt, train.log, config.json")
    s.add_argument("--iters", type=int, default=1100)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--patch", type=int, default=256)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--model-mpp", type=float, default=0.5)
    s.add_argument("--widths", default="8,24,48,96")
    s.add_argument("--decoder", choices=("double", "light"), default="double")
    s.add_argument("--lr", type=float, default=3e-3)
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
        help="start from a shipped model (registry name or "
        ".safetensors file): every level it shares with --widths is copied, the rest starts "
        "from random weights",
    )
    s.add_argument("--log-every", type=int, default=25)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "release-model", help="tune, export and measure a training run as a shipped model"
    )
    s.add_argument("run")
    s.add_argument("--name", required=True)
    s.add_argument("--version", required=True)
    s.add_argument("--train-data", required=True)
    s.add_argument("--test-data", required=True, help="measured only, never tuned on")
    s.add_argument("--out-dir", help="default: the package's models folder")
    s.set_defaults(func=cmd_release)

    s = sub.add_parser("view", help="open napari with the plugin docked, on a slide or the demo")
    s.add_argument("slide", nargs="?")
    s.add_argument("--screenshot", help=argparse.SUPPRESS)
    s.add_argument("--screenshot-delay", type=float, default=3.0, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_view)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
