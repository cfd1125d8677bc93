"""Inputs that decide outputs are checked for physical sense (issue 13, part C).

Each case here went through before: a stain profile of zero, negative or 1e308 stain vectors or
1e-300 concentrations normalised every image to white or black and segmentation then found 0
nuclei with exit 0; ``"params": 5`` was a traceback; a model card's ``weights`` could name
``../../etc/passwd`` (read and hashed), and widths ``[1, 2]`` with ``tile_px -5`` ran; ``--mpp 40``
on a 500² image upsampled it 80x for over ten minutes. Now each is one message naming the file
(where there is one) and the field.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

from napari_nucleiseg.models import (
    DEFAULT_NUCLEI_MODEL,
    MODELS_DIR,
    WeightsError,
    list_models,
    load_card,
)
from napari_nucleiseg.stain import STAIN_METHODS, StainError, StainProfile, make_normaliser

STAIN_SET = SHARED / "data" / "stain"


# --------------------------------------------------------------------------- stain profiles
def good_macenko() -> dict:
    """A profile as a real fit writes it (MoNuSeg-like numbers)."""
    return {
        "format": "napari-nucleiseg stain profile",
        "version": 1,
        "method": "macenko",
        "stain_matrix": [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]],
        "max_concentrations": [1.9, 1.2],
        "params": {"luminosity": 0.8, "angular_percentile": 99.0},
        "fitted_on": {"name": "ref.png", "pixels": 100000, "tissue_pixels": 60000},
    }


def write(tmp_path: Path, profile: dict, name: str = "lab.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(profile))
    return path


def test_a_hand_typed_profile_with_near_unit_vectors_loads_made_unit(tmp_path):
    """Ruifrok's published vectors are 0.998 long: within tolerance, renormalised."""
    profile = StainProfile.load(write(tmp_path, good_macenko()))
    assert np.allclose(np.linalg.norm(profile.stain_matrix, axis=1), 1.0, atol=1e-12)


BAD_PROFILES = [
    # (what, change to the good profile, expected message after "<file>: ")
    (
        "tiny concentrations",
        {"max_concentrations": [1e-300, 1e-300]},
        "max_concentrations haematoxylin is 1e-300, outside the plausible",
    ),
    (
        "huge concentrations",
        {"max_concentrations": [1.9, 1e308]},
        "max_concentrations eosin is 1e\\+308, outside the plausible",
    ),
    (
        "zero stain vector",
        {"stain_matrix": [[0, 0, 0], [0.07, 0.99, 0.11]]},
        "stain_matrix "
        "haematoxylin row \\[0.0, 0.0, 0.0\\] has length 0: stain vectors are unit length",
    ),
    (
        "negative stain vector",
        {"stain_matrix": [[0.65, 0.70, 0.29], [-0.07, -0.99, -0.11]]},
        "stain_matrix eosin row .* has a component of -0.99: a stain absorbs light",
    ),
    (
        "1e308 stain vector",
        {"stain_matrix": [[1e308, 1e308, 1e308], [0.07, 0.99, 0.11]]},
        "stain_matrix haematoxylin row .* has length 1.73e\\+308",
    ),
    (
        "long stain vector",
        {"stain_matrix": [[1.3, 1.4, 0.58], [0.07, 0.99, 0.11]]},
        "stain_matrix haematoxylin row .* has length 2: stain vectors are unit length",
    ),
    (
        "collinear stains",
        {"stain_matrix": [[0.65, 0.70, 0.29], [0.65, 0.70, 0.29]]},
        "stain_matrix: the haematoxylin and eosin vectors are 0° apart \\(collinear\\)",
    ),
    ("params a number", {"params": 5}, "params must be a mapping of settings, got 5"),
    (
        "params nested junk",
        {"params": {"luminosity": {"a": [1, {"b": None}]}}},
        "params: luminosity must be a number from 0.01 to 1, got \\{'a'",
    ),
    ("params unknown key", {"params": {"luminance": 0.5}}, "params: unknown setting 'luminance'"),
    (
        "luminosity out of range",
        {"params": {"luminosity": 80}},
        "params: luminosity must be a number from 0.01 to 1, got 80",
    ),
    (
        "percentile out of range",
        {"params": {"angular_percentile": 1e9}},
        "params: angular_percentile must be a number from 50 to 100",
    ),
    ("fitted_on junk", {"fitted_on": [1, 2]}, "fitted_on must be a mapping"),
    ("version junk", {"version": "one"}, "version must be a whole number, got 'one'"),
]


