"""A few real training steps, resuming, exporting to safetensors + card, and refusing weights that
fail their hash. A tiny data set in the shared layout is rendered here, so no download is needed."""

import json
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_nucleiseg.demo.render import render_he
from napari_nucleiseg.training.seg_train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyset")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rows = []
    for i in range(3):
        rgb, lab = render_he((160, 160), 0.25, seed=100 + i, coverage=1.0, nuclei_per_mm2=6000)
        Image.fromarray(rgb).save(root / "images" / f"im{i}.png")
        tifffile.imwrite(root / "labels" / f"im{i}.tif", lab.astype(np.int32))
        rows.append({"stem": f"im{i}", "nuclei": int(lab.max())})
    (root / "index.json").write_text(
        json.dumps({"name": "tiny", "licence": "CC0", "mpp": 0.25, "images": rows})
    )
    return root


def tiny_cfg(data, out, iters, decoder="double"):
    return TrainConfig(
        data=str(data),
        out=str(out),
        iters=iters,
        batch=2,
        patch=64,
        widths=(4, 8, 16, 32),
        checkpoint_every=2,
        validate_every=1000,
        holdout=["im2"],
        threads=1,
        decoder=decoder,
    )


def test_training_steps_reduce_loss_checkpoint_and_resume(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_dataset, run, iters=6)
    gen = train(cfg)
    first = [next(gen) for _ in range(3)]  # then the process "dies"
    gen.close()
    assert (run / "checkpoint.pt").exists()
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=True)["iter"] == 2
    rest = list(train(cfg))
    assert [r["iter"] for r in rest] == [3, 4, 5, 6]  # resumed after the last checkpoint
    assert "val" in rest[-1] and 0 <= rest[-1]["val"]["aji"] <= 1
    assert all(np.isfinite(r["loss"]) for r in first + rest)
    log = [json.loads(l) for l in (run / "train.log").read_text().splitlines()]
    assert log[-1]["iter"] == 6


def test_warm_restart_cycles_match_a_run_continued_from_the_first_cycle(tiny_dataset, tmp_path):
    """``--cycles 3,3`` in one go gives the same weights as ``--iters 3`` followed by the same
    ``--cycles 3,3`` command on that run folder: how nuclei-unet-v3 continued v2's run."""
    import dataclasses

    import torch

    def cfg(out, **kw):
        return dataclasses.replace(tiny_cfg(tiny_dataset, out, iters=3), checkpoint_every=3, **kw)

    one_go = list(train(cfg(tmp_path / "a", cycles=(3, 3))))
    list(train(cfg(tmp_path / "b")))
    continued = list(train(cfg(tmp_path / "b", cycles=(3, 3))))
    assert [r["iter"] for r in continued] == [4, 5, 6]
    # The schedule: cosine to zero, then a restart at half the peak.
    assert one_go[0]["lr"] == pytest.approx(3e-3) and one_go[3]["lr"] == pytest.approx(1.5e-3)
    assert [r["lr"] for r in one_go[3:]] == [r["lr"] for r in continued]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [r["loss"] for r in one_go[3:]] == pytest.approx(
        [r["loss"] for r in continued], rel=1e-5
    )


def test_warm_start_from_an_exported_model_into_one_more_level(tiny_dataset, tmp_path):
    """``--init-from``: a network one level deeper starts with every trained level of the
    exported model (encoder from the input, decoder from the output) and a fresh bottom; its
    first loss is the exported model's, not a random network's. A corrupt file is refused."""
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from napari_nucleiseg.models import WeightsError
    from napari_nucleiseg.training.export import export_model

    base = tmp_path / "base"
    list(train(dataclasses.replace(tiny_cfg(tiny_dataset, base, iters=40), lr=1e-2)))
    export_model(base, "tiny-base", "0.0.1", tmp_path, training_data=["tiny"], licence="CC0")
    src = load_file(str(tmp_path / "tiny-base.safetensors"))

    def deeper(out, **kw):
        return dataclasses.replace(
            tiny_cfg(tiny_dataset, out, iters=1),
            widths=(4, 8, 16, 32, 64),
            checkpoint_every=1,
            **kw,
        )

    warm = list(train(deeper(tmp_path / "warm", init_from=str(tmp_path / "tiny-base.json"))))
    cold = list(train(deeper(tmp_path / "cold")))
    log = json.loads((tmp_path / "warm" / "train.log").read_text().splitlines()[0])
    assert log["tensors_copied"] == len(src) < log["tensors"]
    # One step at a small learning rate: the copied encoder level is still (nearly) the source's.
    state = torch.load(tmp_path / "warm" / "checkpoint.pt", weights_only=True)["model"]
    assert torch.allclose(state["down.0.0.weight"], src["down.0.0.weight"], atol=0.05)
    assert torch.allclose(
        state["up.3.3.weight"], src["up.2.3.weight"], atol=0.05
    )  # decoder shifted by one
    assert warm[0]["loss"] < cold[0]["loss"]
    # The card's training command names the starting point: it is part of reproducing the weights.
    export_model(
        tmp_path / "warm", "tiny-deeper", "0.0.1", tmp_path, training_data=["tiny"], licence="CC0"
    )
    card = json.loads((tmp_path / "tiny-deeper.json").read_text())
    assert card["training"]["command"].endswith(f"--init-from {tmp_path / 'tiny-base.json'}")
    (tmp_path / "tiny-base.safetensors").write_bytes(b"corrupt")
    with pytest.raises(WeightsError, match="SHA-256"):
        list(train(deeper(tmp_path / "refused", init_from=str(tmp_path / "tiny-base.json"))))


