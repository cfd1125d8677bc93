"""A project's tissue classifier: region labels in its training store, training, promotion.

An outline on a napari Shapes layer and a row of ``train-classifier --tiles LIST.csv`` end in the
same place: a *region* example in the project's training store (the image, a per-pixel tag mask
and its provenance), added atomically like a nuclei correction. Training reads every region
example, starts from the encoder of the project's current classifier (else the shipped default:
it has seen tens of thousands of patches, a user's few dozen tiles have not), and writes a model
card into the project's ``models/``. The new model becomes the project's classifier when it is
better on held-out regions than the one it started from, when the two cannot be compared (other
tags) or when asked; a held-out split is made only when every tag has at least
:data:`MIN_GROUPS_TO_HOLD_OUT` sources, since three tiles a tag cannot spare one.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..project.errors import ProjectError
from .tiles import IGNORE, LabelledTile, grouped_split, read_tile_list, to_mpp
from .train import ClassifierConfig, train_classifier

#: Hold out a fifth of each tag's sources only when every tag has at least this many.
MIN_GROUPS_TO_HOLD_OUT = 5
HELD_OUT_FRACTION = 0.2
#: Images larger than this are not one region (a whole slide): outline a region of it instead.
MAX_REGION_PIXELS = 64_000_000


def add_region(
    project, image, labels, mpp, tags, *, source=None, group="", region_um=None, annotator=None
):
    """Store a region label: ``labels`` is 1 + the index into ``tags`` per pixel (0 = outside
    every outline), or a single tag for the whole image. Returns the stored example."""
    from ..project.folder import _user, file_fingerprint

    image = np.asarray(image)
    if isinstance(labels, str):
        tags, labels = [labels], np.ones(image.shape[:2], np.uint32)
    provenance = {"tags": list(tags), "annotator": annotator or _user(), "group": group}
    if source is not None:
        provenance["source"] = str(Path(source).resolve())
        provenance["source_hash"] = file_fingerprint(source)
    if region_um is not None:
        provenance["region_um"] = [float(v) for v in region_um]
    return project.store.append(
        image,
        np.asarray(labels, np.uint32),
        mpp,
        kind="region",
        provenance=provenance,
        split="train",
    )


def add_tile_list(project, path, mpp: float | None = None, progress=None) -> tuple[int, int]:
    """Every tile of a ``file,label[,group,mpp]`` list as a region with one tag; a tile already
    stored with the same content and tag is not stored twice. Returns ``(added, already)``."""
    from ..project.folder import file_fingerprint, open_with_mpp

    rows = read_tile_list(path)
    known = {
        (ex.provenance.get("source_hash"), tuple(ex.provenance.get("tags", ())))
        for ex in project.store.examples(kind="region")
    }
    added = already = 0
    for i, row in enumerate(rows):
        key = (file_fingerprint(row["file"]), (row["label"],))
        if key in known:
            already += 1
        else:
            with open_with_mpp(row["file"], row["mpp"] or mpp) as image:
                h, w = image.shape
                if h * w > MAX_REGION_PIXELS:
                    raise ProjectError(
                        f"{row['file']}: {w} x {h} px is a slide, not a tile; outline regions "
                        "of it in the viewer, or cut tiles out first"
                    )
                rgb, tile_mpp = image.read_region(0, 0, w, h, 0), image.mpp
            try:
                add_region(
                    project,
                    rgb,
                    row["label"],
                    tile_mpp,
                    [row["label"]],
                    source=row["file"],
                    group=row["group"] or str(row["file"]),
                )
            except ProjectError as exc:
                raise ProjectError(f"{row['file']}: {exc}") from None
            known.add(key)
            added += 1
        if progress is not None:
            progress(i + 1, len(rows))
    return added, already


def region_tiles(project, model_mpp: float) -> list[LabelledTile]:
    """The project's region examples as labelled tiles at ``model_mpp``: one tag → a tile; several
    or a partial mask → the mask too (its pixel labels train the segmentation step), tagged with
    its most frequent tag for the image step."""
    from PIL import Image

    tiles = []
    for ex in project.store.examples(kind="region"):
        tags = list(ex.provenance.get("tags", []))
        rgb = to_mpp(ex.image(), ex.mpp, model_mpp)
        labels = ex.labels()
        counts = np.bincount(labels.ravel(), minlength=len(tags) + 1)[1:]
        main = tags[int(np.argmax(counts))]
        mask = None
        if len(tags) > 1 or counts.sum() < labels.size:
            small = np.asarray(
                Image.fromarray(labels.astype(np.int32)).resize(
                    (rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST
                )
            )
            mask = np.where(small > 0, small - 1, IGNORE).astype(np.int64)  # indices into tags
            mask = {"local": mask, "tags": tags}
        group = ex.provenance.get("group") or ex.provenance.get("source") or ex.id
        tiles.append(LabelledTile(rgb, main, model_mpp, group=group, source=ex.id, mask=mask))
    return tiles


def _global_masks(tiles: list[LabelledTile], classes: list[str]) -> None:
    """Map each tile's local mask (indices into its own tags) to indices into ``classes``."""
    for t in tiles:
        if isinstance(t.mask, dict):
            lut = np.array([classes.index(tag) for tag in t.mask["tags"]] + [IGNORE], np.int64)
            local = t.mask["local"]
            t.mask = np.where(local == IGNORE, IGNORE, lut[np.minimum(local, len(lut) - 1)])
            t.mask = t.mask.astype(np.uint8)


