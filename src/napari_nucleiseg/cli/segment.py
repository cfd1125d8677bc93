"""``nucleiseg segment``: images in memory, whole slides through the whole-slide job.

One line per failed input on stderr (``error: <file>: <problem>``), and a ``failed:`` summary only
when several inputs ran; progress on stderr (:mod:`.progress`); results on stdout, one
``<input>: <n> nuclei -> <output>`` line per input. The output folder is checked before any work
and left only when something was written to it.

Outputs are named by :func:`~napari_nucleiseg.io.output.output_stem` (the name less its last
suffix). Inputs of one run whose outputs would share a name (``a/x.png`` and ``b/x.png``) are
refused together, with one line naming them: which one should win is not ours to guess.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .progress import Progress, duration, is_tty


def nuclei_method_names() -> list[str]:
    """Every nuclei method the registry knows (shipped, user and project models, classical,
    registered at run time), the default first."""
    from ..methods import method_names

    return list(method_names("nuclei"))


def project_method(project_dir, name=None) -> str | None:
    """The method ``segment --project DIR`` runs: ``name`` looked up in the project too, else
    the project's current model; a model is passed on as its card's path, so every face (and
    every whole-slide worker) finds it without knowing the project."""
    from ..methods import get_method
    from ..project import Project

    project = Project(project_dir)
    chosen = name or project.current_model()
    if chosen is None:
        return None  # the package default
    method = get_method(chosen, "nuclei", project=project.path)
    card_path = getattr(method, "card_path", None)
    return str(card_path) if card_path is not None else chosen


def check_method(name) -> str | None:
    """None if ``name`` (None: the default) can run, else the one-line problem."""
    from ..methods import MethodError, get_method
    from ..models.registry import WeightsError

    try:
        method = get_method(name, "nuclei")
        method.warm_up()  # loads the weights: a file failing its hash is refused here, once
    except MethodError as exc:  # no such method: the message lists the available ones
        return str(exc)
    except WeightsError as exc:  # weights missing or failing their hash
        return str(exc)
    except ModuleNotFoundError as exc:  # a model without an ONNX twin needs PyTorch
        if exc.name != "torch":
            raise
        return (
            f"method {name or method.name!r} has no ONNX model and needs PyTorch, which is "
            "not installed: pip install 'napari-nucleiseg[train]' (see README, Install)"
        )
    return None


def output_names(path, whole: bool) -> list[str]:
    """The files ``segment`` writes for ``path`` into its output folder."""
    from ..io.output import output_stem
    from ..wholeslide.store import slide_stem

    if whole:
        stem = slide_stem(path)
        return [f"{stem}.nuclei.{ext}" for ext in ("zarr", "csv", "parquet", "geojson")]
    stem = output_stem(path)
    return [f"{stem}.tif", f"{stem}.csv"]


def find_clashes(plain, whole, out) -> tuple[set, list[str]]:
    """``(inputs refused, one error line per clash)``: inputs whose outputs would share a file
    name (compared case-insensitively: macOS and Windows folders are), grouped."""
    owners: dict[str, list] = {}
    for paths, is_whole in ((plain, False), (whole, True)):
        for p in paths:
            if not Path(p).exists():  # reported as missing on its own; it writes nothing
                continue
            for name in output_names(p, is_whole):
                owners.setdefault(name.casefold(), []).append((p, name))
    parent: dict = {}

    def root(p):
        while parent[p] != p:
            p = parent[p]
        return p

    shared: list[tuple[object, str]] = []
    for entries in owners.values():
        inputs = list(dict.fromkeys(p for p, _ in entries))
        if len(inputs) < 2:
            continue
        for p in inputs:
            parent.setdefault(p, p)
        for p in inputs[1:]:
            parent[root(p)] = root(inputs[0])
        shared += [(inputs[0], n) for _, n in entries]
    groups: dict = {}
    for p in parent:  # insertion order: the order the inputs were given
        groups.setdefault(root(p), ([], set()))[0].append(p)
    for p, name in shared:
        groups[root(p)][1].add(name)
    lines = [
        f"{', '.join(map(str, inputs))}: their results would share the names "
        f"{', '.join(sorted(names))} in {out}, so none of them was segmented; "
        "segment them into separate --out folders, or rename them"
        for inputs, names in groups.values()
    ]
    return set(parent), lines


def find_overwrites(plain, out) -> tuple[set, list[str]]:
    """``(inputs refused, one error line each)``: images whose labels and table would replace
    a file they must not — an input, a result that an earlier run made from another image, or
    a file that is not a result at all. A rerun on the same image replaces its own results."""
    from ..io.output import same_file
    from ..segmentation.commands import result_source

    refused, lines = set(), []
    for p in plain:
        labels, table = (Path(out) / name for name in output_names(p, False))
        if not Path(p).exists():
            continue
        problem = None
        if same_file(labels, p) or same_file(table, p):
            problem = "its results would replace the image itself"
        elif labels.is_file():
            source = result_source(labels)
            if source is None:
                problem = f"{labels} exists and is not a nuclei result; it is left as it is"
            elif not _same_source(source, p):
                problem = f"{labels} holds the results of another image ({source})"
        elif table.is_file():
            problem = f"{table} exists without its labels; it is left as it is"
        if problem:
            refused.add(p)
            lines.append(
                f"{p}: {problem}, so it was not segmented; segment it into another --out "
                "folder, or move that file"
            )
    return refused, lines


def _same_source(recorded: str, path) -> bool:
    """Whether a result's recorded ``source`` is ``path``. One that does not exist from here
    was recorded from another working folder, or before the data moved (another mount, a
    renamed folder): its file name is all there is to go on."""
    from ..io.output import same_file

    if same_file(recorded, path):
        return True
    rec = Path(recorded)
    if rec.exists():  # another file that is still there: another image
        return False
    if sys.platform.startswith(("darwin", "win")):  # their folders ignore case
        return rec.name.casefold() == Path(path).name.casefold()
    return rec.name == Path(path).name


def refuse_results(paths) -> tuple[set, list[str]]:
    """``(inputs refused, one error line each)``: label TIFFs an earlier run wrote, named as
    inputs (segmenting a label map as an image gives nonsense)."""
    from ..segmentation.commands import result_source

    refused, lines = set(), []
    for p in paths:
        if Path(p).suffix.lower() in (".tif", ".tiff"):
            source = result_source(p)
            if source is not None:
                refused.add(p)
                lines.append(f"{p}: is the nuclei labels of {source}, not an image to segment")
    return refused, lines


def cmd_segment(args) -> int:
    from ..io import SlideError
    from ..io.output import OutputError, check_output_dir
    from ..stain import StainError
    from ..stain.commands import load_target_file
    from ..wholeslide.cohort import expand_inputs, route_inputs
    from .main import note_mpp_overrides

    err = sys.stderr
    normaliser = None
    if args.normalize or args.target:
        if not args.target:
            print(
                "error: --normalize needs --target (a reference image or a saved profile .json)",
                file=err,
            )
            return 2
        try:
            normaliser = load_target_file(args.normalize, args.target)
        except (SlideError, StainError) as exc:
            print(f"error: {exc}", file=err)
            return 2
    if getattr(args, "project", None):
        try:
            args.method = project_method(args.project, args.method)
        except Exception as exc:  # ProjectError, MethodError, WeightsError: one line each
            print(f"error: {exc}", file=err)
            return 2
    problem = check_method(args.method)
    if problem:
        print(f"error: {problem}", file=err)
        return 2
    if getattr(args, "detection_threshold", None) is not None:
        from ..methods import MethodError, with_detection_threshold

        try:
            args.method = with_detection_threshold(args.method, args.detection_threshold)
        except MethodError as exc:
            print(f"error: {exc}", file=err)
            return 2

    out = Path(args.out)
    try:
        check_output_dir(out)  # before hours of work, not after
    except OutputError as exc:
        print(f"error: {exc}", file=err)
        return 1
    existed = out.exists()
    paths, errors = expand_inputs(args.inputs)
    for e in errors:
        print(f"error: {e}", file=err)
    failed = [e.split(": ", 1)[0] for e in errors]
    # The same file named twice (a folder and a list holding it) is segmented once.
    unique = {}
    for p in paths:
        unique.setdefault(_identity(p), p)
    forced = bool(args.whole_slide or args.scheduler)
    plain, whole = route_inputs(list(unique.values()), whole_slide=forced, mpp=args.mpp)
    problem = _tile_um_problem(args) if whole else None  # only whole slides are tiled by it
    if problem:
        print(f"error: {problem}", file=err)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        return 2
    refused, lines = find_clashes(plain, whole, out)
    for more in (refuse_results(plain + whole), find_overwrites(plain, out)):
        refused |= more[0]
        lines += more[1]
    for line in lines:
        print(f"error: {line}", file=err)
    failed += [str(p) for p in unique.values() if p in refused]
    plain = [p for p in plain if p not in refused]
    whole = [p for p in whole if p not in refused]
    note_mpp_overrides(plain + whole, args.mpp)
    if args.tile_um is not None and plain:  # was silently ignored for them
        names = ", ".join(p.name for p in plain[:3]) + (" …" if len(plain) > 3 else "")
        print(
            f"note: --tile-um is for whole-slide jobs; {names} "
            f"{'is' if len(plain) == 1 else 'are'} segmented in memory in the model's own "
            "tiles (add --whole-slide to tile them)",
            file=err,
        )
    code = 0
    try:
        if plain:
            failed += segment_images(plain, out, args.mpp, args.method, normaliser)
        if whole:
            code, bad = segment_slides(whole, out, args, normaliser)
            failed += bad
    finally:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that wrote nothing leaves no empty folder behind
    if failed and len(paths) + len(errors) > 1:
        print(f"failed: {', '.join(failed)}", file=err)
    return code or (1 if failed else 0)


def _identity(path: Path):
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def segment_images(paths, out, mpp, method, normaliser) -> list[str]:
    """Each image read whole and segmented in memory; returns the inputs that failed."""
    from ..io import SlideError
    from ..segmentation.api import describe_method
    from ..segmentation.commands import segment_file
    from ..stain import StainError

    info = describe_method(method, normaliser)
    failed = []
    for path in paths:
        with Progress(Path(path).name, "tiles") as bar:
            try:
                result = segment_file(
                    path,
                    out,
                    mpp=mpp,
                    method=method,
                    normaliser=normaliser,
                    info=info,
                    progress=bar.update,
                )
            except (SlideError, StainError) as exc:  # both name the file: one line, go on
                bar.close()
                print(f"error: {exc}", file=sys.stderr, flush=True)
                failed.append(str(path))
                continue
        print(f"{path}: {result.nuclei} nuclei -> {result.labels}", flush=True)
        warn_if_implausible_scale(Path(path).name, result.table, result.mpp, result.areas_um2)
    return failed


#: Rows of a result table read to judge its µm/px: a median needs no more.
SCALE_SAMPLE_ROWS = 200_000


def warn_if_implausible_scale(name: str, table: Path, mpp: float | None, areas=None) -> None:
    """A ``warning:`` line when the nuclei in ``table`` (a result CSV; or their ``areas`` in µm²
    when the caller has them) say the µm/px the input was segmented at is implausible, naming
    the µm/px they suggest (:mod:`napari_nucleiseg.segmentation.scale`)."""
    import csv
    import itertools

    from ..segmentation.scale import scale_from_areas

    if mpp is None:
        return
    if areas is None:
        if not Path(table).is_file():
            return
        try:
            with open(table, newline="") as f:
                rows = itertools.islice(csv.DictReader(f), SCALE_SAMPLE_ROWS)
                areas = [float(r["area_um2"]) for r in rows]
        except (OSError, KeyError, ValueError):
            return  # a table without areas says nothing about the scale
    verdict = scale_from_areas(areas, mpp)
    if verdict.implausible:
        print(f"warning: {verdict.message(name)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- whole slides
class CohortDisplay:
    """Two bars on a terminal (the cohort, the current slide's tiles); on a log, a line per
    slide at every tenth of its work and a cohort line after each slide."""

    def __init__(self, count: int, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_tty(self.stream)
        self.count = count
        self.finished = self.failed = self.nuclei = 0
        self.t0 = time.perf_counter()
        self.slide: Progress | None = None
        # The cohort advances by fractions of slides: its bar shows a percentage, and the count
        # of finished slides in its status.
        self.cohort = Progress(
            "cohort",
            "slides",
            stream=self.stream,
            leave=True,
            min_total=1,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
        )

    def _cohort_status(self, current_nuclei: int = 0) -> str:
        failed = f" ({self.failed} failed)" if self.failed else ""
        done = self.finished + self.failed
        return f"{done}/{self.count} slides{failed}, {self.nuclei + current_nuclei:,} nuclei"

    def started(self, name: str) -> None:
        self.slide = Progress(name, "tiles", stream=self.stream, position=1, min_total=1)
        if self.tty:
            self.cohort.update(self.finished + self.failed, self.count, self._cohort_status())

    def progress(self, p) -> None:
        status = f"{p.nuclei:,} nuclei, {p.stage}"
        if p.resumed:
            status = f"{p.resumed} resumed, " + status
        self.slide.update(p.segmented, p.total, status, fraction=p.fraction, initial=p.resumed)
        if self.tty:
            done = self.finished + self.failed + p.fraction
            self.cohort.update(done, self.count, self._cohort_status(p.nuclei))

    def ended(self, outcome) -> None:
        if self.slide is not None:
            self.slide.close()
        self.finished += outcome.ok
        self.failed += not outcome.ok
        self.nuclei += outcome.nuclei
        if not outcome.ok:
            self.cohort.write(f"error: {outcome.error}", sys.stderr)
        done = self.finished + self.failed
        if self.tty:
            self.cohort.update(done, self.count, self._cohort_status())
        elif self.count > 1:
            elapsed = duration(time.perf_counter() - self.t0)
            self.cohort.write(f"cohort: {self._cohort_status()}, {elapsed}")

    def message(self, text: str) -> None:
        self.cohort.write(text, sys.stderr)

    def close(self) -> None:
        if self.slide is not None:
            self.slide.close()
        self.cohort.close()


def segment_slides(slides, out, args, normaliser) -> tuple[int, list[str]]:
    """The whole-slide job on each slide; ``(exit code, failed inputs)``. Prints the progress,
    then a table of the slides and one ``<slide>: <n> nuclei -> <store>`` line each."""
    from ..models.registry import WeightsError
    from ..wholeslide import SlideProgress
    from ..wholeslide.cohort import SlideOutcome, SlideStarted, run_cohort
    from .main import stdout_gone

    display = CohortDisplay(len(slides))
    outcomes: list[SlideOutcome] = []
    events = run_cohort(
        slides,
        out,
        method=args.method,
        mpp=args.mpp,
        tile_um=args.tile_um,
        scheduler=args.scheduler,
        workers=args.workers,
        normaliser=normaliser,
    )
    try:
        for event in events:
            if isinstance(event, SlideStarted):
                display.started(Path(event.slide).name)
            elif isinstance(event, SlideProgress):
                display.progress(event)
            elif isinstance(event, SlideOutcome):
                outcomes.append(event)
                display.ended(event)
    except (WeightsError, ConnectionError) as exc:  # nothing could run
        if isinstance(exc, BrokenPipeError) and stdout_gone():
            raise  # the reader of our output went away: main() stops quietly
        display.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2, [str(s) for s in slides]
    except KeyboardInterrupt as exc:  # the job's JobInterrupted says how many tiles are kept
        events.close()  # stops the running job; finished tiles stay recorded
        display.close()
        print(
            str(exc) or "interrupted: finished tiles are kept; run the same command to resume",
            file=sys.stderr,
        )
        left = [str(s) for s in slides[len(outcomes) :]]  # as the failed: line names them
        if len(slides) > 1 and left:  # not failed: the same command goes on with them
            print(f"not finished: {', '.join(left)}", file=sys.stderr)
        return 130, [o.slide for o in outcomes if not o.ok]
    display.close()
    print_summary(outcomes)
    for o in outcomes:
        if o.ok:
            warn_if_implausible_scale(
                Path(o.slide).name, _store_table(o.store), _mpp(o.slide, args)
            )
    return 0, [o.slide for o in outcomes if not o.ok]


def _mpp(slide, args) -> float | None:
    """The µm/px a slide was segmented at: the override, else its file's (a header read)."""
    import warnings

    from ..io import SlideError, open_slide

    if args.mpp:
        return float(args.mpp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_slide(slide) as opened:
                return opened.mpp
    except SlideError:
        return None


def _store_table(store) -> Path:
    """The CSV written beside a whole-slide result store (``x.nuclei.zarr`` → ``x.nuclei.csv``)."""
    store = Path(store)
    return store.with_suffix(".csv")


def print_summary(outcomes, stream=None) -> None:
    """A table of the slides, then one line per finished slide in the format plain
    segmentation prints (scripts parse it)."""
    stream = stream if stream is not None else sys.stdout
    print(
        f"{'slide':<32}{'status':>9}{'tiles':>8}{'resumed':>9}{'nuclei':>10}{'time':>9}"
        f"{'nuclei/s':>10}  result",
        file=stream,
    )
    for o in outcomes:
        name = Path(o.slide).name[:31]
        took = duration(o.seconds)
        if o.ok:
            rate = o.nuclei / o.seconds if o.seconds > 0 else 0.0
            print(
                f"{name:<32}{'done':>9}{o.tiles:>8}{o.resumed:>9}{o.nuclei:>10}{took:>9}"
                f"{rate:>10.0f}  {o.store}",
                file=stream,
            )
        else:
            print(f"{name:<32}{'FAILED':>9}{'':>27}{took:>9}{'':>10}  {o.error}", file=stream)
    for o in outcomes:
        if o.ok:
            print(f"{o.slide}: {o.nuclei} nuclei -> {o.store}", file=stream)
    stream.flush()


#: The largest whole-slide tile core, in the model's pixels: a tile and its maps are held in
#: memory whole (8192² model px: about 1 GB of maps).
MAX_TILE_MODEL_PX = 8192


def _tile_um_problem(args) -> str | None:
    """Why ``--tile-um`` cannot tile a whole slide for the chosen method, or None: refused
    before any work (was: per slide in the cohort table, or 8 s in, "array is too big")."""
    if getattr(args, "tile_um", None) is None:
        return None
    from ..methods import get_method

    m = get_method(args.method)
    low = 2 * float(m.context_um)
    high = MAX_TILE_MODEL_PX * float(m.mpp)
    if args.tile_um < low:
        return (
            f"--tile-um {args.tile_um:g}: tiles must be at least twice {m.name}'s "
            f"{float(m.context_um):g} µm halo ({low:g} µm)"
        )
    if args.tile_um > high:
        return (
            f"--tile-um {args.tile_um:g}: tiles can be at most {high:g} µm "
            f"({MAX_TILE_MODEL_PX} px at {m.name}'s {float(m.mpp):g} µm/px; a tile is held in "
            "memory whole)"
        )
    return None
