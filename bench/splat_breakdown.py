"""Benchmark: where the time of the upscaled 3DGS path goes, stage by stage (CPU).

    .venv/bin/python bench/splat_breakdown.py [--scene donut] [--size 1024] [--scales 2 4] [--views 8]
        [--repeats 7]

For each orbit view (the cameras of bench/splat_upscale.py) the full-resolution render and, for each
scale k, ``render_upscaled(scene, camera, k)`` are timed whole, and the stages of the same
low-resolution render are timed separately with the functions the renderer calls:

* ``project``: the no-gradient projection the renderer runs (``air_core.splat3d.render._project_arrays``:
  EWA projection, SH colour, depth sort);
* ``bin``: the rasterizer's cut-offs, tile binning and traversal constants
  (``air_core.raster2d.cpu._bin``);
* ``blend``: the tile kernel (``air_core.raster2d._kernels.forward``) without and with derivatives;
* ``hermite``: the Hermite upscale to the full size as ``render_upscaled`` calls it
  (``air_core.upscale._hermite``, without the public function's argument checks);
* ``other``: the whole path minus these stages (tensor conversions, alpha / depth, argument checks).

It also prints two ceilings on the speed-up of the upscaled path over the full render:
``k^2 / (1 + X)``, with X the measured derivative overhead of the low-resolution blend (if the
low-resolution blend cost exactly 1/k^2 of the full-resolution one, as pixel counts would have it,
each of its pixels would still cost 1 + X times a plain one), and ``full / (project + bin +
hermite)``, the per-Gaussian and per-output-pixel work that does not shrink with the render size. Medians of ``--repeats`` runs after a warm-up, averaged over the views; all threads.
Writes bench/results/splat_breakdown.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from air_core.raster2d import _kernels  # noqa: E402
from air_core.raster2d.cpu import _bin  # noqa: E402
from air_core.splat3d import load_ply, orbit_cameras_for_scene, render  # noqa: E402
from air_core.splat3d.render import TILE_SIZE, _project_arrays, _projection_limits  # noqa: E402
from air_core.upscale import _hermite, low_resolution_eps2d, low_resolution_size, render_upscaled  # noqa: E402

SPLATS = ROOT.parent / "shared" / "data" / "splats"
SCENES = {"donut": "v3dg_donut_iter30000_fused.ply", "kacytran": "kacytran1122_try_iter7000.ply",
          "tandt": "loadersgl_tandt_train_1000.ply", "fruit": "supersplat_pr291_fruit_drops_minimal.ply"}


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stages(scene, cam, full_size: tuple[int, int], k: float, repeats: int) -> dict:
    """Seconds per stage of the low-resolution render at 1/k and its Hermite upscale."""
    h, w = low_resolution_size(*full_size, k)
    low = cam.resized(w, h)
    eps2d = low_resolution_eps2d(0.3, full_size, (h, w))
    limits = _projection_limits(scene, low, 0.01, 1e10, eps2d, None)
    project = lambda: _project_arrays(scene, low, 0.01, 1e10, eps2d, None, limits)  # noqa: E731
    row = {"project": timed(project, repeats)}
    ids, means, conics, depths, colours, opac = project()
    colours = np.concatenate([colours, depths[:, None]], axis=1)
    background = np.zeros(4)
    row["bin"] = timed(lambda: _bin(means, conics, opac, h, w, TILE_SIZE), repeats)
    binning = _bin(means, conics, opac, h, w, TILE_SIZE)
    for tag, derivs in (("blend", False), ("blend_deriv", True)):
        image = np.zeros((4, h, w), np.float32)
        der = np.zeros((3, 3, h, w) if derivs else (3, 0, 0, 0), np.float32)
        row[tag] = timed(lambda: _kernels.forward(means, conics, colours, opac, background, *binning, h, w,
                                                  *TILE_SIZE, True, derivs, image, der), repeats)
    row["hermite"] = 0.0
    if k > 1:  # the upscale's inputs: the low-resolution render with derivatives
        out = render(scene, low, eps2d=eps2d, return_derivatives=True)
        row["hermite"] = timed(lambda: _hermite(out.image, out.image_dx, out.image_dy, out.image_dxy, *full_size),
                               repeats)
    row["pairs"] = int(binning[4].size)
    row["visible"] = int(ids.size)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="donut", choices=list(SCENES))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    scene = load_ply(SPLATS / SCENES[args.scene])
    cams = orbit_cameras_for_scene(scene, args.views, width=args.size, height=args.size)
    full_size = (args.size, args.size)
    rows = []
    for v, cam in enumerate(cams):
        row = {"view": v, "full": timed(lambda: render(scene, cam), args.repeats), "x1": stages(
            scene, cam, full_size, 1.0, args.repeats)}
        for k in args.scales:
            tag = f"x{k:g}"
            row[tag] = stages(scene, cam, full_size, k, args.repeats)
            row[tag]["path"] = timed(lambda: render_upscaled(scene, cam, k), args.repeats)
        rows.append(row)
        print(json.dumps({"view": v, "full_ms": round(row["full"] * 1e3, 2)}), flush=True)
    meta = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
            "command": "bench/splat_breakdown.py " + " ".join(sys.argv[1:])}
    out = ROOT / "bench" / "results" / "splat_breakdown.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    def mean(fn):
        return sum(fn(r) for r in rows) / len(rows)

    full = mean(lambda r: r["full"])
    print(f"\n{args.scene}, {args.size} px, mean of {len(rows)} views: full render {full * 1e3:.1f} ms "
          f"(blend {mean(lambda r: r['x1']['blend']) * 1e3:.1f} ms, derivative overhead of the blend "
          f"{(mean(lambda r: r['x1']['blend_deriv']) / mean(lambda r: r['x1']['blend']) - 1) * 100:.0f}%)\n")
    print("| scale | path ms (speed-up) | project | bin | blend + derivatives (plain) | Hermite | other "
          "| Gaussian-tile pairs | ceiling k^2 / (1 + X) | ceiling full / (project + bin + Hermite) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in args.scales:
        tag = f"x{k:g}"
        m = {key: mean(lambda r: r[tag][key]) for key in ("path", "project", "bin", "blend", "blend_deriv",
                                                            "hermite", "pairs")}
        other = m["path"] - m["project"] - m["bin"] - m["blend_deriv"] - m["hermite"]
        overhead = m["blend_deriv"] / m["blend"] - 1
        fixed = m["project"] + m["bin"] + m["hermite"]
        print(f"| x{k:g} | {m['path'] * 1e3:.1f} ({full / m['path']:.2f}x) | {m['project'] * 1e3:.1f} | "
              f"{m['bin'] * 1e3:.1f} | {m['blend_deriv'] * 1e3:.1f} ({m['blend'] * 1e3:.1f}) | "
              f"{m['hermite'] * 1e3:.1f} | {other * 1e3:.1f} | {m['pairs']:.0f} | "
              f"{k * k / (1 + overhead):.2f}x | {full / fixed:.1f}x |")


if __name__ == "__main__":
    main()
