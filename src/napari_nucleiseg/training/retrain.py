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

A run folder (``runs/retrain-<time>``) holds its ``config.json``, ``state.json`` (the stages it
finished, its teacher's AJI, its pseudo-labels' ids, the seconds spent; replaced atomically),
``checkpoint.pt`` and ``train.log``: ``retrain(..., resume=True)`` (``nucleiseg retrain DIR
--resume``) continues the latest run after a cancel or a kill from there. Under ``torchrun`` the
same function trains on several processes (:mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
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
    lr: float = 1e-3
    #: L2-SP (Li et al. 2018): weight of the squared distance of the student's weights from the
    #: teacher's, added to the loss, so fine-tuning on one lab's images forgets less elsewhere.
    anchor: float = 0.0
    weight_decay: float = 1e-4
    #: Share of every batch drawn from strong labels (the rest: pseudo-labels, when there are).
    strong_share: float = 0.625
    #: Share of every batch drawn from the teacher's own training crops (its card's replay set,
    #: training.replay), so the student keeps what the teacher knew elsewhere; 0: none.
    replay_share: float = 0.25
    seed: int = 0
    threads: int = 0  # 0: every usable core
    checkpoint_every: int = 50
    unlabelled: list = field(default_factory=list)  # [(path, mpp or None)]

    def __post_init__(self):
        if self.promote not in PROMOTE:
            raise ProjectError(f"--promote must be one of {', '.join(PROMOTE)}")
        if not (0.5 <= self.confidence <= 1.0):
            raise ProjectError(f"confidence must be from 0.5 to 1, got {self.confidence}")
        if not (0 <= self.replay_share < 1 and 0 < self.strong_share <= 1):
            raise ProjectError(
                f"shares of a batch must be 0 <= replay < 1 and 0 < strong <= 1, got "
                f"{self.replay_share} and {self.strong_share}"
            )
        if not (0 < self.minutes <= 24 * 60):
            raise ProjectError(f"minutes must be above 0 (and at most a day), got {self.minutes}")


STATE = "state.json"


def check_new_run(cfg: RetrainConfig) -> None:
    """What a new run's settings must also meet (a run saved before these rules still resumes
    with the settings it started with): strong and replay shares within one batch (they were
    squeezed silently)."""
    if cfg.strong_share + cfg.replay_share > 1:
        raise ProjectError(
            f"strong share {cfg.strong_share:g} and replay share {cfg.replay_share:g} add up to "
            "more than one batch: lower one of them"
        )


def retrain(project, cfg: RetrainConfig | None = None, *, resume: bool = False) -> Iterator[dict]:
    """Run the loop on ``project`` (a :class:`~napari_nucleiseg.project.Project`).

    ``resume``: continue the project's latest run (:func:`resumable_run`) with its own settings,
    teacher and pseudo-labels, from its last checkpoint, skipping the stages it finished. Its
    budget is what the run had left (its minutes less the time spent up to its last record), or
    ``cfg.minutes`` from now when ``cfg`` is given (only its minutes count then).

    Under ``torchrun`` every process calls this: rank 0 alone measures, pseudo-labels, exports
    and promotes; the others wait for it, then all train one student in DistributedDataParallel
    on batches of their own, and each writes its final weights' SHA-256 to ``ranks/<rank>.json``
    in the run folder.
    """
    from ..methods import default_method_name, get_method
    from ..models.runtime import usable_cores
    from . import distributed

    t0 = time.perf_counter()
    if cfg is None and not resume:
        cfg = RetrainConfig()
    # Ranks wait while rank 0 works alone: up to the whole budget (a day at most).
    limit = (cfg.minutes if cfg is not None and not resume else 24 * 60) * 60.0 + 3600.0
    ddp = distributed.setup(timeout_s=limit)
    store = project.store
    strong = store.examples(kind="strong", split="train")
    heldout = store.examples(kind="strong", split="heldout")
    run = plan = None
    try:
        if ddp.main:
            path = resumable_run(project) if resume else None
            saved = _read_json(path / "config.json") if path else {}
            teacher_name = saved.pop("teacher", None) or (
                project.current_model() or default_method_name()
            )
            if not strong:
                raise ProjectError(
                    f"{project.path}: no strong labels to train on: accept corrections in napari "
                    "or add some with `nucleiseg project add-labels` first"
                )
            teacher = get_method(teacher_name, project=project.path)
            card = getattr(teacher, "card", None)
            if card is None:
                raise ProjectError(
                    f"{teacher_name} is not a trained model (a classical method has no weights to "
                    "fine-tune); choose a model with `nucleiseg models use`"
                )
            if path is None:
                # Every unlabelled source opens, with a µm/px, before the run exists: a run made
                # for a missing file would fail on it at every --resume.
                from ..project.folder import open_with_mpp

                check_new_run(cfg)
                for source, mpp in cfg.unlabelled:
                    open_with_mpp(source, mpp).close()
                path = _new_run_dir(project)
                _write_json(path / "config.json", {**asdict(cfg), "teacher": teacher_name})
                run = _Run(path, t0, write=True)
                remaining = cfg.minutes * 60.0
                run.save(budget_s=remaining, finished=False)
            else:
                run = _Run(path, t0, write=True)
                known = {f.name for f in fields(RetrainConfig)}
                old = RetrainConfig(**{k: v for k, v in saved.items() if k in known})
                old.unlabelled = [tuple(u) for u in old.unlabelled]
                budget = run.state.get("budget_s", old.minutes * 60.0)
                if cfg is not None:  # a new budget, from now
                    remaining = cfg.minutes * 60.0
                    budget = run.prior_s + remaining
                else:
                    remaining = max(0.0, budget - run.prior_s)
                cfg = old
                run.save(budget_s=budget, resumed=run.state.get("resumed", 0) + 1)
            plan = yield from _lead(run, cfg, teacher, card, strong, heldout, store, remaining)
            plan.update(run=str(path), teacher=teacher_name, cfg=asdict(cfg))
        plan = _share(plan, ddp)
    except BaseException as exc:  # an error, or the generator closed (a cancel)
        if ddp.main and ddp.active and plan is None and isinstance(exc, Exception):
            _share({"error": str(exc)}, ddp)  # the others wait for a plan: tell them
        if run is not None:
            run.close()
        distributed.teardown(ddp)
        raise
    if not ddp.main:
        cfg = RetrainConfig(**plan["cfg"])
        run = _Run(Path(plan["run"]), t0, write=False)
        teacher = get_method(plan["teacher"], project=project.path)
        card = teacher.card
    try:
        by_id = {ex.id: ex for ex in store.examples(kind="pseudo")}
        pseudo = [by_id[i] for i in plan["pseudo"] if i in by_id]
        iters = run.state.get("iterations", 0)
        student_state = None
        if plan["train"]:
            deadline = time.perf_counter() + plan["train_s"]
            cores = cfg.threads or max(1, usable_cores() // ddp.world_size)
            student_state, iters = yield from _fine_tune(
                teacher, card, strong, pseudo, cfg, run, deadline, cores, ddp
            )
        distributed.barrier(ddp)
        distributed.teardown(ddp)
        if not ddp.main:
            yield {"stage": "done", "result": {"rank": ddp.rank, "iterations": iters}}
            return
        yield from _conclude(project, run, cfg, plan, card, student_state, iters, strong, pseudo)
    finally:
        distributed.teardown(ddp)
        run.close()


def latest_run(project, prefix: str = "retrain") -> Path | None:
    """The project's most recent run folder of that kind (``retrain``, ``normaliser``), or None."""
    runs = sorted(p for p in project.runs_dir.glob(f"{prefix}-*") if (p / "config.json").exists())
    return runs[-1] if runs else None


def run_finished(path: Path) -> bool:
    if (path / STATE).exists():
        return bool(_read_json(path / STATE).get("finished"))
    log = path / "train.log"  # a run from before state.json: finished when it logged "done"
    return log.exists() and '"stage": "done"' in log.read_text()


def resumable_run(project) -> Path:
    """The run ``retrain(..., resume=True)`` continues: the latest, unless it finished."""
    path = latest_run(project)
    if path is None:
        raise ProjectError(
            f"{project.path}: no retraining run to resume: start one with `nucleiseg retrain`"
        )
    if run_finished(path):
        raise ProjectError(
            f"{path}: the latest retraining run finished: nothing to resume (start a new run "
            "with `nucleiseg retrain` without --resume)"
        )
    return path


# ---------------------------------------------------------------------------- the run folder
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, flushed to disk, then rename: whole or absent. On an error
    (disk full) the temporary file goes and ``path`` is as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def _new_run_dir(project, prefix: str = "retrain") -> Path:
    """A new run folder ``PROJECT/runs/<prefix>-<UTC time>[-n]``, made atomically."""
    stamp = f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = project.runs_dir / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


class _Run:
    """A run folder: ``state.json`` (the stages done, the seconds spent; rewritten atomically
    after each stage and checkpoint), ``train.log`` (rank 0's progress, JSON lines)."""

    def __init__(self, path: Path, t0: float, write: bool):
        self.path, self.t0, self.write = path, t0, write
        self.state = _read_json(path / STATE) if write and (path / STATE).exists() else {}
        self.prior_s = float(self.state.get("spent_s", 0.0))  # by earlier sessions of the run
        self.log = open(path / "train.log", "a") if write else None

    def spent(self) -> float:
        return self.prior_s + time.perf_counter() - self.t0

    def emit(self, info: dict) -> dict:
        budget = self.state.get("budget_s", 0.0)
        info = {**info, "elapsed_s": self.spent(), "budget_s": budget}
        if self.log is not None:
            self.log.write(json.dumps(info) + "\n")
            self.log.flush()
        return info

    def save(self, **changes) -> None:
        if self.write:
            self.state.update(changes, spent_s=self.spent())
            _write_json(self.path / STATE, self.state)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def _share(plan, ddp) -> dict:
    """Rank 0's plan on every rank (the others wait here while rank 0 works alone)."""
    if ddp.active:
        import torch.distributed as dist

        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    if "error" in plan:
        raise ProjectError(plan["error"])
    return plan


def _lead(run, cfg, teacher, card, strong, heldout, store, remaining):
    """Rank 0's stages before training, each skipped when the run did it already; returns the
    plan the ranks train by."""
    t0 = time.perf_counter()
    state = run.state
    # 1. Teacher on the held-out strong labels first: its figure does not depend on training.
    if heldout and "teacher_aji" not in state:
        yield run.emit({"stage": "measure teacher", "done": 0, "total": len(heldout)})
        run.save(teacher_aji=_aji(teacher, heldout))

    # 2. Pseudo-labels.
    if "pseudo" not in state:
        pseudo_deadline = t0 + cfg.pseudo_share * remaining
        sources = list(cfg.unlabelled)
        kept = 0
        for i, (path, mpp) in enumerate(sources):
            if time.perf_counter() > pseudo_deadline:
                break
            for tile_rgb, tile_mpp, region in _tiles(path, mpp, cfg, seed=cfg.seed + i):
                if time.perf_counter() > pseudo_deadline:
                    break
                kept += _pseudo_label(store, teacher, tile_rgb, tile_mpp, path, region, cfg)
            info = {"stage": "pseudo-label", "done": i + 1, "total": len(sources), "kept": kept}
            yield run.emit(info)
        pseudo = [
            ex
            for ex in store.examples(kind="pseudo")
            if ex.provenance.get("teacher") == _teacher_id(card)
        ]
        run.save(pseudo=[ex.id for ex in pseudo])

    # 3. The student trains for the time left, less what exporting and measuring it take (a few
    # seconds per held-out example).
    reserve = min(20.0 + 6.0 * len(heldout), 0.3 * remaining)
    train_s = t0 + remaining - reserve - time.perf_counter()
    return {"pseudo": state["pseudo"], "train": "student" not in state, "train_s": train_s}


#: Held-out nuclei below which the promotion verdict comes with a note. Measured in the annotator
#: loop (benchmarks/annotator_loop.py, v4 teacher, 51 unseen colour crops as the truth): held-out
#: sets of 15 and 43 nuclei (1 and 3 crops) ruled against students that were better on the unseen
#: crops (+0.025 and +0.030 AJI); one of 502 nuclei (12 crops) agreed with them.
MIN_HELDOUT_NUCLEI = 200


def _conclude(project, run, cfg, plan, card, student_state, iters, strong, pseudo):
    """Rank 0 after training: export the student (once), measure it, promote it."""
    from ..methods.learned import card_method

    state = run.state
    heldout = project.store.examples(kind="strong", split="heldout")
    if "student" not in state:
        name, version = _student_name(project, card)
        card_path = _export(
            student_state, card, project.models_dir, name, version, strong, pseudo, iters, cfg
        )
        run.save(student={"name": name, "card": str(card_path)}, iterations=iters)
    name, card_path = state["student"]["name"], Path(state["student"]["card"])
    student = card_method(card_path, "project")
    if heldout and "student_aji" not in state:
        yield run.emit({"stage": "measure student", "done": 0, "total": len(heldout)})
        run.save(student_aji=_aji(student, heldout))
    teacher_aji, student_aji = state.get("teacher_aji"), state.get("student_aji")
    promoted = cfg.promote == "always" or (
        cfg.promote == "auto"
        and student_aji is not None
        and teacher_aji is not None
        and student_aji > teacher_aji
    )
    _record_metrics(card_path, plan["teacher"], teacher_aji, student_aji, len(heldout))
    if promoted:
        project.set_current_model(name)
    result = {
        "model": name,
        "teacher": plan["teacher"],
        "teacher_aji": teacher_aji,
        "student_aji": student_aji,
        "heldout": len(heldout),
        "strong": len(strong),
        "pseudo": len(pseudo),
        "iterations": state.get("iterations", iters),
        "promoted": bool(promoted),
        "minutes": run.spent() / 60.0,
        "run": str(run.path),
    }
    heldout_nuclei = sum(ex.nuclei for ex in heldout)
    result["heldout_nuclei"] = heldout_nuclei
    if not heldout:
        result["note"] = "no held-out strong labels: the student was not measured"
    elif heldout_nuclei < MIN_HELDOUT_NUCLEI:
        result["note"] = (
            f"the comparison rests on {len(heldout)} held-out correction"
            f"{'s' if len(heldout) > 1 else ''} ({heldout_nuclei} nuclei), too few to trust "
            f"(below {MIN_HELDOUT_NUCLEI}): accept more views, or compare the two models on your "
            "slides and choose yourself (models use / --promote always)"
        )
    run.save(finished=True, result=result)
    yield run.emit({"stage": "done", "result": result})


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
    from ..tissue.sampling import sample_tissue_tiles

    yield from sample_tissue_tiles(path, mpp, cfg.tile_um, cfg.tiles_per_source, seed)


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


def _fine_tune(teacher, card, strong, pseudo, cfg, run, deadline, cores, ddp):
    """Train the student until ``deadline`` (perf_counter; rank 0's decides for every rank);
    ``(state_dict, iterations)``. A run's checkpoint, when there is one, is where it goes on
    from: weights, optimiser, iteration and training seconds (the cosine schedule's place)."""
    import torch
    from safetensors.torch import load_file

    from ..segmentation.unet import UNet
    from . import distributed
    from .nuclei_data import LabelledImage, PatchSampler
    from .seg_train import _record_rank, _stream, loss_fn

    torch.set_num_threads(cores)
    torch.manual_seed(cfg.seed)
    model = UNet(tuple(card.widths), decoder=card.decoder).to(memory_format=torch.channels_last)
    model.load_state_dict(load_file(str(teacher.card_path.parent / card.weights)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_weights = [p.detach().clone() for p in model.parameters()] if cfg.anchor else []

    def images(examples):
        return [LabelledImage(ex.id, ex.image(), ex.labels(), ex.mpp) for ex in examples]

    def seed(base):  # each rank its own batches; one process the batches it always drew
        return base if not ddp.active else [base, ddp.rank]

    strong_sampler = PatchSampler(images(strong), card.mpp, cfg.patch, seed=seed(cfg.seed))
    pseudo_sampler = (
        PatchSampler(images(pseudo), card.mpp, cfg.patch, seed=seed(cfg.seed + 1))
        if pseudo
        else None
    )
    from .replay import load as load_replay

    replay = load_replay(card, teacher.card_path) if cfg.replay_share > 0 else []
    replay_sampler = (
        PatchSampler(replay, card.mpp, cfg.patch, seed=seed(cfg.seed + 2)) if replay else None
    )
    n_replay = 0 if replay_sampler is None else max(1, round(cfg.batch * cfg.replay_share))
    n_strong = max(1, round(cfg.batch * cfg.strong_share))
    if pseudo_sampler is None:  # strong labels take the pseudo-labels' share
        n_strong = cfg.batch - n_replay
    n_strong = max(1, min(n_strong, cfg.batch - n_replay))
    n_pseudo = cfg.batch - n_strong - n_replay if pseudo_sampler is not None else 0
    it, trained_s = 0, 0.0
    ckpt = run.path / "checkpoint.pt"
    if ckpt.exists():  # a resumed run
        saved = torch.load(ckpt, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        it, trained_s = int(saved["iter"]), float(saved.get("train_s", 0.0))
        # Fresh batches from here on, the same whichever session draws them.
        strong_sampler.rng = np.random.default_rng(_stream(cfg.seed, it, ddp))
        if pseudo_sampler is not None:
            pseudo_sampler.rng = np.random.default_rng(_stream(cfg.seed + 1, it, ddp))
        if replay_sampler is not None:
            replay_sampler.rng = np.random.default_rng(_stream(cfg.seed + 2, it, ddp))
    net = distributed.wrap(model, ddp)  # gradients averaged over the ranks at every step
    start = time.perf_counter()
    # Cosine over the training time there is, this session's and earlier ones': the schedule
    # goes on from where a resumed run stopped and ends when the budget does.
    span = trained_s + max(1.0, deadline - start)
    first = it
    model.train()
    # Batch statistics stay the teacher's: a few small batches of one lab's images would
    # otherwise re-centre every layer on that lab, and the student would forget the rest (measured:
    # MoNuSeg AJI 0.651 -> 0.534 after 10 minutes on DSB crops with them updating).
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    stepping = False
    try:
        while True:
            now = time.perf_counter()
            go = it == 0 or now < deadline  # at least one step: a student
            frac = min(1.0, (trained_s + now - start) / span)
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
            if ddp.active:  # rank 0's clock for all: every rank takes the same steps
                agreed = torch.tensor([float(go), lr], dtype=torch.float64)
                torch.distributed.broadcast(agreed, 0)
                go, lr = bool(agreed[0]), float(agreed[1])
            if not go:
                break
            for g in opt.param_groups:
                g["lr"] = lr
            parts = [strong_sampler.batch(n_strong)]
            if n_pseudo > 0:
                parts.append(pseudo_sampler.batch(n_pseudo))
            if n_replay > 0:
                parts.append(replay_sampler.batch(n_replay))
            rgb = np.concatenate([p[0] for p in parts])
            targets = np.concatenate([p[1] for p in parts])
            x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)
            x = x.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(net(x), torch.from_numpy(targets))
            if cfg.anchor:
                drift = sum(
                    ((p - p0) ** 2).sum() for p, p0 in zip(model.parameters(), start_weights)
                )
                loss = loss + cfg.anchor * drift
            opt.zero_grad(set_to_none=True)
            loss.backward()
            stepping = True  # weights half-updated until the step returns
            opt.step()
            stepping = False
            it += 1
            if ddp.main and it % cfg.checkpoint_every == 0:
                _checkpoint(run, model, opt, it, trained_s + time.perf_counter() - start)
            yield run.emit({"stage": "train", "iter": it, "loss": float(loss.detach()), "lr": lr})
    except (GeneratorExit, KeyboardInterrupt):
        # Cancelled (the panel) or Ctrl-C (the command line): keep what this session trained,
        # so --resume / Resume goes on from here, not from the last 50-iteration checkpoint.
        # Not from inside the optimiser's step: those weights are half-updated.
        if ddp.main and it != first and not stepping:
            _checkpoint(run, model, opt, it, trained_s + time.perf_counter() - start)
        raise
    distributed.sync_buffers(model, ddp)
    if ddp.main and it != first and it % cfg.checkpoint_every:  # the student, should export fail
        _checkpoint(run, model, opt, it, trained_s + time.perf_counter() - start)
    if ddp.active:
        _record_rank(run.path, ddp, model, it)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, it


def _checkpoint(run, model, opt, it: int, trained_s: float) -> None:
    """``checkpoint.pt``, replaced atomically. A failed write (disk full) is one line naming the
    run folder; the previous checkpoint stays as it was."""
    import io

    import torch

    buffer = io.BytesIO()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "iter": it}
    torch.save({**state, "train_s": trained_s}, buffer)
    try:
        _write_atomic(run.path / "checkpoint.pt", buffer.getbuffer())
        run.save(checkpoint_iter=it)
    except OSError as exc:
        before = run.state.get("checkpoint_iter")
        kept = f"the checkpoint of iteration {before} is kept" if before else "no checkpoint yet"
        raise ProjectError(
            f"{run.path}: cannot write the checkpoint of iteration {it} "
            f"({exc.strerror or exc}); {kept}: make room, then `nucleiseg retrain --resume`"
        ) from None


def _student_name(project, card) -> tuple[str, str]:
    n = 1 + sum(1 for _ in project.models_dir.glob("*.json"))
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in project.path.name) or "project"
    return f"{base}-nuclei-{n}", f"{n}.0.0"


def _export(state, parent, folder: Path, name, version, strong, pseudo, iters, cfg) -> Path:
    """Card + safetensors + float32 ONNX of the student, beside the project's other models."""
    import datetime as dt

    from safetensors.torch import save_file

    from ..io.output import shareable
    from ..models.registry import ModelCard, sha256_of
    from .export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file(state, str(weights))
    shareable(weights)
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
            "replay_share": cfg.replay_share,
            "confidence": cfg.confidence,
            "anchor": cfg.anchor,
            # The teacher's replay set goes on to the student and its students.
            **({"replay": parent.training["replay"]} if parent.training.get("replay") else {}),
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


def retrain_steps(project_dir: str, resume: bool = False, **config):
    """:func:`retrain` for a background process (picklable arguments, small items): yields
    :class:`RetrainProgress`, then the result dict as the last item. ``resume=True`` continues
    the latest unfinished run, for the time it had left unless ``minutes`` is given."""
    from ..project import Project

    project = Project(project_dir)
    cfg = RetrainConfig(**config) if config or not resume else None
    for info in retrain(project, cfg, resume=resume):
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
