"""Faults on the output side of the command line (issue #13, part A), each as a user meets it:
clashing output names, a file in the way of the output folder, a full disk, Ctrl-C, implausible
numbers, damaged profiles and label maps, very large and very thin images.

Each case asserts the exit code, the one ``error:``/``warning:`` line naming the file, and what
is left on disk: nothing partial, no temporaries, no labels file without its table.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_nucleiseg.cli.main import main


def cli(capsys, *args) -> tuple[int, list[str], list[str]]:
    """``nucleiseg ARGS`` in this process: exit code, stdout lines, stderr lines."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def everything(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, hidden ones included, as relative paths."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


# --------------------------------------------------------------------------- output names
def test_inputs_never_share_an_output(png, tmp_path, capsys):
    a, b = png("a/x.png"), png("b/x.png")
    c1, c2 = png("case.1.png"), png("case.2.png")
    out = tmp_path / "O"
    code, stdout, err = cli(
        capsys, "segment", a, b, c1, c2, "--out", out, "--mpp", "0.5", "--method", "classical"
    )
    assert code == 1
    (line,) = [e for e in err if e.startswith("error: ")]
    assert line.startswith(f"error: {a}, {b}: their results would share the names x.csv, x.tif")
    assert "separate --out folders" in line
    assert err[-1] == f"failed: {a}, {b}"
    # was: case.1 and case.2 both written to case.tif/case.csv, a/x and b/x to x.tif/x.csv
    assert everything(out) == ["case.1.csv", "case.1.tif", "case.2.csv", "case.2.tif"]
    assert any(s.endswith("case.2.tif") for s in stdout)


def test_the_same_input_twice_is_segmented_once(png, tmp_path, capsys):
    a = png("x.png")
    code, stdout, err = cli(
        capsys, "segment", a, a, "--out", tmp_path / "O", "--mpp", "0.5", "--method", "classical"
    )
    assert code == 0 and err == [] and len(stdout) == 1


def test_output_stem_keeps_all_but_the_last_suffix():
    from napari_nucleiseg.io.output import output_stem

    assert output_stem("a/case.1.png") == "case.1"
    assert output_stem("slide.ome.tif") == "slide"
    assert output_stem("x.svs") == "x"
    assert output_stem("noext") == "noext"


# --------------------------------------------------------------------------- output folder
def test_a_file_in_the_way_of_the_output_folder(png, tmp_path, capsys):
    a = png("x.png")
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    code, _, err = cli(
        capsys, "segment", a, "--out", blocker / "sub", "--mpp", "0.5", "--method", "classical"
    )
    assert code == 1  # was: NotADirectoryError traceback after segmenting
    assert err == [
        f"error: {blocker / 'sub'}: cannot be the output folder: {blocker} is a file, not a folder"
    ]
    assert everything(tmp_path) == ["somefile", "x.png"]


def test_normalize_and_tissue_with_a_file_in_the_way(png, tmp_path, capsys):
    a = png("x.png")
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    target = blocker / "sub" / "n.png"
    code, _, err = cli(
        capsys, "normalize", a, "--method", "reinhard", "--target", a, "--out", target,
        "--mpp", "0.5",
    )  # fmt: skip
    assert code == 1
    assert err == [f"error: {target}: cannot create its folder: {blocker} is a file, not a folder"]

    mask = blocker / "mask.png"
    code, stdout, err = cli(capsys, "tissue", a, "--mpp", "0.5", "--out", mask)
    assert code == 1 and stdout == []  # refused before the mask was computed
    assert err == [f"error: {mask}: cannot create its folder: {blocker} is a file, not a folder"]
    assert everything(tmp_path) == ["somefile", "x.png"]


def test_tissue_outputs_never_overwrite_the_slide(png, capsys):
    a = png("x.png")
    before = a.read_bytes()
    code, _, err = cli(capsys, "tissue", a, "--mpp", "0.5", "--out", a)
    assert code == 1 and err == [f"error: {a}: --out would overwrite the slide"]
    assert a.read_bytes() == before  # was: the slide replaced by its mask


