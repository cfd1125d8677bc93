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

from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL
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
    # One held-out crop is too small a test to trust, and the result says so.
    (held,) = project.store.examples(split="heldout")
    assert result["heldout_nuclei"] == held.nuclei == len(np.unique(held.labels())) - 1
    assert held.nuclei < 200 and f"1 held-out correction ({held.nuclei} nuclei)" in result["note"]
    (pseudo,) = project.store.examples(kind="pseudo")
    assert pseudo.provenance["teacher_name"] == DEFAULT_NUCLEI_MODEL
    assert pseudo.confidence() is not None and pseudo.provenance["mean_confidence"] >= 0.5
    # The student is a method everywhere: by name within the project, and it segments.
    name = result["model"]
    assert project.current_model() == name
    assert name in method_names("nuclei", project=project.path)
    student = get_method(name, project=project.path)
    card = student.card
    assert card.training["parent"]["name"] == DEFAULT_NUCLEI_MODEL
    # The teacher's replay crops went into its batches and go on to the student.
    assert card.training["replay_share"] > 0
    assert card.training["replay"] == get_method(DEFAULT_NUCLEI_MODEL).card.training["replay"]
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
    # An unlabelled file that cannot be read: one line, and no run made that every --resume
    # would fail on.
    missing = str(tmp_path / "missing.svs")
    assert main(["retrain", p, "--minutes", "0.3", "--unlabelled", missing]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and missing in err
    assert not list((tmp_path / "p" / "runs").glob("retrain-*"))
    assert main(["retrain", p, "--minutes", "0.3", "--promote", "never"]) == 0
    printed = capsys.readouterr()
    assert "note: no held-out strong labels: the student was not measured" in printed.err
    last = printed.out.strip().splitlines()[-1]
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


# ---------------------------------------------------------------- resume, checkpoints, torchrun
def _small_project(path):
    """Two synthetic strong labels (one held out): the shipped model as teacher, no data needed."""
    pytest.importorskip("torch")
    from napari_nucleiseg.demo.render import render_he

    project = Project.init(path)
    for seed in (1, 2):
        rgb, labels = render_he((192, 192), 0.5, seed=seed, coverage=1.0, nuclei_per_mm2=4000)
        project.add_labels(rgb, labels.astype(np.uint32), 0.5)
    return project


def _tiny(**kw):
    from napari_nucleiseg.training.retrain import RetrainConfig

    base = dict(batch=2, patch=64, threads=1, checkpoint_every=2, promote="always")
    return RetrainConfig(**{**base, **kw})


def test_a_cancelled_run_resumes_from_its_checkpoint_and_finishes_once(tmp_path):
    import torch

    from napari_nucleiseg.training.retrain import retrain

    project = _small_project(tmp_path / "p")
    gen = retrain(project, _tiny(minutes=0.5))
    for info in gen:
        if info.get("iter") == 3:  # the checkpoint of iteration 2 is written: "Cancel"
            break
    gen.close()
    (run,) = project.runs_dir.iterdir()
    # The cancel keeps the training done up to it, not only the last regular checkpoint (was:
    # Ctrl-C threw away up to 49 iterations, and a run cancelled before 50 restarted from 0).
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iter"] == 3
    state = json.loads((run / "state.json").read_text())
    assert not state["finished"] and state["checkpoint_iter"] == 3 and "teacher_aji" in state
    assert not list(project.models_dir.glob("*.json"))

    # Resumed with a new budget: the same run, on from iteration 3, the teacher not re-measured.
    items = list(retrain(project, _tiny(minutes=0.15), resume=True))
    stages = [i["stage"] for i in items]
    assert "measure teacher" not in stages and "pseudo-label" not in stages
    iters = [i["iter"] for i in items if i["stage"] == "train"]
    assert iters and iters[0] == 4, iters
    result = items[-1]["result"]
    assert result["run"] == str(run) and result["iterations"] == iters[-1]
    assert len(list(project.models_dir.glob("*.json"))) == 1  # the student, exported once
    assert project.current_model() == result["model"]
    assert json.loads((run / "state.json").read_text())["finished"]
    assert len(list(project.runs_dir.iterdir())) == 1

    with pytest.raises(ProjectError, match="finished: nothing to resume") as err:
        list(retrain(project, resume=True))
    assert "\n" not in str(err.value) and str(run) in str(err.value)


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_one(tmp_path, capsys):
    """The disk is full for the second checkpoint (its temporary file is /dev/full, which
    answers every write with ENOSPC): one line naming the run folder, the first checkpoint
    whole; the CLI's --resume then says the same, and nothing is exported."""
    import os

    import torch

    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.training.retrain import retrain

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    project = _small_project(tmp_path / "p")
    gen = retrain(project, _tiny(minutes=0.5))
    for info in gen:
        if info.get("iter") == 2:
            break
    gen.close()
    (run,) = project.runs_dir.iterdir()
    before = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt.tmp").symlink_to("/dev/full")
    with pytest.raises(ProjectError) as err:
        list(retrain(project, _tiny(minutes=0.3), resume=True))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(run))
    assert "No space left on device" in message and "iteration 2 is kept" in message
    assert (run / "checkpoint.pt").read_bytes() == before
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iter"] == 2
    assert not (run / "checkpoint.pt.tmp").exists()
    assert not list(project.models_dir.glob("*.json"))

    # The CLI: the same one line, exit 1 (the disk full again).
    (run / "checkpoint.pt.tmp").symlink_to("/dev/full")
    capsys.readouterr()
    assert main(["retrain", str(project.path), "--resume", "--minutes", "0.3"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {run}: cannot write the checkpoint")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_retrain_refuses_values_out_of_range_as_usage_errors(tmp_path, capsys):
    from napari_nucleiseg.cli.main import main

    p = tmp_path / "p"
    for args, message in [
        (["--minutes", "0"], "minutes must be above 0"),
        (["--confidence", "2"], "confidence must be from 0.5 to 1"),
        (
            ["--strong-share", "0.9", "--replay-share", "0.5"],
            "strong share 0.9 and replay share 0.5 add up to more than one batch",
        ),
    ]:
        assert main(["retrain", str(p), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["train-normaliser", str(p), "--minutes", "0"]) == 2
    assert "minutes must be above 0" in capsys.readouterr().err
    assert not p.exists()


def test_resume_says_so_when_there_is_nothing_to_resume(tmp_path, capsys):
    from napari_nucleiseg.cli.main import main

    project = Project.init(tmp_path / "p")
    assert main(["retrain", str(project.path), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no retraining run to resume" in err
    assert main(["retrain", str(project.path), "--resume", "--promote", "never"]) == 1
    assert "--resume" in capsys.readouterr().err
    # The normaliser's too, before what a new run would need (was: "no slide is marked as the
    # reference style").
    assert main(["train-normaliser", str(project.path), "--resume"]) == 1
    assert "no unfinished normaliser run to resume" in capsys.readouterr().err


def test_two_processes_under_torchrun_train_one_student(tmp_path):
    """`nucleiseg retrain` under torchrun: 2 CPU processes (gloo, loopback) fine-tune one
    student in DistributedDataParallel; both end with identical weights, which are the weights
    rank 0 alone exported (once)."""
    import hashlib
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    project = _small_project(tmp_path / "p")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(30500 + os.getpid() % 1000),
        "-m", "napari_nucleiseg.cli.main", "retrain", str(project.path), "--minutes", "0.25",
        "--promote", "always",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1  # rank 0 speaks for both
    result = lines[0]
    (run,) = project.runs_dir.iterdir()
    ranks = [json.loads((run / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["iters"] == ranks[1]["iters"] == result["iterations"] >= 1
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    (card,) = project.models_dir.glob("*.json")  # one student
    assert card.stem == result["model"] == Project(project.path).current_model()
    state = load_file(str(project.models_dir / f"{card.stem}.safetensors"))
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["weights_sha256"]
    train_lines = [
        x for x in (run / "train.log").read_text().splitlines() if '"stage": "train"' in x
    ]
    assert len(train_lines) == result["iterations"]  # rank 0 logs, once per step


def test_the_replay_set_is_the_teachers_own_training_crops_and_checked_by_hash(tmp_path):
    """Shipped beside nuclei-unet-v4 (MoNuSeg training crops at the model's µm/px); found from a
    student's card in a project folder; a changed file is refused naming it."""
    import shutil

    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.models.registry import WeightsError
    from napari_nucleiseg.training import replay

    teacher = get_method("nuclei-unet-v4")
    crops = replay.load(teacher.card, teacher.card_path)
    assert len(crops) == teacher.card.training["replay"]["crops"] == 16
    assert all(c.mpp == teacher.card.mpp and c.rgb.shape == (256, 256, 3) for c in crops)
    assert all(c.labels.max() > 5 and c.stem.startswith("replay-TCGA-") for c in crops)
    # A card elsewhere (a project's student) naming it finds the shipped file.
    assert (
        replay.find(teacher.card, tmp_path / "student.json")
        == replay.SHIPPED / (teacher.card.training["replay"]["file"])
    )
    # A damaged copy beside the card is refused.
    damaged = tmp_path / teacher.card.training["replay"]["file"]
    shutil.copy(replay.SHIPPED / damaged.name, damaged)
    with open(damaged, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)
    with pytest.raises(WeightsError, match=damaged.name):
        replay.load(teacher.card, tmp_path / "student.json")
