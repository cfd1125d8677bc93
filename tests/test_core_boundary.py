"""The compute core must not import napari or Qt: it runs headless on cluster nodes, and napari
must be able to read the manifest without pulling in slides, dask or torch."""

import ast
import subprocess
import sys
from pathlib import Path

import napari_nucleiseg

PKG = Path(napari_nucleiseg.__file__).parent
GUI_PACKAGES = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
)


def core_modules():
    for py in sorted(PKG.rglob("*.py")):
        rel = py.relative_to(PKG)
        if rel.parts[0] == "_napari":
            continue
        yield py, "napari_nucleiseg." + ".".join(rel.with_suffix("").parts).replace(".__init__", "")


def test_core_sources_import_no_gui_package():
    offenders = []
    for py, _ in core_modules():
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                if n.split(".")[0] in GUI_PACKAGES:
                    offenders.append(f"{py.relative_to(PKG)}: import {n}")
    # The CLI's `view` command is the one sanctioned exception: it starts napari on request.
    offenders = [o for o in offenders if not o.startswith("cli/main.py")]
    assert not offenders, "GUI imports in the compute core:\n" + "\n".join(offenders)


def test_importing_every_core_module_loads_no_gui_package():
    mods = [m for _, m in core_modules()]
    code = (
        "import sys, importlib\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {GUI_PACKAGES!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imports pulled in: {out.stdout.strip()}"


def test_package_import_is_light():
    """Importing the package (what npe2 does) must not import openslide, dask or torch."""
    code = (
        "import sys, napari_nucleiseg; "
        "print(','.join(m for m in ('openslide','dask','torch','zarr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
