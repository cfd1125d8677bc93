"""``nucleiseg project init DIR``, ``nucleiseg project add-labels DIR IMAGE LABELS``,
``nucleiseg project labels DIR`` and ``nucleiseg project remove-labels DIR ID``.

``add-labels`` is the command-line twin of the Nuclei panel's "Accept this view": the same core
call (:meth:`napari_nucleiseg.project.Project.add_labels`), so a corrected mask stored from a
script and one accepted in napari are the same kind of example.
"""

from __future__ import annotations

import argparse
import sys

from ..training.retrain import RetrainConfig

#: The retraining options' defaults are RetrainConfig's (the GUI's too).
_DEFAULTS = RetrainConfig()


def add_parser(sub, formatter) -> None:
    """The ``project`` command and its sub-commands, on ``nucleiseg``'s sub-parsers."""
    p = sub.add_parser(
        "project",
        help="make a project and add corrected nuclei to its training store",
        description="A project is a folder: its slides, its training store (corrections and "
        "pseudo-labels) and the models trained on them.",
        formatter_class=formatter,
    )
    psub = p.add_subparsers(
        dest="project_command",
        required=True,
        metavar="COMMAND",
        help="init: make a project; add-slide: list a slide (--reference: the lab's stain "
        "style); add-labels: store a corrected image; labels: list the stored examples; "
        "remove-labels: delete one",
    )
    text = "make a project folder (an existing project is left as it is)"
    init = psub.add_parser("init", help=text, description=text, formatter_class=formatter)
    init.add_argument("dir", metavar="DIR", help="the project folder (new or empty)")
    init.set_defaults(func=cmd_init)
    text = "list a slide or image in the project (--reference: its stain is the lab's style)"
    sl = psub.add_parser("add-slide", help=text, description=text, formatter_class=formatter)
    sl.add_argument("dir", metavar="DIR", help="the project folder")
    sl.add_argument("slides", nargs="+", metavar="SLIDE", help="slides or images")
    sl.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="their stain is (--no-reference: is no longer) the reference style a learned "
        "normaliser maps to",
    )
    sl.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="µm per pixel of files that state none (e.g. 0.25 for 40x, 0.5 for 20x); it "
        "replaces what a file states",
    )
    sl.set_defaults(func=cmd_add_slide)
    text = "store an image and its instance mask as a strong label (as 'Accept this view')"
    add = psub.add_parser("add-labels", help=text, description=text, formatter_class=formatter)
    add.add_argument("dir", metavar="DIR", help="the project folder")
    add.add_argument("image", metavar="IMAGE", help="the image (PNG, TIFF, any slide format)")
    add.add_argument(
        "labels",
        metavar="LABELS",
        help="its instance mask (TIFF or PNG, same size, 0 = background, one id per nucleus)",
    )
    add.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="µm per pixel of IMAGE when its file states none (e.g. 0.25 for 40x, 0.5 for "
        "20x); it replaces what the file states",
    )
    add.set_defaults(func=cmd_add_labels)
    text = "list the training store's examples: id, kind/split, nuclei, source, region"
    lst = psub.add_parser("labels", help=text, description=text, formatter_class=formatter)
    lst.add_argument("dir", metavar="DIR", help="the project folder")
    lst.set_defaults(func=cmd_labels)
    text = "delete one example from the training store (an accepted view or added labels)"
    rm = psub.add_parser("remove-labels", help=text, description=text, formatter_class=formatter)
    rm.add_argument("dir", metavar="DIR", help="the project folder")
    rm.add_argument(
        "id", metavar="ID", help="the example's id, as `nucleiseg project labels DIR` lists it"
    )
    rm.set_defaults(func=cmd_remove_labels)

    r = sub.add_parser(
        "retrain",
        help="pseudo-label, fine-tune the project's model on its labels, promote if better",
        description="Teacher-student retraining (reference 002): the project's current model "
        "(the shipped default at first) pseudo-labels the unlabelled images, a student starts "
        "from its weights and trains on the strong labels and confident pseudo-labels, and "
        "replaces it when it scores a higher AJI on the held-out strong labels. Progress goes to "
        "stderr; the last line on stdout is JSON: model, teacher_aji, student_aji, promoted, "
        "minutes.",
        formatter_class=formatter,
    )
    r.add_argument("dir", metavar="DIR", help="the project folder")
    r.add_argument(
        "--unlabelled",
        nargs="+",
        default=[],
        metavar="IMAGE_OR_SLIDE",
        help="images or slides for pseudo-labels (tissue tiles are sampled from large ones)",
    )
    r.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="µm per pixel of unlabelled images that state none; it replaces what an image states",
    )
    r.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget, all stages (default 10; with --resume: the time the run had left)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest unfinished run (after a cancel or a kill) with its own "
        "settings and pseudo-labels, from its last checkpoint; --minutes gives it a new budget",
    )
    r.add_argument(
        "--promote",
        choices=("auto", "always", "never"),
        default=_DEFAULTS.promote,
        help="auto (default): the student replaces the teacher only if better on held-out labels",
    )
    r.add_argument(
        "--confidence",
        type=float,
        default=_DEFAULTS.confidence,
        help="mean per-pixel confidence a pseudo-labelled tile needs (0.5-1, default "
        f"{_DEFAULTS.confidence:g})",
    )
    r.add_argument(
        "--lr",
        type=float,
        default=_DEFAULTS.lr,
        help=f"peak learning rate of the student (default {_DEFAULTS.lr:g})",
    )
    r.add_argument(
        "--anchor",
        type=float,
        default=_DEFAULTS.anchor,
        help="weight of the pull back to the teacher's weights (L2-SP; default 0: none)",
    )
    r.add_argument(
        "--strong-share",
        type=float,
        default=_DEFAULTS.strong_share,
        help=f"share of every batch from strong labels (default {_DEFAULTS.strong_share:g}; "
        "the rest: pseudo-labels and replay)",
    )
    r.add_argument(
        "--replay-share",
        type=float,
        default=_DEFAULTS.replay_share,
        help="share of every batch from the teacher's own training crops, so the student keeps "
        f"what the teacher knew (default {_DEFAULTS.replay_share:g}; 0: none)",
    )
    r.set_defaults(func=cmd_retrain)

    m = sub.add_parser(
        "models",
        help="list, show, use and roll back nuclei models and tissue classifiers (shipped, "
        "yours, a project's)",
        description="The models the registry knows: shipped in the package, in your models "
        "folder, and in a project (with --project). A project remembers the model it uses; "
        "`use` switches it, `rollback` goes back to the one before.",
        formatter_class=formatter,
    )
    m.add_argument(
        "models_command",
        choices=("list", "show", "use", "rollback"),
        metavar="list|show|use|rollback",
        help="list: every model; show NAME: its card; use NAME: the project's model from now "
        "on; rollback: the project's previous model",
    )
    m.add_argument("name", nargs="?", metavar="NAME", help="a model name or card path")
    m.add_argument("--project", metavar="DIR", help="the project folder")
    m.add_argument(
        "--kind",
        choices=("nuclei", "classifier", "normaliser"),
        default="nuclei",
        help="rollback: which of the project's models goes back (default nuclei; `use` knows "
        "from the model)",
    )
    m.set_defaults(func=cmd_models)


