"""Training a learned stain normaliser on a project: reference 002's AttCycle teacher and
TransCycle student, with the run folder, checkpoints, resume and promotion of nuclei retraining.

    nucleiseg train-normaliser PROJECT [--minutes N] [--student] [--promote auto|always|never]

* **Teacher** (first run, or ``student=False``): two :class:`CycleGenerator` (X→Y, Y→X) whose
  encoder and nuclei decoder start from the project's current nuclei model, the encoder frozen;
  two LSGAN discriminators; the losses of :mod:`napari_nucleiseg.stain.learned.losses`.
* **Student** (``student=True``): the teacher's nuclei decoder first labels tissue tiles of the
  project's slides; a tile whose mean per-pixel confidence reaches ``confidence`` becomes a
  pseudo-label in the training store (reference 002 step S23). The student starts as a copy of
  the teacher with a Transformer over the bottleneck, trains its encoder too, on strong + pseudo
  labels, and is promoted only when its nuclei decoder beats the teacher's on the held-out strong
  labels (unless ``promote`` says otherwise).

The run lives in ``PROJECT/runs/normaliser-<time>/`` (``config.json``, ``state.json``,
``train.log`` JSON lines, ``checkpoint.pt``); the result is a model card of kind ``normaliser``
in ``PROJECT/models/`` — a method everywhere a shipped normaliser is.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..project.errors import ProjectError
from .retrain import PROMOTE, _new_run_dir, _read_json, _Run, _write_atomic, _write_json
from .retrain import latest_run as _latest_run

PREFIX = "normaliser"
#: Held-out examples re-stained this many times each to measure the colour figures.
RESTAINS_PER_EXAMPLE = 2


@dataclass
class NormaliserConfig:
    minutes: float = 30.0
    student: bool = False
    #: The normaliser the student starts from and competes with (default: the project's
    #: current normaliser); the nuclei model the teacher's encoder starts from (default: the
    #: project's current nuclei model, else the shipped default).
    teacher: str | None = None
    nuclei_model: str | None = None
    patch: int = 256
    batch: int = 2
    lr: float = 5e-4
    d_lr: float = 2e-4
    seg_lr: float = 5e-5
    encoder_lr: float = 2e-5
    segment_every: int = 2
    norm_levels: int = 4
    transformer_layers: int = 2
    heads: int = 4
    tile_um: float = 256.0
    tiles_per_slide: int = 24
    restain_unlabelled: float = 0.3
    confidence: float = 0.85
    pseudo_share: float = 0.15
    promote: str = "auto"
    adversarial: float = 1.0
    cycle: float = 10.0
    segmentation: float = 1.0
    identity: float = 5.0
    #: Weight of the paired L1 term (re-stained reference patches against their originals) and
    #: the share of X patches drawn from labelled tiles. Why: with the unpaired terms alone, a
    #: 40-minute CPU run left the generator the identity (its colour head moved by 0.002 in 200
    #: iterations: adversarial gradients on two patches are noise against cycle and identity
    #: terms that hold it in place); a pair says exactly which way is the reference style.
    paired: float = 10.0
    labelled_share: float = 0.5
    #: Weight of the Lab colour-moment term (:func:`~..stain.learned.losses.colour_moment_loss`).
    colour_moments: float = 1.0
    #: A teacher run may go on from an earlier normaliser's whole cycle (its ``cycle_state``)
    #: instead of from the nuclei model: a fine-tune with other weights.
    start_from: str | None = None
    seed: int = 0
    threads: int | None = None
    name: str | None = None
    #: Iterations between checkpoints (one is ~40 MB and takes about a second); a cancel
    #: writes one too.
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.promote not in PROMOTE:
            raise ValueError(f"promote must be one of {PROMOTE}, got {self.promote!r}")
        if not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.patch % 32:
            raise ValueError(f"patch must be a multiple of 32, got {self.patch}")


def latest_run(project) -> Path | None:
    return _latest_run(project, PREFIX)


def train_normaliser(
    project, cfg: NormaliserConfig | None = None, *, resume: bool = False
) -> Iterator[dict]:
    """Run a teacher or student training on ``project``, yielding progress dicts (``stage``,
    ``elapsed_s``, ``budget_s``, and ``iter``/``loss`` while training); the last has stage
    ``done`` and the ``result``. Closing the generator cancels: the last checkpoint stays and
    ``resume=True`` goes on from it."""
    t0 = time.perf_counter()
    # A resume with nothing to resume says that first (not what a new run would lack).
    path = latest_run(project) if resume else None
    if resume and (path is None or _read_json(path / "state.json").get("finished")):
        raise ProjectError(
            f"{project.path}: no unfinished normaliser run to resume: start one with "
            "`nucleiseg train-normaliser`"
        )
    if not any(s.get("reference") for s in project.slides):
        raise ProjectError(
            f"{project.path}: no slide is marked as the reference style: mark one or more with "
            "`nucleiseg project add-slide DIR SLIDE --reference` (or in the Project panel)"
        )
    if resume:
        saved = _read_json(path / "config.json")
        known = {f.name for f in fields(NormaliserConfig)}
        old = NormaliserConfig(**{k: v for k, v in saved.items() if k in known})
        run = _Run(path, t0, write=True)
        budget = run.state.get("budget_s", old.minutes * 60.0)
        if cfg is not None:
            budget = run.prior_s + cfg.minutes * 60.0
        cfg = old
        run.save(budget_s=budget, resumed=run.state.get("resumed", 0) + 1)
    else:
        cfg = cfg or NormaliserConfig()
        path = _new_run_dir(project, PREFIX)
        _write_json(path / "config.json", asdict(cfg))
        run = _Run(path, t0, write=True)
        run.save(budget_s=cfg.minutes * 60.0, finished=False)
    try:
        yield from _run(project, cfg, run)
    finally:
        run.close()


def _run(project, cfg, run):
    import torch

    from ..models.runtime import usable_cores

    torch.set_num_threads(cfg.threads or usable_cores())
    state = run.state
    nuclei_card, nuclei_dir = _nuclei_card(project, cfg)
    teacher = _teacher(project, cfg) if cfg.student else None
    # Where the weights start: the student's teacher, an earlier run's model, or (None) the
    # nuclei model.
    origin = teacher if teacher is not None else _start_from(project, cfg)
    heldout = project.store.examples(kind="strong", split="heldout")
    if teacher is not None and heldout and "teacher_aji" not in state:
        yield run.emit({"stage": "measure teacher", "done": 0, "total": len(heldout)})
        from ..stain.learned import load_generator

        gen = load_generator(*teacher)
        run.save(teacher_aji=_mask_aji(gen, teacher[0], heldout))
    if teacher is None and heldout and "nuclei_aji" not in state:
        # What the nuclei model the encoder comes from scores on the same labels: the mask
        # decoder is measured against it.
        from ..methods import get_method
        from .retrain import _aji

        yield run.emit({"stage": "measure nuclei model", "done": 0, "total": len(heldout)})
        run.save(nuclei_aji=_aji(get_method(nuclei_card.name, project=project.path), heldout))
    if teacher is not None and "pseudo" not in state:
        kept = yield from _pseudo_label(project, cfg, run, teacher)
        run.save(pseudo=kept)
    from ..stain.learned.data import project_pools

    yield run.emit({"stage": "read tiles", "done": 0, "total": len(project.slides)})
    pools = project_pools(
        project,
        nuclei_card.mpp,
        cfg.tile_um,
        cfg.tiles_per_slide,
        cfg.seed,
        cfg.restain_unlabelled,
        pseudo_teacher=_card_id(teacher[0]) if teacher else None,
    )
    if "pools" not in state:
        run.save(pools=pools.describe())
    if "reference_stain" not in state:
        # The reference style's stain vector, measured once (a student keeps its teacher's).
        from ..stain.learned.data import reference_vector

        # A student keeps its teacher's; a teacher (also one going on from an earlier model)
        # measures the reference slides.
        ref = teacher[0].generator["reference_stain"] if teacher else reference_vector(pools.y)
        run.save(reference_stain=[float(v) for v in ref])
    reference = np.asarray(run.state["reference_stain"], np.float32)
    if "reference_lab" not in state:
        from ..metrics.colour import pooled_lab_stats

        run.save(reference_lab=[float(v) for v in pooled_lab_stats([t.rgb for t in pools.y])])
    if "model" not in state:
        reserve = min(60.0 + 10.0 * len(heldout), 0.3 * run.state["budget_s"])
        deadline = time.perf_counter() + run.state["budget_s"] - reserve - run.spent()
        nets, iters = yield from _train(
            cfg, run, pools, reference, nuclei_card, nuclei_dir, origin, deadline
        )
        yield run.emit({"stage": "export", "done": 0, "total": 1})
        card_path = _export(
            project, cfg, run, nets[0], nuclei_card, origin, pools, reference, iters
        )
        run.save(model=str(card_path), iterations=iters)
    yield from _conclude(project, cfg, run, teacher, heldout, pools)


# ---------------------------------------------------------------------------- set-up
def _nuclei_card(project, cfg):
    from ..methods import default_method_name, get_method

    name = cfg.nuclei_model or default_method_name("nuclei", project.path)
    method = get_method(name, project=project.path)
    card = getattr(method, "card", None)
    if card is None or card.architecture != "UNet":
        raise ProjectError(
            f"{name} is not a trained U-Net: a learned normaliser's encoder starts from one "
            "(choose one with --nuclei-model)"
        )
    return card, Path(method.card_path).parent


def _teacher(project, cfg):
    """``(card, folder)`` of the normaliser the student starts from."""
    from ..methods import default_method_name, get_method

    name = cfg.teacher or project.current_model("normaliser")
    if name is None:
        try:
            name = default_method_name("normaliser", project.path)
            method = get_method(name, kind="normaliser", project=project.path)
        except Exception:
            raise ProjectError(
                f"{project.path}: no learned normaliser to start a student from: train the "
                "teacher first (`nucleiseg train-normaliser` without --student)"
            ) from None
    else:
        method = get_method(name, kind="normaliser", project=project.path)
    return method.card, Path(method.card_path).parent


def _start_from(project, cfg):
    """``(card, folder)`` of ``cfg.start_from`` (a normaliser with its cycle state), or None."""
    if not cfg.start_from:
        return None
    from ..methods import get_method

    method = get_method(cfg.start_from, kind="normaliser", project=project.path)
    if not method.card.training.get("cycle_state"):
        raise ProjectError(
            f"{cfg.start_from}: keeps no cycle state (a shipped model): a run can go on only "
            "from a normaliser trained in this project"
        )
    return method.card, Path(method.card_path).parent


def _card_id(card) -> str:
    return f"{card.name}@{card.version}:{card.sha256[:12]}"


def _mask_predictor(gen, card):
    """The generator's nuclei decoder as a nuclei predictor (PyTorch), with its card's
    post-processing."""
    from ..segmentation.postprocess import PostprocessSettings
    from ..segmentation.predict import Predictor
    from ..stain.learned import SegmentPath

    settings = PostprocessSettings(**card.postprocess)
    return Predictor(SegmentPath(gen.eval()), card.mpp, tile=1024, halo=64, settings=settings)


def _mask_aji(gen, card, examples) -> float:
    """Aggregate AJI of the generator's nuclei decoder on labelled examples."""
    from ..metrics import aggregate, score_image

    predictor = _mask_predictor(gen, card)
    scores = [
        score_image(ex.labels(), predictor.segment(ex.image(), ex.mpp), ex.id) for ex in examples
    ]
    return float(aggregate(scores)["aji"])