@pytest.mark.parametrize("decoder", ["double", "light"])
def test_export_load_and_hash_check(tiny_dataset, tmp_path, decoder, monkeypatch):
    from napari_nucleiseg.methods import load_predictor
    from napari_nucleiseg.models import WeightsError
    from napari_nucleiseg.training.export import export_model

    run = tmp_path / "run"
    list(train(tiny_cfg(tiny_dataset, run, iters=2, decoder=decoder)))
    weights = export_model(
        run, "tiny-test", "0.0.1", tmp_path, training_data=["tiny"], licence="CC0"
    )
    card = json.loads((tmp_path / "tiny-test.json").read_text())
    assert card["mpp"] == 0.5 and len(card["sha256"]) == 64 and card["weights"] == weights.name
    # safetensors is a JSON header plus raw tensors: no pickle opcode stream.
    assert not weights.read_bytes().startswith(b"\x80")
    predictor, _ = load_predictor(tmp_path / "tiny-test.json")
    rgb = render_he((128, 128), 0.5, seed=5, coverage=1.0)[0]
    assert predictor.segment(rgb, 0.5).shape == (128, 128)
    # By default the int8 ONNX model runs; the float32 ONNX twin computes the same maps as
    # PyTorch, and int8 stays close to them.
    assert (
        predictor.runtime == "onnxruntime-int8" and card["onnx_sha256"] and card["onnx_int8_sha256"]
    )

    def with_runtime(runtime):
        monkeypatch.setenv("NUCLEISEG_RUNTIME", runtime)
        try:
            return load_predictor(tmp_path / "tiny-test.json")[0]
        finally:
            monkeypatch.delenv("NUCLEISEG_RUNTIME")

    torch_predictor, fp32_predictor = with_runtime("torch"), with_runtime("onnx-fp32")
    assert torch_predictor.runtime == "torch" and fp32_predictor.runtime == "onnxruntime"
    reference = torch_predictor.maps(rgb, 0.5)
    assert np.abs(fp32_predictor.maps(rgb, 0.5) - reference).max() < 1e-4
    assert np.abs(predictor.maps(rgb, 0.5) - reference).mean() < 0.03
    with pytest.raises(WeightsError, match="NUCLEISEG_RUNTIME='fast'"):
        with_runtime("fast")
    for name in ("tiny-test.onnx", "tiny-test.int8.onnx"):
        onnx = tmp_path / name
        good = onnx.read_bytes()
        onnx.write_bytes(good[:-10] + bytes(10))
        runtime = "onnx-fp32" if name == "tiny-test.onnx" else "auto"
        with pytest.raises(WeightsError, match=f"{name}: SHA-256"):
            with_runtime(runtime)
        onnx.write_bytes(good)
    # One flipped byte: refused, with the file named.
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="tiny-test.safetensors: SHA-256 .* does not match"):
        load_predictor(tmp_path / "tiny-test.json")


def test_unknown_model_name_is_a_clear_error():
    from napari_nucleiseg.methods import load_predictor
    from napari_nucleiseg.models import WeightsError

    with pytest.raises(WeightsError, match="no model named 'nope'"):
        load_predictor("nope")


def test_two_processes_under_torchrun_end_with_identical_weights(tiny_dataset, tmp_path):
    """`nucleiseg train` under torchrun: 2 CPU processes (gloo, loopback) train one model with
    DistributedDataParallel; both ranks end with the same weights, and rank 0's checkpoint is
    them."""
    import hashlib
    import os
    import subprocess
    import sys

    import torch

    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(29500 + os.getpid() % 1000),
        "-m", "napari_nucleiseg.cli.main", "train", "--data", str(tiny_dataset),
        "--out", str(run), "--iters", "3", "--batch", "2", "--patch", "64",
        "--widths", "4,8,16,32", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    # Both ends of stderr: a rank's own traceback comes first, torchrun's report last.
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["iters"] == 3
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]

    state = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["weights_sha256"]
    assert len((run / "train.log").read_text().splitlines()) == 3  # rank 0 logs, once per step


