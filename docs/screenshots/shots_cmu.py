"""real_slide_cmu, nuclei_current_view, nuclei_corrected, stain_normalised: the CMU slide
(the Macenko reference fitted on the demo slide's view first, as the old shot did)."""

import numpy as np
from common import (
    CMU,
    front,
    kind,
    layer_of,
    settle,
    shoot,
    show_normalised_beside,
    start,
    status_lines,
    wait_until,
)

from napari_nucleiseg.models import DEFAULT_NUCLEI_MODEL

viewer, panels = start()
slide_panel, nuclei, stain = panels["Slide"], panels["Nuclei"], panels["Stain"]

# Macenko reference: the demo slide's current view.
front(viewer, "Stain")
stain._layer.value = layer_of(viewer, "slide")
stain._method.value = "macenko"
stain._fit.clicked.emit()
wait_until(lambda: not stain.jobs.running, 300, "stain fit")
status_lines(panels)

# 6. The real Aperio slide with its tissue outline, Slide panel in front.
viewer.layers.clear()
front(viewer, "Slide")
viewer.open(str(CMU), plugin="napari-nucleiseg")
settle()
viewer.reset_view()
slide_panel._tissue.clicked.emit()
wait_until(
    lambda: any(kind(l) == "tissue" for l in viewer.layers) and not slide_panel.jobs.running,
    120,
    "tissue",
)
shoot(viewer, "real_slide_cmu.png")
status_lines(panels)

# 7. Shipped model on the current view.
front(viewer, "Nuclei")
layer_of(viewer, "tissue").visible = False
cmu = layer_of(viewer, "slide")
nuclei._layer.value = cmu
nuclei._method.value = DEFAULT_NUCLEI_MODEL
viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
viewer.scene.camera.zoom = 3.0
settle()
nuclei._run_view.clicked.emit()
wait_until(
    lambda: not nuclei.jobs.running and nuclei._last is not None and nuclei._last.table is not None,
    300,
    "view",
)
view = layer_of(viewer, "nuclei")
viewer.layers.selection.active = view
shoot(viewer, "nuclei_current_view.png")
status_lines(panels)
print("  count:", nuclei._count.value)

# 7b. Three largest nuclei erased.
data = np.asarray(view.data)
ids, sizes = np.unique(data[data > 0], return_counts=True)
for nucleus in ids[np.argsort(sizes)[-3:]]:
    with view.block_history():
        view.data_setitem(np.nonzero(data == nucleus), 0)
view.mode = "erase"
wait_until(lambda: nuclei._last.edited, 60, "edited")
shoot(viewer, "nuclei_corrected.png")
print("  count:", nuclei._count.value)
view.mode = "pan_zoom"

# 8. CMU normalised to the demo reference, side by side.
front(viewer, "Stain")
for lyr in [l for l in viewer.layers if kind(l) != "slide"]:
    viewer.layers.remove(lyr)
stain._layer.value = cmu
show_normalised_beside(viewer, stain)
shoot(viewer, "stain_normalised.png")
status_lines(panels)
viewer.close()
