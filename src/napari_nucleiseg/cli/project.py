"""``nucleiseg project init DIR`` and ``nucleiseg project add-labels DIR IMAGE LABELS``.

``add-labels`` is the command-line twin of the Nuclei panel's "Accept this view": the same core
call (:meth:`napari_nucleiseg.project.Project.add_labels`), so a corrected mask stored from a
script and one accepted in napari are the same kind of example.
"""

from __future__ import annotations

import sys


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
        help="init: make a project; add-labels: store a corrected image",
    )
    text = "make a project folder (an existing project is left as it is)"
    init = psub.add_parser("init", help=text, description=text, formatter_class=formatter)
    init.add_argument("dir", metavar="DIR", help="the project folder (new or empty)")
    init.set_defaults(func=cmd_init)
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
        help="µm per pixel of IMAGE when its file states none (e.g. 0.25 for 40x, 0.5 for 20x)",
    )
    add.set_defaults(func=cmd_add_labels)

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
        help="µm per pixel of unlabelled images that state none",
    )
    r.add_argument(
        "--minutes", type=float, default=10.0, help="time budget, all stages (default 10)"
    )
    r.add_argument(
        "--promote",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto (default): the student replaces the teacher only if better on held-out labels",
    )
    r.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="mean per-pixel confidence a pseudo-labelled tile needs (0.5-1, default 0.9)",
    )
    r.set_defaults(func=cmd_retrain)


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


def cmd_retrain(args) -> int:
    import json

    from ..io import SlideError
    from ..models import WeightsError
    from ..project import Project, ProjectError
    from ..training.retrain import RetrainConfig, retrain
    from .progress import Progress

    try:
        project = Project(args.dir)
        cfg = RetrainConfig(
            minutes=args.minutes,
            promote=args.promote,
            confidence=args.confidence,
            unlabelled=[(u, args.mpp) for u in args.unlabelled],
        )
        bar = Progress("retrain", unit="s", min_total=1)
        result = None
        for info in retrain(project, cfg):
            if info["stage"] == "done":
                result = info["result"]
                break
            status = info["stage"]
            if "loss" in info:
                status += f" iter {info['iter']} loss {info['loss']:.3f}"
            bar.update(int(info["elapsed_s"]), int(info["budget_s"]), status)
        bar.close()
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
    print(json.dumps(result))
    return 0
