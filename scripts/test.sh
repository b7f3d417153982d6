#!/usr/bin/env bash
# Set up, install the Debian packages the GUI tests need (Xvfb, Mesa, the xcb libraries Qt loads; when
# running as root and any is missing), then run the whole test suite under a virtual X server.  Extra
# arguments go to pytest.  Under CI (CI=true) AIR_REQUIRE_GUI=1 makes a missing GUI stack fail the napari
# tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ "${CI:-}" = "true" ]; then
  export AIR_REQUIRE_GUI=1
fi

gui_pkgs="xvfb xauth libgl1-mesa-dri libegl1 libegl-mesa0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0
  libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0
  libxcb-cursor0 libfontconfig1 libdbus-1-3"
missing=""
if command -v dpkg >/dev/null 2>&1; then
  for p in $gui_pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
elif ! command -v xvfb-run >/dev/null 2>&1; then
  missing="$gui_pkgs"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing the GUI test libraries (Debian packages):$missing"
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  elif ! command -v xvfb-run >/dev/null 2>&1; then
    echo "test: xvfb-run not found and not root: GUI tests will be skipped (fail under CI)" >&2
  else
    echo "test: GUI libraries missing and not root:$missing" >&2
  fi
fi

if command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest "$@"
else
  exec .venv/bin/python -m pytest "$@"
fi
