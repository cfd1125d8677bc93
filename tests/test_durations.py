"""Durations in the panels' status lines and the command line's progress read as a person would
write them: a fast run is not "done in 0 s", and an unknown estimate is "?", not an error."""

import math


def test_panel_durations():
    from napari_nucleiseg._napari._jobs import format_seconds

    assert format_seconds(0.44, tenths=True) == "0.4 s"  # a view done in under half a second
    assert format_seconds(9.9, tenths=True) == "9.9 s"
    assert format_seconds(9.97, tenths=True) == "10 s"
    assert format_seconds(0.44) == "0 s"  # estimates stay whole seconds: no flicker
    assert format_seconds(-3) == "0 s"
    assert format_seconds(125) == "2 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"
    assert format_seconds(math.inf) == format_seconds(math.nan) == "?"


def test_command_line_durations():
    from napari_nucleiseg.cli.progress import duration

    assert duration(0.44) == "0.4s"
    assert duration(12.2) == "12s"
    assert duration(185) == "3m05s"
    assert duration(3720) == "1h02m"
    assert duration(math.inf) == "?"
