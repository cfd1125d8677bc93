"""The npe2 manifest: found through the package in this install, shipped in the wheel, and every
entry point it names imports."""

import importlib
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROOT_MANIFEST = REPO / "napari.yaml"


def test_manifest_is_found_by_npe2_through_the_installed_package():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    mf = pm.get_manifest("napari-nucleiseg")
    assert mf.display_name == "NucleiSeg"
    packaged = resources.files("napari_nucleiseg") / "napari.yaml"
    assert packaged.read_text() == ROOT_MANIFEST.read_text()
    readers = [r for r in mf.contributions.readers]
    assert any("*.svs" in r.filename_patterns for r in readers)


def test_every_manifest_command_imports():
    data = yaml.safe_load(ROOT_MANIFEST.read_text())
    commands = data["contributions"]["commands"]
    assert len(commands) >= 3
    for cmd in commands:
        module, _, attr = cmd["python_name"].partition(":")
        obj = getattr(importlib.import_module(module), attr)
        assert callable(obj), cmd["id"]
    ids = {c["id"] for c in commands}
    used = [r["command"] for r in data["contributions"]["readers"]]
    used += [w["command"] for w in data["contributions"]["widgets"]]
    used += [s["command"] for s in data["contributions"]["sample_data"]]
    assert set(used) <= ids


def test_reader_claims_slides_and_declines_others(tmp_path):
    from napari_nucleiseg._napari._reader import napari_get_reader

    assert napari_get_reader("x/slide.svs") is not None
    assert napari_get_reader(["a.ndpi", "b.mrxs"]) is not None
    assert napari_get_reader("image.csv") is None


@pytest.mark.timeout(300)
def test_wheel_ships_the_manifest_inside_the_package(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("napari_nucleiseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_nucleiseg/napari.yaml" in names
        assert zf.read("napari_nucleiseg/napari.yaml").decode() == ROOT_MANIFEST.read_text()
        ep = next(n for n in names if n.endswith("entry_points.txt"))
        eps = zf.read(ep).decode()
        assert "[napari.manifest]" in eps and "napari_nucleiseg:napari.yaml" in eps
        assert "nucleiseg = napari_nucleiseg.cli.main:main" in eps