# ---------------------------------------------------------------------------- pseudo-labels
def _pseudo_label(project, cfg, run, teacher):
    """The teacher's nuclei decoder on tissue tiles of the project's non-reference slides; each
    confident tile goes to the store (the nuclei retraining loop's own step). Returns how many
    were kept."""
    from types import SimpleNamespace

    from .retrain import _pseudo_label as keep_if_confident
    from .retrain import _tiles

    card, folder = teacher
    from ..stain.learned import load_generator

    gen = load_generator(card, folder)
    teacher_ns = SimpleNamespace(predictor=_mask_predictor(gen, card), card=card)
    sources = [s for s in project.slides if not s.get("reference")]
    deadline = time.perf_counter() + cfg.pseudo_share * run.state["budget_s"]
    tiles_cfg = SimpleNamespace(
        tile_um=cfg.tile_um, tiles_per_source=cfg.tiles_per_slide, confidence=cfg.confidence
    )
    kept = 0
    for i, entry in enumerate(sources):
        if time.perf_counter() > deadline:
            break
        for rgb, mpp, region in _tiles(entry["path"], entry.get("mpp"), tiles_cfg, cfg.seed + i):
            if time.perf_counter() > deadline:
                break
            kept += keep_if_confident(
                project.store, teacher_ns, rgb, mpp, entry["path"], region, tiles_cfg
            )
        yield run.emit(
            {"stage": "pseudo-label", "done": i + 1, "total": len(sources), "kept": kept}
        )
    return kept


