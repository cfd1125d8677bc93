"""What a command may replace, and what it must leave alone (found by a fault audit of the
command line): a rerun that fails keeps the last good results; an input, another image's
results, a folder of someone else's files or a device are never overwritten; a run that
produced nothing leaves an earlier table as it was.

Each case runs the real command line on real files and checks what is on disk afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_faults_cli import cli, everything

from napari_nucleiseg.io.output import OutputError, check_output_file, write_together


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- write_together
def test_a_pair_that_fails_half_way_puts_back_the_files_it_replaced(tmp_path):
    """Was: the new labels replaced the old, the table failed, and the rollback deleted the
    labels: a failed rerun cost the last good result."""
    labels, table = tmp_path / "x.tif", tmp_path / "x.csv"
    labels.write_text("old labels")
    table.write_text("old table")

    def write_table(tmp):
        tmp.write_text("new table")
        # Something makes the table's name unusable between writing and renaming (here a
        # folder appears there): the rename fails after the labels were already replaced.
        table.unlink()
        (table / "inside").mkdir(parents=True)

    with pytest.raises(OutputError, match="x.csv"):
        write_together({labels: lambda tmp: tmp.write_text("new labels"), table: write_table})
    assert labels.read_text() == "old labels"
    assert everything(tmp_path) == ["x.csv", "x.csv/inside", "x.tif"]  # no temporaries


def test_a_device_or_a_pipe_is_refused_not_replaced(tmp_path):
    """Was: ``--tiles /dev/full`` reported "wrote /dev/full" and replaced the device by a file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for check in (
        lambda: check_output_file(fifo),
        lambda: write_together({fifo: lambda tmp: tmp.write_text("x")}),
    ):
        with pytest.raises(OutputError, match="not a regular file"):
            check()
    assert fifo.is_fifo()
    with pytest.raises(OutputError, match="it is an input"):
        check_output_file(tmp_path / "sub" / ".." / "pipe", inputs=[fifo])


# --------------------------------------------------------------------------- segment
def test_segment_never_replaces_its_input_or_another_images_results(png, tmp_path, capsys):
    from PIL import Image

    a = png("a/x.png")
    b = png("b/x.png")
    image_tif = tmp_path / "c" / "y.tif"
    image_tif.parent.mkdir()
    Image.open(a).save(image_tif)
    before = digest(image_tif)

    # Its own labels would be written over it.
    code, _, err = cli(capsys, "segment", image_tif, "--out", image_tif.parent, "--mpp", 0.25)
    assert code == 1 and digest(image_tif) == before
    assert err == [
        f"error: {image_tif}: its results would replace the image itself, so it was not "
        "segmented; segment it into another --out folder, or move that file"
    ]

    out = tmp_path / "out"
    assert cli(capsys, "segment", a, "--out", out, "--mpp", 0.25, "--method", "classical")[0] == 0
    first = digest(out / "x.tif")
    # The same image again: its own results are replaced (a rerun).
    assert cli(capsys, "segment", a, "--out", out, "--mpp", 0.25, "--method", "classical")[0] == 0
    # The same image after its folder moved: still its own results, replaced.
    moved = tmp_path / "moved" / "x.png"
    moved.parent.mkdir()
    a.rename(moved)
    args = ("--out", out, "--mpp", 0.25, "--method", "classical")
    assert cli(capsys, "segment", moved, *args)[0] == 0
    moved.rename(a)
    assert cli(capsys, "segment", a, *args)[0] == 0
    first = digest(out / "x.tif")
    # Another image of the same name: refused, the first image's results kept.
    code, _, err = cli(capsys, "segment", b, "--out", out, "--mpp", 0.25, "--method", "classical")
    assert code == 1 and digest(out / "x.tif") == first
    assert len(err) == 1 and f"holds the results of another image ({a})" in err[0]
    # A file of the same name that is no result of ours: refused too.
    (out / "x.tif").write_bytes(b"someone's notes")
    code, _, err = cli(capsys, "segment", a, "--out", out, "--mpp", 0.25, "--method", "classical")
    assert code == 1 and (out / "x.tif").read_bytes() == b"someone's notes"
    assert "exists and is not a nuclei result" in err[0]