def test_extra_data_without_mpp_is_read_at_its_own_scale_held_out_by_cluster_and_recorded(
    tiny_dataset, tmp_path
):
    """A second data set with no µm/px (DSB-like crops of two looks): each image's µm/px comes
    from its labels, whole clusters are held out and validated separately, the split survives a
    resume, and the exported card's command reproduces the options."""
    from napari_nucleiseg.training.export import export_model
    from napari_nucleiseg.training.nuclei_data import TRUTH_MEDIAN_AREA_UM2, load_spec

    root = tmp_path / "other"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = []
    for i in range(8):
        # Two looks: pale crops at 0.2 µm/px and dark ones at 0.4 µm/px (so nuclei of the same
        # physical size cover four times the pixels in the first).
        mpp = 0.2 if i % 2 else 0.4
        side = 96 if mpp == 0.4 else 192
        rgb, lab = render_he((side, side), mpp, seed=200 + i, coverage=1.0, nuclei_per_mm2=8000)
        if i % 2:
            rgb = (255 - (255 - rgb.astype(int)) // 2).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"o{i}.png")
        tifffile.imwrite(root / "labels" / f"o{i}.tif", lab.astype(np.int32))
        rows.append({"stem": f"o{i}", "nuclei": int(lab.max()), "kind": "colour"})
    rows.append({"stem": "grey0", "nuclei": 1, "kind": "grey"})  # not read: another kind
    (root / "index.json").write_text(
        json.dumps({"name": "other", "licence": "CC0", "mpp": None, "images": rows})
    )
    images = load_spec(f"{root}:colour")
    assert len(images) == 8
    for im in images:
        areas = np.bincount(im.labels.ravel())[1:]
        assert np.median(areas[areas > 0]) * im.mpp**2 == pytest.approx(TRUTH_MEDIAN_AREA_UM2)
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_dataset, run, iters=4)
    cfg.extra_data, cfg.extra_share, cfg.augment = [f"{root}:colour"], 0.5, "wide"
    cfg.validate_every = 2
    gen = train(cfg)
    infos = [next(gen) for _ in range(2)]
    gen.close()
    held = json.loads((run / "config.json").read_text())["extra_holdout"]
    assert 2 <= len(held) < 8 and all(h.startswith("o") for h in held)
    assert "val_extra" in infos[-1] and 0 <= infos[-1]["val_extra"]["aji"] <= 1
    cfg2 = tiny_cfg(tiny_dataset, run, iters=4)
    cfg2.extra_data, cfg2.extra_share, cfg2.augment = [f"{root}:colour"], 0.5, "wide"
    rest = list(train(cfg2))
    assert [r["iter"] for r in rest] == [3, 4]
    assert json.loads((run / "config.json").read_text())["extra_holdout"] == held
    export_model(run, "tiny-extra", "0.0.1", tmp_path, training_data=["tiny"], licence="CC0")
    training = json.loads((tmp_path / "tiny-extra.json").read_text())["training"]
    assert training["extra_holdout"] == held and training["augment"] == "wide"
    assert "--extra-data <other>:colour --extra-share 0.5 --augment wide" in training["command"]
    # Post-processing is tuned for the mean of each source's held-out AJI, not the pooled one.
    from napari_nucleiseg.methods import load_predictor
    from napari_nucleiseg.training.nuclei_data import load_dataset
    from napari_nucleiseg.training.release import tune_postprocess

    predictor = load_predictor(tmp_path / "tiny-extra.json")[0]
    pp = tune_postprocess(
        predictor,
        load_dataset(tiny_dataset, stems=["im2"]),
        [im for im in images if im.stem in held],
    )
    assert len(pp["tuned_per_set_aji"]) == 2
    assert pp["tuned_on_heldout_train_aji"] == pytest.approx(
        np.mean(pp["tuned_per_set_aji"]), abs=1e-4
    )


def test_sampler_weights_choose_the_source_and_unknown_augmentation_is_refused():
    from napari_nucleiseg.training.nuclei_data import LabelledImage, PatchSampler

    blank = np.zeros((64, 64), np.int32)
    dark = LabelledImage("dark", np.full((64, 64, 3), 40, np.uint8), blank, 0.5)
    light = LabelledImage("light", np.full((64, 64, 3), 230, np.uint8), blank, 0.5)
    sampler = PatchSampler([dark, light], 0.5, 32, augment="wide", weights=[0.0, 1.0])
    rgb, _ = sampler.batch(8)
    assert rgb.mean() > 150  # every patch from the light image, whatever the jitter
    with pytest.raises(ValueError, match="augment must be one of"):
        PatchSampler([dark], 0.5, 32, augment="strong")


