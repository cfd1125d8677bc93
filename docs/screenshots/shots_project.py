"""project_panel, project_retraining: the Project panel on the demo slide after one accepted
view, then retraining in the background (54 s run, cancelled after the shot)."""

import shutil
import time

from common import WORK, front, layer_of, settle, shoot, start, status_lines, wait_until

shutil.rmtree(WORK / "project", ignore_errors=True)
viewer, panels = start(extra=("Project",))
nuclei, project = panels["Nuclei"], panels["Project"]
slide = layer_of(viewer, "slide")

# Segment a view with the shipped model (Nuclei panel).
front(viewer, "Nuclei")
nuclei._layer.value = slide
viewer.scene.camera.center = (700.0, 745.0)
viewer.scene.camera.zoom = 2.0
settle()
nuclei._run_view.clicked.emit()
wait_until(lambda: not nuclei.jobs.running and project.view_labels() is not None, 300, "view")
status_lines({"Nuclei": nuclei})

# Open a project, accept the view.
front(viewer, "Project")
project._folder.value = WORK / "project" / "my-project"
project._open.clicked.emit()
settle()
project._accept.clicked.emit()
settle()
viewer.layers.selection.active = project.view_labels()
viewer.scene.camera.zoom = 4.0
shoot(viewer, "project_panel.png")
status_lines({"Project": project})
print("  summary:", project._summary.value)

# Retraining in the background: live loss, time left, Cancel.
viewer.scene.camera.zoom = 2.0
project._tool.value = "split along a line"
project._minutes.value = 0.9
t0 = time.perf_counter()
project._retrain.clicked.emit()
wait_until(lambda: len(project.plot.points) >= 2, 240, "first loss points")
t1 = time.perf_counter()
wait_until(
    lambda: (
        not project.jobs.running or (len(project.plot.points) >= 4 and time.perf_counter() - t1 > 8)
    ),
    60,
    "more loss points",
)
print("  status at shot:", project._status.value)
print("  running:", project.jobs.running, "points:", len(project.plot.points))
shoot(viewer, "project_retraining.png")
status_lines({"Project": project})
if project.jobs.running:
    project._cancel.clicked.emit()
    wait_until(lambda: not project.jobs.running, 120, "cancel")
status_lines({"Project": project})
print(f"  retrain wall time {time.perf_counter() - t0:.1f} s")
viewer.close()