def test_a_folder_segmented_into_itself_runs_again_on_its_images_only(png, tmp_path, capsys):
    """Was: the second run segmented the first run's label TIFFs as if they were images."""
    folder = png("imgs/one.png").parent
    png("imgs/two.png")
    args = ("segment", folder, "--out", folder, "--mpp", 0.25, "--method", "classical")
    assert cli(capsys, *args)[0] == 0
    code, out, err = cli(capsys, *args)
    assert code == 0 and err == []
    assert sorted(Path(line.split(":")[0]).name for line in out) == ["one.png", "two.png"]
    # Named on its own, a label TIFF is refused in one line.
    code, _, err = cli(capsys, "segment", folder / "one.tif", "--out", tmp_path / "o")
    assert code == 1 and err == [
        f"error: {folder / 'one.tif'}: is the nuclei labels of {folder / 'one.png'}, "
        "not an image to segment"
    ]


# --------------------------------------------------------------------------- classify
def test_classify_keeps_its_inputs_and_an_earlier_table(png, tmp_path, capsys):
    image = png("tile.png")
    before = digest(image)
    code, _, err = cli(capsys, "classify", image, "--mpp", 0.5, "--out", image)
    assert code == 1 and digest(image) == before and "it is an input" in err[0]

    table = tmp_path / "keep.csv"
    table.write_text("file,p_tumour\nold,0.5\n")
    code, _, err = cli(capsys, "classify", tmp_path / "nothing.png", "--out", table)
    assert code == 1 and table.read_text() == "file,p_tumour\nold,0.5\n"
    assert err[-1] == f"nothing classified; {table} was not written"

    code, _, err = cli(
        capsys, "classify", image, "--project", tmp_path / "no-project", "--out", table
    )
    assert code == 2 and "not a napari-nucleiseg project" in err[0]  # a bad option


def test_classify_lists_the_bad_files_of_a_batch_in_a_last_line(png, tmp_path, capsys):
    """As segment and info do (the guide's promise); classify printed no ``failed:`` line."""
    good, missing = png("good.png"), tmp_path / "missing.png"
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "p.csv"
    code, _, err = cli(capsys, "classify", good, bad, missing, "--mpp", 0.5, "--out", out)
    assert code == 1 and len(out.read_text().splitlines()) == 2
    assert err[-1] == f"failed: {bad}, {missing}"


def test_classify_names_rows_by_path_when_two_images_share_a_name(png, tmp_path, capsys):
    a, b, c = png("a/x.png"), png("b/x.png"), png("c/y.png")
    out = tmp_path / "p.csv"
    assert cli(capsys, "classify", a, b, c, "--mpp", 0.5, "--out", out)[0] == 0
    rows = out.read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(a), str(b), "y"]


# --------------------------------------------------------------------------- normalize
def test_normalize_never_deletes_a_folder_it_did_not_write(png, tmp_path, capsys):
    """Was: ``--out X.zarr`` deleted whatever folder was there, a finished whole-slide store
    included."""
    image = png("tile.png")
    folder = tmp_path / "results.zarr"
    (folder / "keep").mkdir(parents=True)
    (folder / "keep" / "notes.txt").write_text("mine")
    args = ("normalize", image, "--mpp", 0.5, "--method", "reinhard", "--target", image)
    code, _, err = cli(capsys, *args, "--out", folder)
    assert code == 1 and (folder / "keep" / "notes.txt").read_text() == "mine"
    assert "is not an image written by nucleiseg" in err[0]
    # Its own earlier output is replaced by a rerun.
    ours = tmp_path / "norm.zarr"
    assert cli(capsys, *args, "--out", ours)[0] == 0
    (ours / ".DS_Store").write_bytes(b"a file browser's")  # not data: no reason to refuse
    assert cli(capsys, *args, "--out", ours)[0] == 0
    assert json.loads((ours / ".zattrs").read_text())["nucleiseg"]["source"] == str(image)


