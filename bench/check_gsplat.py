"""GPU check: our 3DGS renderer (CPU backend) against ``gsplat.rasterization`` on the same views.

    .venv/bin/python bench/check_gsplat.py [--size 512] [--views 4] [--min-psnr 45]

For every real scene in ../shared/data/splats and ``--views`` orbit cameras, renders RGB with
air_core's CPU rasterizer and with gsplat 1.5 (CUDA, "classic" mode, eps2d 0.3, the same near/far
planes, black background) and reports the PSNR between the two. Exits 1 when a view is below
``--min-psnr`` dB, 0 when all pass, and 0 with a "skipped" message when CUDA or gsplat is missing
(it never imports gsplat's CUDA backend without a GPU: that import would try to build it).
Results go to bench/results/check_gsplat.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from air_core.metrics import psnr  # noqa: E402
from air_core.splat3d import load_ply, orbit_cameras_for_scene, render  # noqa: E402

SPLATS = ROOT.parent / "shared" / "data" / "splats"


def gsplat_render(scene, camera, near: float, far: float) -> torch.Tensor:
    """RGB [3, H, W] from gsplat.rasterization on CUDA (float32)."""
    from gsplat import rasterization

    dev = torch.device("cuda")
    s = scene.to(device=dev, dtype=torch.float32)
    colours, _, _ = rasterization(
        s.means, s.rotations, s.scales, s.opacities, s.sh_coeffs,
        camera.viewmat.to(dev, torch.float32)[None], camera.K.to(dev, torch.float32)[None],
        camera.width, camera.height, near_plane=near, far_plane=far, eps2d=0.3, sh_degree=scene.sh_degree,
        packed=False, backgrounds=torch.zeros(1, 3, device=dev), render_mode="RGB", rasterize_mode="classic")
    out = colours[0].permute(2, 0, 1).float().cpu()
    del s, colours
    torch.cuda.empty_cache()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--min-psnr", type=float, default=45.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("check_gsplat: skipped (no CUDA device)")
        return 0
    try:
        import gsplat  # noqa: F401  (the Python package; its CUDA backend loads on first use)
    except ImportError:
        print("check_gsplat: skipped (gsplat is not installed: pip install -e .[gpu])")
        return 0
    near, far = 0.01, 1e10
    rows, worst = [], float("inf")
    for path in sorted(SPLATS.glob("*.ply")):
        scene = load_ply(path)
        for i, cam in enumerate(orbit_cameras_for_scene(scene, args.views, width=args.size, height=args.size)):
            with torch.no_grad():
                ours = render(scene, cam, near_plane=near, far_plane=far).image.float()
            ref = gsplat_render(scene, cam, near, far)
            value = float(psnr(ours.clamp(0, 1), ref.clamp(0, 1)))
            worst = min(worst, value)
            rows.append({"scene": path.name, "view": i, "psnr_db": value})
            print(f"{path.name:45s} view {i}: PSNR vs gsplat {value:6.2f} dB")
    out = ROOT / "bench" / "results" / "check_gsplat.json"
    out.write_text(json.dumps({"size": args.size, "min_psnr_db": args.min_psnr, "worst_db": worst, "views": rows},
                              indent=2))
    ok = worst >= args.min_psnr
    print(f"check_gsplat: {'PASS' if ok else 'FAIL'} (worst {worst:.2f} dB, threshold {args.min_psnr} dB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
