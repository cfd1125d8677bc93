"""A project folder and its training store: examples stored whole with their provenance, bad
labels refused with one clear message, and a process killed while appending never loses or
corrupts an accepted correction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
from napari_nucleiseg.project import Project, ProjectError, TrainingStore


def _example(seed: int, size: int = 300):
    """A deterministic image and instance mask (a few square nuclei)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    labels = np.zeros((size, size), np.uint32)
    for k in range(1, 6):
        y, x = rng.integers(0, size - 20, 2)
        labels[y : y + 12, x : x + 12] = k
    return image, labels


def test_a_project_is_made_once_and_opened_after(tmp_path):
    project = Project.init(tmp_path / "p")
    for sub in ("models", "runs", "results", "store.zarr"):
        assert (tmp_path / "p" / sub).is_dir()
    project.set_current_model("my-model-v2")
    again = Project.init(tmp_path / "p")  # an existing project is opened, not overwritten
    assert again.current_model() == "my-model-v2"
    from napari_nucleiseg.models.registry import project_current_model

    assert project_current_model(tmp_path / "p") == "my-model-v2"  # what the registry reads


def test_a_project_is_not_made_over_other_things(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ProjectError, match="not empty"):
        Project.init(tmp_path / "busy")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ProjectError, match="in the way"):
        Project.init(tmp_path / "afile")
    with pytest.raises(ProjectError, match="not a napari-nucleiseg project"):
        Project(tmp_path / "busy")
    p = Project.init(tmp_path / "new")
    data = json.loads(p.file.read_text())
    data["nucleiseg_project"] = 99
    p.file.write_text(json.dumps(data))
    with pytest.raises(ProjectError, match="newer napari-nucleiseg"):
        Project(tmp_path / "new")


def test_labels_are_stored_whole_with_their_provenance(tmp_path):
    project = Project.init(tmp_path / "p")
    src = tmp_path / "slide.bin"
    src.write_bytes(b"pixels" * 1000)
    image, labels = _example(1)
    ex = project.add_labels(
        image,
        labels,
        0.5,
        source=src,
        region_um=(10, 20, 160, 170),
        model={"method": "nuclei-unet-v4", "version": "4.0.0"},
        annotator="ann",
    )
    (back,) = project.store.examples()
    assert back.id == ex.id and back.kind == "strong" and back.nuclei == 5
    assert np.array_equal(back.image(), image) and np.array_equal(back.labels(), labels)
    prov = back.provenance
    assert prov["annotator"] == "ann" and prov["region_um"] == [10, 20, 160, 170]
    assert prov["source_hash"].startswith("sha256:") and prov["original_method"]["version"]
    project.check_source(back)  # unchanged: fine
    src.write_bytes(b"other" * 1000)
    with pytest.raises(ProjectError, match="has changed since"):
        project.check_source(back)


def test_strong_labels_split_into_train_and_held_out(tmp_path):
    store = TrainingStore(tmp_path / "s.zarr", heldout_every=5)
    splits = [store.append(*_example(k), 0.5).split for k in range(10)]
    assert splits[1] == "heldout" and splits.count("heldout") == 2
    assert len(store.examples(split="train")) == 8
    pseudo = store.append(*_example(20), 0.5, kind="pseudo", confidence=np.ones((300, 300)))
    assert pseudo.split == "train" and pseudo.confidence().dtype == np.float16


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((300, 300), np.uint32), "no nucleus"),
        (np.ones((200, 300), np.uint32), "must match"),
        (np.ones((300, 300), np.float32), "non-negative integers"),
        (-np.ones((300, 300), np.int32), "non-negative integers"),
    ],
)
def test_labels_that_cannot_train_are_refused_and_nothing_is_stored(tmp_path, labels, message):
    store = TrainingStore(tmp_path / "s.zarr")
    image, _ = _example(0)
    with pytest.raises(ProjectError, match=message):
        store.append(image, labels, 0.5)
    assert store.examples() == [] and os.listdir(tmp_path / "s.zarr" / "examples") == []


def test_an_edited_example_replaces_the_old_and_a_delete_is_whole(tmp_path):
    store = TrainingStore(tmp_path / "s.zarr")
    first = store.append(*_example(1), 0.5)
    image, labels = _example(2)
    edited = store.append(image, labels, 0.5, replace=first.id)
    assert edited.id == first.id and np.array_equal(store.get(first.id).labels(), labels)
    # A crash between the two renames of a replace: the old example is back on the next open.
    ex_dir = tmp_path / "s.zarr" / "examples"
    os.replace(ex_dir / first.id, ex_dir / f".old-{first.id}")
    assert store.examples() == []
    (restored,) = TrainingStore(tmp_path / "s.zarr").examples()
    assert restored.id == first.id and np.array_equal(restored.labels(), labels)
    store.delete(first.id)
    assert store.examples() == [] and os.listdir(ex_dir) == []
    with pytest.raises(ProjectError, match="no example"):
        store.delete(first.id)


