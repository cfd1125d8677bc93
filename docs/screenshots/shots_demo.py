"""first_screen, slide_widget_tissue, full_resolution_nuclei, nuclei_whole_slide_running,
nuclei_whole_slide, stain_channels: the demo slide."""

import sys

from common import front, kind, layer_of, settle, shoot, start, status_lines, wait_until

viewer, panels = start()
slide_panel, nuclei, stain = panels["Slide"], panels["Nuclei"], panels["Stain"]
slide = layer_of(viewer, "slide")
truth = layer_of(viewer, "ground_truth")
only = sys.argv[1:]

# 1. First screen: demo slide, Nuclei panel in front.
shoot(viewer, "first_screen.png")

# 2. Tissue mask, Slide panel in front.
front(viewer, "Slide")
slide_panel._tissue.clicked.emit()
wait_until(
    lambda: any(kind(l) == "tissue" for l in viewer.layers) and not slide_panel.jobs.running,
    120,
    "tissue",
)
viewer.layers.selection.active = slide
shoot(viewer, "slide_widget_tissue.png")
status_lines(panels)

# 3. Ground truth at full resolution.
tissue = layer_of(viewer, "tissue")
tissue.visible = False
truth.visible = True
truth.contour = 2
viewer.layers.selection.active = truth
viewer.scene.camera.center = (760.0, 1100.0)
viewer.scene.camera.zoom = 4.0
shoot(viewer, "full_resolution_nuclei.png")
truth.visible = False

# 4. Whole slide in the background (classical), running then done.
front(viewer, "Nuclei")
nuclei._layer.value = slide
nuclei._method.value = "classical"
viewer.reset_view()
settle()
nuclei._run_slide.clicked.emit()
wait_until(
    lambda: (
        nuclei.jobs.running
        and nuclei._slide_progress is not None
        and nuclei._slide_progress.segmented >= 5
        and any(kind(l) == "nuclei" for l in viewer.layers)
    ),
    600,
    "whole-slide progress",
)
shoot(viewer, "nuclei_whole_slide_running.png")
status_lines(panels)
wait_until(lambda: not nuclei.jobs.running, 600, "whole slide done")
whole = layer_of(viewer, "nuclei")
viewer.layers.selection.active = slide
viewer.scene.camera.center = (760.0, 1100.0)
viewer.scene.camera.zoom = 2.0
shoot(viewer, "nuclei_whole_slide.png")
status_lines(panels)
whole.visible = False

# 5. Stain: haematoxylin channel.
front(viewer, "Stain")
stain._layer.value = slide
stain._method.value = "macenko"
stain._fit.clicked.emit()
wait_until(lambda: not stain.jobs.running, 300, "stain fit")
stain._channels.clicked.emit()
wait_until(lambda: any(kind(l) == "stain_channel" for l in viewer.layers), 120, "channels")
viewer.layers.selection.active = next(
    l for l in viewer.layers if kind(l) == "stain_channel" and l.visible
)
viewer.scene.camera.zoom = 1.5
shoot(viewer, "stain_channels.png")
status_lines(panels)
viewer.close()
