#!/usr/bin/env bash
# Creates .venv with the pinned dependencies (constraints.txt). Idempotent: a
# second run with nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$candidate"
      break
    fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "crm-export needs Python 3.11 (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
if [[ "$(.venv/bin/uv --version 2>/dev/null)" != "uv $UV_VERSION" ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

stamp=.venv/.crm-export-installed
# Bytecode compiled at install time, as pip does and uv does not by default: without it every
# command compiles Airflow's ~1,100 modules again (1.7 s of each CLI call; PYTHONDONTWRITEBYTECODE
# machines never cache them). "bytecode" in the stamp recompiles venvs made before this.
wanted="$( (cat requirements.txt requirements-dev.txt constraints.txt; echo bytecode) | sha256sum | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
  VIRTUAL_ENV="$PWD/.venv" .venv/bin/uv pip install --quiet \
    -r requirements-dev.txt -c constraints.txt
  .venv/bin/python -m compileall -q -j 0 .venv/lib/python3.11/site-packages >/dev/null || true
  echo "$wanted" > "$stamp"
fi

