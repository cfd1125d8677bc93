"""The learned stain normaliser (issue 18) as users meet it: a registry method, ONNX without
PyTorch, blocks and lazy chunks without seams, the CLI, and training on a project (teacher,
cancel and resume, student with pseudo-labels, promotion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_nucleiseg.demo.render import render_he

pytest.importorskip("torch")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _tiny_normaliser import export_tiny_normaliser, export_tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    return export_tiny_normaliser(tmp_path_factory.mktemp("normaliser"))


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    rgb, _ = render_he((360, 420), 0.5, seed=3, coverage=0.8, nuclei_per_mm2=3000)
    return rgb


def _load(card, **kw):
    from napari_nucleiseg.stain.learned_normaliser import load_learned

    return load_learned(str(card), **kw)


def test_it_is_a_registry_method_and_runs_without_pytorch(card, field, tmp_path):
    np.save(tmp_path / "field.npy", field)
    code = f"""
import sys, numpy as np
from napari_nucleiseg.stain.learned_normaliser import load_learned
n = load_learned({str(card)!r})
out = n.transform(np.load({str(tmp_path / "field.npy")!r}))
print(n.describe()["runtime"], out.dtype, out.shape, "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["onnx-fp32", "uint8", "(360,", "420,", "3)", "False"]


def test_the_onnx_twin_matches_the_pytorch_generator(card, field):
    onnx = _load(card).adapt(field)
    torch_run = _load(card, runtime="torch").adapt(field)
    a, b = onnx.transform(field).astype(int), torch_run.transform(field).astype(int)
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - field.astype(int)).mean() > 3  # it does change colours


def test_blocks_and_lazy_chunks_join_without_seams(card, field, monkeypatch):
    import dask.array as da

    from napari_nucleiseg.stain import learned_normaliser as ln
    from napari_nucleiseg.stain.lazy import normalise_levels

    n = _load(card).adapt(field)
    whole = n.transform(field).astype(int)
    monkeypatch.setattr(ln, "BLOCK_PX", 128)  # many blocks, each with its context
    blocks = n.transform(field).astype(int)
    assert np.abs(blocks - whole).max() <= 1
    monkeypatch.undo()
    lazy = normalise_levels([da.from_array(field, chunks=(100, 150, 3))], n)[0].compute()
    assert np.abs(lazy.astype(int) - whole).max() <= 1


def test_each_slide_is_measured_once_and_a_blank_field_is_no_error(card, field):
    n = _load(card)
    assert not n.adapted
    adapted = n.adapt(field)
    assert adapted.adapted and adapted.token() != n.token()
    assert np.array_equal(adapted.transform(field), n.transform(field))  # self-adapted alike
    blank = np.full((64, 64, 3), 245, np.uint8)
    out = n.transform(blank)  # too little tissue to measure: the neutral vectors, no error
    assert out.shape == blank.shape


def test_a_finer_input_keeps_its_detail_and_gets_the_models_colour_change(card, field):
    from PIL import Image

    n = _load(card).adapt(field)
    fine = np.asarray(Image.fromarray(field).resize((840, 720), Image.Resampling.BILINEAR))
    out_fine = n.transform(fine, mpp=0.25)
    assert out_fine.shape == fine.shape
    back = np.asarray(Image.fromarray(out_fine).resize((420, 360), Image.Resampling.BOX))
    assert np.abs(back.astype(int) - n.transform(field, mpp=0.5).astype(int)).mean() < 4


#: A style far from the tiny network's output (darker, redder, with less spread of colour).
STYLE_LAB = [50.0, 25.0, -5.0, 14.0, 12.0, 9.0]


@pytest.fixture(scope="module")
def calibrated_card(tmp_path_factory) -> Path:
    return export_tiny_normaliser(
        tmp_path_factory.mktemp("calibrated"), "tiny-stain-lab", reference_lab=STYLE_LAB
    )


