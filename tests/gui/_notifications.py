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