def _tumour_auc(method, tiles) -> float | None:
    """AUC of tumour against the rest on ``tiles``, or None when there is no tumour tag or only
    one side."""
    from ..methods.classifier import TUMOUR
    from ..metrics.classification import roc_auc

    if TUMOUR not in method.classes:
        return None
    truth = np.array([t.tag == TUMOUR for t in tiles])
    if truth.all() or not truth.any():
        return None
    p = np.array([method.classify_image(t.rgb, t.mpp)[method.classes.index(TUMOUR)] for t in tiles])
    return roc_auc(truth, p)


def _accuracy(method, tiles) -> float:
    hits = [
        method.classes[int(np.argmax(method.classify_image(t.rgb, t.mpp)))] == t.tag for t in tiles
    ]
    return float(np.mean(hits))


RUN_PREFIX = "classifier-"


def unfinished_run(project) -> Path | None:
    """The latest classifier training run that stopped before its end with a checkpoint."""
    runs = sorted(project.runs_dir.glob(f"{RUN_PREFIX}*")) if project.runs_dir.exists() else []
    for run in reversed(runs):
        if (run / "result.json").exists():
            return None
        if (run / "checkpoint.pt").exists() and (run / "config.json").exists():
            return run
    return None


def train_project_classifier(
    project,
    cfg: ClassifierConfig | None = None,
    promote: str = "auto",
    threads: int | None = None,
    resume: bool = False,
):
    """Generator: train the project's classifier on its region examples (see the module doc).
    Yields progress dicts, then ``{"stage": "done", "result": {...}}``. Every run has a folder
    in the project's ``runs/`` (its settings and a checkpoint every 30 s); ``resume=True`` goes
    on with the latest unfinished one, for the time it had left."""
    import time

    import torch

    from .train import load_checkpoint

    state = None
    if resume:
        run = unfinished_run(project)
        if run is None:
            raise ProjectError(
                f"{project.path}: no unfinished classifier training to resume (a run is "
                "resumable once it has saved a checkpoint, 30 s after it starts)"
            )
        saved = json.loads((run / "config.json").read_text())
        cfg = ClassifierConfig(**{**saved["config"], "widths": tuple(saved["config"]["widths"])})
        promote = saved["promote"]
        state = load_checkpoint(run / "checkpoint.pt")
    else:
        cfg = cfg or ClassifierConfig()
        run = project.runs_dir / f"{RUN_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
        while run.exists():
            run = run.with_name(run.name + "b")

    from ..methods import get_method
    from ..methods.base import default_method_name
    from ..methods.classifier import save_classifier
    from ..models import WeightsError

    if promote not in ("auto", "always", "never"):
        raise ValueError(f"promote must be auto, always or never, got {promote!r}")
    tiles = region_tiles(project, cfg.mpp)
    if not tiles:
        raise ProjectError(
            f"{project.path}: no region labels to train on; add tiles with "
            "`nucleiseg train-classifier PROJECT --tiles LIST.csv` or outline regions in napari"
        )
    classes = sorted({t.tag for t in tiles})
    if len(classes) < 2:
        raise ProjectError(
            f"{project.path}: every region is tagged {classes[0]!r}; a classifier needs two tags"
        )
    _global_masks(tiles, classes)
    groups = {c: {t.group for t in tiles if t.tag == c} for c in classes}
    hold = min(len(g) for g in groups.values()) >= MIN_GROUPS_TO_HOLD_OUT
    train, held = grouped_split(tiles, HELD_OUT_FRACTION, cfg.seed) if hold else (tiles, [])

    parent_name = default_method_name("classifier", project.path)
    try:
        parent = get_method(parent_name, kind="classifier", project=project.path)
    except WeightsError:
        parent = None
    init = None
    if parent is not None and tuple(parent.card.widths) == tuple(cfg.widths):
        from safetensors.torch import load_file

        init = load_file(str(parent.card_path.parent / parent.card.weights))
    if state is None:
        run.mkdir(parents=True)
        (run / "config.json").write_text(
            json.dumps({"config": cfg.to_dict(), "promote": promote}, indent=1)
        )
    yield {
        "stage": "start",
        "tiles": len(tiles),
        "held_out": len(held),
        "classes": classes,
        "parent": parent.name if parent else None,
    }
    result = None
    for info in train_classifier(
        train, cfg, init_state=init, threads=threads, checkpoint=run / "checkpoint.pt",
        resume=state,
    ):  # fmt: skip
        if info["stage"] == "done":
            result = info
        else:
            yield info
    torch.set_num_threads(threads or torch.get_num_threads())
    n = 1 + sum(1 for p in project.models_dir.glob("classifier-*.json"))
    name = f"classifier-{n}"
    while (project.models_dir / f"{name}.json").exists():
        n += 1
        name = f"classifier-{n}"
    card_path = save_classifier(
        result["state"],
        result["tags"],
        project.models_dir,
        name,
        version=f"{n}.0.0",
        mpp=cfg.mpp,
        patch=cfg.patch,
        widths=cfg.widths,
        training_data=[f"{len(train)} region labels of project {project.path.name}"],
        licence="the project's own labels",
        training={**cfg.to_dict(), "tiles": len(train)},
        parent=f"{parent.name} {parent.card.version}" if parent and init else "",
        notes="trained by `nucleiseg train-classifier`",
    )
    student = get_method(card_path, kind="classifier")
    metrics = {"held_out_tiles": len(held)}
    verdict = "no held-out regions (fewer than 5 labelled sources for some tag)"
    better = None
    if held:
        s_auc, s_acc = _tumour_auc(student, held), _accuracy(student, held)
        metrics.update(student_tumour_auc=s_auc, student_accuracy=s_acc)
        if parent is not None:
            p_auc = _tumour_auc(parent, held)
            metrics["parent_tumour_auc"] = p_auc
            if s_auc is not None and p_auc is not None:
                better = s_auc > p_auc
                verdict = f"tumour AUC {s_auc:.3f} against {p_auc:.3f}"
            elif parent.classes == student.classes:
                p_acc = _accuracy(parent, held)
                metrics["parent_accuracy"] = p_acc
                better = s_acc > p_acc
                verdict = f"accuracy {s_acc:.3f} against {p_acc:.3f}"
    if held and parent is None:
        verdict = "the project had no classifier to compare with"
    if better is None:
        # Nothing to compare with (no held-out regions, or the parent knows other tags): a
        # project's first classifier for its own tags is used unless told otherwise.
        better = parent is None or parent.classes != student.classes or not held
    promoted = promote == "always" or (promote == "auto" and better)
    if promoted:
        project.set_current_model(name, kind="classifier")
    data = json.loads(card_path.read_text())
    data["metrics"] = {
        **metrics,
        "verdict": verdict,
        "trained": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    tmp = card_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    tmp.replace(card_path)
    summary = {
        "model": name, "classes": classes, "tiles": len(train), "held_out": len(held),
        "promoted": promoted, "verdict": verdict, "run": run.name,
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(summary, indent=1))
    yield {
        "stage": "done",
        "result": {
            "model": name,
            "classes": classes,
            "tiles": len(train),
            "held_out": len(held),
            "promoted": promoted,
            "verdict": verdict,
            "run": run.name,
            **{k: v for k, v in metrics.items() if k != "held_out_tiles"},
            "minutes": result["seconds"] / 60,
        },
    }


@dataclass
class TrainProgress:
    """A background training step as the dock widgets' job runner reads it: ``done``/``total``
    (seconds, or iterations), the stage, and ``so_far`` = (iteration, loss) for the live plot."""

    done: int
    total: int
    stage: str
    so_far: tuple | None = None
    unit: str = "s"


def classifier_steps(project_dir: str, promote: str = "auto", resume: bool = False, **config):
    """:func:`train_project_classifier` for a background process (picklable arguments, small
    items): :class:`TrainProgress` items, then the result dict as the last item."""
    from ..project import Project

    project = Project(project_dir)
    cfg = ClassifierConfig(**config) if not resume else None
    if resume:
        run = unfinished_run(project)
        saved = json.loads((run / "config.json").read_text())["config"] if run else {}
        total = saved.get("iterations") or round(saved.get("minutes", 1) * 60)
    else:
        total = cfg.iterations or round(cfg.minutes * 60)
    steps = train_project_classifier(project, cfg, promote=promote, resume=resume)
    for info in steps:
        if info["stage"] == "done":
            yield info["result"]
            return
        frac = info.get("fraction", 0.0)
        loss = (info["iter"], info["loss"]) if "loss" in info else None
        yield TrainProgress(min(total, round(frac * total)), max(1, total), info["stage"], loss)