def test_colour_calibration_pulls_the_output_its_share_of_the_way_to_the_style(
    calibrated_card, card, field
):
    from napari_nucleiseg.metrics.colour import lab_distance, lab_stats

    def distance(strength):
        n = _load(calibrated_card, calibration=strength).adapt(field)
        return lab_distance(lab_stats(n.transform(field)), STYLE_LAB), n

    d0, network_only = distance(0.0)
    d_half, half = distance(0.5)
    d1, _ = distance(1.0)
    assert d0 > 10  # the tiny network leaves the colours far from the style
    assert d1 < 1.5  # matched, up to uint8 rounding and clipping
    assert 0.35 * d0 < d_half < 0.65 * d0
    assert network_only.describe()["calibration"] is None
    record = half.describe()["calibration"]
    assert record["strength"] == 0.5 and len(record["scale"]) == len(record["shift"]) == 3
    # The default is the documented one; a card without the style's Lab statistics (made
    # before them) runs the network alone; a strength outside 0-1 is refused.
    assert _load(calibrated_card).calibration == 0.5
    blank = np.full((64, 64, 3), 245, np.uint8)  # glass: no colour to pull, none pulled
    assert _load(calibrated_card).adapt(blank).lab_map is None
    assert _load(card).calibration == 0.0 and _load(card).adapt(field).lab_map is None
    from napari_nucleiseg.stain import StainError

    with pytest.raises(StainError, match="between 0 and 1"):
        _load(calibrated_card, calibration=1.5)


def test_another_pull_needs_no_network_pass_and_a_large_image_is_sampled_all_over(
    calibrated_card, field
):
    import pickle

    half = _load(calibrated_card).adapt(field)
    full = half.with_calibration(1.0)
    # The same map as measuring again at that strength, from what was measured (no network).
    again = _load(calibrated_card, calibration=1.0).adapt(field)
    assert np.allclose(full.lab_map[0], again.lab_map[0]) and full.token() == again.token()
    assert half.with_calibration(0.0).lab_map is None
    # Pickled (a dask.distributed worker) it gives the same colours.
    assert np.array_equal(pickle.loads(pickle.dumps(full)).transform(field), full.transform(field))
    # A single image larger than the budget whose top-left 1 MP is glass: measured on a grid
    # over all of it, so the tissue along its bottom still sets the pull.
    big = np.full((1400, 1400, 3), 245, np.uint8)
    big[1050:1410, :420] = field[:350]
    big[1050:1410, 420:840] = field[:350]
    assert _load(calibrated_card).adapt(big).lab_map is not None


def test_a_calibrated_slide_joins_chunks_without_seams_and_its_layer_record_restores_it(
    calibrated_card, field
):
    import dask.array as da

    from napari_nucleiseg.layers import NormalisedStain
    from napari_nucleiseg.stain.lazy import adapt_to_levels, normalise_levels

    levels = [da.from_array(field, chunks=(100, 150, 3))]
    n = adapt_to_levels(_load(calibrated_card), levels, mpp=0.5)
    assert n.lab_map is not None  # the sample's blocks went through the network
    whole = n.transform(field).astype(int)
    lazy = normalise_levels(levels, n)[0].compute()
    assert np.abs(lazy.astype(int) - whole).max() <= 1
    again = NormalisedStain.from_metadata(
        json.loads(json.dumps(NormalisedStain.of(n, "slide.svs").to_metadata()))
    ).normaliser()
    assert again.token() == n.token()
    assert np.array_equal(again.transform(field), n.transform(field))


