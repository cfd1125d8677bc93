#!/usr/bin/env bash
# Quick start: set up, then open napari on the demo slide (or on the slide given as an argument),
# the slide filling most of the window and the Nuclei, Stain and Slide panels docked beside it
# (Nuclei in front).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh gui
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
  # No screen (an ssh session, a server): run on a virtual one and save what it shows.
  echo "start: no display found; running napari under Xvfb and saving a screenshot to nucleiseg-start.png"
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/nucleiseg view "$@" --screenshot nucleiseg-start.png
fi
exec .venv/bin/nucleiseg view "$@"
