"""Benchmark: CPU 2D rasterizer speed at Kodak size next to its physical floor.

    .venv/bin/python bench/raster_speed.py [--counts 10000 30000 100000] [--repeats 7]

Scenes: 768x512 output, N Gaussians with AIR-like sizes (both scales uniform in 0.5..7.5 px,
AIR's ps * sigmoid + 0.5 range for ps = 7), uniform random means and rotations, colours ~ N(0, 0.1),
opacity 0.5 in alpha mode. Times are medians of ``--repeats`` runs after one warm-up (JIT compile
excluded), float32 inputs, all cores of this machine.

Floor: the number of Gaussian-pixel pairs that contribute (weight >= 1/255, counted exactly)
divided by the machine's measured exp() throughput. Two throughputs are measured side by side:
numpy's vectorised float32 exp on one core times the core count (the SIMD upper bound), and a
numba float64 scalar exp loop on all cores (what the kernels call). The ratio to the floor is
quoted against the SIMD one, the tighter of the two.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numba
import numpy as np
import torch
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from air_core.gaussians import conics_from_scales_rotations  # noqa: E402
from air_core.raster2d import _kernels, rasterize_to_pixels  # noqa: E402

H, W = 512, 768


@njit(parallel=True, cache=False)
def _exp_loop(x):
    out = np.empty_like(x)
    for i in prange(x.shape[0]):
        out[i] = math.exp(x[i])
    return out


@njit(cache=False)
def _count_pairs(means, conics, qmax, rx, ry, height, width):
    total = 0
    for g in range(means.shape[0]):
        if qmax[g] <= 0:
            continue
        a, b, c = conics[g, 0], conics[g, 1], conics[g, 2]
        j0 = max(0, int(math.floor(means[g, 0] - rx[g] - 0.5)))
        j1 = min(width - 1, int(math.ceil(means[g, 0] + rx[g] - 0.5)))
        i0 = max(0, int(math.floor(means[g, 1] - ry[g] - 0.5)))
        i1 = min(height - 1, int(math.ceil(means[g, 1] + ry[g] - 0.5)))
        for i in range(i0, i1 + 1):
            dy = i + 0.5 - means[g, 1]
            for j in range(j0, j1 + 1):
                dx = j + 0.5 - means[g, 0]
                if a * dx * dx + 2 * b * dx * dy + c * dy * dy <= qmax[g]:
                    total += 1
    return total


def exp_throughput() -> dict:
    x32 = -np.random.default_rng(0).random(20_000_000, dtype=np.float32) * 5
    x64 = x32.astype(np.float64)
    np.exp(x32[:1000])
    _exp_loop(x64[:1000])
    t_np = min(_timed(lambda: np.exp(x32)) for _ in range(5))
    t_nb = min(_timed(lambda: _exp_loop(x64)) for _ in range(5))
    cores = os.cpu_count() or 1
    return {"numpy_f32_simd_one_core_per_s": x32.size / t_np,
            "numpy_f32_simd_all_cores_per_s": cores * x32.size / t_np,
            "numba_f64_scalar_all_cores_per_s": x64.size / t_nb}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def scene(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=gen) * torch.tensor([W, H])
    scales = torch.rand(n, 2, generator=gen) * 7.0 + 0.5
    rot = torch.rand(n, generator=gen) * math.pi
    conics = conics_from_scales_rotations(scales, rot)
    colours = torch.randn(n, 3, generator=gen) * 0.1
    return means, conics, colours


def time_render(n: int, mode: str, repeats: int, backend: str = "cpu") -> dict:
    means, conics, colours = scene(n)
    op = torch.full((n,), 0.5 if mode == "alpha" else 1.0)
    fwd, both = [], []
    for rep in range(repeats + 1):
        ps = [t.clone().requires_grad_() for t in (means, conics, colours)]
        t0 = time.perf_counter()
        out = rasterize_to_pixels(*ps, op, width=W, height=H, mode=mode, backend=backend)
        t1 = time.perf_counter()
        out.image.backward(torch.ones_like(out.image))
        t2 = time.perf_counter()
        if rep:  # first run = warm-up / JIT
            fwd.append(t1 - t0)
            both.append(t2 - t0)
    m64 = means.double().numpy()
    c64 = conics.double().numpy()
    qmax, rx, ry, _ = _kernels.prepare(c64, op.double().numpy())
    pairs = _count_pairs(m64, c64, qmax, rx, ry, H, W)
    return {"n": n, "mode": mode, "forward_ms": 1e3 * statistics.median(fwd),
            "forward_backward_ms": 1e3 * statistics.median(both), "pairs": int(pairs)}


def dense_vs_tiles_forward_ms(n: int) -> tuple[float, float]:
    """Forward time (ms) of the dense all-pairs PyTorch reference and of the tile kernel, same scene."""
    means, conics, colours = scene(n)
    times = {}
    with torch.no_grad():
        for backend in ("cpu", "dense"):
            rasterize_to_pixels(means[:10], conics[:10], colours[:10], width=W, height=H, backend=backend)
            t0 = time.perf_counter()
            rasterize_to_pixels(means, conics, colours, width=W, height=H, mode="sum", backend=backend)
            times[backend] = 1e3 * (time.perf_counter() - t0)
    return times["dense"], times["cpu"]


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(), "date": date.today().isoformat()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dense-n", type=int, default=2000, help="also time the dense PyTorch forward at this N (0: skip)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "raster_speed.json"))
    args = ap.parse_args()

    info = machine()
    thr = exp_throughput()
    rows = [time_render(n, mode, args.repeats) for n in args.counts for mode in ("sum", "alpha")]
    dense, tiles = dense_vs_tiles_forward_ms(args.dense_n) if args.dense_n else (None, None)
    floor_rate = thr["numpy_f32_simd_all_cores_per_s"]
    print(f"machine: {info}")
    print(f"exp throughput: {json.dumps({k: f'{v / 1e9:.2f} G/s' for k, v in thr.items()})}")
    print("| N | mode | forward ms | forward+backward ms | contributing pairs | floor ms (pairs / SIMD exp rate) "
          "| forward / floor | scalar-exp floor ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["floor_ms"] = 1e3 * r["pairs"] / floor_rate
        r["scalar_floor_ms"] = 1e3 * r["pairs"] / thr["numba_f64_scalar_all_cores_per_s"]
        print(f"| {r['n']:,} | {r['mode']} | {r['forward_ms']:.1f} | {r['forward_backward_ms']:.1f} | "
              f"{r['pairs'] / 1e6:.1f} M | {r['floor_ms']:.1f} | {r['forward_ms'] / r['floor_ms']:.1f}x | "
              f"{r['scalar_floor_ms']:.1f} |")
    if dense is not None:
        print(f"forward, N={args.dense_n:,}, sum: dense all-pairs PyTorch {dense:.0f} ms, numba tiles {tiles:.1f} ms "
              f"({dense / tiles:.0f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": info, "exp_throughput": thr, "rows": rows,
                                         "dense_forward_ms": dense, "tiles_forward_ms_at_dense_n": tiles,
                                         "dense_n": args.dense_n}, indent=2))


if __name__ == "__main__":
    main()
