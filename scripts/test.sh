#!/usr/bin/env bash
# Set up with the testing extras, lint with the ruff pinned there, then run the whole test suite
# on a virtual screen (napari's viewer tests need an OpenGL context, which Xvfb + Mesa provide).
# Extra arguments go to pytest. Lint findings fail the run, after the tests have run too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh testing
export PYTHONUNBUFFERED=1
status=0
echo "test: ruff check ."
.venv/bin/ruff check . || status=$?
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -ra "$@" || status=$?
exit "$status"