def cmd_init(args) -> int:
    from ..project import Project, ProjectError

    try:
        project = Project.init(args.dir)
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = len(project.store.examples())
    print(f"project {project.path}: {n} labelled examples, {len(project.slides)} slides")
    return 0


def cmd_add_slide(args) -> int:
    from pathlib import Path

    from ..project import Project, ProjectError
    from ..project.folder import open_with_mpp

    try:
        project = Project(args.dir)
        known = {s["path"]: s.get("mpp") for s in project.slides}
        for path in args.slides:
            mpp = args.mpp if args.mpp is not None else known.get(str(Path(path).resolve()))
            with open_with_mpp(path, mpp):  # readable, with a scale: said now, not later
                pass
            entry = project.add_slide(path, reference=args.reference, mpp=args.mpp)
            role = "reference style" if entry.get("reference") else "slide"
            print(f"added {entry['path']} ({role})")
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.dir}: cannot record the slide ({exc.strerror})", file=sys.stderr)
        return 1
    return 0


def cmd_add_labels(args) -> int:
    from ..project import Project, ProjectError

    try:
        project = Project(args.dir)
        example, notes = project.add_label_files(args.image, args.labels, mpp=args.mpp)
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the store's folder: unwritable, full
        print(f"error: {args.dir}: cannot store the example ({exc.strerror})", file=sys.stderr)
        return 1
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(
        f"stored {example.id}: {example.nuclei} nuclei, {example.shape[1]} x {example.shape[0]} "
        f"px at {example.mpp:g} µm/px, {example.split} split"
    )
    return 0