def test_normalize_cli_sets_the_calibration_and_refuses_it_where_it_means_nothing(
    calibrated_card, field, tmp_path, capsys
):
    from PIL import Image

    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.metrics.colour import lab_distance, lab_stats

    src = tmp_path / "field.png"
    Image.fromarray(field).save(src)
    common = ["normalize", str(src), "--mpp", "0.5", "--out"]
    learned = ["--method", "learned", "--model", str(calibrated_card)]
    assert main([*common, str(tmp_path / "full.png"), *learned, "--calibration", "1"]) == 0
    written = Image.open(tmp_path / "full.png")
    assert json.loads(written.text["nucleiseg"])["stain"]["calibration"]["strength"] == 1.0
    assert lab_distance(lab_stats(np.asarray(written)), STYLE_LAB) < 1.5
    assert main([*common, str(tmp_path / "none.png"), *learned, "--calibration", "0"]) == 0
    assert (
        json.loads(Image.open(tmp_path / "none.png").text["nucleiseg"])["stain"]["calibration"]
        is None
    )
    capsys.readouterr()
    code = main(
        [*common, str(tmp_path / "m.png"), "--method", "macenko", "--target", str(src),
         "--calibration", "0.5"]
    )  # fmt: skip
    assert code == 1 and not (tmp_path / "m.png").exists()
    assert "--calibration is for --method learned" in capsys.readouterr().err
    code = main(  # was: the model silently ignored, macenko run
        [*common, str(tmp_path / "m.png"), "--method", "macenko", "--target", str(src),
         "--model", "stain-cycle-v1"]
    )  # fmt: skip
    assert code == 1 and not (tmp_path / "m.png").exists()
    assert "--model is for --method learned" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*common, str(tmp_path / "x.png"), *learned, "--calibration", "2"])
    assert exc.value.code == 2 and "between 0 and 1" in capsys.readouterr().err


def test_a_card_without_a_reference_stain_is_refused_naming_the_field(card, tmp_path):
    from napari_nucleiseg.models import WeightsError, load_card

    data = json.loads(card.read_text())
    del data["generator"]["reference_stain"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="reference_stain"):
        load_card(bad)
    for lab in ([50, 25, -5, 14, 12], [50, 25, -5, 14, 0, 9]):  # too short; no spread
        data = json.loads(card.read_text())
        data["generator"]["reference_lab"] = lab
        bad.write_text(json.dumps(data))
        with pytest.raises(WeightsError, match="reference_lab"):
            load_card(bad)


def test_normalize_cli_learned_writes_an_image_and_refuses_a_target(card, field, tmp_path):
    from PIL import Image

    from napari_nucleiseg.cli.main import main

    src = tmp_path / "field.png"
    Image.fromarray(field).save(src)
    out = tmp_path / "out.png"
    assert (
        main(
            [
                "normalize",
                str(src),
                "--method",
                "learned",
                "--model",
                str(card),
                "--out",
                str(out),
                "--mpp",
                "0.5",
            ]
        )
        == 0
    )
    expected = _load(card).adapt(field).transform(field, mpp=0.5)
    assert np.abs(np.asarray(Image.open(out)).astype(int) - expected.astype(int)).max() <= 1
    code = main(
        [
            "normalize",
            str(src),
            "--method",
            "learned",
            "--target",
            str(src),
            "--out",
            str(tmp_path / "o2.png"),
        ]
    )
    assert code == 1 and not (tmp_path / "o2.png").exists()
    code = main(
        [
            "normalize",
            str(src),
            "--method",
            "learned",
            "--model",
            "no-such-model",
            "--out",
            str(tmp_path / "o3.png"),
        ]
    )
    assert code == 1


def test_normalize_cli_learned_writes_a_pyramid(card, field, tmp_path):
    from PIL import Image

    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.io import open_slide

    big = np.tile(field, (3, 3, 1))
    src = tmp_path / "big.png"
    Image.fromarray(big).save(src)
    out = tmp_path / "out.zarr"  # lossless (the TIFF pyramid is JPEG)
    assert (
        main(
            [
                "normalize",
                str(src),
                "--method",
                "learned",
                "--model",
                str(card),
                "--out",
                str(out),
                "--mpp",
                "0.5",
            ]
        )
        == 0
    )
    slide = open_slide(out)
    level0 = slide.read_region(0, 0, big.shape[1], big.shape[0], 0)
    slide.close()
    ref = _load(card).adapt(big).transform(big, mpp=0.5)
    assert np.abs(level0.astype(int) - ref.astype(int)).max() <= 1


