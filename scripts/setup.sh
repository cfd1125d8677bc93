#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine, safe to re-run:
#   1. the system libraries napari needs for OpenGL and Qt (also under Xvfb), when missing;
#   2. a virtual environment in .venv;
#   3. PyTorch, only when the extras need it (train, testing), and then the CPU build unless the
#      machine has an NVIDIA GPU: segmenting runs on ONNX Runtime and needs no PyTorch;
#   4. this package, editable, with the extras named by $1 (default: gui; comma-separated).
# TORCH_WHEELS=DIR adds a folder of wheels (e.g. a downloaded torch CPU wheel) to step 3.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-gui}"
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

SYSTEM_PACKAGES=(
  xvfb xauth libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libxkbcommon-x11-0 libdbus-1-3
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libxcb-xkb1
)
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
python3 -m venv --help >/dev/null 2>&1 && python3 -c "import ensurepip" 2>/dev/null \
  || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip

# PyTorch before the package: a bare `torch` requirement resolves, on Linux, to the multi-GB CUDA
# build. `torch==X+cpu` can only be the CPU build: first from what pip finds without the PyTorch
# index (a local wheel in pip's find-links or TORCH_WHEELS, a mirror), then from that index with
# a short timeout and no retries. Nothing else is tried: a failure stops here, saying what to do.
needs_torch=0
case ",$EXTRAS," in *,train,* | *,testing,*) needs_torch=1 ;; esac
if [ "$needs_torch" = 1 ] && ! $PY -c "import torch" 2>/dev/null; then
  FIND_LINKS=()
  [ -n "${TORCH_WHEELS:-}" ] && FIND_LINKS=(--find-links "$TORCH_WHEELS")
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch $TORCH_VERSION with CUDA (several GB)"
    $PY -m pip install -q ${FIND_LINKS[@]+"${FIND_LINKS[@]}"} "torch==$TORCH_VERSION"
  elif [ "$(uname -s)" = Darwin ]; then
    $PY -m pip install -q "torch==$TORCH_VERSION"  # macOS wheels are CPU builds
  else
    echo "setup: installing torch $TORCH_VERSION (CPU build)"
    if $PY -m pip install -q --timeout 30 --retries 1 ${FIND_LINKS[@]+"${FIND_LINKS[@]}"} \
      "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
      :
    elif $PY -m pip install -q --timeout 30 --retries 0 ${FIND_LINKS[@]+"${FIND_LINKS[@]}"} \
      --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION+cpu"; then
      :
    else
      cat >&2 <<EOF
setup: could not install the CPU build of torch $TORCH_VERSION: no wheel found locally, nor
from $TORCH_CPU_INDEX. The '$EXTRAS' extras need PyTorch (training, tests);
segmenting does not ('bash scripts/setup.sh gui' installs without it). Either install it, then
re-run this script:
  .venv/bin/python -m pip install "torch==$TORCH_VERSION" --index-url $TORCH_CPU_INDEX
or put the wheel for this machine (from $TORCH_CPU_INDEX/torch/) in a folder and run:
  TORCH_WHEELS=/that/folder bash scripts/setup.sh $EXTRAS
EOF
      exit 1
    fi
  fi
fi
echo "setup: installing napari-nucleiseg[$EXTRAS]"
$PY -m pip install -q -e ".[$EXTRAS]"
echo "setup: done (napari-nucleiseg $($PY -c 'import napari_nucleiseg as n; print(n.__version__)'))"
