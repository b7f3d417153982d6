"""Benchmark of the feed-forward AIR predictor on Kodak (and Set14): quality, speed, refinement, the
time-matched per-image fit, and the .air codec against JPEG.

For every image (results appended to a JSON file after each image, so a run can be resumed):

* feed-forward (``air_core.reconstruct``, shipped weights, all stages): PSNR / SSIM / MS-SSIM of the
  clamped render, Gaussians, encode time (the model's forward only, one warm-up image first;
  ``torch.cuda.synchronize`` on a GPU);
* ``--refine R``: + R refinement steps from the prediction (``air_core.fit`` with reconstruct's settings:
  L2, lr x ``REFINE_LR_SCALE``, fixed count); PSNR after 100 and after R steps, and the time;
* the per-image fit from scratch (``air_core.fit``, gradient init, L2, non-progressive so that it has the
  SAME number of Gaussians from the start) stopped once its wall time reaches the feed-forward encode
  time (``time-matched``) and 10x that;
* ``--codec``: the prediction (and the 1-, 2-, 3-stage predictions: fewer Gaussians, fewer bits) written
  as .air files; bpp from the real file size, PSNR of the decoded render; JPEG (Pillow, 4:2:0) at qualities
  5..95 for a rate-distortion curve; the JPEG PSNR at the codec's bpp is interpolated on each image's
  JPEG curve.

Usage:
    python bench/predictor_kodak.py --set kodak --codec --out bench/results/predictor_kodak.json
    python bench/predictor_kodak.py --set kodak --refine 500 --out bench/results/predictor_kodak_refine.json
    python bench/predictor_kodak.py --report bench/results/predictor_kodak.json [--plot rd.png]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SETS = {"kodak": SHARED / "kodak", "set14": SHARED / "sr" / "Set14" / "x2" / "HR"}
JPEG_QUALITIES = (5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)


def _images(name: str, only: list[str] | None) -> list[Path]:
    files = sorted(p for p in SETS[name].iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))
    if only:
        files = [p for p in files if p.stem in only]
    return files


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _jpeg_curve(image: np.ndarray) -> list[dict]:
    from PIL import Image

    import air_core as air

    h, w = image.shape[:2]
    out = []
    for q in JPEG_QUALITIES:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=q)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        out.append({"quality": q, "bpp": 8 * buf.tell() / (h * w), "psnr": air.psnr(dec, image)})
    return out


def _interp_jpeg(curve: list[dict], bpp: float) -> float | None:
    xs = np.array([c["bpp"] for c in curve])
    ys = np.array([c["psnr"] for c in curve])
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if bpp < xs[0] or bpp > xs[-1]:
        return None
    return float(np.interp(bpp, xs, ys))


def _timed_fit(image: np.ndarray, n: int, budget: float, seed: int = 0) -> dict:
    """air_core.fit from scratch with n Gaussians, cancelled once its wall time reaches ``budget`` s."""
    import air_core as air

    t0 = time.perf_counter()

    def stop(_f: float, _m: str) -> bool:
        return time.perf_counter() - t0 < budget

    res = air.fit(image, n, steps=1_000_000, progressive=False, loss="l2", log_every=1, progress=stop,
                  seed=seed, device="cpu")
    return {"psnr": res.metrics["psnr"], "ms_ssim": res.metrics["ms_ssim"], "steps": res.steps,
            "time_s": time.perf_counter() - t0, "num_gaussians": len(res.gaussians)}


def run(args: argparse.Namespace) -> None:
    import air_core as air
    from air_core.codec import decode, encode
    from air_core.predictor import load_predictor
    from air_core.predictor.api import REFINE_LR_SCALE

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"images": {}}
    results["meta"] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"torch {torch.__version__}, {torch.get_num_threads()} threads",
                       "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "set": args.set,
                       "device": args.device}
    model = load_predictor(args.weights, device=args.device)
    files = _images(args.set, args.images.split(",") if args.images else None)
    warm = air.load_image(files[0])
    air.reconstruct(warm, model=model)            # warm-up (numba compile, allocator)
    for path in files:
        key = path.stem
        rec = results["images"].get(key, {})
        image = air.load_image(path)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, -1)
        image = image[..., :3]
        h, w = image.shape[:2]
        rec["size"] = [h, w]
        if "ff" not in rec or args.force:
            times = []
            for _ in range(args.repeats):
                _sync()
                r = air.reconstruct(image, model=model)
                times.append(r.timings["feedforward"])
            rec["ff"] = {"psnr": r.metrics["psnr"], "ssim": r.metrics["ssim"], "ms_ssim": r.metrics["ms_ssim"],
                         "num_gaussians": r.num_gaussians, "counts": list(r.counts),
                         "stage_psnr": r.metrics["stage_psnr"], "encode_s": float(np.median(times)),
                         "stage_s": r.timings["stages"]}
        ff = rec["ff"]
        n, budget = ff["num_gaussians"], ff["encode_s"]
        if args.fit and ("fit_matched" not in rec or args.force):
            rec["fit_matched"] = _timed_fit(image, n, budget)
            rec["fit_10x"] = _timed_fit(image, n, 10 * budget)
        if args.codec and ("codec" not in rec or args.force):
            rec["codec"] = []
            curve = _jpeg_curve(image)
            rec["jpeg"] = curve
            with tempfile.TemporaryDirectory() as tmp:
                for stages in range(1, model.num_stages + 1):
                    r = air.reconstruct(image, stages=stages, model=model)
                    f = Path(tmp) / f"{key}_s{stages}.air"
                    stats = encode(r.gaussians, f, keep=r.keep, patch_size=r.patch_size)
                    g = decode(f)
                    dec = air.render(g, mode="sum").clamp(0, 1)
                    m = air.compute_metrics(dec, image)
                    bpp = 8 * f.stat().st_size / (h * w)
                    rec["codec"].append({"stages": stages, "num_gaussians": len(g), "bytes": f.stat().st_size,
                                         "bpp": bpp, "bits_per_gaussian": stats.bits_per_gaussian,
                                         "psnr": m["psnr"], "ms_ssim": m["ms_ssim"], "psnr_unquantized": r.metrics["psnr"],
                                         "jpeg_psnr_at_bpp": _interp_jpeg(curve, bpp)})
        if args.refine and (f"refine_{args.refine}" not in rec or args.force):
            r = air.reconstruct(image, model=model)
            t0 = time.perf_counter()
            res = air.fit(image, None, args.refine, init=r.predicted, mode="sum", loss="l2", progressive=False,
                          lr_scale=REFINE_LR_SCALE, log_every=1, device="cpu")
            hist = {hh["step"]: hh["psnr"] for hh in res.history}
            rec[f"refine_{args.refine}"] = {
                "psnr": res.metrics["psnr"], "ms_ssim": res.metrics["ms_ssim"],
                "psnr_at_100": hist.get(101, res.metrics["psnr"] if args.refine == 100 else None),
                "time_s": time.perf_counter() - t0, "steps": res.steps}
        results["images"][key] = rec
        tmp = out.with_suffix(".tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, out)
        msg = f"{key}: {w}x{h} ff {ff['psnr']:.2f} dB, {n} G, {ff['encode_s']:.2f} s"
        if "fit_matched" in rec:
            msg += f" | fit same time {rec['fit_matched']['psnr']:.2f} dB, 10x {rec['fit_10x']['psnr']:.2f} dB"
        if "codec" in rec:
            c = rec["codec"][-1]
            msg += f" | .air {c['bpp']:.3f} bpp {c['psnr']:.2f} dB (JPEG {c['jpeg_psnr_at_bpp'] or float('nan'):.2f})"
        if args.refine:
            rr = rec[f"refine_{args.refine}"]
            msg += f" | +100 {rr['psnr_at_100'] or float('nan'):.2f} +{args.refine} {rr['psnr']:.2f} dB ({rr['time_s']:.0f} s)"
        print(msg, flush=True)


def report(path: str, plot: str | None) -> None:
    data = json.loads(Path(path).read_text())
    imgs = data["images"]
    print(f"<!-- {data['meta']} -->")
    keys = sorted(imgs)
    has_fit = all("fit_matched" in imgs[k] for k in keys)
    refine = sorted({k for r in imgs.values() for k in r if k.startswith("refine_")})
    head = "| image | Gaussians | FF PSNR | FF MS-SSIM | encode s |"
    if has_fit:
        head += " fit same time | fit 10x time |"
    for rk in refine:
        head += f" +100 | +{rk.split('_')[1]} |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    cols: dict[str, list[float]] = {}

    def add(name: str, v: float | None) -> str:
        if v is None:
            return "-"
        cols.setdefault(name, []).append(v)
        return f"{v:.2f}" if name != "ms" else f"{v:.4f}"

    for k in keys:
        r = imgs[k]
        ff = r["ff"]
        row = f"| {k} | {ff['num_gaussians']} | {add('ff', ff['psnr'])} | {add('ms', ff['ms_ssim'])} | {add('t', ff['encode_s'])} |"
        cols.setdefault("n", []).append(ff["num_gaussians"])
        if has_fit:
            row += f" {add('fm', r['fit_matched']['psnr'])} | {add('f10', r['fit_10x']['psnr'])} |"
        for rk in refine:
            rr = r.get(rk)
            row += f" {add(rk + '100', rr and rr['psnr_at_100'])} | {add(rk, rr and rr['psnr'])} |"
        print(row)
    mean = {k: float(np.mean(v)) for k, v in cols.items()}
    row = f"| **mean** | {mean['n']:.0f} | **{mean['ff']:.2f}** | {mean['ms']:.4f} | {mean['t']:.2f} |"
    if has_fit:
        row += f" {mean['fm']:.2f} | {mean['f10']:.2f} |"
    for rk in refine:
        row += f" {mean.get(rk + '100', float('nan')):.2f} | {mean.get(rk, float('nan')):.2f} |"
    print(row)
    if all("codec" in imgs[k] for k in keys):
        print("\n| stages | Gaussians | .air bpp | bits/Gaussian | .air PSNR | unquantized PSNR | JPEG PSNR at same bpp |")
        print("|---|---|---|---|---|---|---|")
        n_st = len(imgs[keys[0]]["codec"])
        rd = []
        for s in range(n_st):
            rows = [imgs[k]["codec"][s] for k in keys]
            jp = [r["jpeg_psnr_at_bpp"] for r in rows if r["jpeg_psnr_at_bpp"] is not None]
            m = {f: float(np.mean([r[f] for r in rows])) for f in ("num_gaussians", "bpp", "bits_per_gaussian",
                                                                   "psnr", "psnr_unquantized")}
            rd.append(m)
            print(f"| {s + 1} | {m['num_gaussians']:.0f} | {m['bpp']:.3f} | {m['bits_per_gaussian']:.1f} | "
                  f"{m['psnr']:.2f} | {m['psnr_unquantized']:.2f} | "
                  f"{(np.mean(jp) if jp else float('nan')):.2f} ({len(jp)}/{len(rows)} images) |")
        if plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 4.2))
            jb = [np.mean([imgs[k]["jpeg"][i]["bpp"] for k in keys]) for i in range(len(JPEG_QUALITIES))]
            jpsnr = [np.mean([imgs[k]["jpeg"][i]["psnr"] for k in keys]) for i in range(len(JPEG_QUALITIES))]
            ax.plot(jb, jpsnr, "s-", label="JPEG (Pillow, q 5-95)")
            ax.plot([m["bpp"] for m in rd], [m["psnr"] for m in rd], "o-", label=".air (1-4 stages)")
            ax.plot([m["bpp"] for m in rd], [m["psnr_unquantized"] for m in rd], "o--", alpha=0.6,
                    label="predictor before quantization")
            ax.set_xlabel("bits per pixel (real file size)")
            ax.set_ylabel("PSNR (dB)")
            ax.set_title(f"{data['meta']['set']}: mean over {len(keys)} images")
            ax.set_xlim(0, max(max(m["bpp"] for m in rd) * 1.3, 1))
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(plot, dpi=110)
            print(f"\nwrote {plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=sorted(SETS), default="kodak")
    p.add_argument("--images", help="comma-separated stems (default: all)")
    p.add_argument("--weights", default=None, help="predictor weights (default: shipped)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="feed-forward timing runs per image (median)")
    p.add_argument("--fit", action="store_true", help="time-matched and 10x per-image fits")
    p.add_argument("--codec", action="store_true", help=".air files and JPEG")
    p.add_argument("--refine", type=int, default=0, help="refinement steps (PSNR after 100 and after R)")
    p.add_argument("--force", action="store_true", help="recompute images already in --out")
    p.add_argument("--out", default="bench/results/predictor_kodak.json")
    p.add_argument("--report", metavar="JSON", help="print the tables of a results file and exit")
    p.add_argument("--plot", help="with --report: rate-distortion PNG")
    args = p.parse_args()
    if args.report:
        report(args.report, args.plot)
    else:
        run(args)


if __name__ == "__main__":
    main()
