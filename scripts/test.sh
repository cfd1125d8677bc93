#!/usr/bin/env bash
# Set up with the testing extras, then run the whole test suite on a virtual screen (napari's
# viewer tests need an OpenGL context, which Xvfb + Mesa provide). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh testing
export PYTHONUNBUFFERED=1
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -ra "$@"