# ---------------------------------------------------------------------------- training
def _project(path):
    from PIL import Image

    from napari_nucleiseg.project import Project

    project = Project.init(path)
    export_tiny_unet(project.models_dir)
    for seed in (1, 2, 3):  # reference style, labelled (the 2nd goes to the held-out split)
        rgb, labels = render_he((192, 192), 0.5, seed=seed, coverage=1.0, nuclei_per_mm2=4000)
        Image.fromarray(rgb).save(path / f"ref{seed}.png")
        project.add_slide(path / f"ref{seed}.png", reference=True, mpp=0.5)
        project.add_labels(rgb, labels.astype(np.uint32), 0.5)
    other, _ = render_he((300, 300), 0.5, seed=9, coverage=1.0, nuclei_per_mm2=3000)
    other = (other.astype(float) * [0.8, 1.0, 0.7]).astype(np.uint8)  # another lab's colours
    Image.fromarray(other).save(path / "other.png")
    project.add_slide(path / "other.png", mpp=0.5)
    return project


def _tiny(**kw):
    from napari_nucleiseg.training.normaliser_train import NormaliserConfig

    base = dict(
        batch=1,
        patch=64,
        threads=1,
        checkpoint_every=2,
        tiles_per_slide=2,
        tile_um=64,
        nuclei_model="tiny-unet",
        pseudo_share=0.2,
        confidence=0.0,
    )
    return NormaliserConfig(**{**base, **kw})


def test_a_teacher_trains_cancels_resumes_and_becomes_the_projects_normaliser(tmp_path):
    import torch

    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.project import ProjectError
    from napari_nucleiseg.training.normaliser_train import train_normaliser

    project = _project(tmp_path / "p")
    gen = train_normaliser(project, _tiny(minutes=0.6))
    for info in gen:
        if info.get("iter") == 3:  # "Cancel" after iteration 3: its checkpoint is written
            break
    gen.close()
    (run,) = project.runs_dir.iterdir()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iter"] == 3
    state = json.loads((run / "state.json").read_text())
    assert not state["finished"] and "nuclei_aji" in state
    assert not list(project.models_dir.glob("*stain*.json"))

    items = list(train_normaliser(project, _tiny(minutes=0.25), resume=True))
    iters = [i["iter"] for i in items if i["stage"] == "train"]
    assert iters and iters[0] == 4, iters
    assert "measure nuclei model" not in [i["stage"] for i in items]
    result = items[-1]["result"]
    assert result["promoted"] and result["role"] == "teacher"
    assert project.current_model("normaliser") == result["model"]
    method = get_method(result["model"], kind="normaliser", project=project.path)
    card = method.card
    assert card.kind == "normaliser" and card.training["parent"]["name"] == "tiny-unet"
    assert set(card.metrics["project_heldout"]) >= {"mask_aji", "h_ssim", "lab_distance_after"}
    # The reference slides' colour statistics go on the card: the colour pull works with it.
    assert len(card.generator["reference_lab"]) == 6
    tissue = render_he((160, 160), 0.5, seed=5, coverage=1.0)[0]
    n = method.normaliser().adapt(np.asarray(tissue))
    assert n.calibration == 0.5 and n.lab_map is not None
    out = method.normaliser().transform(np.asarray(render_he((96, 96), 0.5, seed=5)[0]))
    assert out.shape == (96, 96, 3)
    with pytest.raises(ProjectError, match="no unfinished normaliser run"):
        list(train_normaliser(project, resume=True))