@pytest.mark.parametrize("what,change,message", BAD_PROFILES, ids=[c[0] for c in BAD_PROFILES])
def test_a_profile_without_physical_sense_is_refused_naming_file_and_field(
    tmp_path, what, change, message
):
    path = write(tmp_path, good_macenko() | change)
    with pytest.raises(StainError, match=f"^{path}: {message}") as err:
        StainProfile.load(path)
    assert "\n" not in str(err.value)
    with pytest.raises(StainError, match=f"^{message}"):  # from data, without a file
        StainProfile.from_dict(good_macenko() | change)


BAD_REINHARD = [
    ("mean off CIELAB", {"lab_mean": [500.0, 10.0, -10.0]}, "lab_mean L is 500, outside CIELAB"),
    ("mean tiny", {"lab_mean": [70.0, 1e-300, -1e300]}, "lab_mean b is -1e\\+300, outside"),
    ("std huge", {"lab_std": [12.0, 1e308, 5.0]}, "lab_std a is 1e\\+308, outside the plausible"),
    ("std tiny", {"lab_std": [1e-300, 8.0, 5.0]}, "lab_std L is 1e-300, outside the plausible"),
    ("flat fill", {"lab_std": [0.1, 0.1, 0.1]}, "lab_std \\[0.1, 0.1, 0.1\\]: every deviation is"),
]


@pytest.mark.parametrize("what,change,message", BAD_REINHARD, ids=[c[0] for c in BAD_REINHARD])
def test_a_reinhard_profile_outside_cielab_is_refused(tmp_path, what, change, message):
    good = {"method": "reinhard", "lab_mean": [70.0, 10.0, -10.0], "lab_std": [12.0, 8.0, 5.0]}
    StainProfile.from_dict(good)
    path = write(tmp_path, good | change, "reinhard.json")
    with pytest.raises(StainError, match=f"^{path}: {message}"):
        StainProfile.load(path)


def test_segment_with_a_senseless_profile_stops_with_one_line(tmp_path, capsys):
    """Before: an all-white image, 0 nuclei, exit 0. Now: nothing runs, one line, exit 2."""
    from napari_nucleiseg.cli.main import main

    bad = write(tmp_path, good_macenko() | {"max_concentrations": [1e-300, 1e-300]}, "bad.json")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    code = main(
        ["segment", str(image), "--out", str(tmp_path / "out"), "--mpp", "0.5"]
        + ["--normalize", "macenko", "--target", str(bad)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "out").exists()
    assert err.startswith(f"error: {bad}: max_concentrations haematoxylin is 1e-300")
    assert len(err.splitlines()) == 1


def stain_set_images():
    if not STAIN_SET.is_dir():
        pytest.skip(f"the stain regression set {STAIN_SET} is not available (../shared is absent)")
    return sorted(p for p in STAIN_SET.iterdir() if p.suffix in (".png", ".tif"))


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_every_fit_on_the_stain_regression_set_passes_validation(method):
    """No false refusals: every method's profile of every image of the regression set (sources,
    targets, the reference toolbox's outputs), and their average, loads back unchanged."""
    from PIL import Image

    from napari_nucleiseg.stain import average_profiles

    profiles = []
    for path in stain_set_images():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        profile = make_normaliser(method).fit(rgb, name=path.name).profile
        again = StainProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
        assert again == profile, path.name
        profiles.append(profile)
    assert len(profiles) >= 8
    average_profiles(profiles, name="regression set")


# --------------------------------------------------------------------------- model cards
def card_folder(tmp_path: Path, name: str = "lab-unet", **change) -> Path:
    """A copy of nuclei-unet-v3 (card and its files) under another name, with ``change``."""
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    card = json.loads((MODELS_DIR / "nuclei-unet-v3.json").read_text())
    for key in ("weights", "onnx", "onnx_int8"):
        if not (folder / card[key]).exists():
            shutil.copy(MODELS_DIR / card[key], folder / card[key])
    card.update(name=name, **change)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(card))
    return path


@pytest.mark.parametrize("name", list_models())
def test_every_shipped_card_loads(name):
    card = load_card(name)
    card.check_files(MODELS_DIR)


