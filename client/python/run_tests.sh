#!/usr/bin/env bash
# The Python client's test suite against a real `chamfer serve` (started by the tests on 127.0.0.1).
#
#   client/python/run_tests.sh [pytest args]
#
# CHAMFER_BIN    the server binary (default: target/release/chamfer, then target/debug/chamfer of the repository)
# CHAMFER_PY_VENV where the virtual environment lives (default: client/python/.venv, git-ignored)
# PYTHON         the interpreter that creates it (default: python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${CHAMFER_PY_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
# The package as a user installs it (not editable), its two dependencies, and pytest.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here" pytest
cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