# ---------------------------------------------------------------------------- training
def _train(cfg, run, pools, reference, nuclei_card, nuclei_dir, teacher, deadline):
    import torch
    from safetensors.torch import load_file

    from ..stain.learned import (
        LossWeights,
        PatchDiscriminator,
        colour_moment_loss,
        cycle_maps,
        cycle_pass,
        discriminator_objective,
        generator_objective,
    )
    from ..stain.learned.data import as_tensor, draw, stain_vectors

    torch.manual_seed(cfg.seed)
    reference_lab = torch.tensor(run.state["reference_lab"], dtype=torch.float32)
    layers = cfg.transformer_layers if cfg.student else 0
    if teacher is not None:
        tcard = teacher[0]
        widths, decoder, levels = tcard.widths, tcard.decoder, tcard.generator["norm_levels"]
    else:
        widths, decoder, levels = nuclei_card.widths, nuclei_card.decoder, cfg.norm_levels
    from ..stain.learned import new_generator

    g_xy, g_yx = (new_generator(widths, decoder, levels, layers, cfg.heads) for _ in range(2))
    d_x, d_y = PatchDiscriminator(), PatchDiscriminator()
    cycle_state = teacher[0].training.get("cycle_state") if teacher is not None else None
    if cycle_state:  # the student starts as its teacher (the Transformer as identity)
        start = torch.load(io.BytesIO((teacher[1] / cycle_state).read_bytes()), weights_only=True)
        for net, key in ((g_xy, "g_xy"), (g_yx, "g_yx"), (d_x, "d_x"), (d_y, "d_y")):
            net.load_state_dict(start[key], strict=False)
    elif teacher is not None:  # a shipped teacher keeps only its X→Y generator
        state = load_file(str(teacher[1] / teacher[0].weights))
        for g in (g_xy, g_yx):
            g.load_state_dict(state, strict=False)
    else:
        unet = load_file(str(nuclei_dir / nuclei_card.weights))
        for g in (g_xy, g_yx):
            g.unet.load_state_dict(unet)
    encoder_params = [p for g in (g_xy, g_yx) for p in g.unet.down.parameters()]
    if not cfg.student:
        for p in encoder_params:
            p.requires_grad_(False)
    seg_params = [
        p for g in (g_xy, g_yx) for p in [*g.unet.up.parameters(), *g.unet.head.parameters()]
    ]
    seg_ids = {id(p) for p in seg_params} | {id(p) for p in encoder_params}
    rest = [p for g in (g_xy, g_yx) for p in g.parameters() if id(p) not in seg_ids]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": seg_params, "lr": cfg.seg_lr}]
    if cfg.student:
        groups.append({"params": encoder_params, "lr": cfg.encoder_lr})
    opt_g = torch.optim.Adam(groups, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam([*d_x.parameters(), *d_y.parameters()], cfg.d_lr, betas=(0.5, 0.999))
    nets = {"g_xy": g_xy, "g_yx": g_yx, "d_x": d_x, "d_y": d_y}
    it = 0
    ckpt = run.path / "checkpoint.pt"
    if ckpt.exists():
        saved = torch.load(io.BytesIO(ckpt.read_bytes()), weights_only=True)
        for key, net in nets.items():
            net.load_state_dict(saved[key])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        it = int(saved["iter"])
    weights = LossWeights(cfg.adversarial, cfg.cycle, cfg.segmentation, cfg.identity)
    for g in (g_xy, g_yx):
        g.train()
        g.freeze_statistics()
    for net in (d_x, d_y):
        net.to(memory_format=torch.channels_last).train()
    while time.perf_counter() < deadline:
        rng = np.random.default_rng([cfg.seed, it])
        xr, xt, xv, x_orig, x_paired = draw(pools.x, cfg.batch, cfg.patch, rng, cfg.labelled_share)
        yr, yt, yv, _, _ = draw(pools.y, cfg.batch, cfg.patch, rng)
        x, y = as_tensor(xr), as_tensor(yr)
        segment = it % cfg.segment_every == 0 and bool(xv.any() or yv.any())
        maps = cycle_maps(stain_vectors(xr), stain_vectors(yr), reference)
        passes = cycle_pass(g_xy, g_yx, x, y, maps, identity=cfg.identity > 0, segment=segment)
        total, terms = generator_objective(
            passes,
            d_x,
            d_y,
            x,
            y,
            x_mask=torch.from_numpy(xt) if xv.any() else None,
            x_valid=torch.from_numpy(xv),
            y_mask=torch.from_numpy(yt) if yv.any() else None,
            y_valid=torch.from_numpy(yv),
            weights=weights,
        )
        if cfg.colour_moments:
            colour = colour_moment_loss(passes.fake_y, x, reference_lab)
            total = total + cfg.colour_moments * colour
            terms["colour"] = float(colour.detach())
            terms["total"] = float(total.detach())
        if cfg.paired and x_paired.any():
            keep = torch.from_numpy(x_paired)
            pair = (passes.fake_y[keep] - as_tensor(x_orig[x_paired])).abs().mean()
            total = total + cfg.paired * pair
            terms["paired"] = float(pair.detach())
            terms["total"] = float(total.detach())
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        d_total, d_terms = discriminator_objective(d_x, d_y, x, y, passes.fake_x, passes.fake_y)
        opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        opt_d.step()
        it += 1
        if it % cfg.checkpoint_every == 0:
            _checkpoint(run, nets, opt_g, opt_d, it)
        try:
            info = {"stage": "train", "iter": it, "loss": terms["total"], **terms, **d_terms}
            yield run.emit(info)
        except GeneratorExit:  # Cancel: keep every finished iteration for --resume
            if it % cfg.checkpoint_every:
                _checkpoint(run, nets, opt_g, opt_d, it)
            raise
    _checkpoint(run, nets, opt_g, opt_d, it)
    return (g_xy, g_yx, d_x, d_y), it


def _checkpoint(run, nets, opt_g, opt_d, it: int) -> None:
    import torch

    buffer = io.BytesIO()
    state = {key: net.state_dict() for key, net in nets.items()}
    torch.save(
        {**state, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "iter": it}, buffer
    )
    try:
        _write_atomic(run.path / "checkpoint.pt", buffer.getbuffer())
        run.save(checkpoint_iter=it)
    except OSError as exc:
        before = run.state.get("checkpoint_iter")
        kept = f"the checkpoint of iteration {before} is kept" if before else "no checkpoint yet"
        raise ProjectError(
            f"{run.path}: cannot write the checkpoint of iteration {it} "
            f"({exc.strerror or exc}); {kept}: make room, then `nucleiseg train-normaliser "
            "--resume`"
        ) from None


# ---------------------------------------------------------------------------- export
def export_normaliser(
    gen, folder: Path, name: str, version: str, base: dict, reference, reference_lab=None
) -> Path:
    """Card + safetensors (the X→Y generator, both decoders) + float32 ONNX of the normalisation
    path (BatchNorm folded) in ``folder``; the card is written last, so a half-exported model is
    never a method. ``base`` holds the card's other fields; ``reference`` is the style's stain
    vector and ``reference_lab`` its Lab mean and std over tissue (the colour calibration's
    target, :mod:`napari_nucleiseg.stain.learned_normaliser`)."""
    import torch
    from safetensors.torch import save_file

    from ..io.output import shareable
    from ..models.registry import ModelCard, sha256_of
    from ..segmentation.unet import fuse_for_inference
    from ..stain.learned import NormalisePath

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in gen.state_dict().items()}
    save_file(state, str(weights))
    shareable(weights)
    fused = copy.deepcopy(gen).eval()
    fused.unet = fuse_for_inference(fused.unet)
    fused = fused.to(memory_format=torch.contiguous_format)
    onnx_path = folder / f"{name}.onnx"
    torch.onnx.export(
        NormalisePath(fused),
        (torch.rand(1, 3, 256, 256), torch.eye(3).reshape(1, 9)),
        str(onnx_path),
        input_names=["rgb", "stain_map"],
        output_names=["normalised"],
        dynamic_axes={"rgb": {2: "h", 3: "w"}, "normalised": {2: "h", 3: "w"}},
        opset_version=17,
        dynamo=False,
    )
    card = ModelCard(
        **{
            **base,
            "name": name,
            "version": version,
            "architecture": "CycleGenerator",
            "sha256": sha256_of(weights),
            "weights": weights.name,
            "onnx": onnx_path.name,
            "onnx_sha256": sha256_of(onnx_path),
            "generator": {
                "norm_levels": gen.norm_levels,
                "transformer_layers": gen.transformer_layers,
                "heads": gen.transformer[0].heads if gen.transformer_layers else 4,
                "reference_stain": [round(float(v), 6) for v in reference],
                **(
                    {}
                    if reference_lab is None
                    else {"reference_lab": [round(float(v), 4) for v in reference_lab]}
                ),
            },
        }
    )
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(card.to_json() + "\n")
    tmp.replace(path)
    return path


