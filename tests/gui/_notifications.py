"""napari's notifications as the GUI tests read them (imported by the test modules here)."""

import pytest


def messages() -> list[str]:
    """Every notification napari has shown since the test started."""
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


@pytest.fixture(autouse=True)
def fresh_notifications():
    """napari keeps notifications for the whole process: start each test from none."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()
    yield


@pytest.fixture(autouse=True)
def no_blocking_dialogs(monkeypatch):
    """A Save-as dialog or a question the test did not answer fails the test instead of waiting
    for a click that never comes."""
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    def refuse(*args, **kwargs):
        raise AssertionError(f"a dialog opened that the test did not answer: {args[1:3]}")

    monkeypatch.setattr(QFileDialog, "getSaveFileName", refuse)
    monkeypatch.setattr(QMessageBox, "question", refuse)
    monkeypatch.setattr(QMessageBox, "exec", refuse)
