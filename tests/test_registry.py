"""One registry for every method, one tile planner: a method added at run time (a Python class,
or a model card dropped in a folder) is a method in every face, and in-memory, whole-slide and
current-view segmentation cut the same pixels the same way."""

from __future__ import annotations

import collections
import json
import shutil

import numpy as np
import pytest
from _toy_method import DarkBlobs
from conftest import shared_slide

from napari_nucleiseg.methods import (
    MethodError,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL


@pytest.fixture
def toy():
    method = register_method(DarkBlobs())
    yield method
    unregister_method(method.name)


def test_a_method_registered_at_run_time_is_listed_and_found(toy):
    assert toy.name in method_names()
    assert get_method(toy.name) is toy
    assert method_names()[0] == DEFAULT_NUCLEI_MODEL  # the default stays first
    with pytest.raises(MethodError, match="exists already"):
        register_method(DarkBlobs())
    unregister_method(toy.name)
    with pytest.raises(MethodError, match="no nuclei method 'toy-dark-blobs'; available: nuclei"):
        get_method(toy.name)


def test_the_cli_runs_a_method_registered_at_run_time(toy, tmp_path, demo, capsys):
    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.io import open_slide

    image = tmp_path / "crop.png"
    from PIL import Image

    with open_slide(demo.slide) as slide:
        Image.fromarray(slide.read_region(1200, 1100, 600, 500, 0)).save(image)
    code = main(
        [
            "segment",
            str(image),
            "--out",
            str(tmp_path / "out"),
            "--mpp",
            "0.5",
            "--method",
            toy.name,
        ]
    )
    assert code == 0, capsys.readouterr()
    import tifffile

    with tifffile.TiffFile(tmp_path / "out" / "crop.tif") as tif:
        assert tif.asarray().max() > 10
        assert json.loads(tif.pages[0].description)["method"] == toy.name


def test_a_whole_slide_job_runs_a_method_registered_at_run_time(toy, tmp_path, demo):
    from napari_nucleiseg.wholeslide import segment_slide

    last = collections.deque(segment_slide(demo.slide, tmp_path, method=toy.name), maxlen=1)[0]
    assert last.finished and last.nuclei > 50
    meta = json.loads((last.store / ".zattrs").read_text())
    assert meta["nucleiseg"]["identity"]["method"]["method"] == toy.name


def test_a_model_card_in_the_user_folder_is_a_method(tmp_path, monkeypatch):
    """Adding a learned method is one card (+ its weights) in a folder: no code changes."""
    from napari_nucleiseg.models import MODELS_DIR, load_card

    folder = tmp_path / "models"
    folder.mkdir()
    card = json.loads((MODELS_DIR / "nuclei-unet-v3.json").read_text())
    card["name"] = "my-lab-unet"
    for key in ("weights", "onnx", "onnx_int8"):
        shutil.copy(MODELS_DIR / card[key], folder / card[key])
    (folder / "my-lab-unet.json").write_text(json.dumps(card))
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(folder))
    assert "my-lab-unet" in method_names()
    m = get_method("my-lab-unet")
    assert m.source == "user" and m.mpp == load_card("nuclei-unet-v3").mpp
    rgb = np.full((96, 96, 3), 235, np.uint8)
    rgb[30:50, 30:50] = (80, 50, 140)
    assert m.segment(rgb, 0.5).max() >= 1
    # A card by path works the same, and a project's models folder too.
    assert get_method(folder / "my-lab-unet.json").name == "my-lab-unet"
    project = tmp_path / "project"
    shutil.copytree(folder, project / "models")
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(tmp_path / "empty"))
    assert "my-lab-unet" not in method_names()
    assert get_method("my-lab-unet", project=project).source == "project"
    (project / "project.json").write_text(json.dumps({"models": {"nuclei": "my-lab-unet"}}))
    assert method_names(project=project)[0] == "my-lab-unet"  # the project's current model


def test_the_planner_cuts_any_input_on_the_method_grid():
    from napari_nucleiseg.tiling import plan_tiles

    v4 = get_method("nuclei-unet-v4")
    p20 = plan_tiles((2967, 2220), 0.499, v4)
    assert (p20.tile, p20.halo, p20.align) == (1120, 160, 32)  # 2 x 3 even tiles, not slivers
    p40 = plan_tiles((8000, 8000), 0.25, v4)
    assert p40.tile % 64 == 0 and p40.halo == 320 and p40.align == 64
    with pytest.raises(ValueError, match="positive"):
        plan_tiles((10, 10), float("nan"), v4)


