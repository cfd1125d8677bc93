"""``nucleiseg train-classifier`` and ``nucleiseg classify``: tissue classes of tiles.

A contract other tools rely on: ``train-classifier``'s last stdout line is JSON; ``classify``
writes one CSV row per image (``file`` = the stem, ``p_tumour``, ``p_<tag>`` for every tag the
model knows). Problems are one line each, naming the file; images that cannot be read are
skipped, the rest classified, and the exit code is 1 when any was skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parsers(sub, formatter, positive, mpp_type) -> None:
    text = "learn tissue classes from labelled tiles (a CSV of file,label) in a project"
    p = sub.add_parser("train-classifier", help=text, description=text, formatter_class=formatter)
    p.add_argument("project", metavar="PROJECT", help="the project folder (made if missing)")
    p.add_argument(
        "--tiles",
        metavar="LIST.csv",
        help="tiles to add as region labels first: columns file,label (any tags; `tumour` is "
        "the one heatmaps use), optional group (copies of one source: kept on one side of the "
        "held-out split) and mpp; files relative to the list's folder",
    )
    p.add_argument(
        "--mpp",
        type=mpp_type,
        help="µm/px of the listed tiles: for tiles that state none, and over what a tile states",
    )
    p.add_argument("--minutes", type=positive(float), default=5.0, help="training time (default 5)")
    p.add_argument(
        "--promote",
        choices=("auto", "always", "never"),
        default="auto",
        help="make the new model the project's classifier: when better on held-out regions "
        "(auto, default), always, or never",
    )
    p.add_argument(
        "--pixel-loss",
        choices=("dynamic", "fixed", "plain", "none"),
        default="dynamic",
        help="loss of the segmentation step on pixel-labelled images: dynamically weighted "
        "cross-entropy (reference 001, default), fixed class weights, plain, or none (the "
        "classifier alone)",
    )
    p.add_argument("--beta", type=positive(float), default=3.0, help="β of the dynamic weights")
    p.add_argument("--alpha", type=positive(float), default=1.0, help="weight of the class loss")
    p.add_argument(
        "--stepwise",
        action="store_true",
        help="first train on an intermediate task made without labels (nuclei density "
        "clusters, reference 004), then on the labels",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on with the project's last training run that was stopped (Ctrl-C, Cancel, a "
        "crash), from its last checkpoint, for the time it had left; its settings are kept",
    )
    p.set_defaults(func=cmd_train_classifier)

    text = "tissue class probabilities of images (tiles): one CSV row per image"
    c = sub.add_parser("classify", help=text, description=text, formatter_class=formatter)
    c.add_argument("images", nargs="+", metavar="IMAGE", help="images (PNG, JPEG, TIFF)")
    c.add_argument("--out", required=True, metavar="FILE.csv", help="the CSV to write")
    c.add_argument(
        "--mpp",
        type=mpp_type,
        help="µm/px of the images: for images that state none, and over what an image states",
    )
    who = c.add_mutually_exclusive_group()
    who.add_argument("--project", metavar="PROJECT", help="use the project's classifier")
    who.add_argument("--model", metavar="NAME_OR_PATH", help="a classifier by name or card path")
    c.set_defaults(func=cmd_classify)


def cmd_train_classifier(args) -> int:
    from ..classification.project_training import add_tile_list, train_project_classifier
    from ..classification.tiles import TileListError
    from ..classification.train import ClassifierConfig
    from ..models import WeightsError
    from ..project import Project
    from ..project.errors import ProjectError
    from .progress import Progress

    try:
        project = Project.init(args.project)
        if args.tiles:
            with Progress(Path(args.tiles).name, "tiles") as bar:
                added, already = add_tile_list(project, args.tiles, args.mpp, bar.update)
            print(f"{args.tiles}: {added} tiles added, {already} already stored", file=sys.stderr)
        cfg = None
        if not args.resume:
            cfg = ClassifierConfig(
                minutes=args.minutes,
                pixel_loss=args.pixel_loss,
                beta=args.beta,
                alpha=args.alpha,
                stepwise=args.stepwise,
            )
        result = None
        steps = train_project_classifier(project, cfg, promote=args.promote, resume=args.resume)
        with Progress("training", "%") as bar:
            for info in steps:
                if info["stage"] == "done":
                    result = info["result"]
                elif "fraction" in info:
                    bar.update(round(100 * info["fraction"]), 100)
    except (ProjectError, TileListError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: the project's classifier is unchanged; its last checkpoint is kept: "
            f"`nucleiseg train-classifier {args.project} --resume` goes on from it",
            file=sys.stderr,
        )
        return 130
    print(json.dumps(result))
    return 0


def cmd_classify(args) -> int:
    import csv
    import os
    from collections import Counter

    from ..io.output import OutputError, check_output_file
    from ..methods import get_method
    from ..methods.classifier import TUMOUR
    from ..models import WeightsError
    from ..project import Project
    from ..project.errors import ProjectError
    from ..project.folder import open_with_mpp
    from .main import note_override

    out = Path(args.out)
    try:
        check_output_file(out, inputs=args.images)
        project = Project(args.project).path if args.project else None  # refuses a non-project
        method = get_method(args.model, kind="classifier", project=project)
        method.warm_up()
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (WeightsError, ProjectError) as exc:  # the model or project asked for: an option
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if TUMOUR not in method.classes:
        print(
            f"warning: {method.name} has no {TUMOUR!r} tag ({', '.join(method.classes)}); "
            "p_tumour is left empty",
            file=sys.stderr,
        )
    rows, failed = [], []
    # Rows are named by file stem; images sharing a stem (a/x.png, b/x.png) by their path.
    stems = Counter(Path(p).stem for p in args.images)
    for path in args.images:
        try:
            with open_with_mpp(path, args.mpp) as image:
                # The file's own µm/px, read as it opens (no second look at its header).
                note_override(path, image.mpp_file, args.mpp)
                h, w = image.shape
                if h * w > 64_000_000:
                    raise ProjectError(
                        f"{path}: {w} x {h} px is a slide, not a tile; use `nucleiseg heatmap`"
                    )
                rgb, mpp = image.read_region(0, 0, w, h, 0), image.mpp
            probs = method.classify_image(rgb, mpp)
        except (ProjectError, OSError, ValueError) as exc:
            text = str(exc)
            print(f"error: {text if str(path) in text else f'{path}: {text}'}", file=sys.stderr)
            failed.append(str(path))
            continue
        stem = Path(path).stem
        row = {"file": stem if stems[stem] == 1 else str(path)}
        p = dict(zip(method.classes, (float(v) for v in probs)))
        row["p_tumour"] = f"{p[TUMOUR]:.6f}" if TUMOUR in p else ""
        row.update({f"p_{tag}": f"{v:.6f}" for tag, v in p.items() if tag != TUMOUR})
        rows.append(row)
    if not rows:  # an earlier table at --out is worth more than an empty one
        print(f"nothing classified; {out} was not written", file=sys.stderr)
        _failed_line(failed, len(args.images))
        return 1
    fields = ["file", "p_tumour", *[f"p_{t}" for t in method.classes if t != TUMOUR]]
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        print(f"error: {out}: cannot write ({exc.strerror})", file=sys.stderr)
        return 1
    print(f"{len(rows)} images classified with {method.name} -> {out}", file=sys.stderr)
    _failed_line(failed, len(args.images))
    return 1 if failed else 0


def _failed_line(failed: list[str], given: int) -> None:
    """As ``segment`` and ``info``: the bad files of a batch in one last line."""
    if failed and given > 1:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