def _export(project, cfg, run, g_xy, nuclei_card, teacher, pools, reference, iters) -> Path:
    import datetime as dt

    n = 1 + sum(1 for _ in project.models_dir.glob("*.json"))
    base_name = "".join(c if c.isalnum() or c in "-_" else "-" for c in project.path.name)
    role = "student" if cfg.student else "teacher"
    name = cfg.name or f"{base_name or 'project'}-stain-{role}-{n}"
    parent = teacher[0] if teacher else nuclei_card
    strong = project.store.examples(kind="strong", split="train")
    folder = project.models_dir
    # The whole cycle (both generators and discriminators) goes beside the card: a student
    # starts from it. Written before the card, so a card never names a missing file.
    cycle_state = folder / f"{name}.cycle.pt"
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(cycle_state, (run.path / "checkpoint.pt").read_bytes())
    base = {
        "task": "stain normalisation to the lab's reference style, and nuclei segmentation",
        "outputs": ["rgb", "foreground", "contour", "distance"],
        "widths": list(parent.widths),
        "mpp": parent.mpp,
        "decoder": parent.decoder,
        "postprocess": dict(parent.postprocess),
        "tile_px": 512,
        "context_um": 32.0,
        "licence": parent.licence,
        "training_data": [
            f"X: {pools.describe()['x']['tiles']} tiles of {len(pools.describe()['x']['sources'])} "
            f"sources; Y (reference style): {pools.describe()['y']['tiles']} tiles of "
            f"{len(pools.describe()['y']['sources'])} sources; {len(strong)} strong labels",
            *parent.training_data,
        ],
        "training": {
            "parent": {"name": parent.name, "version": parent.version, "sha256": parent.sha256},
            "role": role,
            "config": asdict(cfg),
            "pools": pools.describe(names_only=True),
            "data_manifest": [
                {"id": ex.id, "source": ex.provenance.get("source", "")} for ex in strong
            ],
            "iterations_done": iters,
            "cycle_state": cycle_state.name,
        },
        "created": dt.date.today().isoformat(),
        "notes": f"trained by `nucleiseg train-normaliser` ({role})",
    }
    return export_normaliser(
        g_xy, folder, name, f"{n}.0.0", base, reference, run.state.get("reference_lab")
    )


