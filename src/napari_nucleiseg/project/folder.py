"""A project folder: ``project.json`` (slides, settings, current model per kind) and the paths of
its training store, models, runs and results. ``project.json`` is rewritten whole through a
temporary file and a rename, so a crash leaves the old or the new one, never half of one."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ProjectError
from .training_store import Example, TrainingStore

#: Version of ``project.json``; a newer one is refused, not misread.
FORMAT = 1
#: Files up to this size are hashed whole; larger ones (whole slides) by their size, their first
#: and last 8 MiB: enough to tell a rescanned or edited slide, in milliseconds not minutes.
WHOLE_HASH_BYTES = 64 << 20
_SAMPLE = 8 << 20
#: Largest image an example may be: it is read whole, and patches are cut from it for training.
MAX_LABELLED_PIXELS = 64_000_000


def file_fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, or for large files ``sha256-sampled:<hex>`` of its
    size and first and last 8 MiB. Names the file in the error when it cannot be read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if size <= WHOLE_HASH_BYTES:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                return f"sha256:{h.hexdigest()}"
            h.update(str(size).encode())
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
            return f"sha256-sampled:{h.hexdigest()}"
    except OSError as exc:
        raise ProjectError(
            f"{path}: cannot read it to record its content ({exc.strerror})"
        ) from exc


class Project:
    """An opened project folder. ``Project.init(dir)`` makes one, ``Project(dir)`` opens one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = self.path / "project.json"
        if not self.file.exists():
            raise ProjectError(
                f"{self.path}: not a napari-nucleiseg project (no project.json); "
                f"make one with `nucleiseg project init {self.path}`"
            )
        self.data = self._load()
        self._store: TrainingStore | None = None

    @classmethod
    def init(cls, path: str | Path) -> Project:
        """Create a project in ``path`` (a new or empty folder; an existing project is opened,
        not overwritten)."""
        path = Path(path)
        if (path / "project.json").exists():
            return cls(path)
        if path.exists() and not path.is_dir():
            raise ProjectError(f"{path}: a file is in the way of the project folder")
        if path.exists() and any(path.iterdir()):
            raise ProjectError(
                f"{path}: the folder is not empty and holds no project; choose an empty or new one"
            )
        try:
            for sub in ("models", "runs", "results"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            TrainingStore(path / "store.zarr")
            data = {
                "nucleiseg_project": FORMAT,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "slides": [],
                "models": {},
                "settings": {},
            }
            _write_json(path / "project.json", data)
        except OSError as exc:
            raise ProjectError(f"{path}: cannot create the project there ({exc.strerror})") from exc
        return cls(path)

    def _load(self) -> dict:
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError) as exc:
            raise ProjectError(f"{self.file}: unreadable project file ({exc})") from exc
        fmt = data.get("nucleiseg_project") if isinstance(data, dict) else None
        if not isinstance(fmt, int):
            raise ProjectError(f"{self.file}: not a napari-nucleiseg project file")
        if fmt > FORMAT:
            raise ProjectError(
                f"{self.file}: written by a newer napari-nucleiseg (project format {fmt}, this "
                f"one reads up to {FORMAT}); upgrade to use it"
            )
        return data

    def save(self) -> None:
        _write_json(self.file, self.data)

    # ------------------------------------------------------------------ parts
    @property
    def store(self) -> TrainingStore:
        if self._store is None:
            self._store = TrainingStore(self.path / "store.zarr")
        return self._store

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    @property
    def runs_dir(self) -> Path:
        return self.path / "runs"

    @property
    def results_dir(self) -> Path:
        return self.path / "results"

    # ------------------------------------------------------------------ slides
    @property
    def slides(self) -> list[dict]:
        return list(self.data.get("slides", []))

    def add_slide(
        self, path: str | Path, reference: bool | None = None, mpp: float | None = None
    ) -> dict:
        """Record a slide (absolute path and content fingerprint); a slide already listed is
        updated, so its fingerprint is the one of the file as it is now. ``reference``: its
        stain is (True) or is no longer (False) the lab's reference style, what a learned
        normaliser maps to (None: as recorded); ``mpp``: its µm/px where the file states none."""
        path = Path(path).resolve()
        old = next((s for s in self.slides if s.get("path") == str(path)), {})
        # A slide listed again keeps what the user said of it (reference style, µm/px).
        entry = {**old, "path": str(path), "hash": file_fingerprint(path)}
        if reference:
            entry["reference"] = True
        elif reference is not None:
            entry.pop("reference", None)
        if mpp is not None:
            entry["mpp"] = float(mpp)
        slides = [s for s in self.slides if s.get("path") != str(path)]
        self.data["slides"] = [*slides, entry]
        self.save()
        return entry

    # ------------------------------------------------------------------ models
    def current_model(self, kind: str = "nuclei") -> str | None:
        return self.data.get("models", {}).get(kind)

    def set_current_model(self, name: str, kind: str = "nuclei") -> None:
        """Use ``name`` for ``kind`` from now on; the one it replaces is remembered, so
        :meth:`rollback` can go back to it."""
        current = self.current_model(kind)
        if current == name:
            return
        history = self.data.setdefault("model_history", {}).setdefault(kind, [])
        if current is not None:
            history.append(current)
        self.data.setdefault("models", {})[kind] = name
        self.save()

    def rollback(self, kind: str = "nuclei") -> str | None:
        """Go back to the model used before the current one (None: the package default)."""
        history = self.data.setdefault("model_history", {}).setdefault(kind, [])
        previous = history.pop() if history else None
        models = self.data.setdefault("models", {})
        if previous is None:
            models.pop(kind, None)
        else:
            models[kind] = previous
        self.save()
        return previous

    # ------------------------------------------------------------------ labels
    def add_labels(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        mpp: float,
        *,
        source: str | Path | None = None,
        region_um: tuple[float, float, float, float] | None = None,
        level: int = 0,
        model: dict | None = None,
        annotator: str | None = None,
        replace: str | None = None,
        slide_mpp: float | None = None,
    ) -> Example:
        """Store a strong label (an accepted view, or an image with its instance mask) with its
        provenance: the source file and its content hash, the region (x0, y0, x1, y1 in µm) and
        level it was cut from, the µm/px, the method that produced the original labels, the
        annotator and the time. The same path for "Accept this view" and ``add-labels``.

        ``replace`` names an accepted view edited again: it keeps its id, split, first annotator
        and time, and the edit is recorded (``edited``, ``edited_by`` and the list ``edits``).
        ``slide_mpp`` is the slide's level-0 µm/px the region was measured with (so a view can be
        re-opened on the same pixels even if the slide's µm/px is changed later)."""
        provenance = {
            "annotator": annotator or _user(),
            "level": int(level),
            "original_method": model or {},
        }
        if slide_mpp is not None:
            provenance["slide_mpp"] = float(slide_mpp)
        if replace is not None:
            old = self.store.get(_example_id(replace, self.store))
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            edit = {"by": provenance["annotator"], "at": now, "nuclei_before": old.nuclei}
            before = old.provenance
            provenance.update(
                annotator=before.get("annotator", provenance["annotator"]),
                edited=now,
                edited_by=edit["by"],
                edits=[*before.get("edits", []), edit],
            )
            if "added" in before:
                provenance["added"] = before["added"]
            if not provenance["original_method"] and before.get("original_method"):
                provenance["original_method"] = before["original_method"]
        if source is not None:
            provenance["source"] = str(Path(source).resolve())
            provenance["source_hash"] = file_fingerprint(source)
        if region_um is not None:
            provenance["region_um"] = [float(v) for v in region_um]
        return self.store.append(
            image, labels, mpp, kind="strong", provenance=provenance, replace=replace
        )

    def add_label_files(self, image_path, labels_path, mpp: float | None = None):
        """``add-labels``: an image file (any size a single read allows; its µm/px from the file
        or ``mpp``) and its instance mask file (TIFF or PNG, 0 = background, same shape) as a
        strong label. Returns ``(example, warnings)``; a binary mask is split into connected
        components, with a warning (touching nuclei stay merged in it)."""
        with open_with_mpp(image_path, mpp) as slide:
            h, w = slide.shape
            if h * w > MAX_LABELLED_PIXELS:
                raise ProjectError(
                    f"{image_path}: {w} x {h} px is larger than a labelled example may be "
                    f"({MAX_LABELLED_PIXELS / 1e6:.0f} MP); cut the labelled region out first"
                )
            image = slide.read_region(0, 0, w, h, 0)
            image_mpp = slide.mpp
        labels, notes = read_label_file(labels_path)
        if labels.shape != image.shape[:2]:
            raise ProjectError(
                f"{labels_path}: the labels are {labels.shape[1]} x {labels.shape[0]} px but "
                f"{Path(image_path).name} is {w} x {h} px (width x height): they must match"
            )
        try:
            example = self.add_labels(image, labels, image_mpp, source=image_path)
        except ProjectError as exc:
            raise ProjectError(f"{labels_path}: {exc}") from None
        return example, notes

    def accepted_views(self) -> list[tuple[str, Example]]:
        """The strong labels (accepted views and added label files), newest first, each with a
        one-line description (:func:`describe_example`) for a list to choose from."""
        strong = self.store.examples(kind="strong")
        return [(describe_example(ex), ex) for ex in reversed(strong)]

    def remove_labels(self, example_id: str) -> Example:
        """Delete one example from the training store (whole, at once) and return what it was;
        ProjectError naming the id when the store holds none by that id."""
        example = self.store.get(_example_id(example_id, self.store))
        self.store.delete(example.id)
        return example

    def check_source(self, example: Example) -> None:
        """Raise ProjectError when an example's source file has changed since it was labelled
        (its content hash differs): its labels may no longer fit its pixels."""
        src = example.provenance.get("source")
        if not src:
            return
        now = file_fingerprint(src)
        if now != example.provenance.get("source_hash"):
            raise ProjectError(
                f"{src}: the file has changed since example {example.id} was labelled on it "
                "(its content hash differs); re-open the view and accept it again"
            )