def test_the_card_checks_know_what_the_code_builds():
    """The registry cannot import segmentation/ (a lower layer, and torch): its lists of decoders
    and post-processing settings must match the code's."""
    import dataclasses

    from napari_nucleiseg.models import registry
    from napari_nucleiseg.segmentation.postprocess import PostprocessSettings

    fields = [f.name for f in dataclasses.fields(PostprocessSettings)]
    assert list(registry.KNOWN_POSTPROCESS) == fields
    unet = pytest.importorskip("napari_nucleiseg.segmentation.unet")
    assert registry.KNOWN_DECODERS == unet.DECODERS


def test_a_weights_path_outside_the_card_folder_is_refused_before_reading(tmp_path, monkeypatch):
    """``../../etc/passwd`` was read and hashed; now the card is refused as it is read."""
    from napari_nucleiseg.methods import load_predictor
    from napari_nucleiseg.models import registry

    def no_hashing(path):
        raise AssertionError(f"{path} was read")

    # Imported first, so that it does not bind the stand-in for good (it imports sha256_of).
    from napari_nucleiseg.models import runtime

    monkeypatch.setattr(registry, "sha256_of", no_hashing)
    monkeypatch.setattr(runtime, "sha256_of", no_hashing)
    monkeypatch.setattr("napari_nucleiseg.methods.learned.sha256_of", no_hashing)
    escape = card_folder(tmp_path, weights="../../etc/passwd")
    message = f"^{escape}: weights '../../etc/passwd' lies outside the card's folder"
    with pytest.raises(WeightsError, match=message):
        load_card(escape)
    with pytest.raises(WeightsError, match=message):
        load_predictor(escape)
    absolute = card_folder(tmp_path, "abs-unet", onnx="/etc/passwd")
    with pytest.raises(WeightsError, match=f"^{absolute}: onnx '/etc/passwd' is an absolute path"):
        load_card(absolute)
    (tmp_path / "models" / "elsewhere.onnx").symlink_to("/etc/passwd")
    linked = card_folder(tmp_path, "link-unet", onnx_int8="elsewhere.onnx")
    with pytest.raises(WeightsError, match=f"^{linked}: onnx_int8 'elsewhere.onnx' lies outside"):
        load_card(linked)
    # A file in a subfolder of the card's folder is inside it.
    sub = tmp_path / "models" / "files"
    sub.mkdir()
    shutil.copy(MODELS_DIR / "nuclei-unet-v3.safetensors", sub / "w.safetensors")
    assert load_card(card_folder(tmp_path, "sub-unet", weights="files/w.safetensors")).weights


SHA = "0" * 64
BAD_CARDS = [
    ("widths [1, 2]", {"widths": [1, 2]}, "widths \\[1, 2\\]: channels must be whole numbers"),
    ("one level", {"widths": [12]}, "widths \\[12\\]: a U-Net has 2 to 8 levels"),
    ("widths a number", {"widths": 5}, "widths 5: a U-Net has 2 to 8 levels"),
    ("widths floats", {"widths": [12.5, 24]}, "widths .*: channels must be whole numbers"),
    ("tile_px -5", {"tile_px": -5}, "tile_px -5: the tile core is a whole number"),
    (
        "tile_px off the grid",
        {"tile_px": 1000},
        "tile_px 1000: must be a multiple of 16, the pooling factor of a 5-level network",
    ),
    ("tile_px text", {"tile_px": "1024"}, "tile_px '1024': the tile core is a whole number"),
    ("context_um 0", {"context_um": 0}, "context_um 0: the context a tile needs is more than 0"),
    ("context_um NaN", {"context_um": math.nan}, "context_um nan: the context a tile needs"),
    ("mpp 0.001", {"mpp": 0.001}, "mpp 0.001: a model works at 0.05 to 50 µm/px"),
    ("mpp 400", {"mpp": 400}, "mpp 400: a model works at 0.05 to 50 µm/px"),
    ("decoder", {"decoder": "heavy"}, "decoder 'heavy' is not one of double, light"),
    ("architecture", {"architecture": "ResNet"}, "architecture 'ResNet' is not one this"),
    (
        "postprocess typo",
        {"postprocess": {"foregroud": 0.4}},
        "postprocess: unknown setting 'foregroud'; known: foreground",
    ),
    (
        "postprocess range",
        {"postprocess": {"foreground": 40}},
        "postprocess: foreground must be a number from 0 to 1, got 40",
    ),
    ("postprocess junk", {"postprocess": [1]}, "postprocess must be a mapping"),
    ("sha256", {"sha256": "abc"}, "sha256 'abc': a SHA-256 is 64 hexadecimal digits"),
    ("weights empty", {"weights": ""}, "weights must be a non-empty text"),
]


