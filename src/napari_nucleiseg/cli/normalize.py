"""``nucleiseg normalize``: one line per problem on stderr, a progress bar for slides."""

from __future__ import annotations

import sys
from pathlib import Path

from .progress import Progress


def cmd_normalize(args) -> int:
    from ..io import SlideError
    from ..stain import StainError
    from ..stain.commands import normalize_file
    from .main import note_mpp_overrides

    note_mpp_overrides([args.input], args.mpp)
    with Progress(Path(args.input).name, "tiles") as bar:
        try:
            record = normalize_file(
                args.input,
                args.out,
                args.method,
                args.target,
                args.save_profile,
                args.mpp,
                progress=bar.update,
                model=args.model,
                project=args.project,
                calibration=args.calibration,
            )
        except (SlideError, StainError) as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.save_profile:
        print(f"profile: {args.save_profile}")
    stain = record["stain"]
    what = stain["method"] + (f" ({stain['model']})" if "model" in stain else "")
    print(f"{args.input}: {what} -> {args.out}")
    return 0
