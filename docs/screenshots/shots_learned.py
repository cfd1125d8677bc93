"""stain_learned: the CMU slide beside itself normalised by stain-cycle-v1 (Stain panel)."""

from common import CMU, front, layer_of, settle, shoot, show_normalised_beside, start, status_lines

viewer, panels = start(CMU)
stain = panels["Stain"]
front(viewer, "Stain")
cmu = layer_of(viewer, "slide")
stain._layer.value = cmu
stain._method.value = "learned"
settle()
print("  model:", stain._model.value)
show_normalised_beside(viewer, stain)
settle(3000)
shoot(viewer, "stain_learned.png")
status_lines(panels)
viewer.close()