def describe_example(example: Example) -> str:
    """One line for an example: source name, region (µm), nuclei, split, annotator, date (and
    the last edit), e.g. ``slide.svs  x 735-1010 y 1189-1400 µm  57 nuclei  train  ann
    2024-05-01 14:02``."""
    prov = example.provenance
    name = Path(prov["source"]).name if prov.get("source") else "(no source file)"
    parts = [name, region_text(example), f"{example.nuclei} nuclei", example.split]
    parts.append(str(prov.get("annotator", "?")))
    parts.append(_local_time(prov.get("added")))
    if prov.get("edited"):
        parts.append(f"edited {_local_time(prov['edited'])} by {prov.get('edited_by', '?')}")
    return "  ".join(p for p in parts if p)


def region_text(example: Example) -> str:
    """Where an example was cut from: ``x 735-1010 y 1189-1400 µm``, or the whole image."""
    region = example.provenance.get("region_um")
    if not region or len(region) != 4:
        h, w = example.shape
        return f"whole image {w} x {h} px"
    x0, y0, x1, y1 = region
    return f"x {x0:.0f}-{x1:.0f} y {y0:.0f}-{y1:.0f} µm"


def _local_time(stamp) -> str:
    if not stamp:
        return ""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(stamp)


def _example_id(example_id: str, store: TrainingStore) -> str:
    """``example_id`` when it can name an example (no path: ``..`` or ``/`` would reach outside
    the store), else ProjectError naming it."""
    text = str(example_id)
    if not text or text.startswith(".") or "/" in text or "\\" in text:
        raise ProjectError(f"{store.path}: no example {text!r}")
    return text