def test_wider_augmentation_turns_stain_colours_beyond_wide():
    """``wider`` turns the haematoxylin colour (other labs' stains), which ``wide`` only scales
    and shifts: the direction of nuclei's optical density above the background's stays within a
    few degrees of haematoxylin's under ``wide`` and leaves it by more than 6° under ``wider``
    in a good share of patches (half are turned, by 0-15°)."""
    from napari_nucleiseg.stain.deconvolution import RGB_FROM_HED
    from napari_nucleiseg.training.nuclei_data import LabelledImage, PatchSampler

    h = np.asarray(RGB_FROM_HED[0], float) / np.linalg.norm(RGB_FROM_HED[0])
    rng = np.random.default_rng(0)
    labels = np.zeros((96, 96), np.int32)
    yy, xx = np.ogrid[:96, :96]
    for i, (y, x) in enumerate(rng.integers(10, 86, (12, 2)), start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 < 30] = i
    rgb = np.full((96, 96, 3), 255, np.uint8)  # glass, and pure haematoxylin nuclei
    rgb[labels > 0] = np.clip(255 * 10 ** (-0.8 * h), 0, 255).astype(np.uint8)
    img = LabelledImage("haematoxylin", rgb, labels, 0.5)

    def share_turned(augment: str) -> float:
        patches, targets = PatchSampler([img], 0.5, 64, seed=1, augment=augment).batch(64)
        angles = []
        for patch, target in zip(patches, targets):
            od = -np.log(np.clip(patch.astype(float), 1, 255) / 255)
            nucleus, glass = target[0] == 1, target[0] == 0
            if nucleus.sum() < 20:
                continue
            d = od[nucleus].mean(0) - od[glass].mean(0)
            angles.append(np.degrees(np.arccos(np.clip(d @ h / np.linalg.norm(d), -1, 1))))
        assert len(angles) > 40
        return float(np.mean(np.array(angles) > 6))

    assert share_turned("wide") <= 0.05
    assert share_turned("wider") >= 0.15


def test_release_model_into_a_new_folder_and_nothing_half_made_when_it_fails(
    tiny_dataset, tmp_path, capsys
):
    """Was: ``--out-dir`` had to exist (a traceback otherwise), and a release stopped part way
    left a card without tuning or metrics that counted as a model and blocked the rerun."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_faults_cli import cli, everything

    run = tmp_path / "run"
    list(train(tiny_cfg(tiny_dataset, run, iters=2)))
    out = tmp_path / "new" / "models"
    args = ["--version", "0.0.1", "--train-data", tiny_dataset, "--test-data", tiny_dataset]
    code, lines, err = cli(
        capsys, "release-model", run, "--name", "tiny-r", "--out-dir", out, *args
    )
    assert code == 0, err
    card = json.loads((out / "tiny-r.json").read_text())
    assert card["postprocess"] and card["metrics"]["monuseg2018_test"]["images"] == 3
    # Readable by the others who share the folder, as any file the user writes (was 0600).
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    # Replaced on request: the new card with its own files, nothing else left.
    code, _, err = cli(
        capsys, "release-model", run, "--name", "tiny-r", "--out-dir", out, "--replace", *args,
        "--version", "0.0.2",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "tiny-r.json").read_text())["version"] == "0.0.2"
    assert everything(out) == [
        "tiny-r.int8.onnx",
        "tiny-r.json",
        "tiny-r.onnx",
        "tiny-r.safetensors",
    ]
    assert everything(out) == [
        "tiny-r.int8.onnx",
        "tiny-r.json",
        "tiny-r.onnx",
        "tiny-r.safetensors",
    ]
    # A release that fails part way (here: its checkpoint is damaged) leaves nothing behind.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((run / "config.json").read_text())
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    for junk in (b"not a checkpoint", b"junk\n"):  # the unpickler raises other errors for each
        (broken / "checkpoint.pt").write_bytes(junk)
        code, _, err = cli(
            capsys, "release-model", broken, "--name", "tiny-b", "--out-dir", out, *args
        )
        assert code == 1 and len(err) == 1
        assert err[0].startswith(
            f"error: {broken / 'checkpoint.pt'}: cannot be read as a training checkpoint ("
        )
    # ... and a folder the failed release made for itself goes too.
    code, _, err = cli(
        capsys, "release-model", broken, "--name", "tiny-b", "--out-dir", tmp_path / "a" / "b",
        *args,
    )  # fmt: skip
    assert code == 1 and not (tmp_path / "a").exists()
    assert everything(out) == [
        "tiny-r.int8.onnx",
        "tiny-r.json",
        "tiny-r.onnx",
        "tiny-r.safetensors",
    ]
    # A name that is not a plain file name is refused before anything is written.
    code, _, err = cli(capsys, "release-model", run, "--name", "../evil", "--out-dir", out, *args)
    assert code == 2 and err[0].startswith("error: --name: model name '../evil': use letters")
    assert not (tmp_path / "new" / "evil.json").exists()
