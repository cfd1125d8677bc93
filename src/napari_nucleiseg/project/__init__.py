"""A user's project: a folder with its slides, its training store and its models.

Layout (``../shared/DESIGN.md``)::

    PROJECT/
      project.json   slides (path + content hash), settings, current model per kind
      store.zarr/    the training store (:mod:`.training_store`)
      models/        model cards + weights trained here (found by the registry: ``methods``)
      runs/          training runs (config, checkpoints, log), resumable
      results/       whole-slide result stores
"""

from .errors import ProjectError
from .folder import Project, file_fingerprint
from .training_store import Example, TrainingStore

__all__ = ["Example", "Project", "ProjectError", "TrainingStore", "file_fingerprint"]
