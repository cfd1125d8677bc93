"""The teacher–student loop of a project (reference 002): pseudo-label, fine-tune, measure, promote.

1. The teacher is the project's current nuclei model (the shipped default at first).
2. Pseudo-labels (step S23): the teacher segments tissue tiles of the unlabelled images and
   slides given; a tile is kept when its mean per-pixel confidence, ``max(p, 1 - p)`` of the
   foreground probability, reaches ``confidence``. Kept tiles go to the training store with
   their confidence map and the teacher's name and version; older teachers' pseudo-labels of
   the same sources are replaced.
3. The student starts from the teacher's weights and trains on the strong labels' training split
   and the pseudo-labels (half of every batch strong), with the online augmentation and stain
   jitter of the original training, for the time left, on a cosine schedule over that time.
4. Teacher and student are measured (aggregate AJI) on the held-out strong labels; the student
   becomes the project's current model when it is better (``promote="auto"``), always, or never.

The student is written to the project's ``models/`` as a card (parent, data manifest, metrics,
hashes), safetensors weights and a float32 ONNX twin, so it is a method everywhere at once.
:func:`retrain` yields progress dicts (``stage``, ``done``, ``total``, ``loss``…) and its last
item has ``stage == "done"`` and the result.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..project.errors import ProjectError

PROMOTE = ("auto", "always", "never")


@dataclass
class RetrainConfig:
    minutes: float = 10.0
    promote: str = "auto"
    #: Mean per-pixel confidence a pseudo-labelled tile needs to be kept (0.5-1).
    confidence: float = 0.9
    #: Share of the time budget pseudo-labelling may take.
    pseudo_share: float = 0.3
    #: Tiles (µm) cut from large unlabelled images and slides, and how many per source at most.
    tile_um: float = 256.0
    tiles_per_source: int = 8
    batch: int = 8
    patch: int = 256
    lr: float = 2e-4
    #: L2-SP (Li et al. 2018): weight of the squared distance of the student's weights from the
    #: teacher's, added to the loss, so fine-tuning on one lab's images forgets less elsewhere.
    anchor: float = 0.0
    weight_decay: float = 1e-4
    #: Share of every batch drawn from strong labels (the rest: pseudo-labels, when there are).
    strong_share: float = 0.5
    seed: int = 0
    threads: int = 0  # 0: every usable core
    checkpoint_every: int = 50
    unlabelled: list = field(default_factory=list)  # [(path, mpp or None)]

    def __post_init__(self):
        if self.promote not in PROMOTE:
            raise ProjectError(f"--promote must be one of {', '.join(PROMOTE)}")
        if not (0.5 <= self.confidence <= 1.0):
            raise ProjectError(f"confidence must be from 0.5 to 1, got {self.confidence}")
        if not (0 < self.minutes <= 24 * 60):
            raise ProjectError(f"minutes must be above 0 (and at most a day), got {self.minutes}")


def retrain(project, cfg: RetrainConfig) -> Iterator[dict]:
    """Run the loop on ``project`` (a :class:`~napari_nucleiseg.project.Project`)."""
    from ..methods import default_method_name, get_method
    from ..models.runtime import usable_cores

    t0 = time.perf_counter()
    budget = cfg.minutes * 60.0
    store = project.store
    strong = store.examples(kind="strong", split="train")
    heldout = store.examples(kind="strong", split="heldout")
    if not strong:
        raise ProjectError(
            f"{project.path}: no strong labels to train on: accept corrections in napari or "
            "add some with `nucleiseg project add-labels` first"
        )
    teacher_name = project.current_model() or default_method_name()
    teacher = get_method(teacher_name, project=project.path)
    card = getattr(teacher, "card", None)
    if card is None:
        raise ProjectError(
            f"{teacher_name} is not a trained model (a classical method has no weights to "
            "fine-tune); choose a model with `nucleiseg models use`"
        )
    run = project.runs_dir / f"retrain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(
        json.dumps({**asdict(cfg), "teacher": teacher_name}, indent=1, default=str)
    )
    log = open(run / "train.log", "a")

    def emit(info: dict) -> dict:
        info = {**info, "elapsed_s": time.perf_counter() - t0, "budget_s": budget}
        log.write(json.dumps(info) + "\n")
        log.flush()
        return info

    # 1. Teacher on the held-out strong labels first: its figure does not depend on training.
    teacher_aji = None
    if heldout:
        yield emit({"stage": "measure teacher", "done": 0, "total": len(heldout)})
        teacher_aji = _aji(teacher, heldout)

    # 2. Pseudo-labels.
    pseudo_deadline = t0 + cfg.pseudo_share * budget
    sources = list(cfg.unlabelled)
    kept = 0
    for i, (path, mpp) in enumerate(sources):
        if time.perf_counter() > pseudo_deadline:
            break
        for tile_rgb, tile_mpp, region in _tiles(path, mpp, cfg, seed=cfg.seed + i):
            if time.perf_counter() > pseudo_deadline:
                break
            kept += _pseudo_label(store, teacher, tile_rgb, tile_mpp, path, region, cfg)
        yield emit({"stage": "pseudo-label", "done": i + 1, "total": len(sources), "kept": kept})
    pseudo = [
        ex
        for ex in store.examples(kind="pseudo")
        if ex.provenance.get("teacher") == _teacher_id(card)
    ]

    # 3. The student.
    # Kept for exporting and measuring the student (a few seconds per held-out example).
    reserve = min(20.0 + 6.0 * len(heldout), 0.3 * budget)
    deadline = t0 + budget - reserve
    student_state, iters = yield from _fine_tune(
        teacher, card, strong, pseudo, cfg, run, deadline, emit, usable_cores()
    )
    name, version = _student_name(project, card)
    card_path = _export(
        student_state, card, project.models_dir, name, version, strong, pseudo, iters, cfg
    )
    from ..methods.learned import card_method

    student = card_method(card_path, "project")
    student_aji = None
    if heldout:
        yield emit({"stage": "measure student", "done": 0, "total": len(heldout)})
        student_aji = _aji(student, heldout)
    promoted = cfg.promote == "always" or (
        cfg.promote == "auto"
        and student_aji is not None
        and teacher_aji is not None
        and student_aji > teacher_aji
    )
    _record_metrics(card_path, teacher_name, teacher_aji, student_aji, len(heldout))
    if promoted:
        project.set_current_model(name)
    result = {
        "model": name,
        "teacher": teacher_name,
        "teacher_aji": teacher_aji,
        "student_aji": student_aji,
        "heldout": len(heldout),
        "strong": len(strong),
        "pseudo": len(pseudo),
        "iterations": iters,
        "promoted": bool(promoted),
        "minutes": (time.perf_counter() - t0) / 60.0,
        "run": str(run),
    }
    if not heldout:
        result["note"] = "no held-out strong labels: the student was not measured"
    yield emit({"stage": "done", "result": result})
    log.close()


# ---------------------------------------------------------------------------- pieces
def _teacher_id(card) -> str:
    return f"{card.name}@{card.version}:{card.sha256[:12]}"


def _aji(method, examples) -> float:
    from ..metrics import aggregate, score_image
    from ..segmentation.api import segment_image

    scores = [
        score_image(ex.labels(), segment_image(ex.image(), ex.mpp, method), ex.id)
        for ex in examples
    ]
    return float(aggregate(scores)["aji"])


def _tiles(path, mpp, cfg: RetrainConfig, seed: int):
    """``(rgb, mpp, region_um)`` tiles of an unlabelled image or slide: the whole of a small
    image, tissue tiles sampled from a large one."""
    from ..project.folder import open_with_mpp
    from ..tissue.mask import tissue_from_rgb

    with open_with_mpp(path, mpp) as slide:
        h, w = slide.shape
        side = max(64, int(cfg.tile_um / slide.mpp))
        if h * w <= 4 * side * side:
            yield slide.read_region(0, 0, w, h, 0), slide.mpp, (0, 0, w * slide.mpp, h * slide.mpp)
            return
        rng = np.random.default_rng(seed)
        found = tries = 0
        while found < cfg.tiles_per_source and tries < 8 * cfg.tiles_per_source:
            tries += 1
            y = int(rng.integers(0, max(1, h - side)))
            x = int(rng.integers(0, max(1, w - side)))
            rgb = slide.read_region(x, y, min(side, w - x), min(side, h - y), 0)
            tissue, _ = tissue_from_rgb(rgb, slide.mpp)
            if tissue.mean() < 0.5:
                continue
            found += 1
            m = slide.mpp
            yield rgb, m, (x * m, y * m, (x + rgb.shape[1]) * m, (y + rgb.shape[0]) * m)


def _pseudo_label(store, teacher, rgb, mpp, path, region, cfg) -> int:
    """Segment one tile with the teacher; store it when confident enough. 1 if kept."""
    from ..segmentation.postprocess import instances_from_maps

    predictor = teacher.predictor
    maps = predictor.maps(rgb, mpp)
    p = maps[0]
    confidence = np.maximum(p, 1.0 - p)
    mean = float(confidence.mean())
    if mean < cfg.confidence:
        return 0
    labels = instances_from_maps(maps, mpp, predictor.settings)
    if labels.max() == 0:
        return 0
    card = teacher.card
    source = str(Path(path).resolve())
    for ex in store.examples(kind="pseudo"):  # an older teacher's label of this tile goes
        prov = ex.provenance
        if prov.get("source") == source and prov.get("region_um") == [float(v) for v in region]:
            store.delete(ex.id)
    store.append(
        rgb,
        labels,
        mpp,
        kind="pseudo",
        confidence=confidence,
        provenance={
            "source": source,
            "region_um": [float(v) for v in region],
            "teacher": _teacher_id(card),
            "teacher_name": card.name,
            "teacher_version": card.version,
            "mean_confidence": mean,
        },
    )
    return 1


def _fine_tune(teacher, card, strong, pseudo, cfg, run: Path, deadline, emit, cores):
    """Train the student until ``deadline`` (perf_counter); ``(state_dict, iterations)``."""
    import torch
    from safetensors.torch import load_file

    from ..segmentation.unet import UNet
    from .nuclei_data import LabelledImage, PatchSampler
    from .seg_train import loss_fn

    torch.set_num_threads(cfg.threads or cores)
    torch.manual_seed(cfg.seed)
    model = UNet(tuple(card.widths), decoder=card.decoder).to(memory_format=torch.channels_last)
    model.load_state_dict(load_file(str(teacher.card_path.parent / card.weights)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_weights = [p.detach().clone() for p in model.parameters()] if cfg.anchor else []

    def images(examples):
        return [LabelledImage(ex.id, ex.image(), ex.labels(), ex.mpp) for ex in examples]

    strong_sampler = PatchSampler(images(strong), card.mpp, cfg.patch, seed=cfg.seed)
    pseudo_sampler = (
        PatchSampler(images(pseudo), card.mpp, cfg.patch, seed=cfg.seed + 1) if pseudo else None
    )
    n_strong = cfg.batch if pseudo_sampler is None else max(1, round(cfg.batch * cfg.strong_share))
    start = time.perf_counter()
    span = max(1.0, deadline - start)
    it = 0
    model.train()
    # Batch statistics stay the teacher's: a few small batches of one lab's images would
    # otherwise re-centre every layer on that lab, and the student would forget the rest (measured:
    # MoNuSeg AJI 0.651 -> 0.534 after 10 minutes on DSB crops with them updating).
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    while it == 0 or time.perf_counter() < deadline:  # at least one step: a student
        # Cosine over the time there is: the schedule ends when the budget does.
        frac = min(1.0, (time.perf_counter() - start) / span)
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        rgb, targets = strong_sampler.batch(n_strong)
        if pseudo_sampler is not None and cfg.batch > n_strong:
            prgb, ptargets = pseudo_sampler.batch(cfg.batch - n_strong)
            rgb, targets = np.concatenate([rgb, prgb]), np.concatenate([targets, ptargets])
        x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), torch.from_numpy(targets))
        if cfg.anchor:
            drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), start_weights))
            loss = loss + cfg.anchor * drift
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        if it % cfg.checkpoint_every == 0:
            tmp = run / "checkpoint.tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "iter": it}, tmp)
            tmp.replace(run / "checkpoint.pt")  # atomic: a kill never leaves half of one
        yield emit({"stage": "train", "iter": it, "loss": float(loss.detach()), "lr": lr})
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, it


def _student_name(project, card) -> tuple[str, str]:
    n = 1 + sum(1 for _ in project.models_dir.glob("*.json"))
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in project.path.name) or "project"
    return f"{base}-nuclei-{n}", f"{n}.0.0"


def _export(state, parent, folder: Path, name, version, strong, pseudo, iters, cfg) -> Path:
    """Card + safetensors + float32 ONNX of the student, beside the project's other models."""
    import datetime as dt

    from safetensors.torch import save_file

    from ..models.registry import ModelCard, sha256_of
    from .export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file(state, str(weights))
    onnx_path = export_onnx(state, tuple(parent.widths), folder / f"{name}.onnx", parent.decoder)
    manifest = [
        {"id": ex.id, "kind": ex.kind, "source": ex.provenance.get("source", "")}
        for ex in [*strong, *pseudo]
    ]
    card = ModelCard(
        name=name,
        version=version,
        architecture=parent.architecture,
        widths=list(parent.widths),
        mpp=parent.mpp,
        sha256=sha256_of(weights),
        weights=weights.name,
        training_data=[
            f"{len(strong)} strong labels and {len(pseudo)} pseudo-labels of this project's "
            "training store (data_manifest in training)",
            *parent.training_data,
        ],
        licence=parent.licence,
        postprocess=dict(parent.postprocess),
        training={
            "parent": {"name": parent.name, "version": parent.version, "sha256": parent.sha256},
            "data_manifest": manifest,
            "iterations_done": iters,
            "minutes": cfg.minutes,
            "lr": cfg.lr,
            "batch": cfg.batch,
            "patch": cfg.patch,
            "strong_share": cfg.strong_share,
            "confidence": cfg.confidence,
            "anchor": cfg.anchor,
        },
        created=dt.date.today().isoformat(),
        notes=f"fine-tuned from {parent.name} {parent.version} by `nucleiseg retrain`",
        onnx=onnx_path.name,
        onnx_sha256=sha256_of(onnx_path),
        decoder=parent.decoder,
        tile_px=parent.tile_px,
        context_um=parent.context_um,
    )
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(card.to_json() + "\n")
    tmp.replace(path)  # the card last: a half-exported model is never a method
    return path


