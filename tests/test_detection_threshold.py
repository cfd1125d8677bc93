"""A learned model's detection threshold, the one post-processing setting that is the user's:
how it is chosen, what it changes, where it is recorded, and what is refused."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from test_cli_segment import run  # the CLI as a user runs it, in a process of its own

MODEL = "nuclei-unet-v5"


def test_the_models_own_threshold_is_the_model_itself(he_rgb):
    from napari_nucleiseg.methods import get_method, with_detection_threshold

    m = get_method(MODEL)
    own = m.default_detection_threshold
    assert own == m.card.postprocess["foreground"]
    assert with_detection_threshold(MODEL, None) is m
    assert with_detection_threshold(MODEL, own) is m
    assert "detection_threshold" not in m.describe()  # stores written before it still resume
    low = with_detection_threshold(MODEL, 0.2)
    assert with_detection_threshold(m, 0.2) is low  # one object per threshold: stays warm
    assert low.describe() == {**m.describe(), "detection_threshold": 0.2}
    assert low.predictor is m.predictor  # the network is loaded once
    assert low.with_detection_threshold(None) is m
    # One threshold however it was computed: one object, one record, one resumable store.
    assert with_detection_threshold(m, 0.1 + 0.2) is with_detection_threshold(m, 0.3)
    assert with_detection_threshold(m, 0.1 + 0.2).describe()["detection_threshold"] == 0.3


def test_a_lower_threshold_draws_more_nucleus_and_a_higher_one_less(he_rgb):
    from napari_nucleiseg.methods import get_method, with_detection_threshold
    from napari_nucleiseg.segmentation.api import segment_image

    rgb = he_rgb[0]
    area = {
        t: int((segment_image(rgb, 0.5, with_detection_threshold(MODEL, t)) > 0).sum())
        for t in (0.15, 0.85)
    }
    own = int((segment_image(rgb, 0.5, get_method(MODEL)) > 0).sum())
    assert area[0.15] > 1.03 * own and area[0.85] < 0.97 * own


def test_a_method_with_a_threshold_travels_to_another_process_as_its_card(he_rgb, tmp_path):
    """A whole-slide job runs in a child process or on a cluster's workers: the method goes as
    its card's path and threshold, and segments there exactly as here."""
    from napari_nucleiseg.methods import with_detection_threshold
    from napari_nucleiseg.models import MODELS_DIR

    low = with_detection_threshold(MODEL, 0.25)
    blob = pickle.dumps(low)
    assert len(blob) < 2000  # a reference, not the network
    # A shipped model by its card's name: a worker finds it in its own installation.
    assert str(MODELS_DIR).encode() not in blob and f"{MODEL}.json".encode() in blob
    assert pickle.loads(blob) is low  # in this process: the same object
    rgb = he_rgb[0][:256, :256]
    np.save(tmp_path / "rgb.npy", rgb)
    code = (
        "import pickle, sys, numpy as np\n"
        "m = pickle.loads(sys.stdin.buffer.read())\n"
        f"rgb = np.load({str(tmp_path / 'rgb.npy')!r})\n"
        "assert m.describe()['detection_threshold'] == 0.25, m.describe()\n"
        "sys.stdout.buffer.write(m.segment(rgb, 0.5).tobytes())\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, timeout=300, check=True
    ).stdout
    here = low.segment(rgb, 0.5)
    assert np.array_equal(np.frombuffer(there, np.uint32).reshape(here.shape), here)


@pytest.mark.parametrize(
    "method, threshold, message",
    [
        ("classical", 0.3, "classical has no detection threshold to set"),
        (MODEL, 0.99, f"{MODEL}: detection threshold 0.99 is outside 0.05-0.95"),
        (MODEL, 0.0, f"{MODEL}: detection threshold 0 is outside 0.05-0.95"),
    ],
)
def test_a_threshold_that_cannot_apply_is_refused_by_name(method, threshold, message):
    from napari_nucleiseg.methods import MethodError, with_detection_threshold

    with pytest.raises(MethodError, match=message):
        with_detection_threshold(method, threshold)


def test_segment_records_the_threshold_and_refuses_one_that_cannot_apply(he_rgb, tmp_path):
    import tifffile
    from PIL import Image

    Image.fromarray(he_rgb[0]).save(tmp_path / "field.png")
    out = run("segment", tmp_path / "field.png", "--mpp", 0.5, "--out", tmp_path / "o",
              "--detection-threshold", 0.25)  # fmt: skip
    assert out.returncode == 0, out.stderr
    with tifffile.TiffFile(tmp_path / "o" / "field.tif") as tif:
        made = json.loads(tif.pages[0].description)
    assert made["method"] == MODEL and made["detection_threshold"] == 0.25

    for extra, message in (
        (("--detection-threshold", 2), f"error: {MODEL}: detection threshold 2 is outside"),
        (("--method", "classical", "--detection-threshold", 0.3), "error: classical has no"),
    ):
        out = run("segment", tmp_path / "field.png", "--mpp", 0.5, "--out", tmp_path / "x", *extra)
        assert out.returncode == 2
        (line,) = out.stderr.splitlines()
        assert line.startswith(message)
        assert not (tmp_path / "x").exists()


def test_a_model_outside_the_package_travels_by_its_cards_path(tmp_path):
    """Any other model goes by its card's full path (every worker must read it); a subclass
    that cannot say where it comes from is refused by name, not with a lock's pickling error."""
    import shutil

    from napari_nucleiseg.methods import CardMethod, get_method, with_detection_threshold
    from napari_nucleiseg.models import MODELS_DIR

    card = json.loads((MODELS_DIR / "nuclei-unet-v3.json").read_text())
    for k in ("weights", "onnx", "onnx_int8"):
        shutil.copy(MODELS_DIR / card[k], tmp_path / card[k])
    (tmp_path / "mine.json").write_text(json.dumps(dict(card, name="mine")))
    mine = with_detection_threshold(tmp_path / "mine.json", 0.3)
    blob = pickle.dumps(mine)
    assert str(tmp_path / "mine.json").encode() in blob
    assert pickle.loads(blob) is mine

    class Mine(CardMethod):
        pass

    base = get_method(tmp_path / "mine.json")
    with pytest.raises(TypeError, match=r"Mine \(mine\): a subclass of CardMethod must define"):
        pickle.dumps(Mine(base.card, base.card_path, base.source))
