"""The nucleiseg command line, run as a user runs it (a subprocess)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import shared_slide


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.real_slides
def test_info_reports_levels_and_mpp():
    out = run(
        "info", shared_slide("CMU-1-Small-Region.svs"), shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    )
    assert out.returncode == 0, out.stderr
    assert "0.499 µm/px (file)" in out.stdout
    assert "level 0: 2220 x 2967 px (width x height)" in out.stdout
    assert "level 1: 2221 x 1783 px (width x height)" in out.stdout
    assert "states no µm/px" in out.stderr


@pytest.mark.real_slides
def test_info_json_says_which_size_is_which():
    out = run("info", shared_slide("CMU-1-Small-Region.svs"), "--json")
    assert out.returncode == 0, out.stderr
    (meta,) = json.loads(out.stdout)
    assert meta["level_shapes"] == [[2967, 2220]]  # kept: [height, width], array order
    assert meta["level_sizes_wh"] == [[2220, 2967]]  # the text's order: [width, height]


def test_info_json_and_override(demo):
    out = run("info", demo.slide, "--mpp", "0.25", "--json")
    assert out.returncode == 0, out.stderr
    (meta,) = json.loads(out.stdout)
    assert meta["mpp"] == 0.25 and meta["mpp_source"] == "override" and meta["mpp_file"] == 0.5
    assert meta["level_sizes_wh"] == [[w, h] for h, w in meta["level_shapes"]]
    text = run("info", demo.slide)
    h, w = meta["level_shapes"][0]
    assert f"level 0: {w} x {h} px (width x height)" in text.stdout


def test_bad_files_are_named_and_exit_non_zero(tmp_path, demo):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all" * 100)
    out = run("info", demo.slide, bad, tmp_path / "missing.ndpi")
    assert out.returncode == 1
    assert "broken.svs" in out.stderr and "missing.ndpi: no such file" in out.stderr
    assert "Traceback" not in out.stderr
    assert "demo_he.tif" in out.stdout  # the good slide is still reported


def test_tissue_writes_mask_and_tiles(tmp_path, demo):
    out = run(
        "tissue", demo.slide, "--out", tmp_path / "mask.png", "--tiles", tmp_path / "tiles.json"
    )
    assert out.returncode == 0, out.stderr
    tiles = json.loads((tmp_path / "tiles.json").read_text())
    assert tiles["tile_px"] == 512 and 0 < len(tiles["tiles"]) < 48
    assert (tmp_path / "mask.png").exists()


def test_demo_command(tmp_path):
    out = run("demo", "--out", tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "demo_he.tif").exists() and "nuclei at 0.5 µm/px" in out.stdout
    # As readable as any file the user writes (the subprocess has this process's umask).
    umask = os.umask(0)
    os.umask(umask)
    for name in ("demo_he.tif", "demo_he_labels.tif"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_non_positive_sizes_are_refused(demo):
    out = run("tissue", demo.slide, "--tile-um", "0")
    assert out.returncode == 2 and "must be greater than 0" in out.stderr