# --------------------------------------------------------------------------- full disk
def _disk_full(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_leaves_no_labels_without_their_table(png, tmp_path, capsys, monkeypatch):
    from napari_nucleiseg.segmentation import measure

    good, full = png("good.png"), png("full.png")
    real = measure.write_csv

    def write_csv(table, path):
        if "full" in Path(path).name:
            Path(path).write_text("label,area\n1,")  # half a table, then the disk is full
            _disk_full()
        real(table, path)

    monkeypatch.setattr(measure, "write_csv", write_csv)
    out = tmp_path / "O"
    code, stdout, err = cli(
        capsys, "segment", full, good, "--out", out, "--mpp", "0.5", "--method", "classical"
    )
    assert code == 1
    assert err[0] == (
        f"error: {out / 'full.csv'}: cannot write (no space left on the device); "
        "nothing was written for full.png"
    )
    assert err[1:] == [f"failed: {full}"]
    # was: full.tif left without full.csv (and a traceback that stopped the batch)
    assert everything(out) == ["good.csv", "good.tif"]
    assert len(stdout) == 1 and "good.png" in stdout[0]


def test_disk_full_in_normalize_and_tissue(png, tmp_path, capsys, monkeypatch):
    from PIL import Image

    a = png("x.png")
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)  # a whole file, then the disk is full
        _disk_full()

    monkeypatch.setattr(Image.Image, "save", save)
    out = tmp_path / "O" / "n.png"
    code, _, err = cli(
        capsys, "normalize", a, "--method", "reinhard", "--target", a, "--out", out,
        "--mpp", "0.5",
    )  # fmt: skip
    assert code == 1
    assert err == [f"error: {out}: cannot write (no space left on the device)"]
    assert everything(tmp_path / "O") == []

    mask, tiles = tmp_path / "T" / "mask.png", tmp_path / "T" / "tiles.json"
    code, _, err = cli(capsys, "tissue", a, "--mpp", "0.5", "--out", mask, "--tiles", tiles)
    assert code == 1 and err == [f"error: {mask}: cannot write (no space left on the device)"]
    assert everything(tmp_path / "T") == []  # the tiles JSON goes with its mask


def test_ctrl_c_while_writing_leaves_nothing_and_exits_130(png, tmp_path, capsys, monkeypatch):
    from napari_nucleiseg.segmentation import measure

    def interrupted(table, path):
        Path(path).write_text("label")
        raise KeyboardInterrupt

    monkeypatch.setattr(measure, "write_csv", interrupted)
    out = tmp_path / "O"
    code, _, err = cli(
        capsys, "segment", png("x.png"), "--out", out, "--mpp", "0.5", "--method", "classical"
    )
    assert code == 130 and err == ["interrupted"]
    assert not out.exists()  # no temporaries, no labels, no empty folder


def test_ctrl_c_in_any_command_exits_130(png, capsys, monkeypatch):
    from napari_nucleiseg.cli import info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "cmd_info", interrupted)
    code, _, err = cli(capsys, "info", png("x.png"))
    assert code == 130 and err == ["interrupted"]


