"""The training store of a project: labelled examples, each an image with its masks and where it
came from, packed together, compressed and chunked (reference 000 §4.1).

Layout (a folder; zarr v2 arrays, so any zarr reader opens an example)::

    store.zarr/
      .zattrs                   {"nucleiseg_training_store": FORMAT}
      examples/<id>/image       (H, W, 3) uint8 RGB at the example's µm/px
      examples/<id>/labels      (H, W) uint32 instance mask, 0 = background; for a region
                                label (tissue classes), 1 + the index of the pixel's tag in
                                the example's ``provenance["tags"]``, 0 = outside every outline
      examples/<id>/confidence  (H, W) float16 per-pixel confidence (pseudo-labels only)
      examples/<id>/.zattrs     kind, split, µm/px, provenance (see :class:`Example`)

Why a folder per example, renamed into place: an append writes the whole example under a hidden
temporary name and renames it to ``examples/<id>`` last. A rename is atomic, so a crash or a kill
leaves either the whole example or none of it, and never touches the examples already there; the
list of examples is the folder's listing, so there is no index to corrupt. Leftover temporaries
are removed when the store is next opened for writing. Replacing an example (an accepted view
edited again) renames the old one aside first and restores it if the new one never arrived.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import ProjectError

#: Version of this layout; a store written by a newer version is refused, not misread.
FORMAT = 1
#: ``strong`` and ``pseudo``: nuclei (instance masks); ``region``: tissue tags from outlines or
#: labelled tiles, for the tissue classifiers.
KINDS = ("strong", "pseudo", "region")
SPLITS = ("train", "heldout")
#: Chunk edge (pixels) of the stored arrays: a training patch reads a few chunks, not an image.
CHUNK = 256
_TMP, _OLD = ".tmp-", ".old-"


@dataclass
class Example:
    """One labelled example. ``provenance`` holds where it came from: for a correction, the slide
    path and content hash, level, region in µm, the model version that produced the original,
    the annotator and the time; for a pseudo-label, the teacher's name and version and the mean
    confidence."""

    id: str
    kind: str
    split: str
    mpp: float
    shape: tuple[int, int]
    nuclei: int
    provenance: dict = field(default_factory=dict)
    path: Path | None = None

    def image(self) -> np.ndarray:
        return np.asarray(_open_array(self.path / "image"))

    def labels(self) -> np.ndarray:
        return np.asarray(_open_array(self.path / "labels"))

    def confidence(self) -> np.ndarray | None:
        p = self.path / "confidence"
        return np.asarray(_open_array(p)) if p.exists() else None


def _open_array(path: Path):
    import zarr

    return zarr.open_array(str(path), mode="r", zarr_format=2)


def _codec():
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)


class TrainingStore:
    """A project's training store (see the module docstring). ``TrainingStore(path)`` opens it,
    creating it if missing; ``heldout_every`` strong labels, one goes to the held-out split."""

    def __init__(self, path: str | Path, heldout_every: int = 5, create: bool = True):
        self.path = Path(path)
        self.heldout_every = int(heldout_every)
        attrs = self.path / ".zattrs"
        if not attrs.exists():
            if not create:
                raise ProjectError(f"{self.path}: no training store here")
            self._create()
        try:
            fmt = json.loads(attrs.read_text()).get("nucleiseg_training_store")
        except (OSError, ValueError, AttributeError) as exc:
            raise ProjectError(
                f"{attrs}: the training store's header is unreadable ({exc})"
            ) from exc
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise ProjectError(
                f"{self.path}: training store format {fmt!r} was written by a newer "
                f"napari-nucleiseg (this one reads up to {FORMAT}); upgrade to use it"
            )
        self._recover()

    # ------------------------------------------------------------------ layout
    def _create(self) -> None:
        (self.path / "examples").mkdir(parents=True, exist_ok=True)
        (self.path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        tmp = self.path / f"{_TMP}zattrs"
        tmp.write_text(json.dumps({"nucleiseg_training_store": FORMAT}))
        os.replace(tmp, self.path / ".zattrs")

    def _recover(self) -> None:
        """Finish or undo what a killed process left: an example renamed aside but never replaced
        comes back; half-written temporaries go."""
        root = self.path / "examples"
        for entry in root.iterdir() if root.exists() else ():
            if entry.name.startswith(_OLD):
                target = root / entry.name[len(_OLD) :]
                if target.exists():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    os.replace(entry, target)
            elif entry.name.startswith(_TMP):
                shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def examples(self, kind: str | None = None, split: str | None = None) -> list[Example]:
        """Every complete example (oldest first), optionally of one kind and split."""
        root = self.path / "examples"
        out = []
        for entry in sorted(root.iterdir()) if root.exists() else ():
            if entry.name.startswith("."):
                continue
            ex = self._read(entry)
            if (kind is None or ex.kind == kind) and (split is None or ex.split == split):
                out.append(ex)
        return out

    def get(self, example_id: str) -> Example:
        entry = self.path / "examples" / example_id
        if not (entry / ".zattrs").exists():
            raise ProjectError(f"{self.path}: no example {example_id!r}")
        return self._read(entry)

    def _read(self, entry: Path) -> Example:
        try:
            a = json.loads((entry / ".zattrs").read_text())
            return Example(
                id=entry.name,
                kind=a["kind"],
                split=a["split"],
                mpp=float(a["mpp"]),
                shape=tuple(a["shape"]),
                nuclei=int(a["nuclei"]),
                provenance=a.get("provenance", {}),
                path=entry,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProjectError(f"{entry}: damaged example ({exc})") from exc

    # ------------------------------------------------------------------ writing
    def append(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        mpp: float,
        *,
        kind: str = "strong",
        provenance: dict | None = None,
        confidence: np.ndarray | None = None,
        split: str | None = None,
        replace: str | None = None,
    ) -> Example:
        """Add an example (atomically: whole or not at all) and return it. ``replace`` names an
        example this one supersedes (an accepted view edited again); it keeps its id and split.

        Raises ProjectError for labels that cannot train anything: a shape other than the
        image's, no nucleus at all, a kind or µm/px that makes no sense."""
        image, labels = np.asarray(image), np.asarray(labels)
        if kind not in KINDS:
            raise ProjectError(f"unknown example kind {kind!r} (one of {', '.join(KINDS)})")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ProjectError(
                f"the image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}"
            )
        if labels.shape != image.shape[:2]:
            raise ProjectError(
                f"the labels are {labels.shape[1]} x {labels.shape[0]} px but the image is "
                f"{image.shape[1]} x {image.shape[0]} px (width x height): they must match"
            )
        if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
            raise ProjectError(
                f"the labels must be non-negative integers (an instance mask), got {labels.dtype}"
            )
        nuclei = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
        if nuclei == 0 and kind == "region":
            raise ProjectError("the region holds no tagged pixel: nothing to learn")
        if nuclei == 0:
            raise ProjectError("the labels hold no nucleus (all background): nothing to learn")
        if kind == "region":
            tags = (provenance or {}).get("tags")
            if not isinstance(tags, list) or int(labels.max()) > len(tags):
                raise ProjectError("a region label needs provenance['tags'] naming every value")
        if not (0.01 < float(mpp) < 100):
            raise ProjectError(f"implausible µm/px {mpp!r} for a labelled example")
        if confidence is not None and np.shape(confidence) != labels.shape:
            raise ProjectError("the confidence map must have the labels' shape")
        if replace is not None:
            old = self.get(replace)
            example_id, split = old.id, old.split
        else:
            now = datetime.now(timezone.utc)
            example_id = f"{kind}-{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}"
            split = split or self._next_split(kind)
        if split not in SPLITS:
            raise ProjectError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
        attrs = {
            "kind": kind,
            "split": split,
            "mpp": float(mpp),
            "shape": list(labels.shape),
            "nuclei": int(nuclei),
            "provenance": {
                "added": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **(provenance or {}),
            },
        }
        tmp = self.path / "examples" / f"{_TMP}{example_id}-{uuid.uuid4().hex[:6]}"
        try:
            self._write(tmp, image, labels.astype(np.uint32), confidence, attrs)
            target = self.path / "examples" / example_id
            if replace is not None:
                aside = self.path / "examples" / f"{_OLD}{example_id}"
                os.replace(target, aside)
                os.replace(tmp, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(example_id)

    def delete(self, example_id: str) -> None:
        """Remove an example: renamed aside at once (gone for every reader), then deleted."""
        entry = self.path / "examples" / example_id
        if not entry.exists():
            raise ProjectError(f"{self.path}: no example {example_id!r}")
        aside = self.path / "examples" / f"{_TMP}deleted-{example_id}"
        os.replace(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def _next_split(self, kind: str) -> str:
        """Strong labels: every ``heldout_every``-th goes to the held-out split (the 2nd, then
        one in ``heldout_every``), so the student is measured on corrections it never trained
        on from the second one on; pseudo-labels always train."""
        if kind != "strong" or self.heldout_every <= 0:
            return "train"
        strong = self.examples(kind="strong")
        held = sum(ex.split == "heldout" for ex in strong)
        if len(strong) + 1 >= 2 and held * self.heldout_every < len(strong) + 1:
            return "heldout"
        return "train"

    @staticmethod
    def _write(folder: Path, image, labels, confidence, attrs) -> None:
        import zarr

        group = zarr.open_group(str(folder), mode="w-", zarr_format=2)
        h, w = labels.shape
        chunks = (min(CHUNK, h), min(CHUNK, w))
        codec = _codec()
        arrays = [("image", image, (*chunks, 3)), ("labels", labels, chunks)]
        if confidence is not None:
            arrays.append(("confidence", np.asarray(confidence, np.float16), chunks))
        for name, data, ch in arrays:
            arr = group.create_array(
                name, shape=data.shape, dtype=data.dtype, chunks=ch, compressors=codec
            )
            arr[...] = data
        group.attrs.update(attrs)
        _fsync_tree(folder)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk before it is renamed into place: after a power cut
    the rename must not point at data that never reached the disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
