"""Train the shipped learned stain normaliser (issue 18) through a project, as a user would.

    python scripts/train_normaliser.py PROJECT_DIR [--minutes 40] [--student --minutes 15]

The project (created on first use) holds:
* reference style (Y): the 30 MoNuSeg 2018 training images, the colours the shipped nuclei model
  learnt on (µm/px 0.25), and the same images as strong labels (every 5th held out);
* other stains (X): the two real slides of ../shared/data/slides (Aperio CMU, TCGA) and the
  DSB 2018 brightfield colour crops outside v5's held-out clusters, at µm/px from their labels.
Never a test image. A second call with ``--student`` pseudo-labels X with the teacher and trains
the TransCycle student; ``--resume`` goes on with an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared")) / "data"


def build(project_dir: Path):
    from napari_nucleiseg.project import Project
    from napari_nucleiseg.training.nuclei_data import (
        appearance_holdout,
        load_dataset,
    )

    if (project_dir / "project.json").exists():
        return Project(project_dir)
    project = Project.init(project_dir)
    train = SHARED / "nuclei" / "monuseg2018_train"
    for image in sorted((train / "images").glob("*.png")):
        project.add_slide(image, reference=True, mpp=0.25)
        project.add_label_files(image, train / "labels" / f"{image.stem}.tif", mpp=0.25)
    project.add_slide(SHARED / "slides" / "CMU-1-Small-Region.svs")
    # The TCGA file states no µm/px; its nuclei put it near 1 (benchmarks/mpp_sanity.py).
    project.add_slide(SHARED / "slides" / "tcga-cr-7395-01a-01-ts1.svs", mpp=1.0)
    dsb = SHARED / "nuclei" / "dsb2018_stage1_train"
    colour = load_dataset(dsb, kinds=("colour",))
    held = set(appearance_holdout(colour))
    for im in colour:
        if im.stem not in held:
            project.add_slide(dsb / "images" / f"{im.stem}.png", mpp=im.mpp)
    return project


def ship(project_dir: Path, model: str, name: str) -> Path:
    """Copy a project's normaliser into the package's model folder as ``name``: weights and
    ONNX renamed, hashes unchanged, the card pointing at them. The cycle state (both
    generators and discriminators, ~40 MB) stays in the project; a student of the shipped model
    starts its second generator and discriminators afresh."""
    import shutil

    from napari_nucleiseg.models.registry import MODELS_DIR, ModelCard

    src = Path(project_dir) / "models"
    card = json.loads((src / f"{model}.json").read_text())
    for field in ("weights", "onnx"):
        target = f"{name}{Path(card[field]).suffix}"
        shutil.copyfile(src / card[field], MODELS_DIR / target)
        card[field] = target
    card["name"] = name
    card["version"] = "1.0.0"
    card["training"].pop("cycle_state", None)
    card["training"]["project_model"] = model
    ModelCard(**card)  # refuses a card with fields out of range
    out = MODELS_DIR / f"{name}.json"
    out.write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--student", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--seg-lr", type=float, default=None)
    ap.add_argument("--start-from", default=None, help="go on from this project normaliser")
    ap.add_argument("--encoder-lr", type=float, default=None)
    ap.add_argument(
        "--ship",
        nargs=2,
        metavar=("MODEL", "NAME"),
        help="copy the project's model MODEL into the package as NAME (no training)",
    )
    args = ap.parse_args(argv)
    if args.ship:
        print(ship(args.project, *args.ship))
        return 0
    from napari_nucleiseg.training.normaliser_train import NormaliserConfig, train_normaliser

    project = build(args.project)
    rates = {
        k: v for k, v in (("seg_lr", args.seg_lr), ("encoder_lr", args.encoder_lr)) if v is not None
    }
    cfg = (
        None
        if args.resume
        else NormaliserConfig(
            minutes=args.minutes,
            student=args.student,
            name=args.name,
            start_from=args.start_from,
            **rates,
        )
    )
    for info in train_normaliser(project, cfg, resume=args.resume):
        if info["stage"] != "train" or info["iter"] % 25 == 0:
            print(
                json.dumps(
                    {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()}
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