# --------------------------------------------------------------------------- numbers
def test_implausible_mpp_is_refused(png, tmp_path):
    a = png("x.png")
    for command in (["segment", a, "--out", tmp_path / "O"], ["info", a]):
        out = subprocess.run(
            [sys.executable, "-m", "napari_nucleiseg.cli.main", *map(str, command)]
            + ["--mpp", "1e-9"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr
        last = out.stderr.splitlines()[-1]
        assert "argument --mpp: 1e-9 µm/px is not a plausible pixel size" in last
        assert "between 0.05 and 50" in last
    assert not (tmp_path / "O").exists()


def test_a_resolution_the_method_cannot_use_is_one_line(png, tmp_path, capsys):
    # --mpp 40 is a plausible pixel size (a macro image) but 80x coarser than the method: the
    # tile planner refuses it; the plain path said so with a traceback.
    a = png("x.png")
    code, stdout, err = cli(
        capsys, "segment", a, "--out", tmp_path / "O", "--mpp", "40", "--method", "classical"
    )
    assert code == 1 and stdout == [] and len(err) == 1
    assert err[0].startswith(f"error: {a}: the input at 40 µm/px is 80x coarser than classical")
    assert not (tmp_path / "O").exists()


def test_tile_um_nan_is_refused(png, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["tissue", str(png("x.png")), "--mpp", "0.5", "--tile-um", "nan"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].endswith("argument --tile-um: must be greater than 0 and finite, got nan")


# --------------------------------------------------------------------------- stain profiles
@pytest.mark.parametrize(
    "junk",
    [
        {"params": 5},
        {"params": {"luminosity": [[1, 2], {"x": None}]}},
        {"stain_matrix": [[0.65, 0.70, 0.29], [0.07, 0.99, [0.1]]]},
    ],
    ids=["params-5", "nested-params", "nested-matrix"],
)
def test_a_damaged_profile_is_one_line(png, tmp_path, capsys, junk):
    a = png("x.png")
    profile = {
        "format": "napari-nucleiseg stain profile",
        "version": 1,
        "method": "macenko",
        "stain_matrix": [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]],
        "max_concentrations": [1.9, 1.0],
        **junk,
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(profile))
    code, _, err = cli(
        capsys, "normalize", a, "--target", bad, "--out", tmp_path / "n.png", "--mpp", "0.5"
    )
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {bad}: ")
    code, _, err = cli(
        capsys, "segment", a, "--normalize", "macenko", "--target", bad, "--out", tmp_path / "O",
        "--mpp", "0.5", "--method", "classical",
    )  # fmt: skip
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {bad}: ")
    assert everything(tmp_path) == ["bad.json", "x.png"]


def test_save_profile_into_a_missing_folder(png, tmp_path, capsys):
    a = png("x.png")
    prof = tmp_path / "new" / "deeper" / "lab.json"
    code, stdout, err = cli(
        capsys, "normalize", a, "--method", "reinhard", "--target", a, "--out",
        tmp_path / "n.png", "--save-profile", prof, "--mpp", "0.5",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(prof.read_text())["method"] == "reinhard"
    assert stdout[0] == f"profile: {prof}"


def test_save_profile_where_it_cannot_go(png, tmp_path, capsys):
    a = png("x.png")
    blocker = tmp_path / "somefile"
    blocker.write_text("")
    prof = blocker / "lab.json"
    code, _, err = cli(
        capsys, "normalize", a, "--method", "reinhard", "--target", a, "--out",
        tmp_path / "n.png", "--save-profile", prof, "--mpp", "0.5",
    )  # fmt: skip
    assert code == 1
    assert err == [f"error: {prof}: cannot create its folder: {blocker} is a file, not a folder"]
    assert not (tmp_path / "n.png").exists()  # refused before the work, not after


# --------------------------------------------------------------------------- eval
def _labels(tmp_path, field_shape=(64, 64)):
    """A ground-truth map of four separate nuclei and the folders eval reads."""
    gt = np.zeros(field_shape, np.uint16)
    for i, (y, x) in enumerate([(10, 10), (10, 40), (40, 10), (40, 40)], start=1):
        gt[y : y + 12, x : x + 12] = i
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    return gt


def test_eval_refuses_or_warns_per_image_and_goes_on(tmp_path, capsys):
    import tifffile

    gt = _labels(tmp_path)
    names = ["case.1", "case.2", "binary", "floaty", "prob", "negative", "shape", "corrupt"]
    for n in names:
        tifffile.imwrite(tmp_path / "gt" / f"{n}.tif", gt)
    pred = tmp_path / "pred"
    tifffile.imwrite(pred / "case.1.tif", gt)
    tifffile.imwrite(pred / "case.2.tif", gt)
    tifffile.imwrite(pred / "binary.tif", (gt > 0).astype(np.uint8))
    tifffile.imwrite(pred / "floaty.tif", gt.astype(np.float32))
    tifffile.imwrite(pred / "prob.tif", gt.astype(np.float32) / 4)
    tifffile.imwrite(pred / "negative.tif", gt.astype(np.int16) * -1)
    tifffile.imwrite(pred / "shape.tif", gt[:50])
    (pred / "corrupt.tif").write_bytes((pred / "case.1.tif").read_bytes()[:100])

    code, stdout, err = cli(capsys, "eval", pred, tmp_path / "gt")
    assert code == 1
    said = [line for line in err if line.startswith(("error: ", "warning: "))]
    lines = {line.split(": ", 2)[1]: line for line in said}
    assert len(lines) == len(said)  # one line per image
    assert set(lines) == {str(pred / f"{n}.tif") for n in names[2:]}, err
    assert lines[str(pred / "binary.tif")].startswith("warning: ")
    assert "binary mask" in lines[str(pred / "binary.tif")]
    assert lines[str(pred / "floaty.tif")].startswith("warning: ")
    for n in ("prob", "negative", "shape", "corrupt"):
        assert lines[str(pred / f"{n}.tif")].startswith("error: "), lines
    assert "non-integer" in lines[str(pred / "prob.tif")]
    assert "negative labels" in lines[str(pred / "negative.tif")]
    assert "differs from its ground truth" in lines[str(pred / "shape.tif")]
    assert "not a readable label TIFF" in lines[str(pred / "corrupt.tif")]
    assert "Traceback" not in "\n".join(err)
    rows = {line.split()[0] for line in stdout[1:-3]}
    # was: case.1 and case.2 collapsed into one "case", and the first mismatch stopped it all
    assert rows == {"case.1", "case.2", "binary", "floaty"}


def test_eval_with_every_image_refused(tmp_path, capsys):
    import tifffile

    gt = _labels(tmp_path)
    tifffile.imwrite(tmp_path / "gt" / "a.tif", gt)
    (tmp_path / "pred" / "a.tif").write_bytes(b"II*\x00garbage")
    code, stdout, err = cli(capsys, "eval", tmp_path / "pred", tmp_path / "gt")
    assert code == 1 and stdout == []
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'pred' / 'a.tif'}: ")


# --------------------------------------------------------------------------- info, thin images
def test_info_reads_headers_only(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from napari_nucleiseg.io import image_backend

    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 5000), (230, 180, 200)).save(big)

    def no_decoding(path):
        raise AssertionError("info decoded the pixels")

    monkeypatch.setattr(image_backend, "load_rgb", no_decoding)
    code, stdout, err = cli(capsys, "info", big, "--mpp", "0.5")
    assert code == 0, err
    assert stdout[1].startswith("  level 0: 6000 x 5000 px")


def test_a_truncated_png_is_still_refused_at_open(tmp_path, small_field):
    from PIL import Image

    from napari_nucleiseg.io import CorruptSlideError, open_slide

    p = tmp_path / "cut.png"
    Image.fromarray(np.tile(small_field, (4, 4, 1))).save(p)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CorruptSlideError, match="cut.png: the image is corrupt or truncated"):
        open_slide(p, mpp=0.5)