def open_with_mpp(path, mpp: float | None = None):
    """A slide or image opened with its µm/px (its file's, or ``mpp``), or ProjectError naming
    the file when it cannot be read or states none: labels and pseudo-labels need a scale."""
    from ..io import SlideError, open_slide

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no µm/px: said below, in the command's words
            slide = open_slide(path, mpp=mpp)
    except SlideError as exc:
        raise ProjectError(str(exc)) from None
    if slide.mpp is None:
        slide.close()
        raise ProjectError(
            f"{path}: the image states no µm/px; give it with --mpp (e.g. 0.25 for 40x, 0.5 "
            "for 20x)"
        )
    return slide


def read_label_file(path) -> tuple[np.ndarray, list[str]]:
    """An instance mask from a TIFF or PNG as uint32 ids and the warnings about it; ProjectError
    naming the file when it is unreadable or not instance labels. A binary mask becomes its
    connected components (with a warning)."""
    from scipy import ndimage as ndi

    from ..metrics import LabelMapError, check_label_map

    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except MemoryError:
        raise
    except Exception as exc:  # PIL's, tifffile's, zlib's: a damaged or foreign file, said once
        raise ProjectError(
            f"{path}: not a readable label image ({type(exc).__name__}: {exc})"
        ) from None
    try:
        labels, notes = check_label_map(arr)
    except LabelMapError as exc:
        raise ProjectError(f"{path}: {exc}") from None
    notes = [f"{path}: {n}" for n in notes]
    if labels.size and labels.max() == 1:
        labels = ndi.label(labels > 0)[0]
        notes.append(f"{path}: a binary mask: each connected region is taken as one nucleus")
    return labels.astype(np.uint32), notes


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