# --------------------------------------------------------------------------- other commands
def test_demo_train_and_release_refuse_bad_places_in_one_line(tmp_path, capsys):
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    code, _, err = cli(capsys, "demo", "--out", a_file)
    assert code == 1 and err == [
        f"error: {a_file}: cannot be the output folder: {a_file} is a file, not a folder"
    ]
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", tmp_path / "nowhere", "--out", run)
    assert code == 1 and err == [f"error: {tmp_path / 'nowhere'}: no such folder"]
    assert not run.exists()  # no empty run folder left behind
    code, _, err = cli(capsys, "train", "--data", tmp_path, "--out", run)
    assert code == 1 and "not a nuclei data set (no index.json" in err[0]
    code, _, err = cli(
        capsys, "release-model", run, "--name", "m", "--version", "1", "--train-data", tmp_path,
        "--test-data", tmp_path,
    )  # fmt: skip
    assert code == 1 and err == [
        f"error: {run}: not a training run (no config.json and checkpoint.pt; "
        "`nucleiseg train --out` makes one)"
    ]


def test_train_names_a_missing_or_unreadable_file_of_the_data_set(tmp_path, capsys):
    """Was: a traceback from tifffile or PIL, after the run folder had been made."""
    import tifffile
    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    index = {"name": "d", "mpp": 0.25, "images": [{"stem": "a"}]}
    (data / "index.json").write_text(json.dumps(index))
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(data / "images" / "a.png")
    run = tmp_path / "run"
    labels = data / "labels" / "a.tif"
    code, _, err = cli(capsys, "train", "--data", data, "--out", run, "--iters", "1")
    assert code == 1 and err == [
        f"error: {labels}: no such file (listed in the data set's index.json)"
    ]
    labels.write_bytes(b"not a tiff")
    code, _, err = cli(capsys, "train", "--data", data, "--out", run, "--iters", "1")
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {labels}: cannot be read (")
    tifffile.imwrite(labels, np.zeros((30, 40), np.int32))
    code, _, err = cli(capsys, "train", "--data", data, "--out", run, "--iters", "1")
    assert code == 1 and err == [
        f"error: {labels}: labels 40x30 px do not match their image a.png (40x40 px)"
    ]
    assert not run.exists()  # no empty run folder left behind


@pytest.mark.parametrize(
    "option, message",
    [
        ("--batch 0", "--batch must be at least 1, got 0"),
        ("--iters 0", "--iters must be at least 1, got 0"),
        ("--lr -1", "--lr must be above 0, got -1.0"),
        ("--model-mpp 0", "--model-mpp must be above 0, got 0.0"),
        ("--extra-share 0.5", "--extra-share given without --extra-data"),
        ("--cycles 1,x", "--cycles: give whole numbers separated by commas, got '1,x'"),
        ("--widths 4", "--widths must be 2 to 8 positive numbers, got (4,)"),
        ("--patch 7", "--patch must be a multiple of 8 (the network's 4 levels) and at least 16"),
        ("--init-from nope", "--init-from: no model named 'nope'; available: "),
        ("--init-from no.safetensors", "--init-from no.safetensors: no such weights file"),
        ("--log-every 0", "--log-every must be at least 1, got 0"),
        ("--seed -1", "--seed must be 0 or more, got -1"),
        ("--cycles 2,2 --cycle-lr-decay -1", "--cycle-lr-decay must be above 0, got -1.0"),
    ],
)
def test_train_refuses_bad_options_before_any_work(tmp_path, capsys, option, message):
    """Was: tracebacks (ZeroDivisionError, size mismatch…) after the run folder was made, or
    a run that trained nothing."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "index.json").write_text("{}")  # never read: the options are refused first
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", data, "--out", run, *option.split())
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not run.exists()


def test_train_refuses_to_continue_a_run_of_another_network(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "index.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"widths": [4, 8], "decoder": "double"}))
    code, _, err = cli(capsys, "train", "--data", data, "--out", run, "--widths", "4,16")
    assert code == 2 and err == [
        f"error: {run} holds a run of another network (--widths 4,8 --decoder double): give "
        "those to continue it, or another --out for a new run"
    ]
    # A run from before the decoder option (no "decoder" in its config) was a double one.
    (run / "config.json").write_text(json.dumps({"widths": [4, 8]}))
    code, _, err = cli(capsys, "train", "--data", data, "--out", run, "--widths", "4,16")
    assert code == 2 and "(--widths 4,8 --decoder double)" in err[0]


def test_release_model_refuses_to_replace_a_model_unless_told(tmp_path, capsys):
    """Was: the documented recipes, pasted, replaced the installed shipped model's files."""
    from napari_nucleiseg.models import MODELS_DIR

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"")
    card = MODELS_DIR / "nuclei-unet-v5.json"
    before = digest(card)
    data = tmp_path / "data"  # a data set folder: the refusal comes before it is read
    data.mkdir()
    (data / "index.json").write_text("{}")
    code, _, err = cli(
        capsys, "release-model", run, "--name", "nuclei-unet-v5", "--version", "5.0.0",
        "--train-data", data, "--test-data", data,
    )  # fmt: skip
    assert code == 1 and digest(card) == before
    assert err == [
        f"error: {card} exists: releasing would replace that model; give --out-dir (e.g. "
        "runs/release) or another --name, or --replace to replace it"
    ]


