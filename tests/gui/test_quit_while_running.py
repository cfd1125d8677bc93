"""Quitting napari while a panel's run is inside a native runtime: the process ends cleanly.

A worker thread still inside ONNX Runtime when Python shuts down is killed in its C++ code
("terminate called without an active exception", exit status 134), and a run that reports
after its panel's widgets are deleted raised on every report. Each case here is a real napari
window in a child process (the abort kills the whole process, so it cannot be the test's own):
it starts a run and quits while the run's tiles are in the network. The
child must exit 0, soon, with no traceback.
"""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent(
    """
    import atexit
    import sys
    import time


    def at_exit():  # registered before anything else, so it runs last: after the clean-up
        print("EXITING", time.monotonic(), flush=True)


    atexit.register(at_exit)
    import napari
    from qtpy.QtCore import QTimer

    case, folder = sys.argv[1], sys.argv[2]
    viewer = napari.Viewer(show=True)
    if case == "tissue-map":
        from napari_nucleiseg._napari._tissue_widget import TissueWidget

        widget = TissueWidget(viewer)
    else:
        from napari_nucleiseg._napari._nuclei_widget import NucleiWidget

        widget = NucleiWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.open_sample("napari-nucleiseg", "demo_slide")
    slide = next(l for l in viewer.layers if l.metadata["nucleiseg"]["kind"] == "slide")
    widget._layer.value = slide
    viewer.reset_view()  # the whole demo slide: several tiles

    def start():
        if case == "tissue-map":
            widget._folder.value = folder
            widget._open.clicked.emit()
            widget._heat_view.clicked.emit()
        elif case == "nuclei-view":  # a view about 1900 slide pixels across: several tiles
            from napari_nucleiseg._napari._view import canvas_size

            mpp = slide.metadata["nucleiseg"]["mpp"]
            viewer.scene.camera.center = (1536 * mpp, 2048 * mpp)
            viewer.scene.camera.zoom = max(canvas_size(viewer)) / 1900 / mpp
            widget._run_view.clicked.emit()
        else:  # warm-up: a model chosen, then quit at once while it loads
            widget._method.value = "nuclei-unet-v4"
            QTimer.singleShot(0, quit_)
            return
        poll()

    def poll():
        done, total = widget.jobs._counted[0]  # the worker's own count
        # The map's tiles are short: quit once one is done, while the next is in the network.
        # A nuclei view has two long tiles, in parallel: quit once they are planned.
        started = done >= 1 if case == "tissue-map" else total >= 1
        if widget.jobs.running and started and done < total:
            quit_()
        elif widget.jobs.running:
            QTimer.singleShot(5, poll)
        else:
            print("RUN ENDED BEFORE THE QUIT", widget._status.value, flush=True)
            viewer.close()

    def quit_():
        print("QUIT WHILE RUNNING", time.monotonic(), flush=True)
        viewer.close()


    QTimer.singleShot(200, start)
    napari.run()
    """
)


@pytest.mark.parametrize("case", ["tissue-map", "nuclei-view", "warm-up"])
def test_quitting_while_a_run_is_going_exits_cleanly(case, tmp_path):
    script = tmp_path / "quit.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), case, str(tmp_path / "proj")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "QUIT WHILE RUNNING" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stderr[-3000:]
    # Promptly: stopping the run, not a wait for a timeout (it sat out the full 15 s when
    # napari's quit left the run suspended between tiles). A warm-up cannot be cancelled (its
    # load is waited for), so only the runs are timed; 12 s leaves room on a loaded machine.
    times = {
        line.split()[0]: float(line.split()[-1])
        for line in done.stdout.splitlines()
        if line.startswith(("QUIT", "EXITING"))
    }
    if case != "warm-up":
        assert times["EXITING"] - times["QUIT"] < 12.0, done.stdout
    assert "terminate called" not in done.stderr
    assert "Traceback" not in done.stderr + done.stdout, (done.stderr + done.stdout)[-3000:]
