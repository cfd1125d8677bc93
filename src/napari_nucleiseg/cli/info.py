"""``nucleiseg info``: levels, downsamples, µm/px and format of slides, as text or JSON.

Sizes are said with their order, because two conventions meet here: the text gives
``width x height`` (how a viewer or a scanner states an image's size), the JSON keeps
``level_shapes`` as ``[height, width]`` (array order, as ``Slide.level_shapes``) and adds
``level_sizes_wh`` as ``[width, height]``.
"""

from __future__ import annotations

import json
import sys

#: What the JSON's size keys mean (also in ``nucleiseg info --help``).
JSON_SIZES_HELP = (
    "print JSON: one object per slide; level_shapes are [height, width] (array order), "
    "level_sizes_wh the same sizes as [width, height]"
)


def describe(slide) -> str:
    """The text ``info`` prints for one slide: one line for the slide, one per level."""
    mpp = "unknown" if slide.mpp is None else f"{slide.mpp:.4g} µm/px ({slide.mpp_source})"
    lines = [f"{slide.path.name}  [{slide.format}]  {mpp}"]
    for i, ((h, w), d) in enumerate(zip(slide.level_shapes, slide.level_downsamples)):
        lm = slide.level_mpp(i)
        unit = "" if lm is None else f"  {lm:.4g} µm/px"
        lines.append(f"  level {i}: {w} x {h} px (width x height)  downsample {d:.4g}{unit}")
    return "\n".join(lines)


def metadata(slide) -> dict:
    """The JSON ``info`` prints for one slide: ``Slide.metadata()`` (``level_shapes`` as
    [height, width]) plus ``level_sizes_wh`` ([width, height])."""
    meta = dict(slide.metadata())
    meta["level_sizes_wh"] = [[int(w), int(h)] for h, w in slide.level_shapes]
    return meta


def cmd_info(args) -> int:
    from ..io import SlideError
    from .main import open_with_warnings

    failed = []
    results = []
    for p in args.slides:
        try:
            slide = open_with_warnings(p, args.mpp)
        except SlideError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(str(p))
            continue
        if args.json:
            results.append(metadata(slide))
        else:
            print(describe(slide))
        slide.close()
    if args.json:
        print(json.dumps(results, indent=1))
    if failed and len(args.slides) > 1:  # as segment: the failed ones in one line at the end
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
