#!/usr/bin/env bash
# Set up the project in ./.venv: Python 3.11 virtual environment, then ONE pip command that
# installs the package (editable) with every extra (napari, blender, gpu, bench, test).
# Idempotent: re-runs pip only when pyproject.toml changed.  Environment knobs:
#   PYTHON=python3.11        interpreter to build the venv from
#   AIR_TORCH_SPEC=torch==2.13.0   torch requirement (the CPU wheel; an unpinned torch pulls CUDA builds)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "setup: Python 3.11 is required (Blender 5.0's Python); install python3.11 and python3.11-venv" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "setup: 'python -m venv' failed; on Debian: apt-get install python3.11-venv" >&2; exit 1; }
fi

stamp=.venv/.air-installed
want="$(sha256sum pyproject.toml | cut -c1-16) ${AIR_TORCH_SPEC:-torch==2.13.0}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing into .venv (torch, numba, napari, bpy, ...; a few minutes the first time)"
  # (the grep drops this machine's harmless "Location ... is ignored" notes about local mirrors)
  .venv/bin/python -m pip install --disable-pip-version-check -q "${AIR_TORCH_SPEC:-torch==2.13.0}" -e ".[all]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
fi
