"""The README's first command ends in `nucleiseg view`: run it as a user would and look at what
the window shows."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_nucleiseg_view_shows_the_demo_slide_with_the_widget_docked(tmp_path, demo):
    shot = tmp_path / "start.png"
    env = dict(os.environ)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_nucleiseg.cli.main",
            "view",
            "--screenshot",
            str(shot),
            "--screenshot-delay",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 700 and img.shape[1] >= 1200
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    pink = (r > 180) & (g < 200) & (b > 150) & (r - g > 40)  # eosin-stained tissue on the canvas
    assert pink.mean() > 0.05
    assert "Traceback" not in out.stderr