# ---------------------------------------------------------------------------- conclusion
def _conclude(project, cfg, run, teacher, heldout, pools):
    from ..models.registry import load_card

    state = run.state
    card_path = Path(state["model"])
    card = load_card(card_path)
    if heldout and "aji" not in state:
        yield run.emit({"stage": "measure", "done": 0, "total": len(heldout)})
        from ..stain.learned import load_generator

        gen = load_generator(card, card_path.parent)
        colour = _colour(gen, card, heldout, pools)
        run.save(aji=_mask_aji(gen, card, heldout), colour=colour)
    aji, teacher_aji = state.get("aji"), state.get("teacher_aji")
    if teacher is None:
        promoted = cfg.promote != "never"
    else:
        promoted = cfg.promote == "always" or (
            cfg.promote == "auto"
            and aji is not None
            and teacher_aji is not None
            and aji > teacher_aji
        )
    data = json.loads(card_path.read_text())
    data["metrics"] = {
        "project_heldout": {
            "images": len(heldout),
            "mask_aji": aji,
            **(
                {"teacher": _card_id(teacher[0]), "teacher_mask_aji": teacher_aji}
                if teacher
                else {}
            ),
            **({"nuclei_model_aji": state["nuclei_aji"]} if "nuclei_aji" in state else {}),
            **(state.get("colour") or {}),
        }
    }
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(card_path)
    if promoted:
        project.set_current_model(card.name, kind="normaliser")
    result = {
        "model": card.name,
        "role": "student" if cfg.student else "teacher",
        "mask_aji": aji,
        "teacher_mask_aji": teacher_aji,
        "nuclei_model_aji": state.get("nuclei_aji"),
        "promoted": bool(promoted),
        "pseudo": state.get("pseudo"),
        "iterations": state.get("iterations"),
        "minutes": run.spent() / 60.0,
        "run": str(run.path),
        **(state.get("colour") or {}),
    }
    run.save(finished=True, result=result)
    yield run.emit({"stage": "done", "result": result})


