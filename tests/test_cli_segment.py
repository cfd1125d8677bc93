"""``nucleiseg segment`` as a user runs it (issue #12): one line per failed input, no empty output
folder after a failed run, progress as whole lines on a log, and methods as the registry knows
them at run time."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory, he_rgb):
    from PIL import Image

    d = tmp_path_factory.mktemp("segment_cli")
    Image.fromarray(he_rgb[0]).save(d / "small.png")  # 600 x 800: one block
    Image.fromarray(np.tile(he_rgb[0], (3, 3, 1))).save(d / "big.png")  # 1800 x 2400: tiled
    return d


def test_a_failed_input_is_one_line_and_leaves_no_output_folder(images, tmp_path):
    out = run("segment", images / "small.png", "--out", tmp_path / "o", "--method", "classical")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()  # was: error: … then failed: …
    assert line.startswith("error: ") and "small.png" in line and "--mpp" in line
    assert not (tmp_path / "o").exists()  # was: an empty folder

    out = run("segment", tmp_path / "nope.png", "--out", tmp_path / "o", "--mpp", "0.5")
    assert out.returncode == 1
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: ") and "nope.png: no such file" in line
    assert not (tmp_path / "o").exists()

    (tmp_path / "mine").mkdir()  # a folder the user made is theirs: kept, even empty
    out = run("segment", tmp_path / "nope.png", "--out", tmp_path / "mine", "--mpp", "0.5")
    assert out.returncode == 1 and (tmp_path / "mine").is_dir()


def test_several_inputs_get_a_line_each_and_one_summary(images, tmp_path):
    out = run(
        "segment",
        images / "small.png",
        tmp_path / "nope.png",
        "--out",
        tmp_path / "o",
        "--mpp",
        "0.5",
        "--method",
        "classical",
    )
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith("error: ") and "nope.png: no such file" in lines[0]
    assert lines[1] == f"failed: {tmp_path / 'nope.png'}"
    assert re.match(r".*small\.png: \d+ nuclei -> .*small\.tif$", out.stdout.strip())


def test_unknown_method_is_one_line_naming_the_available_ones(images, tmp_path):
    from napari_nucleiseg.methods import method_names

    out = run("segment", images / "small.png", "--out", tmp_path / "o", "--method", "no-such-net")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert "no-such-net" in line and "available:" in line
    assert all(name in line for name in method_names())
    assert not (tmp_path / "o").exists()


def test_progress_on_a_log_is_whole_lines(images, tmp_path):
    """stderr is a pipe here: about one line per tenth of the tiles, never a bar redrawn with
    carriage returns (a log read ``16/34 tiles32/34 tiles34/34 tiles``)."""
    out = run(
        "segment", images / "big.png", "--out", tmp_path, "--mpp", "0.5", "--method", "classical"
    )
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    lines = out.stderr.splitlines()
    assert 2 <= len(lines) <= 11, out.stderr
    pattern = re.compile(r"^big\.png: (\d+)/(\d+) tiles \(\d+ %\)(, ETA \S+)?$")
    assert all(pattern.match(line) for line in lines), out.stderr
    done, total = pattern.match(lines[-1]).groups()[:2]
    assert done == total
    assert "big.png: " in out.stdout and (tmp_path / "big.tif").exists()


def test_progress_is_a_bar_on_a_terminal_and_lines_on_a_log():
    from napari_nucleiseg.cli.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, term = io.StringIO(), Terminal()
    for stream in (log, term):
        with Progress("slide.tif", "tiles", stream=stream, leave=True) as bar:
            for i in range(1, 35):
                bar.update(i, 34)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 9 <= len(lines) <= 11
    assert lines[-1] == "slide.tif: 34/34 tiles (100 %)"
    drawn = term.getvalue()  # a tqdm bar, redrawn in place, left at its final state
    assert drawn.startswith("\rslide.tif:") and "|" in drawn and "34/34" in drawn
    # One step of work (an image that fits one block) shows nothing.
    quiet = io.StringIO()
    Progress("x", stream=quiet).update(1, 1)
    assert quiet.getvalue() == ""


def test_a_model_added_to_the_user_folder_is_a_method_at_once(images, tmp_path):
    import os

    from napari_nucleiseg.models import MODELS_DIR

    models = tmp_path / "models"
    models.mkdir()
    card = json.loads((MODELS_DIR / "nuclei-unet-v3.json").read_text())
    for key in ("weights", "onnx", "onnx_int8"):
        if card.get(key):
            shutil.copy(MODELS_DIR / card[key], models / card[key])
    card["name"] = "my-nuclei"
    (models / "my-nuclei.json").write_text(json.dumps(card))
    env = dict(os.environ, NUCLEISEG_MODELS_DIR=str(models))

    shown = run("segment", "--help", env=env)
    assert "my-nuclei" in shown.stdout
    out = run(
        "segment",
        images / "small.png",
        "--out",
        tmp_path / "o",
        "--mpp",
        "0.5",
        "--method",
        "my-nuclei",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    import tifffile

    with tifffile.TiffFile(tmp_path / "o" / "small.tif") as tf:
        assert json.loads(tf.pages[0].description)["method"] == "my-nuclei"


def test_a_method_registered_at_run_time_runs_from_main(images, tmp_path, capsys):
    from scipy import ndimage as ndi

    from napari_nucleiseg.cli.main import main
    from napari_nucleiseg.methods import NucleiMethod, register_method, unregister_method

    class DarkBlobs(NucleiMethod):
        name = "dark-blobs-test"
        mpp = 0.5

        def segment(self, rgb, mpp):
            return ndi.label(rgb.mean(axis=2) < 120)[0].astype(np.uint32)

    register_method(DarkBlobs())
    try:
        code = main(
            [
                "segment",
                str(images / "small.png"),
                "--out",
                str(tmp_path),
                "--mpp",
                "0.5",
                "--method",
                "dark-blobs-test",
            ]
        )
    finally:
        unregister_method("dark-blobs-test")
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "small.tif").exists() and "small.png" in capsys.readouterr().out
