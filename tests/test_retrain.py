"""The teacher–student loop end to end on a small project (MoNuSeg training crops as strong
labels, another crop unlabelled): pseudo-labels stored with their teacher, a student written as
a model card that is a method at once, promotion as asked, the CLI's last line JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_nucleiseg.project import Project, ProjectError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nuclei" / "monuseg2018_train"


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    if not DATA.exists():
        pytest.skip("../shared/data is absent on this machine")
    pytest.importorskip("torch")
    from napari_nucleiseg.training.nuclei_data import load_dataset

    folder = tmp_path_factory.mktemp("crops")
    out = []
    for im in load_dataset(DATA)[:4]:
        rgb, labels = im.rgb[:400, :400], im.labels[:400, :400]
        Image.fromarray(rgb).save(folder / f"{im.stem}.png")
        tifffile.imwrite(folder / f"{im.stem}.tif", labels.astype(np.uint32))
        out.append((folder / f"{im.stem}.png", folder / f"{im.stem}.tif"))
    return out


def test_retraining_makes_a_student_that_is_a_method_and_promotes_as_asked(crops, tmp_path):
    from napari_nucleiseg.methods import get_method, method_names
    from napari_nucleiseg.training.retrain import RetrainConfig, retrain

    project = Project.init(tmp_path / "p")
    with pytest.raises(ProjectError, match="no strong labels"):
        list(retrain(project, RetrainConfig(minutes=0.2)))
    for image, labels in crops[:3]:
        project.add_label_files(image, labels, mpp=0.25)
    assert len(project.store.examples(split="heldout")) == 1
    cfg = RetrainConfig(
        minutes=0.4, promote="always", confidence=0.5, unlabelled=[(str(crops[3][0]), 0.25)]
    )
    stages = [info for info in retrain(project, cfg)]
    result = stages[-1]["result"]
    assert {"measure teacher", "pseudo-label", "train", "measure student"} <= {
        s["stage"] for s in stages
    }
    assert result["iterations"] >= 1 and result["pseudo"] == 1 and result["promoted"]
    assert 0 < result["teacher_aji"] <= 1 and 0 < result["student_aji"] <= 1
    (pseudo,) = project.store.examples(kind="pseudo")
    assert pseudo.provenance["teacher_name"] == "nuclei-unet-v4"
    assert pseudo.confidence() is not None and pseudo.provenance["mean_confidence"] >= 0.5
    # The student is a method everywhere: by name within the project, and it segments.
    name = result["model"]
    assert project.current_model() == name
    assert name in method_names("nuclei", project=project.path)
    student = get_method(name, project=project.path)
    card = student.card
    assert card.training["parent"]["name"] == "nuclei-unet-v4"
    assert len(card.training["data_manifest"]) == 3  # 2 strong (train split) + 1 pseudo
    assert card.metrics["project_heldout"]["teacher_aji"] == result["teacher_aji"]
    image = project.store.examples(split="heldout")[0].image()
    from napari_nucleiseg.segmentation.api import segment_image

    assert segment_image(image, 0.25, student).max() > 10
    # The next run's teacher is the promoted student; with --promote never it stays.
    again = list(retrain(project, RetrainConfig(minutes=0.3, promote="never")))[-1]["result"]
    assert again["teacher"] == name and not again["promoted"]
    assert project.current_model() == name


def test_the_cli_prints_json_last_and_one_line_on_errors(crops, tmp_path, capsys):
    from napari_nucleiseg.cli.main import main

    p = str(tmp_path / "p")
    assert main(["project", "init", p]) == 0
    assert main(["retrain", p, "--minutes", "0.2"]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no strong labels" in err
    image, labels = crops[0]
    assert main(["project", "add-labels", p, str(image), str(labels), "--mpp", "0.25"]) == 0
    capsys.readouterr()
    assert main(["retrain", p, "--minutes", "0.3", "--promote", "never"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert {"model", "teacher_aji", "student_aji", "promoted", "minutes"} <= set(result)
    assert result["promoted"] is False and result["minutes"] < 1.0


def test_patches_of_small_images_keep_the_models_scale():
    """A 320 x 256 image at 0.25 µm/px covers less than a 256 px patch at 0.5 µm/px: it is
    placed on a blank canvas, not stretched (its nuclei came out twice their size before)."""
    from napari_nucleiseg.training.nuclei_data import LabelledImage, PatchSampler

    rgb = np.full((256, 320, 3), 230, np.uint8)
    labels = np.zeros((256, 320), np.uint32)
    labels[100:140, 100:140] = 1  # 40 x 40 px at 0.25 µm/px: 20 x 20 at the model's 0.5
    rgb[labels > 0] = (90, 40, 120)
    sampler = PatchSampler([LabelledImage("small", rgb, labels, 0.25)], 0.5, 256, seed=0)
    sampler.scale_jitter = 0.0
    areas = []
    for _ in range(20):
        _, targets = sampler.sample()
        areas.append(targets[0].sum())
    seen = [a for a in areas if a > 0]
    assert seen and all(350 <= a <= 450 for a in seen), seen  # 20² = 400 px, not 40² = 1600