@pytest.mark.parametrize("what,change,message", BAD_CARDS, ids=[c[0] for c in BAD_CARDS])
def test_a_card_without_sense_is_refused_naming_file_and_field(tmp_path, what, change, message):
    path = card_folder(tmp_path, **change)
    with pytest.raises(WeightsError, match=f"^{path}: {message}") as err:
        load_card(path)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_senseless_card_in_one_line(tmp_path, capsys):
    """Before: widths [1, 2] and tile_px -5 ran. Now: one line naming card and field, exit 2."""
    from napari_nucleiseg.cli.main import main

    card = card_folder(tmp_path, widths=[1, 2], tile_px=-5)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    code = main(
        [
            "segment",
            str(image),
            "--out",
            str(tmp_path / "out"),
            "--mpp",
            "0.5",
            "--method",
            str(card),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{card}: widths [1, 2]" in err


def test_a_senseless_card_in_the_user_folder_is_skipped_with_its_name(tmp_path, monkeypatch):
    from napari_nucleiseg.methods import method_names

    card = card_folder(tmp_path, "junk-unet", tile_px=-5)
    monkeypatch.setenv("NUCLEISEG_MODELS_DIR", str(card.parent))
    with pytest.warns(UserWarning, match=f"^{card}: tile_px -5: .*; skipped$"):
        names = method_names()
    assert "junk-unet" not in names and "nuclei-unet-v4" in names


# --------------------------------------------------------------------------- resolution
def test_an_input_far_coarser_than_the_method_is_refused_at_once():
    """``--mpp 40`` on a 500² image: an 80x upsampling that ran for over 10 minutes in 2.6 GB.
    The tile planner, which every face asks first, refuses it naming both resolutions."""
    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.segmentation.api import segment_image
    from napari_nucleiseg.tiling.plan import MAX_UPSAMPLING, ResolutionError, plan_tiles

    v4 = get_method("nuclei-unet-v4")
    rgb = np.full((500, 500, 3), 200, np.uint8)
    message = (
        "^the input at 40 µm/px is 80x coarser than nuclei-unet-v4 works at \\(0.5 µm/px\\): "
        "more than the 8x it may be upsampled"
    )
    t0 = time.perf_counter()
    with pytest.raises(ResolutionError, match=message):
        segment_image(rgb, 40.0, v4)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="40 µm/px is 80x coarser than classical works"):
        segment_image(rgb, 40.0, "classical")
    # The stated factor is the limit: 8x passes, just beyond does not.
    plan_tiles((500, 500), 0.5 * MAX_UPSAMPLING, v4)
    with pytest.raises(ResolutionError, match="8.02x coarser"):
        plan_tiles((500, 500), 0.5 * MAX_UPSAMPLING * 1.002, v4)


def test_an_input_far_finer_than_any_microscope_is_refused():
    """``--mpp 1e-9`` planned tiles and halos of billions of pixels."""
    from napari_nucleiseg.methods import get_method
    from napari_nucleiseg.tiling.plan import ResolutionError, plan_tiles

    with pytest.raises(ResolutionError, match="1e-09 µm/px is 5e\\+08x finer than nuclei-unet"):
        plan_tiles((500, 500), 1e-9, get_method("nuclei-unet-v4"))
    plan_tiles((500, 500), 0.25, get_method("nuclei-unet-v4"))  # 40x: fine


def test_a_whole_slide_job_at_an_implausible_resolution_fails_in_one_line(tmp_path, capsys):
    from PIL import Image

    from napari_nucleiseg.cli.main import main

    image = tmp_path / "tiny.png"
    Image.fromarray(np.full((500, 500, 3), 200, np.uint8)).save(image)
    t0 = time.perf_counter()
    code = main(
        ["segment", str(image), "--out", str(tmp_path / "out"), "--mpp", "40", "--whole-slide"]
    )
    err = capsys.readouterr().err
    assert code == 1 and time.perf_counter() - t0 < 60
    assert f"{image}: the input at 40 µm/px is 80x coarser than {DEFAULT_NUCLEI_MODEL}" in err
    assert "Traceback" not in err
