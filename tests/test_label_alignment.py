"""Labels a pixel off their nuclei are found and moved back, per data set, before training."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_nucleiseg.demo.render import render_he
from napari_nucleiseg.training.label_alignment import aligned, dataset_offset, moved
from napari_nucleiseg.training.nuclei_data import LabelledImage, load_dataset
from napari_nucleiseg.training.seg_train import TrainConfig, train


def _images(move=(0, 0), n=3):
    out = []
    for i in range(n):
        rgb, lab = render_he((200, 200), 0.25, seed=40 + i, coverage=1.0, nuclei_per_mm2=5000)
        out.append(LabelledImage(f"im{i}", rgb, moved(lab, *move), 0.25))
    return out


def test_moved_shifts_without_wrapping_round():
    lab = np.zeros((5, 6), np.uint32)
    lab[4, 1] = 7  # bottom row
    lab[0, 5] = 3  # right column
    down = moved(lab, 1, 0)
    assert down[0].sum() == 0 and down.sum() == 3 and down[1, 5] == 3  # 7 left; no wrap
    left = moved(lab, 0, -2)
    assert left[4, 0] == 0 and left[0, 3] == 3 and 7 not in left  # 7 left by the left edge
    assert (moved(lab, 0, 0) == lab).all()


def test_labels_that_sit_on_their_nuclei_are_left_where_they_are():
    images = _images()
    assert dataset_offset(images) == (0, 0)
    same, move = aligned(images)
    assert move == (0, 0) and all(a.labels is b.labels for a, b in zip(same, images))


@pytest.mark.parametrize("off", [(1, 0), (-1, -1), (0, 2)])
def test_labels_a_pixel_or_two_off_are_moved_back_onto_the_nuclei(off):
    truth = _images()
    shifted = _images(off)
    back, move = aligned(shifted)
    assert move == (-off[0], -off[1])
    inner = (slice(3, -3), slice(3, -3))
    for t, b in zip(truth, back):
        assert (t.labels[inner] == b.labels[inner]).all()


def test_training_moves_each_data_set_and_records_the_move(tmp_path):
    root = tmp_path / "off_by_one"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for im in _images((1, 0)):
        Image.fromarray(im.rgb).save(root / "images" / f"{im.stem}.png")
        tifffile.imwrite(root / "labels" / f"{im.stem}.tif", im.labels.astype(np.int32))
    rows = [{"stem": f"im{i}", "nuclei": 1} for i in range(3)]
    index = {"name": "shifted", "licence": "CC0", "mpp": 0.25, "images": rows}
    (root / "index.json").write_text(json.dumps(index))
    assert dataset_offset(load_dataset(root)) == (-1, 0)

    def run(out, align):
        cfg = TrainConfig(
            data=str(root), out=str(out), iters=1, batch=1, patch=64, widths=(4, 8, 16),
            holdout=["im2"], threads=1, validate_every=1000, align_labels=align,
        )  # fmt: skip
        list(train(cfg))
        return json.loads((out / "config.json").read_text())

    assert run(tmp_path / "aligned", True)["label_moves"] == {str(root): [-1, 0]}
    assert run(tmp_path / "as_given", False)["label_moves"] == {}


def test_labels_of_an_image_without_haematoxylin_under_its_nuclei_are_not_moved():
    """Fluorescence (bright nuclei on black): every move's contrast is negative, and the argmax
    was a 2 px move of labels that sat exactly on their nuclei."""
    fluorescent = [
        LabelledImage(im.stem, np.repeat(np.where(im.labels[..., None] > 0, 230, 10), 3, -1)
                      .astype(np.uint8), im.labels, im.mpp)
        for im in _images()
    ]  # fmt: skip
    assert dataset_offset(fluorescent) == (0, 0)