def test_a_thin_image_has_valid_levels(tmp_path, capsys):
    from PIL import Image

    from napari_nucleiseg.io import open_slide

    p = tmp_path / "thin.png"
    rgb = np.full((3, 50_000, 3), 200, np.uint8)
    rgb[1, ::7] = 40
    Image.fromarray(rgb).save(p)
    code, stdout, err = cli(capsys, "info", p, "--mpp", "0.5")
    assert code == 0, err  # was: "level 2 has zero size"
    slide = open_slide(p, mpp=0.5)
    assert all(h >= 1 and w >= 1 for h, w in slide.level_shapes)
    for level in range(slide.level_count):
        h, w = slide.level_shapes[level]
        assert slide.read_region(0, 0, w, h, level).shape == (h, w, 3)
    np.testing.assert_array_equal(slide.read_region(0, 0, 50_000, 3), rgb)


# --------------------------------------------------------------------------- Ctrl-C, whole slides
def test_ctrl_c_in_a_whole_slide_cohort_exits_130(png, tmp_path, capsys, monkeypatch):
    from napari_nucleiseg.wholeslide import cohort

    def interrupted_cohort(slides, out_dir, **kwargs):
        yield cohort.SlideStarted(str(slides[0]), 0, len(slides))
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort, "run_cohort", interrupted_cohort)
    code, stdout, err = cli(
        capsys, "segment", png("x.png"), "--whole-slide", "--out", tmp_path / "O",
        "--mpp", "0.5", "--method", "classical",
    )  # fmt: skip
    assert code == 130 and stdout == []
    assert err[-1].startswith("interrupted")
    # Two slides: neither failed; both are named as not finished (was: a "failed:" line that
    # listed the slide that never started).
    code, _, err = cli(
        capsys, "segment", png("x.png"), png("y.png"), "--whole-slide", "--out",
        tmp_path / "O", "--mpp", "0.5", "--method", "classical",
    )  # fmt: skip
    assert code == 130 and err[-2].startswith("interrupted")
    x, y = tmp_path / "x.png", tmp_path / "y.png"
    assert err[-1] == f"not finished: {x}, {y}" and not any(e.startswith("failed") for e in err)


