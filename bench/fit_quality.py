"""Benchmark: per-image fitting quality on Kodak, "gradient" vs "random" initialisation.

    .venv/bin/python bench/fit_quality.py --images kodim01 kodim13 kodim23 --counts 10000 30000 --steps 500

Reads ../shared/data/kodak (never copied into the repository). For every image, Gaussian budget
and initialiser it runs :func:`air_core.fit` (sum mode, L2 loss, progressive addition, seed 0,
CPU backend) and records PSNR / MS-SSIM / wall time, plus the PSNR-vs-time curve (every 25 steps),
which is plotted to ``bench/results/fit_quality.png``. Results: ``bench/results/fit_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from air_core import fit, load_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", default=["kodim01", "kodim13", "kodim23"])
    ap.add_argument("--counts", type=int, nargs="+", default=[10000, 30000])
    ap.add_argument("--inits", nargs="+", default=["gradient", "random"])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fit_quality.json"))
    args = ap.parse_args()
    if not KODAK.is_dir():
        sys.exit(f"Kodak images not found at {KODAK} (expected ../shared/data/kodak beside the project)")

    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        image = load_image(KODAK / f"{name}.png")
        for n in args.counts:
            for init in args.inits:
                t0 = time.perf_counter()
                r = fit(image, n, args.steps, init=init, seed=0, log_every=25, device="cpu")
                row = {"image": name, "num_gaussians": n, "init": init, "steps": r.steps,
                       "psnr": r.metrics["psnr"], "ms_ssim": r.metrics["ms_ssim"], "ssim": r.metrics["ssim"],
                       "time_s": time.perf_counter() - t0,
                       "curve": [(h["time_s"], h["psnr"]) for h in r.history]}
                rows.append(row)
                print(f"{name} N={n} {init}: {row['psnr']:.2f} dB, MS-SSIM {row['ms_ssim']:.4f}, "
                      f"{row['time_s']:.0f} s", flush=True)
                out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
    plot(rows, out.with_suffix(".png"))
    table(rows)


def table(rows: list[dict]) -> None:
    print("| image | N | init | PSNR dB | MS-SSIM | time s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['num_gaussians']:,} | {r['init']} | {r['psnr']:.2f} | {r['ms_ssim']:.4f} | "
              f"{r['time_s']:.0f} |")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["num_gaussians"], r["init"]), []).append(r)
    print("\n| N | init | mean PSNR dB | mean MS-SSIM | mean time s |")
    print("|---|---|---|---|---|")
    for (n, init), rs in sorted(groups.items()):
        k = len(rs)
        print(f"| {n:,} | {init} | {sum(r['psnr'] for r in rs) / k:.2f} | {sum(r['ms_ssim'] for r in rs) / k:.4f} "
              f"| {sum(r['time_s'] for r in rs) / k:.0f} |")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours: dict[tuple, str] = {}
    for r in rows:
        key = (r["num_gaussians"], r["init"])
        first = key not in colours
        colour = colours.setdefault(key, f"C{len(colours)}")
        t, p = zip(*r["curve"])
        ax.plot(t, p, color=colour, alpha=0.8, lw=1.2, label=f"N={key[0]:,}, {key[1]}" if first else None)
    ax.legend()
    ax.set_xlabel("wall time (s), 2-core CPU")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("Per-image fit on Kodak (" + ", ".join(sorted({r["image"] for r in rows})) + ")")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