def test_a_store_written_by_a_newer_version_is_refused(tmp_path):
    TrainingStore(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / ".zattrs").write_text(json.dumps({"nucleiseg_training_store": 7}))
    with pytest.raises(ProjectError, match="newer"):
        TrainingStore(tmp_path / "s.zarr")


_APPENDER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_project import _example
    from napari_nucleiseg.project import TrainingStore

    store = TrainingStore({path!r})
    for k in range(1000):
        ex = store.append(*_example(k, size=512), 0.5, provenance={{"seed": k}})
        print(ex.id, k, flush=True)
    """
)


@pytest.mark.parametrize("after", [1, 3, 6])
def test_a_kill_while_appending_loses_no_accepted_example(tmp_path, after):
    """SIGKILL at a random point of an append: every example the process had reported stored is
    there and intact, the one being written is not there at all, and its leftovers are cleaned
    when the store is opened again."""
    path = str(tmp_path / "s.zarr")
    code = _APPENDER.format(tests=os.path.dirname(__file__), path=path)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    done = []
    for line in proc.stdout:
        done.append(line.split())
        if len(done) >= after:
            break
    # Kill in the middle of the next append (a 512² example takes tens of milliseconds).
    rng = np.random.default_rng(after)
    import time

    time.sleep(float(rng.uniform(0.0, 0.05)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done += [line.split() for line in proc.stdout.read().splitlines()]
    store = TrainingStore(path)
    found = {ex.id: ex for ex in store.examples()}
    for example_id, k in done:  # every accepted example, intact
        image, labels = _example(int(k), size=512)
        ex = found[example_id]
        assert ex.provenance["seed"] == int(k)
        assert np.array_equal(ex.image(), image) and np.array_equal(ex.labels(), labels)
    assert len(found) in (len(done), len(done) + 1)  # at most the one renamed before its line
    leftovers = [n for n in os.listdir(os.path.join(path, "examples")) if n.startswith(".")]
    assert leftovers == []


def test_the_cli_makes_a_project_and_adds_labels_in_one_line_each(tmp_path, capsys):
    import tifffile
    from PIL import Image

    from napari_nucleiseg.cli.main import main

    image, labels = _example(3)
    Image.fromarray(image).save(tmp_path / "img.png")
    tifffile.imwrite(tmp_path / "img_labels.tif", labels)
    tifffile.imwrite(tmp_path / "wrong.tif", labels[:100])
    Image.fromarray((labels > 0).astype(np.uint8)).save(tmp_path / "binary.png")
    p = str(tmp_path / "proj")

    assert main(["project", "init", p]) == 0
    args = ["project", "add-labels", p, str(tmp_path / "img.png"), str(tmp_path / "img_labels.tif")]
    assert main(args) == 1  # a PNG states no µm/px
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "img.png" in err and "--mpp" in err
    assert main([*args, "--mpp", "0.5"]) == 0
    assert "stored strong-" in capsys.readouterr().out
    assert main([*args[:-1], str(tmp_path / "wrong.tif"), "--mpp", "0.5"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wrong.tif" in err and "must match" in err
    assert main([*args[:-1], str(tmp_path / "binary.png"), "--mpp", "0.5"]) == 0
    assert "connected region" in capsys.readouterr().err
    (first, second) = Project(p).store.examples()
    assert first.nuclei == 5 and np.array_equal(first.labels(), labels)
    assert first.provenance["source_hash"].startswith("sha256:")
    assert main(["project", "add-labels", str(tmp_path / "nothing"), *args[3:]]) == 1
    assert "not a napari-nucleiseg project" in capsys.readouterr().err


def test_a_projects_models_are_listed_used_for_segment_and_rolled_back(tmp_path, capsys):
    """A model in the project's models/ (here: the shipped v3 under another name) is listed,
    becomes the project's model with `models use`, is what `segment --project` runs, and
    `models rollback` goes back to the package default."""
    import shutil

    import tifffile
    from PIL import Image

    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.models.registry import MODELS_DIR

    p = tmp_path / "proj"
    assert main(["project", "init", str(p)]) == 0
    card = json.loads((MODELS_DIR / "nuclei-unet-v3.json").read_text())
    for key in ("weights", "onnx", "onnx_int8"):
        shutil.copy(MODELS_DIR / card[key], p / "models" / card[key])
    card["name"] = "lab-model"
    (p / "models" / "lab-model.json").write_text(json.dumps(card))
    capsys.readouterr()

    assert main(["models", "list", "--project", str(p)]) == 0
    listed = capsys.readouterr().out
    (row,) = [ln for ln in listed.splitlines() if "lab-model" in ln]
    assert "project" in row and not row.startswith("*")
    assert main(["models", "use", "lab-model"]) == 1  # which project?
    assert "--project" in capsys.readouterr().err
    assert main(["models", "use", "no-such-model", "--project", str(p)]) == 1
    assert "no-such-model" in capsys.readouterr().err
    assert main(["models", "use", "lab-model", "--project", str(p)]) == 0
    assert Project(p).current_model() == "lab-model"
    assert main(["models", "list", "--project", str(p)]) == 0
    assert any(ln.startswith("* lab-model") for ln in capsys.readouterr().out.splitlines())

    image, _ = _example(4, size=256)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "x.png"), "--out", str(out), "--mpp", "0.5"]
    assert main([*args, "--project", str(p)]) == 0
    with tifffile.TiffFile(out / "x.tif") as tif:
        assert json.loads(tif.pages[0].description)["model"] == "lab-model"

    assert main(["models", "rollback", "--project", str(p)]) == 0
    assert f"{DEFAULT_NUCLEI_MODEL} (the package default)" in capsys.readouterr().out
    assert Project(p).current_model() is None
    # Once more: nothing left to roll back, said so (was: "is now …", exit 0).
    assert main(["models", "rollback", "--project", str(p)]) == 1
    assert "nothing to roll back" in capsys.readouterr().err


def test_accepted_views_are_listed_edited_in_place_and_removed(tmp_path, capsys):
    from napari_nucleiseg.cli.main import main

    project = Project.init(tmp_path / "p")
    image, labels = _example(5)
    source = tmp_path / "slide.bin"
    source.write_bytes(b"pixels")
    first = project.add_labels(
        image, labels, 0.5, source=source, region_um=(10, 20, 160, 170), annotator="ann"
    )
    second = project.add_labels(image, labels, 0.5, annotator="bob")
    views = project.accepted_views()
    assert [ex.id for _, ex in views] == [second.id, first.id]  # newest first
    line = views[1][0]
    for part in ("slide.bin", "x 10-160 y 20-170 µm", "5 nuclei", first.split, "ann"):
        assert part in line
    assert "whole image 300 x 300 px" in views[0][0]

    # Edited again (one nucleus fewer): same id and split, the edit recorded, the first
    # annotator and time kept.
    fewer = np.where(labels == 1, 0, labels)
    edited = project.add_labels(
        image, fewer, 0.5, source=source, region_um=(10, 20, 160, 170), annotator="cy",
        replace=first.id,
    )  # fmt: skip
    assert (edited.id, edited.split, edited.nuclei) == (first.id, first.split, 4)
    prov = edited.provenance
    assert prov["annotator"] == "ann" and prov["added"] == first.provenance["added"]
    assert prov["edited_by"] == "cy" and prov["edits"][0]["nuclei_before"] == 5
    assert "edited" in project.accepted_views()[1][0]
    assert len(project.store.examples()) == 2

    # The CLI lists them and removes one; a missing id is one line naming it, exit 1.
    p = str(tmp_path / "p")
    assert main(["project", "labels", p]) == 0
    out = capsys.readouterr().out
    assert first.id in out and second.id in out and "strong/" in out and "slide.bin" in out
    assert main(["project", "remove-labels", p, first.id]) == 0
    assert f"removed {first.id}" in capsys.readouterr().out
    assert [ex.id for ex in Project(p).store.examples()] == [second.id]
    for missing in (first.id, "../store.zarr", ".."):
        assert main(["project", "remove-labels", p, missing]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and repr(missing) in err
    assert (tmp_path / "p" / "store.zarr").is_dir() and len(Project(p).store.examples()) == 1
    with pytest.raises(ProjectError, match="no example"):
        project.remove_labels(first.id)


def test_learned_normalisers_are_listed_and_rolled_back_like_the_other_models(tmp_path, capsys):
    """Was: `models list` never showed a normaliser and `rollback --kind normaliser` was an
    invalid choice, though `models use` switched one."""
    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.methods.normaliser import DEFAULT_NORMALISER_MODEL

    p = str(Project.init(tmp_path / "p").path)
    assert main(["models", "list", "--project", p]) == 0
    listed = capsys.readouterr().out.split("\n\n")
    (section,) = [s for s in listed if s.lstrip().startswith("normaliser")]
    assert f"* {DEFAULT_NORMALISER_MODEL} " in section
    assert main(["models", "use", DEFAULT_NORMALISER_MODEL, "--project", p]) == 0
    assert Project(p).current_model("normaliser") == DEFAULT_NORMALISER_MODEL
    capsys.readouterr()
    assert main(["models", "rollback", "--kind", "normaliser", "--project", p]) == 0
    assert "normaliser model is now" in capsys.readouterr().out
    assert Project(p).current_model("normaliser") is None