def test_view_without_a_display_or_with_a_bad_file_is_one_line(tmp_path):
    """Was: Qt's page on platform plugins and an abort (exit 134), or a traceback and exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    run = subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", "view", tmp_path / "x.svs"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 1 and run.stderr.splitlines() == [
        "error: no display to open napari on (DISPLAY is not set): run it on a desktop, over "
        "ssh -X, or under xvfb-run"
    ]
    bad = tmp_path / "text.svs"
    bad.write_text("not a slide")
    env["QT_QPA_PLATFORM"] = "offscreen"  # a display is there; the file is what is wrong
    run = subprocess.run(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", "view", bad, "--screenshot", "s.png"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 1 and run.stderr.startswith(f"error: {bad}: ")
    assert len(run.stderr.splitlines()) == 1 and not (tmp_path / "s.png").exists()


# --------------------------------------------------------------------------- OpenSlide
CLOSE_UNDER_READS = """
import sys, threading
from napari_nucleiseg.io import SlideError, open_slide

slide = open_slide(sys.argv[1])
reading = threading.Barrier(5)  # each thread has its own OpenSlide handle and reads on
refused = []

def read():
    for i in range(1_000_000):
        if i == 3:
            reading.wait()
        try:
            slide.read_region((i * 37) % 1500, (i * 53) % 2000, 256, 256, 0)
        except SlideError:
            refused.append(i)
            return

threads = [threading.Thread(target=read) for _ in range(4)]
for t in threads:
    t.start()
reading.wait()
slide.close()
for t in threads:
    t.join()
