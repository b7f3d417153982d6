#!/usr/bin/env bash
# Set up, install the Debian packages the GUI tests need (Xvfb + Mesa, when running as root),
# then run the whole test suite under a virtual X server.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! command -v xvfb-run >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Xvfb and Mesa (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      xvfb xauth libgl1-mesa-dri libegl1 libegl-mesa0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 \
      libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 \
      libxcb-cursor0 libfontconfig1 libdbus-1-3 >/dev/null
  else
    echo "test: xvfb-run not found and not root: GUI tests will be skipped" >&2
  fi
fi

if command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
else
  exec .venv/bin/python -m pytest "$@"
fi
