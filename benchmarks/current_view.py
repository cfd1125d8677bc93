"""Current-view segmentation in a real napari window: from the click to the labels on screen.

The CMU slide (Aperio, 0.499 µm/px) is opened through the plugin's reader, the Nuclei panel is
docked, and the canvas is fixed at 1024 x 1024 screen pixels at the model's resolution (one screen
pixel per 0.5 µm). For several views, the clock starts when the "Segment current view" button is
clicked (a real mouse click) and stops when the labels layer is in the viewer. In the same run the
same region is read with raw ``openslide.read_region``, which gives this machine's read throughput
(the floor under any segmentation time) and a ratio measured side by side.

    xvfb-run -a -s "-screen 0 2000x1500x24" .venv/bin/python benchmarks/current_view.py [--rounds 5]

Prints a table and writes benchmarks/results/current_view.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLIDE = (
    Path(os.environ.get("NUCLEISEG_SHARED", REPO.parent / "shared"))
    / "data"
    / "slides"
    / "CMU-1-Small-Region.svs"
)
SCREEN = 1024
#: View centres (level-0 px, row/col) over tissue of the CMU slide; the 1024 x 1024 view plus its
#: context halo stays inside the slide, so every round segments the same shape.
CENTRES = [(1300, 800), (1500, 1200), (1200, 1150), (1750, 900), (1400, 1000), (1600, 1100)]


def pump(ms: float = 0) -> None:
    from qtpy.QtCore import QCoreApplication, QEventLoop, QTimer

    if ms:
        loop = QEventLoop()
        QTimer.singleShot(int(ms), loop.quit)
        loop.exec()
    QCoreApplication.processEvents()


def wait_for(pred, timeout=120.0):
    """Run the Qt event loop until ``pred()`` (checked every 50 ms; exact times are taken by
    signal handlers, so the polling neither delays nor competes with the worker)."""
    t = time.perf_counter()
    while not pred():
        pump(50)
        if time.perf_counter() - t > timeout:
            raise TimeoutError("timed out")


def raw_read_mp_s(box, reps=3) -> float:
    """Raw OpenSlide throughput on this region (megapixels/s), best of ``reps`` fresh handles."""
    import openslide

    x0, y0, x1, y1 = box
    best = 0.0
    for _ in range(reps):
        o = openslide.OpenSlide(str(SLIDE))
        t = time.perf_counter()
        np.asarray(o.read_region((x0, y0), 0, (x1 - x0, y1 - y0)))[:, :, :3]
        dt = time.perf_counter() - t
        o.close()
        best = max(best, (x1 - x0) * (y1 - y0) / 1e6 / dt)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "current_view.json"))
    args = ap.parse_args(argv)
    if not SLIDE.exists():
        print(f"{SLIDE} not found: nothing to measure", file=sys.stderr)
        return 1
    warnings.simplefilter("ignore")
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    t_start = time.perf_counter()
    viewer = napari.Viewer(title="current-view benchmark")
    viewer.window.resize(1900, 1400)
    viewer.window._qt_viewer.canvas.native.setFixedSize(SCREEN, SCREEN)
    _, widget = viewer.window.add_plugin_dock_widget("napari-nucleiseg", "Nuclei")
    (slide_layer,) = viewer.open(str(SLIDE), plugin="napari-nucleiseg")
    widget._layer.value = slide_layer
    pump(500)
    assert tuple(viewer.canvas.size) == (SCREEN, SCREEN), viewer.canvas.size
    method = widget._method.value

    # The panel loads the model in the background when it opens; a user clicks seconds later.
    from napari_nucleiseg.segmentation.region import model_mpp, warm_up

    t = time.perf_counter()
    warm_up(method)  # returns at once if the panel's warm-up already finished
    warm_wait = time.perf_counter() - t
    startup = time.perf_counter() - t_start
    mpp_model = model_mpp(method)
    mpp0 = slide_layer.metadata["nucleiseg"]["mpp"]

    rows = []
    for i in range(args.rounds):
        cy, cx = CENTRES[i % len(CENTRES)]
        viewer.scene.camera.center = (cy * mpp0, cx * mpp0)
        viewer.scene.camera.zoom = 1.0 / mpp_model  # one screen pixel per model pixel
        pump(300)
        stamps = {}

        def shown(_=None, stamps=stamps):
            stamps.setdefault("labels", time.perf_counter())
            stamps.setdefault("cpu", time.process_time())

        def on_inserted(event):
            if event.value.metadata.get("nucleiseg", {}).get("scope") == "view":
                shown()

        # A first run adds the labels layer; later runs put new data into it.
        viewer.layers.events.inserted.connect(on_inserted)
        old = [l for l in viewer.layers if l.metadata.get("nucleiseg", {}).get("scope") == "view"]
        for l in old:
            l.events.data.connect(shown)
        load = os.getloadavg()[0]
        c0 = time.process_time()
        t0 = time.perf_counter()
        QTest.mouseClick(widget._run_view.native, Qt.MouseButton.LeftButton)
        wait_for(lambda stamps=stamps: "labels" in stamps)
        t_labels = stamps["labels"] - t0
        cpu_labels = stamps["cpu"] - c0
        wait_for(lambda: not widget.jobs.running)
        viewer.layers.events.inserted.disconnect(on_inserted)
        for l in old:
            l.events.data.disconnect(shown)
        t_table = time.perf_counter() - t0
        layer = next(
            l for l in viewer.layers if l.metadata.get("nucleiseg", {}).get("scope") == "view"
        )
        meta = layer.metadata["nucleiseg"]
        x0, y0, x1, y1 = meta["box"]
        read = raw_read_mp_s((x0, y0, x1, y1))
        screen_mp = (x1 - x0) * (y1 - y0) / 1e6
        rows.append(
            {
                "centre_px": [cy, cx],
                "box": meta["box"],
                "segmented_shape": list(np.asarray(layer.data).shape),
                "labels_s": t_labels,
                "labels_cpu_s": cpu_labels,
                "load_avg_1min": load,
                "table_s": t_table,
                "nuclei": meta["count"],
                "raw_read_mp_s": read,
                "raw_read_s": screen_mp / read,
                "view_mp": screen_mp,
                "view_mp_s": screen_mp / t_labels,
                "ratio_to_read": (screen_mp / t_labels) / read,
            }
        )
        pump(200)

    print(
        f"\nCurrent view on {SLIDE.name}, {SCREEN}x{SCREEN} screen at {mpp_model} µm/px, "
        f"method {method}"
    )
    print(
        f"viewer + slide + panel start-up {startup:.2f} s "
        f"(model warm-up still pending at click time: {warm_wait:.2f} s)"
    )
    print(
        f"{'view centre':>14} {'nuclei':>7} {'labels s':>9} {'cpu s':>6} {'load':>5} "
        f"{'+table s':>9} {'read MP/s':>10} {'read s':>7} {'view MP/s':>10} {'ratio':>7}"
    )
    for r in rows:
        print(
            f"{str(tuple(r['centre_px'])):>14} {r['nuclei']:>7} {r['labels_s']:>9.2f} "
            f"{r['labels_cpu_s']:>6.2f} {r['load_avg_1min']:>5.1f} {r['table_s']:>9.2f} "
            f"{r['raw_read_mp_s']:>10.1f} {r['raw_read_s']:>7.3f} {r['view_mp_s']:>10.2f} "
            f"{r['ratio_to_read']:>7.4f}"
        )
    med = statistics.median(r["labels_s"] for r in rows)
    print(
        "cpu s: CPU time of this process (all threads) from click to labels; load: the "
        "machine's 1-minute\n"
        "load average at the click (above the core count, other processes share the CPU)"
    )
    median_read = statistics.median(r["raw_read_mp_s"] for r in rows)
    print(
        f"median click-to-labels {med:.2f} s, max {max(r['labels_s'] for r in rows):.2f} s "
        f"(target <= 2 s); median raw read {median_read:.1f} MP/s"
    )
    out = {
        "benchmark": "current_view",
        "slide": SLIDE.name,
        "screen_px": [SCREEN, SCREEN],
        "method": method,
        "model_mpp": mpp_model,
        "slide_mpp": mpp0,
        "rounds": rows,
        "median_labels_s": med,
        "max_labels_s": max(r["labels_s"] for r in rows),
        "median_labels_cpu_s": statistics.median(r["labels_cpu_s"] for r in rows),
        "median_load_avg_1min": statistics.median(r["load_avg_1min"] for r in rows),
        "median_table_s": statistics.median(r["table_s"] for r in rows),
        "median_raw_read_mp_s": statistics.median(r["raw_read_mp_s"] for r in rows),
        "warm_up_wait_s": warm_wait,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
