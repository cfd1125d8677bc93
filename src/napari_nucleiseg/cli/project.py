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
    psub = p.add_subparsers(dest="project_command", required=True, metavar="COMMAND")
    init = psub.add_parser(
        "init", help="make a project folder (an existing project is left as it is)"
    )
    init.add_argument("dir", metavar="DIR", help="the project folder (new or empty)")
    init.set_defaults(func=cmd_init)
    add = psub.add_parser(
        "add-labels",
        help="store an image and its instance mask as a strong label (as 'Accept this view')",
    )
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