def test_sigint_on_a_real_whole_slide_run_exits_130(demo, tmp_path):
    """SIGINT as a terminal's Ctrl-C sends it, once the job is under way."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", "segment", str(demo.slide)]
        + ["--whole-slide", "--out", str(tmp_path / "O"), "--method", "classical"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT, and Python then keeps ignoring it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if "tiles (" in line:  # the first progress line: tiles are being segmented
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    lines += rest.splitlines()
    assert proc.returncode == 130, lines
    assert lines[-1].startswith("interrupted") and "Traceback" not in "\n".join(lines)


def test_a_killed_writers_temporaries_are_cleared_and_a_running_ones_kept(png, tmp_path, capsys):
    """SIGKILL leaves ``.nucleiseg-<pid>-….tmp`` in --out; the next write there removes it, but
    not the folder of a writer that still runs (another job into the same --out)."""
    out = tmp_path / "O"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = out / f".nucleiseg-{dead.stdout.strip()}-0123456789ab.tmp"
        running = out / f".nucleiseg-{alive.pid}-ba9876543210.tmp"
        for d in (stale, running):
            d.mkdir()
            (d / "x.tif").write_bytes(b"half a file")
        code, _, err = cli(
            capsys, "segment", png("x.png"), "--out", out, "--mpp", "0.5", "--method", "classical"
        )
        assert code == 0, err
        assert not stale.exists() and running.exists()
        assert sorted(p.name for p in out.iterdir()) == [running.name, "x.csv", "x.tif"]
    finally:
        alive.kill()
        alive.wait()


def test_ctrl_c_while_the_pool_starts_or_joins_workers_waits_for_them():
    """Ctrl-C inside the pool's submit or close takes effect once the workers are known and
    joined (the segmentation fault CI hit: a thread started but not yet registered by the pool
    read a slide the job had closed)."""
    import signal
    import threading

    from napari_nucleiseg.wholeslide.job import _Threads

    # Python's own handler, as a terminal's python has (a suite run as a background job ignores
    # SIGINT).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    runner = _Threads(2)
    ran = threading.Event()
    # The signal lands while the first worker thread is being started.
    runner.pool._adjust_thread_count = _with_sigint(runner.pool._adjust_thread_count)
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.submit(ran.set)
        # Ctrl-C took effect only once the thread was started and the pool knew of it ...
        assert len(runner.pool._threads) == 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        runner.close()
        signal.signal(signal.SIGINT, outer)
    # ... so closing waited for it, and the handler is Python's again.
    assert ran.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("nucleiseg_")]


def _with_sigint(fn):
    import signal

    def wrapped(*a, **k):
        signal.raise_signal(signal.SIGINT)
        return fn(*a, **k)

    return wrapped


def test_a_bad_environment_setting_is_refused_like_a_bad_option(png, tmp_path, capsys, monkeypatch):
    """Was: a ValueError traceback from deep in the predictor, after the work had started."""
    monkeypatch.setenv("NUCLEISEG_TTA", "7")
    code, _, err = cli(capsys, "segment", png("a.png"), "--mpp", "0.25", "--out", tmp_path / "o")
    assert code == 2 and err == ["error: NUCLEISEG_TTA='7': use auto, off, 2 or 4"]
    assert not (tmp_path / "o").exists()


def test_an_empty_folder_or_list_of_inputs_is_an_error_not_a_silent_success(tmp_path, capsys):
    """Was: an empty list file ran nothing, printed nothing and exited 0."""
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "slides.txt"
    listing.write_text("# nothing yet\n\n")
    for given, words in [(tmp_path / "empty", "folder"), (listing, "list")]:
        code, _, err = cli(capsys, "segment", given, "--out", tmp_path / "o")
        assert code == 1 and f"error: {given}: a {words} with no slides or images in it" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "tile_um, words",
    [("100", "tiles must be at least twice nuclei-unet-v5's 80 µm halo (160 µm)"),
     ("1e9", "tiles can be at most 4096 µm (8192 px at nuclei-unet-v5's 0.5 µm/px")],
)  # fmt: skip
def test_a_whole_slide_tile_size_out_of_range_is_refused_before_any_work(
    png, tmp_path, capsys, tile_um, words
):
    """Was: reported per slide after opening it (exit 1), or 8 s in: "array is too big"."""
    image, out = png("a.png"), tmp_path / "o"
    code, _, err = cli(
        capsys, "segment", image, "--mpp", "0.5", "--out", out, "--whole-slide",
        "--method", "nuclei-unet-v5", "--tile-um", tile_um,
    )  # fmt: skip
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("tile_um", ["300", "100"])  # 100: too small for a whole slide
def test_tile_um_for_an_image_segmented_in_memory_is_noted_not_ignored(
    png, tmp_path, capsys, tile_um
):
    image = png("a.png")
    code, _, err = cli(
        capsys, "segment", image, "--mpp", "0.5", "--out", tmp_path / "o", "--tile-um", tile_um
    )
    assert code == 0 and err[0] == (
        "note: --tile-um is for whole-slide jobs; a.png is segmented in memory in the model's "
        "own tiles (add --whole-slide to tile them)"
    )
