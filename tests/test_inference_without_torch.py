"""Inference runs on ONNX Runtime alone: PyTorch is the ``train`` extra, not a dependency of
segmenting (issue #12). Checked as a user runs it, in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Runs ``nucleiseg ARGS`` in this interpreter, then reports which torch modules were imported.
#: With BLOCK, ``import torch`` fails as on a machine where it is not installed.
RUN = r"""
import sys
if {block}:
    sys.modules["torch"] = None  # what a missing package looks like to import and find_spec
from napari_nucleiseg.cli.main import main
code = main(sys.argv[1:])
loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] == "torch" and v is not None)
print("TORCH:" + ",".join(loaded))
sys.exit(code)
"""


def nucleiseg(*args, block=False):
    return subprocess.run(
        [sys.executable, "-c", RUN.format(block=block), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def field(tmp_path_factory, he_rgb):
    from PIL import Image

    path = tmp_path_factory.mktemp("no_torch") / "field.png"
    Image.fromarray(he_rgb[0]).save(path)
    return path


def test_segmenting_with_the_shipped_model_imports_no_torch(field, tmp_path):
    from napari_nucleiseg.methods import default_method_name

    out = nucleiseg("segment", field, "--out", tmp_path, "--mpp", "0.5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "TORCH:", out.stdout
    import tifffile

    with tifffile.TiffFile(tmp_path / "field.tif") as tf:
        assert f'"method": "{default_method_name()}"' in tf.pages[0].description
        assert tf.pages[0].asarray().max() > 10  # the model found nuclei


def test_without_torch_segmenting_works_and_training_says_what_to_install(field, tmp_path):
    out = nucleiseg("segment", field, "--out", tmp_path, "--mpp", "0.5", block=True)
    assert out.returncode == 0, out.stderr
    out = nucleiseg("train", "--data", tmp_path, "--out", tmp_path / "run", block=True)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: training needs torch") and "napari-nucleiseg[train]" in line
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_classifying_and_heatmaps_need_no_torch(field, tmp_path):
    """The shipped tissue classifier runs on its ONNX twin: ``classify`` and ``heatmap`` work
    where torch is not installed, and import none of it where it is."""
    import csv

    out = nucleiseg("classify", field, "--mpp", "0.5", "--out", tmp_path / "p.csv", block=True)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "p.csv") as f:
        row = next(csv.DictReader(f))
    assert 0 <= float(row["p_tumour"]) <= 1 and {"p_normal", "p_background"} <= set(row)
    out = nucleiseg("heatmap", field, "--mpp", "0.5", "--out", tmp_path / "h")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "TORCH:", out.stdout
    assert (tmp_path / "h" / "field.heatmap.zarr").is_dir()