@pytest.mark.real_slides
def test_segment_and_whole_slide_and_the_view_give_the_same_nuclei(tmp_path):
    """`segment` and `segment --whole-slide` on the CMU slide: identical labels (up to ids); the
    current view over a region: the same nuclei as the whole-slide result there."""
    import zarr

    from napari_nucleiseg.io import open_slide
    from napari_nucleiseg.metrics import score_image
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.segmentation.region import keep_centred, run, segment_region
    from napari_nucleiseg.wholeslide import segment_slide

    path = shared_slide("CMU-1-Small-Region.svs")
    slide = open_slide(path)
    h, w = slide.shape
    in_memory = segment_image(slide.read_region(0, 0, w, h, 0), slide.mpp)
    last = collections.deque(segment_slide(path, tmp_path), maxlen=1)[0]
    whole = np.asarray(zarr.open_array(str(last.store / "0"), mode="r"))
    assert last.nuclei == int(in_memory.max()) > 2500
    fg = (in_memory > 0) | (whole > 0)
    assert np.array_equal(in_memory > 0, whole > 0)
    pairs = np.unique(np.stack([in_memory[fg], whole[fg]]), axis=1)
    assert pairs.shape[1] == last.nuclei  # one whole-slide id per in-memory id, and back

    box = (600, 900, 1600, 1900)
    view = run(segment_region(slide, box))
    ox, oy = (int(round(v)) for v in view.plan.origin)
    vh, vw = view.labels.shape
    padded = np.zeros((h + 2 * vh, w + 2 * vw), whole.dtype)
    padded[vh : vh + h, vw : vw + w] = whole
    there = padded[oy + vh : oy + 2 * vh, ox + vw : ox + 2 * vw]
    there = keep_centred(there, (box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy))
    scores = score_image(there, view.labels)
    assert view.count > 1000 and scores.f1 >= 0.995 and scores.aji >= 0.99, scores


def test_lower_layers_import_nothing_above_them():
    """``models`` and ``tiling`` sit under ``methods`` and ``segmentation``: a cycle hidden by
    function-level imports is still a cycle, so every import is read, at any depth."""
    import ast
    from pathlib import Path

    import napari_nucleiseg

    pkg = Path(napari_nucleiseg.__file__).parent
    above = {"methods", "segmentation", "wholeslide", "training", "cli", "_napari", "layers"}
    offenders = []
    for layer in ("models", "tiling"):
        for py in (pkg / layer).glob("*.py"):
            for node in ast.walk(ast.parse(py.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 2:
                    top = (node.module or "").split(".")[0]
                    if top in above:
                        offenders.append(f"{layer}/{py.name}: from {'.' * node.level}{node.module}")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "napari_nucleiseg."
                ):
                    if node.module.split(".")[1] in above:
                        offenders.append(f"{layer}/{py.name}: from {node.module}")
    assert not offenders, offenders


def test_a_users_card_with_a_shipped_name_is_the_one_listed(tmp_path, monkeypatch, capsys):
    """Was: `models list` showed the shipped card's version and AJI on the row of the user's
    card that replaces it by name (find_card's choice), marked `user`."""
    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.models import MODELS_DIR, find_card, list_cards

    mine = tmp_path / "mine"
    mine.mkdir()
    card = json.loads((MODELS_DIR / f"{DEFAULT_NUCLEI_MODEL}.json").read_text())
    for key in ("weights", "onnx", "onnx_int8"):
        if card.get(key):
            shutil.copy(MODELS_DIR / card[key], mine / card[key])
    card["version"] = "0.0.2"
    (mine / f"{DEFAULT_NUCLEI_MODEL}.json").write_text(json.dumps(card))
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(mine))
    assert find_card(DEFAULT_NUCLEI_MODEL) == (mine / f"{DEFAULT_NUCLEI_MODEL}.json", "user")
    listed = {c.name: c for c in list_cards(kind="nuclei")}
    assert listed[DEFAULT_NUCLEI_MODEL].version == "0.0.2"
    assert main(["models", "list"]) == 0
    (row,) = [r for r in capsys.readouterr().out.splitlines() if f" {DEFAULT_NUCLEI_MODEL} " in r]
    words = row.split()
    assert words[words.index(DEFAULT_NUCLEI_MODEL) + 1 :][:2] == ["0.0.2", "user"], row
    assert "MoNuSeg test" in row  # where its AJI was measured: a project's is not comparable
