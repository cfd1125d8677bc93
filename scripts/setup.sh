#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine, safe to re-run:
#   1. the system libraries napari needs for OpenGL and Qt (also under Xvfb), when missing;
#   2. a virtual environment in .venv with the CPU build of torch;
#   3. this package, editable, with the extras named by $1 (default: gui).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-gui}"

SYSTEM_PACKAGES=(
  xvfb xauth libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libxkbcommon-x11-0 libdbus-1-3
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1
)
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
python3 -m venv --help >/dev/null 2>&1 && python3 -c "import ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip
# The CPU build first: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! $PY -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU build)"
  $PY -m pip install -q "torch==2.13.0"
fi
echo "setup: installing napari-nucleiseg[$EXTRAS]"
$PY -m pip install -q -e ".[$EXTRAS]"
echo "setup: done ($($PY -c 'import napari_nucleiseg; print("napari-nucleiseg", napari_nucleiseg.__version__)'))"
