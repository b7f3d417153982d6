#!/usr/bin/env bash
# Set up, then run the main job on an embedded default: reconstruct scikit-image's astronaut photo
# with 2D Gaussians and write quickstart_out/{gaussians.npz, render.png, error.png, metrics.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/air fit --sample astronaut -n 20000 --steps 500 -o quickstart_out "$@"