def cmd_labels(args) -> int:
    from pathlib import Path

    from ..project import Project, ProjectError
    from ..project.folder import region_text

    try:
        examples = Project(args.dir).store.examples()
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max([len(ex.id) for ex in examples] + [2])
    print(f"{'id':<{width}}  {'kind/split':<15}{'nuclei':>7}  {'source':<28}region")
    for ex in examples:
        src = ex.provenance.get("source")
        name = Path(src).name if src else "-"
        kind = f"{ex.kind}/{ex.split}"
        print(f"{ex.id:<{width}}  {kind:<15}{ex.nuclei:>7}  {name:<28}{region_text(ex)}")
    return 0


def cmd_remove_labels(args) -> int:
    from ..project import Project, ProjectError

    try:
        example = Project(args.dir).remove_labels(args.id)
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the store's folder: not writable
        print(f"error: {args.dir}: cannot remove {args.id} ({exc.strerror})", file=sys.stderr)
        return 1
    print(f"removed {example.id}: {example.nuclei} nuclei, {example.kind}/{example.split}")
    return 0


def cmd_retrain(args) -> int:
    import json
    import os

    from ..io import SlideError
    from ..models import WeightsError
    from ..project import Project, ProjectError
    from ..training.retrain import RetrainConfig, check_new_run, retrain
    from .main import end_distributed_process
    from .progress import follow_training

    quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun, rank 0 speaks for all
    new_run = None
    try:  # an option out of range: a usage error (exit 2), before the project is touched
        if not args.resume:
            new_run = RetrainConfig(
                minutes=10.0 if args.minutes is None else args.minutes,
                promote=args.promote,
                confidence=args.confidence,
                lr=args.lr,
                anchor=args.anchor,
                strong_share=args.strong_share,
                replay_share=args.replay_share,
                unlabelled=[(u, args.mpp) for u in args.unlabelled],
            )
            check_new_run(new_run)
        elif args.minutes is not None:
            RetrainConfig(minutes=args.minutes)
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        project = Project(args.dir)
        if args.resume:
            tuning = ("promote", "confidence", "lr", "anchor", "strong_share", "replay_share")
            if (args.unlabelled, args.mpp) != ([], None) or any(
                getattr(args, k) != getattr(_DEFAULTS, k) for k in tuning
            ):
                raise ProjectError(
                    "--resume continues a run with its own settings: give it --minutes only"
                )
            cfg = None if args.minutes is None else RetrainConfig(minutes=args.minutes)
        else:
            cfg = new_run
        result = follow_training("retrain", retrain(project, cfg, resume=args.resume), quiet)
    except (ProjectError, SlideError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # training needs PyTorch: the train extra
        print(
            f"error: retraining needs PyTorch ({exc.name} is not installed): "
            "pip install 'napari-nucleiseg[train]'",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not quiet:
            print(
                "interrupted: what the run finished is kept (its training up to now included): "
                f"`nucleiseg retrain {args.dir} --resume` goes on from there",
                file=sys.stderr,
            )
        return 130
    if not quiet:
        if result.get("note"):
            print(f"note: {result['note']}", file=sys.stderr)
        print(json.dumps(result))
    end_distributed_process(0)  # under torchrun: no teardown abort after the work is done
    return 0


def cmd_models(args) -> int:
    from ..models import WeightsError
    from ..project import ProjectError

    try:
        return _models(args)
    except (ProjectError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _models(args) -> int:
    import json

    from ..methods import default_method_name
    from ..models import find_card, list_cards, load_card
    from ..project import Project, ProjectError

    project = Project(args.project) if args.project else None
    where = project.path if project else None
    command = args.models_command
    if command in ("use", "rollback") and project is None:
        raise ProjectError(f"`models {command}` changes a project's model: give --project DIR")
    if command in ("show", "use") and not args.name:
        raise ProjectError(f"`models {command}` needs a model NAME (see `nucleiseg models list`)")
    if command == "list":
        current = default_method_name("nuclei", where)
        print(f"{'':2}{'model':<32}{'version':>9}  {'from':<8}{'AJI':>8} {'on':<17} parent")
        for card in list_cards(kind="nuclei", project=where):
            source = find_card(card.name, where)[1]
            aji = _aji_of(card)
            parent = card.training.get("parent", {}).get("name", "")
            mark = "* " if card.name == current else "  "
            aji_text = f"{aji[0]:8.4f} {aji[1]:<17}" if aji is not None else f"{'':>8} {'':<17}"
            print(f"{mark}{card.name:<32}{card.version:>9}  {source:<8}{aji_text} {parent}")
        classifiers = list_cards(kind="classifier", project=where)
        if classifiers:
            current = default_method_name("classifier", where)
            print(f"\n{'':2}{'classifier':<32}{'version':>9}  {'from':<8}  tags")
            for card in classifiers:
                source = find_card(card.name, where)[1]
                mark = "* " if card.name == current else "  "
                tags = ", ".join(card.classes)
                print(f"{mark}{card.name:<32}{card.version:>9}  {source:<8}  {tags}")
        normalisers = list_cards(kind="normaliser", project=where)
        if normalisers:  # the learned stain normalisers, shipped and trained in the project
            current = default_method_name("normaliser", where)
            print(f"\n{'':2}{'normaliser':<32}{'version':>9}  {'from':<8}  parent")
            for card in normalisers:
                source = find_card(card.name, where)[1]
                mark = "* " if card.name == current else "  "
                parent = card.training.get("parent", {}).get("name", "")
                print(f"{mark}{card.name:<32}{card.version:>9}  {source:<8}  {parent}")
        return 0
    if command == "show":
        path, source = find_card(args.name, where)
        card = load_card(path)
        print(f"{card.name} {card.version} ({source}: {path})")
        print(json.dumps({k: v for k, v in card.__dict__.items() if k != "training"}, indent=1))
        return 0
    if command == "use":
        card = load_card(args.name, where)  # a model that exists and loads
        project.set_current_model(card.name, kind=card.kind)
        print(f"{project.path}: {card.kind} model is now {card.name} {card.version}")
        return 0
    if project.data.get("models", {}).get(args.kind) is None:  # was: "now X", exit 0
        raise ProjectError(
            f"{project.path}: nothing to roll back: its {args.kind} model is already the package "
            f"default ({default_method_name(args.kind)})"
        )
    previous = project.rollback(kind=args.kind)
    now = previous or f"{default_method_name(args.kind)} (the package default)"
    print(f"{project.path}: {args.kind} model is now {now}")
    return 0


#: Where a card's AJI was measured, as ``models list`` names it: the two are not comparable.
AJI_SETS = {"monuseg2018_test": "MoNuSeg test", "project_heldout": "project held-out"}


def _aji_of(card) -> tuple[float, str] | None:
    """The AJI a card states and where (MoNuSeg test for shipped models, the project's held-out
    labels for a project's), or None."""
    metrics = card.metrics or {}
    for key, where in AJI_SETS.items():
        value = metrics.get(key, {})
        if isinstance(value, dict) and isinstance(value.get("aji"), (int, float)):
            return float(value["aji"]), where
    return None