print("refused after close:", len(refused))
"""


def test_closing_a_slide_while_other_threads_read_it_does_not_abort(tmp_path):
    """Was: Ctrl-C while dask's threads read a slide aborted the process inside OpenSlide
    (exit 134: "_openslide_tiffcache_destroy: assertion failed"), because closing freed the
    handles those reads were using. Now close() waits for reads under way, and later reads are
    refused by name. In a child process: an abort would take the test runner with it."""
    from conftest import shared_slide

    slide = shared_slide("CMU-1-Small-Region.svs")
    script = tmp_path / "close.py"
    script.write_text(CLOSE_UNDER_READS)
    for _ in range(3):
        run = subprocess.run(
            [sys.executable, script, slide], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == "refused after close: 4"


def test_reads_after_close_are_refused_by_name():
    from conftest import shared_slide

    from napari_nucleiseg.io import SlideError, open_slide

    path = shared_slide("CMU-1-Small-Region.svs")
    slide = open_slide(path)
    assert np.asarray(slide.read_region(0, 0, 64, 64, 0)).shape == (64, 64, 3)
    slide.close()
    with pytest.raises(SlideError, match="closed"):
        slide.read_region(0, 0, 64, 64, 0)


# --------------------------------------------------------------------------- what is said
def test_an_mpp_that_replaces_a_stated_one_is_noted(ome_tiff, tmp_path, capsys):
    """``--mpp`` replaces what a file states (the way to fix a wrong one), but was silent: a
    wrong value gave a quarter of the nuclei and no word."""
    out = tmp_path / "p.csv"
    code, _, err = cli(capsys, "classify", ome_tiff, "--mpp", 0.5, "--out", out)
    assert code == 0
    assert err[0] == f"note: {ome_tiff.name} states 0.25 µm/px; --mpp 0.5 is used instead"
    code, _, err = cli(capsys, "classify", ome_tiff, "--mpp", 0.25, "--out", out)
    assert code == 0 and not [line for line in err if line.startswith("note:")]


def test_info_ends_a_batch_with_the_files_that_failed(ome_tiff, tmp_path, capsys):
    missing = tmp_path / "missing.svs"
    code, _, err = cli(capsys, "info", ome_tiff, missing)
    assert code == 1 and err[-1] == f"failed: {missing}"


def test_eval_with_nothing_to_compare_says_so_before_reading_anything(tmp_path, capsys):
    truth = tmp_path / "truth"
    truth.mkdir()
    import tifffile

    for name in ("a", "b"):
        tifffile.imwrite(truth / f"{name}.tif", np.zeros((8, 8), np.uint16))
    code, _, err = cli(capsys, "eval", tmp_path / "nothing", truth)
    assert code == 2 and err == [f"error: {tmp_path / 'nothing'}: no such folder"]
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "eval", tmp_path / "empty", truth)
    assert code == 2 and err == [
        f"error: {tmp_path / 'empty'}: no predictions matching the ground-truth names"
    ]


def test_a_reader_that_goes_away_stops_the_command_quietly():
    """``nucleiseg models list | head -1`` ended in a BrokenPipeError traceback. Here the reader
    is gone before the command writes anything."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_nucleiseg.cli.main", "models", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_a_slide_smaller_than_a_tile_is_told_to_go_as_an_image(tmp_path, capsys):
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((40, 50, 3), 220, np.uint8)).save(tiny)
    code, _, err = cli(capsys, "segment", tiny, "--out", tmp_path / "o", "--whole-slide",
                       "--mpp", 0.5)  # fmt: skip
    assert code == 1 and err[-1] == (
        f"error: {tiny}: 25 x 20 µm is smaller than a whole-slide tile can be (twice the 80 µm "
        "halo, 160 µm): segment it as an image, without --whole-slide"
    )


def test_a_value_that_is_no_number_is_named_in_words(capsys):
    """argparse named the checking function: "invalid _mpp value: 'abc'"."""
    with pytest.raises(SystemExit) as stop:
        cli(capsys, "info", "x.svs", "--mpp", "abc")
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("error: argument --mpp: must be a number, got 'abc'")
    )


def test_normalize_refuses_a_folder_that_is_no_project(png, tmp_path, capsys):
    """Was: the folder was ignored and the shipped normaliser ran, exit 0."""
    image, out = png("tile.png"), tmp_path / "n.png"
    code, _, err = cli(
        capsys, "normalize", image, "--mpp", 0.5, "--method", "learned",
        "--project", tmp_path / "no-project", "--out", out,
    )  # fmt: skip
    assert code == 1 and "not a napari-nucleiseg project" in err[-1] and not out.exists()
