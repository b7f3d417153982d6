"""Benchmark: 3DGS full-resolution render vs low-resolution render + upscaling, speed and quality.

    .venv/bin/python bench/splat_upscale.py [--scenes donut kacytran tandt fruit] [--views 8]
        [--sizes 512 1024] [--scales 2 4] [--repeats 9]

For every real scene in ../shared/data/splats, ``--views`` orbit cameras
(:func:`air_core.splat3d.orbit_cameras_for_scene`, 40 degree vertical field of view, 20 degree
elevation, black background) and each square output size, all measured side by side in one run on
this machine's CPU (all cores), float32 scenes, medians of ``--repeats`` runs after one warm-up; the
timed calls of a view run interleaved (round r runs every method once), so that the VM's drift
within a view affects all of them alike:

* ``full``: the full-resolution render (RGB, alpha, depth), no derivatives;
* ``full+deriv``: the same with I_x, I_y, I_xy (the derivative overhead);
* for each scale k: ``hermite`` = render at 1/k with derivatives + Hermite upscale
  (:func:`air_core.upscale.render_upscaled`), and ``bicubic`` = render at 1/k without derivatives
  + bicubic upscale;
* quality of the upscaled images against the full-resolution render (both clamped to [0, 1]):
  PSNR over the whole frame, PSNR over the object (pixels whose full-resolution alpha > 0.05,
  so that the black background does not inflate the figure) and SSIM, for Hermite with analytic
  derivatives, Hermite with finite differences, bicubic and bilinear.

Writes bench/results/splat_upscale.json and, for the first view of the first scene at the largest
size and scale, bench/results/splat_upscale_views.png (full resolution | Hermite | bicubic, error maps
below, error x4 on a 0..1 grey scale).
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from air_core.images import save_image  # noqa: E402
from air_core.metrics import psnr, ssim  # noqa: E402
from air_core.splat3d import load_ply, orbit_cameras_for_scene, render  # noqa: E402
from air_core.upscale import render_upscaled  # noqa: E402

SPLATS = ROOT.parent / "shared" / "data" / "splats"
SCENES = {"donut": "v3dg_donut_iter30000_fused.ply", "kacytran": "kacytran1122_try_iter7000.ply",
          "tandt": "loadersgl_tandt_train_1000.ply", "fruit": "supersplat_pr291_fruit_drops_minimal.ply"}
QUALITY_METHODS = ("hermite", "hermite-fd", "bicubic", "bilinear")


def timed_together(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds per named call, the calls interleaved round by round after one warm-up each
    (which also JIT-compiles on first use); returns (times, the last result of each)."""
    results = {name: fn() for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, results


def masked_psnr(img: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    mse = float(((img - ref) ** 2).mean(0)[mask].mean()) if bool(mask.any()) else 0.0
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    picture_done = False
    torch.set_grad_enabled(False)
    for key in args.scenes:
        scene = load_ply(SPLATS / SCENES[key])
        for size in args.sizes:
            cams = orbit_cameras_for_scene(scene, args.views, width=size, height=size)
            for v, cam in enumerate(cams):
                row = {"scene": key, "size": size, "view": v}
                calls = {"full_s": lambda: render(scene, cam),
                         "full_deriv_s": lambda: render(scene, cam, return_derivatives=True)}
                for k in args.scales:
                    for m in ("hermite", "bicubic"):
                        calls[f"x{k:g}_{m}_s"] = lambda k=k, m=m: render_upscaled(scene, cam, k, method=m)
                times, outputs = timed_together(calls, args.repeats)
                row.update(times)
                full = outputs["full_s"]
                ref = full.image.clamp(0, 1)
                mask = full.alpha > 0.05
                for k in args.scales:
                    tag = f"x{k:g}"
                    results = render_upscaled(scene, cam, k, method=QUALITY_METHODS)
                    for m in QUALITY_METHODS:
                        img = results[m].clamp(0, 1)
                        row[f"{tag}_{m}_psnr"] = float(psnr(img, ref))
                        row[f"{tag}_{m}_psnr_object"] = masked_psnr(img, ref, mask)
                        row[f"{tag}_{m}_ssim"] = float(ssim(img, ref))
                    if not picture_done and size == max(args.sizes) and k == max(args.scales):
                        save_views(ref, results["hermite"].clamp(0, 1), results["bicubic"].clamp(0, 1),
                                   full.alpha, out_dir / "splat_upscale_views.png", tag)
                        picture_done = True
                rows.append(row)
                print(json.dumps({kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in row.items()}),
                      flush=True)
    meta = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores", "torch_threads": torch.get_num_threads(),
            "command": "bench/splat_upscale.py " + " ".join(sys.argv[1:])}
    (out_dir / "splat_upscale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table(rows, args)


def save_views(ref, hermite, bicubic, alpha, path: Path, tag: str) -> None:
    """Crop to the object (alpha > 0.01, 16 px margin) and tile the three images over their error maps."""
    rows = torch.nonzero((alpha > 0.01).any(1)).squeeze(1)
    cols = torch.nonzero((alpha > 0.01).any(0)).squeeze(1)
    y0, y1 = max(0, int(rows.min()) - 16), min(alpha.shape[0], int(rows.max()) + 17)
    x0, x1 = max(0, int(cols.min()) - 16), min(alpha.shape[1], int(cols.max()) + 17)
    ref, hermite, bicubic = (t[:, y0:y1, x0:x1] for t in (ref, hermite, bicubic))

    def err(img):
        return ((img - ref).abs().mean(0, keepdim=True) * 4).clamp(0, 1).expand(3, -1, -1)

    top = torch.cat([ref, hermite, bicubic], dim=2)
    bottom = torch.cat([torch.zeros_like(ref), err(hermite), err(bicubic)], dim=2)
    save_image(path, torch.cat([top, bottom], dim=1))
    print(f"wrote {path} (full resolution | Hermite {tag} | bicubic {tag}; error x4 below)")


def table(rows: list[dict], args) -> None:
    def mean(key, rs):
        return sum(r[key] for r in rs) / len(rs)

    print("\n| scene | size | full ms | +deriv overhead | " + " | ".join(
        f"x{k:g} Hermite ms (speed-up) | x{k:g} bicubic ms (speed-up)" for k in args.scales) + " |")
    print("|---|---|---|---|" + "---|---|" * len(args.scales))
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["scene"], r["size"]), []).append(r)
    for (scene, size), rs in groups.items():
        full = mean("full_s", rs)
        cells = [f"{full * 1e3:.1f}", f"{(mean('full_deriv_s', rs) / full - 1) * 100:.0f}%"]
        for k in args.scales:
            for m in ("hermite", "bicubic"):
                t = mean(f"x{k:g}_{m}_s", rs)
                cells.append(f"{t * 1e3:.1f} ({full / t:.2f}x)")
        print(f"| {scene} | {size} | " + " | ".join(cells) + " |")
    print("\n| scene | size | scale | " + " | ".join(f"{m} PSNR / object PSNR / SSIM" for m in QUALITY_METHODS) + " |")
    print("|---|---|---|" + "---|" * len(QUALITY_METHODS))
    for (scene, size), rs in groups.items():
        for k in args.scales:
            tag = f"x{k:g}"
            cells = [f"{mean(f'{tag}_{m}_psnr', rs):.2f} / {mean(f'{tag}_{m}_psnr_object', rs):.2f} / "
                     f"{mean(f'{tag}_{m}_ssim', rs):.4f}" for m in QUALITY_METHODS]
            print(f"| {scene} | {size} | {tag} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
