#!/usr/bin/env bash
# Set up, then run the main job on an embedded default: reconstruct scikit-image's astronaut photo
# with the shipped feed-forward AIR predictor (+ 200 refinement steps) and write quickstart_out/{gaussians.npz, render.png, error.png, metrics.json}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/air reconstruct --sample astronaut --refine-steps 200 -o quickstart_out "$@"
