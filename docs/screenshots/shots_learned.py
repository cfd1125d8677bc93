"""stain_learned: the CMU slide beside itself normalised by stain-cycle-v1 (Stain panel)."""

from common import CMU, front, kind, layer_of, settle, shoot, start, status_lines, wait_until

viewer, panels = start(CMU)
stain = panels["Stain"]
front(viewer, "Stain")
cmu = layer_of(viewer, "slide")
stain._layer.value = cmu
stain._method.value = "learned"
settle()
print("  model:", stain._model.value)
stain._show.value = True
wait_until(
    lambda: not stain.jobs.running and any(kind(l) == "stain_normalised" for l in viewer.layers),
    300,
    "normalised",
)
grid = viewer.canvas.grid if hasattr(getattr(viewer, "canvas", None), "grid") else viewer.grid
grid.enabled = True
viewer.scene.camera.center = (1400 * 0.499, 1100 * 0.499)
viewer.scene.camera.zoom = 1.2
settle(3000)
shoot(viewer, "stain_learned.png")
status_lines(panels)
viewer.close()
