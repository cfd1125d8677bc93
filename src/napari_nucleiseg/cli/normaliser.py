"""``nucleiseg train-normaliser``: a learned stain normaliser trained on a project (issue 18)."""

from __future__ import annotations

import sys


def add_parser(sub, formatter) -> None:
    text = (
        "train a learned stain normaliser on a project: the teacher (CycleGAN with a nuclei "
        "decoder) first, then --student (pseudo-labels + a stronger encoder, promoted if better)"
    )
    p = sub.add_parser("train-normaliser", help=text, description=text, formatter_class=formatter)
    p.add_argument("dir", metavar="DIR", help="the project folder (slides marked --reference)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget, all stages (default 30; with --resume: the time the run had left)",
    )
    p.add_argument(
        "--student",
        action="store_true",
        help="train the TransCycle student from the project's current normaliser",
    )
    p.add_argument(
        "--promote",
        choices=("auto", "always", "never"),
        default="auto",
        help="make the result the project's normaliser: auto = a teacher always, a student when "
        "its nuclei decoder beats the teacher's on the held-out strong labels",
    )
    p.add_argument(
        "--nuclei-model", metavar="NAME", help="the U-Net the teacher's encoder starts from"
    )
    p.add_argument("--teacher", metavar="NAME", help="the normaliser a student starts from")
    p.add_argument("--name", metavar="NAME", help="the new model's name")
    p.add_argument("--resume", action="store_true", help="go on with the latest unfinished run")
    p.set_defaults(func=cmd_train_normaliser)


def cmd_train_normaliser(args) -> int:
    import json

    from ..io import SlideError
    from ..models import WeightsError
    from ..project import Project, ProjectError
    from .progress import follow_training

    if args.minutes is not None and not 0 < args.minutes <= 24 * 60:  # a usage error: exit 2
        print(
            f"error: minutes must be above 0 (and at most a day), got {args.minutes:g}",
            file=sys.stderr,
        )
        return 2
    try:
        from ..training.normaliser_train import NormaliserConfig, train_normaliser

        project = Project(args.dir)
        if args.resume:
            if args.student or args.teacher or args.nuclei_model or args.name:
                raise ProjectError(
                    "--resume continues a run with its own settings: give it --minutes only"
                )
            cfg = None if args.minutes is None else NormaliserConfig(minutes=args.minutes)
        else:
            cfg = NormaliserConfig(
                minutes=30.0 if args.minutes is None else args.minutes,
                student=args.student,
                promote=args.promote,
                nuclei_model=args.nuclei_model,
                teacher=args.teacher,
                name=args.name,
            )
        steps = train_normaliser(project, cfg, resume=args.resume)
        result = follow_training("train-normaliser", steps)
    except (ProjectError, SlideError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(
            f"error: training needs PyTorch ({exc.name} is not installed): "
            "pip install 'napari-nucleiseg[train]'",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(f"error: {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