def _record_metrics(card_path: Path, teacher, teacher_aji, student_aji, heldout: int) -> None:
    data = json.loads(card_path.read_text())
    data["metrics"] = {
        "project_heldout": {
            "images": heldout,
            "aji": student_aji,
            "teacher": teacher,
            "teacher_aji": teacher_aji,
        }
    }
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(card_path)


@dataclass
class RetrainProgress:
    """One step of :func:`retrain_steps`: seconds spent of the budget (``done``/``total``, so a
    progress bar and an ETA come for free), the stage, and the latest training loss as
    ``so_far`` (``(iteration, loss)``, None outside training) for a live plot."""

    done: int
    total: int
    stage: str
    so_far: tuple | None = None
    unit: str = "s"


def retrain_steps(project_dir: str, **config):
    """:func:`retrain` for a background process (picklable arguments, small items): yields
    :class:`RetrainProgress`, then the result dict as the last item."""
    from ..project import Project

    project = Project(project_dir)
    for info in retrain(project, RetrainConfig(**config)):
        if info["stage"] == "done":
            yield info["result"]
            return
        loss = (info["iter"], info["loss"]) if "loss" in info else None
        yield RetrainProgress(
            min(int(info["elapsed_s"]), int(info["budget_s"])),
            max(1, int(info["budget_s"])),
            info["stage"],
            loss,
        )