def test_a_student_pseudo_labels_and_is_promoted_only_when_better(tmp_path):
    from napari_nucleiseg.training.normaliser_train import train_normaliser

    project = _project(tmp_path / "p")
    teacher = list(train_normaliser(project, _tiny(minutes=0.2)))[-1]["result"]
    items = list(train_normaliser(project, _tiny(minutes=0.3, student=True, promote="auto")))
    stages = [i["stage"] for i in items]
    assert "measure teacher" in stages and "pseudo-label" in stages
    result = items[-1]["result"]
    assert result["role"] == "student" and result["pseudo"] >= 1
    pseudo = project.store.examples(kind="pseudo")
    assert pseudo and all(teacher["model"] in ex.provenance["teacher"] for ex in pseudo)
    better = result["mask_aji"] > result["teacher_mask_aji"]
    assert result["promoted"] == better
    expected = result["model"] if better else teacher["model"]
    assert project.current_model("normaliser") == expected


def test_training_without_a_reference_slide_is_one_clear_error(tmp_path, capsys):
    from napari_nucleiseg.cli.main import main

    project = _project(tmp_path / "p")
    project.data["slides"] = [s for s in project.slides if not s.get("reference")]
    project.save()
    assert (
        main(
            [
                "train-normaliser",
                str(project.path),
                "--minutes",
                "0.1",
                "--nuclei-model",
                "tiny-unet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "reference" in err and str(project.path) in err


def test_project_add_slide_marks_the_reference_style(tmp_path, capsys):
    from PIL import Image

    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.project import Project

    Project.init(tmp_path / "p")
    img = tmp_path / "a.png"
    Image.fromarray(render_he((64, 64), 0.5, seed=1)[0]).save(img)
    assert main(["project", "add-slide", str(tmp_path / "p"), str(img)]) == 1  # no µm/px
    assert "µm/px" in capsys.readouterr().err
    assert (
        main(["project", "add-slide", str(tmp_path / "p"), str(img), "--reference", "--mpp", "0.5"])
        == 0
    )
    (entry,) = Project(tmp_path / "p").slides
    assert entry["reference"] and entry["mpp"] == 0.5
    Project(tmp_path / "p").add_slide(img)  # listed again (e.g. by Accept): still reference
    assert Project(tmp_path / "p").slides[0]["reference"]
    assert main(["project", "add-slide", str(tmp_path / "p"), str(img), "--no-reference"]) == 0
    assert "reference" not in Project(tmp_path / "p").slides[0]


def test_the_shipped_normaliser_is_hashed_carded_and_moves_colours_towards_its_style():
    from napari_nucleiseg.methods import default_method_name, get_method
    from napari_nucleiseg.metrics.colour import lab_distance, lab_stats
    from napari_nucleiseg.models import sha256_of
    from napari_nucleiseg.stain.augment import restain
    from napari_nucleiseg.stain.learned_normaliser import load_learned

    method = get_method(default_method_name("normaliser"), kind="normaliser")
    card, folder = method.card, method.card_path.parent
    assert card.name == "stain-cycle-v1" and card.kind == "normaliser" and card.mpp == 0.5
    assert sha256_of(folder / card.weights) == card.sha256
    assert sha256_of(folder / card.onnx) == card.onnx_sha256
    assert "non-commercial" in card.licence and card.training_data
    assert card.metrics["benchmark"]["monuseg2018_test_mask_decoder"]["aji"] > 0.6
    # A field re-stained far from the reference style comes back nearer to it.
    rgb, _ = render_he((256, 256), 0.5, seed=4, coverage=1.0, nuclei_per_mm2=3500)
    reference = load_learned().transform(rgb, mpp=0.5)
    odd, _ = restain(rgb, np.random.default_rng(1))
    out = load_learned().transform(odd, mpp=0.5)
    assert lab_distance(lab_stats(out), lab_stats(reference)) < lab_distance(
        lab_stats(odd), lab_stats(reference)
    )
