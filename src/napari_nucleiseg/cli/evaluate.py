"""``nucleiseg eval``: a per-image table, the means and the aggregate, then one JSON line.

Images that cannot be scored (unreadable, not instance labels, another shape than their ground
truth) get one ``error:`` line each on stderr and the others are still scored; doubtful ones
(binary masks, float ids) get a ``warning:`` line and are scored. Exit 1 when an image was not
scored or had no prediction, 2 when nothing could be compared at all.
"""

from __future__ import annotations

import json
import sys

from .progress import Progress

COLUMNS = ("aji", "f1", "pq", "ap", "dice", "n_true", "n_pred")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:>8.4f}"
    return f"{'' if value is None else value:>8}"


def cmd_eval(args) -> int:
    from ..segmentation.commands import EvaluationError, evaluate_dirs

    with Progress("eval", "images") as bar:

        def report(kind, line):
            bar.write(f"{kind}: {line}", sys.stderr)

        try:
            result = evaluate_dirs(args.pred_dir, args.gt_dir, progress=bar.update, report=report)
        except EvaluationError as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if result.missing:
        print(
            f"warning: no prediction for {len(result.missing)} image(s): "
            + ", ".join(result.missing),
            file=sys.stderr,
        )
    if not result.scores:  # every matched image was refused, each with its line
        return 1
    print(f"{'image':<28}" + "".join(f"{c:>8}" for c in COLUMNS))
    for s in result.scores:
        row = s.as_row()
        print(f"{s.name[:28]:<28}" + "".join(_cell(row[c]) for c in COLUMNS))
    agg = result.aggregate
    means = agg["mean_per_image"]
    print(f"{'mean of images':<28}" + "".join(_cell(means.get(c)) for c in COLUMNS))
    print(f"{'aggregate':<28}" + "".join(_cell(agg.get(c)) for c in COLUMNS))
    print(json.dumps(agg))
    return 1 if result.missing or result.refused else 0