def _colour(gen, card, examples, pools) -> dict:
    """Held-out strong labels re-stained (fixed seeds), then normalised: SSIM of the
    haematoxylin channel (input vs output) and the Lab distance to the reference pool, before
    and after."""
    import torch

    from ..metrics.colour import h_ssim, lab_distance, lab_stats, pooled_lab_stats
    from ..stain.augment import restain
    from ..stain.learned.data import (
        RESTAIN_AMOUNTS,
        RESTAIN_ANGLES,
        as_tensor,
        resample,
        stain_map,
        stain_vector,
    )

    reference = pooled_lab_stats([t.rgb for t in pools.y])
    before, after, ssim = [], [], []
    for i, ex in enumerate(examples):
        rgb, _ = resample(ex.image(), None, ex.mpp / card.mpp)
        m = gen.multiple
        rgb = rgb[: rgb.shape[0] - rgb.shape[0] % m, : rgb.shape[1] - rgb.shape[1] % m]
        for k in range(RESTAINS_PER_EXAMPLE):
            src, _ = restain(rgb, np.random.default_rng([i, k]), RESTAIN_ANGLES, RESTAIN_AMOUNTS)
            a = stain_map(stain_vector(src), np.asarray(card.generator["reference_stain"]))
            with torch.no_grad():
                out = gen.normalise(as_tensor(src[None]), torch.from_numpy(a[None]))
            out = out[0].permute(1, 2, 0).numpy()
            out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
            before.append(lab_distance(lab_stats(src), reference))
            after.append(lab_distance(lab_stats(out), reference))
            ssim.append(h_ssim(src, out))
    return {
        "lab_distance_before": float(np.mean(before)),
        "lab_distance_after": float(np.mean(after)),
        "h_ssim": float(np.mean(ssim)),
    }


def normaliser_steps(project_dir: str, resume: bool = False, **config):
    """:func:`train_normaliser` for a background process (picklable arguments, small items):
    yields :class:`~.retrain.RetrainProgress` (seconds of the budget, stage, latest loss), then
    the result dict as the last item. ``resume=True`` continues the latest unfinished run."""
    from ..project import Project
    from .retrain import RetrainProgress

    project = Project(project_dir)
    cfg = NormaliserConfig(**config) if config or not resume else None
    for info in train_normaliser(project, cfg, resume=resume):
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
