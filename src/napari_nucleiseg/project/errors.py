"""The project's typed error: its message names the folder or file and the problem."""


class ProjectError(ValueError):
    """A project, its training store or an example cannot be used as asked."""
