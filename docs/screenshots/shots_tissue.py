"""tissue_outlines, tissue_heatmap, tissue_attention: the Tissue panel on a mosaic of real colon
tissue (tumour and normal cells in a known layout)."""

import shutil
import time

import numpy as np
from common import WORK, front, kind, layer_of, settle, shoot, start, status_lines, wait_until

from napari_nucleiseg.demo.mosaic import CELL_UM, mosaic_slide
from napari_nucleiseg.methods import get_method

work = WORK / "tissue"
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
g, t, n = "glass", "tumour", "normal"
layout = [[g] * 6] + [[g, *row, g] for row in
          [[t, n, n, t], [n, t, g, n], [t, t, n, n], [n, t, t, n]]] + [[g] * 6]  # fmt: skip
held = get_method(None, kind="classifier").card.training.get("heldout_groups")
path, _, _ = mosaic_slide(work / "mosaic.tif", layout, mpp=0.5, seed=0, groups=held)

viewer, panels = start(path, extra=("Tissue",))
panel = panels["Tissue"]
front(viewer, "Tissue")
slide = layer_of(viewer, "slide")
panel._layer.value = slide
panel._folder.value = work / "project"
panel._out.value = work / "results"
panel._open.clicked.emit()
viewer.reset_view()
settle()

# 1. Outlines tagged tumour (red) and normal (green), added to the project.
panel._draw.clicked.emit()
layer = panel.outlines_layer()
px = CELL_UM / 0.5


def cell(r, c, inset=0.08):
    r0, c0, r1, c1 = (r + inset) * px, (c + inset) * px, (r + 1 - inset) * px, (c + 1 - inset) * px
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])


panel._tag.value = "tumour"
layer.add_polygons([cell(1, 1), cell(3, 2)])
panel._tag.value = "normal"
layer.add_polygons([cell(1, 2), cell(3, 3)])
layer.mode = "pan_zoom"
panel._add.clicked.emit()
shoot(viewer, "tissue_outlines.png")
status_lines({"Tissue": panel})

# 2. Whole-slide heatmap with its tumour outlines.
layer.visible = False
t0 = time.perf_counter()
panel._heat_slide.clicked.emit()
wait_until(lambda: not panel.jobs.running, 600, "heatmap of slide")
viewer.reset_view()
shoot(viewer, "tissue_heatmap.png")
status_lines({"Tissue": panel})

# 3. Attention of a head trained on the four outlined regions.
for lyr in [l for l in viewer.layers if kind(l) in ("heatmap", "tumour-outlines")]:
    lyr.visible = False
panel._train_attention.clicked.emit()
wait_until(lambda: not panel.jobs.running, 600, "train attention")
status_lines({"Tissue": panel})
panel._attention_view.clicked.emit()
wait_until(lambda: not panel.jobs.running, 600, "attention of view")
shoot(viewer, "tissue_attention.png")
status_lines({"Tissue": panel})
print("layers:", [(l.name, kind(l), l.visible) for l in viewer.layers])
viewer.close()
