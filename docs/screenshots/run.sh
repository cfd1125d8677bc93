#!/usr/bin/env bash
# Retake the guides' screenshots (docs/images) from a real napari window, 1600 x 1000, on a
# virtual screen: bash docs/screenshots/run.sh [shots_demo.py ...] (default: every script).
# Each script sets up one state (the demo slide, the CMU slide, the learned normaliser, the
# Tissue and Project panels) as a user would, and writes the pictures it names. About 5 min.
set -euo pipefail
cd "$(dirname "$0")"
root="$(cd ../.. && pwd)"
export HOME="${TMPDIR:-/tmp}/nucleiseg-docshots/home"  # napari's settings, not the user's
mkdir -p "$HOME"
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=(shots_demo.py shots_cmu.py shots_learned.py shots_tissue.py shots_project.py)
for script in "${scripts[@]}"; do
    echo "== $script"
    xvfb-run -a -s "-screen 0 1600x1000x24" "$root/.venv/bin/python" "$script"
done
