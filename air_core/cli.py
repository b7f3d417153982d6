"""The ``air`` command-line tool.

    air reconstruct IMAGE|DIR|--sample NAME -o OUTDIR [--stages 4] [--refine-steps K] [--weights PATH]
                                  image(s) -> 2D Gaussians with the feed-forward AIR predictor (optionally
                                  refined per image); a folder is processed image by image with a summary
    air fit IMAGE|--sample NAME -n 20000 --steps 2000 -o OUTDIR   fit 2D Gaussians to an image
    air render FILE --scale 2 -o out.png                           render a Gaussian file at any scale
    air info FILE                                                  describe a Gaussian file
    air splat render SCENE.ply --orbit 8 --size 1024 --scale 4 -o OUTDIR
                                  render a 3DGS scene from orbit cameras at 1/scale resolution,
                                  upscale (gradient-aware Hermite by default), compare with full resolution

Exit codes: 0 success, 1 runtime failure, 2 bad arguments or input (argparse's convention),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


#: File suffixes ``air reconstruct`` picks up in a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="air", description="Gaussian-splat image toolkit (AIR).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit 2D Gaussians to an image (per-image optimisation)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("image", nargs="?", help="input image file (PNG, JPEG, TIFF, ...)")
    src.add_argument("--sample", metavar="NAME", help="a photo shipped with scikit-image, e.g. astronaut")
    p.add_argument("-n", "--num-gaussians", type=_positive_int, default=20000, help="Gaussian budget")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps (default 2000)")
    p.add_argument("--mode", choices=("sum", "alpha"), default="sum", help="rasterization mode")
    p.add_argument("--init", choices=("gradient", "random"), default="gradient", help="initialisation")
    p.add_argument("--loss", choices=("l2", "l1", "l1+ssim"), default="l2", help="training loss")
    p.add_argument("--target-psnr", type=float, default=None, help="stop once this PSNR (dB) is reached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    rc = sub.add_parser("reconstruct", help="image(s) -> 2D Gaussians with the feed-forward AIR predictor")
    src = rc.add_mutually_exclusive_group(required=True)
    src.add_argument("input", nargs="?", metavar="IMAGE|DIR",
                     help="an image file, or a folder of images (" + ", ".join(IMAGE_SUFFIXES) + "; not recursive)")
    src.add_argument("--sample", metavar="NAME", help="a photo shipped with scikit-image, e.g. astronaut")
    rc.add_argument("--stages", type=_positive_int, default=None,
                    help="predictor stages to run, 1 .. the model's (default: all, 4 for the shipped weights)")
    rc.add_argument("--refine-steps", type=int, default=0, metavar="K",
                    help="per-image optimisation steps after the prediction (default 0)")
    rc.add_argument("--weights", metavar="PATH", default=None,
                    help="predictor weights (.safetensors; default: the shipped ones)")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--device", default="auto", help="auto, cpu or cuda")
    rc.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    rc.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("render", help="render a Gaussian file at any scale")
    r.add_argument("file", help="a .npz Gaussian file written by 'air fit'")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, default=1.0, help="output/input size ratio (e.g. 0.5, 2, 3.7)")
    size.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"), help="explicit output size")
    r.add_argument("--mode", choices=("sum", "alpha"), default=None, help="override the file's mode")
    r.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    r.add_argument("--device", default="auto")
    r.add_argument("-o", "--output", required=True, help="output PNG")

    i = sub.add_parser("info", help="describe a Gaussian file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    sp = sub.add_parser("splat", help="3D Gaussian Splatting scenes (.ply)")
    ssub = sp.add_subparsers(dest="splat_command", required=True)
    s = ssub.add_parser("render", help="render orbit views, upscaled from 1/scale resolution, with metrics")
    s.add_argument("scene", help="INRIA-layout 3DGS .ply file")
    s.add_argument("--orbit", type=_positive_int, default=8, help="number of orbit views (default 8)")
    s.add_argument("--size", type=_positive_int, nargs="+", default=[512], metavar="PX",
                   help="output size: one number (square) or WIDTH HEIGHT (default 512)")
    s.add_argument("--scale", type=_positive_float, default=4.0,
                   help="render at 1/scale resolution and upscale (>= 1; 1 = full resolution only; default 4)")
    s.add_argument("--method", choices=("hermite", "hermite-fd", "bicubic", "bilinear", "nearest"),
                   default="hermite", help="upscaling method of the written frames (default hermite)")
    s.add_argument("--fov", type=_positive_float, default=40.0, help="vertical field of view, degrees")
    s.add_argument("--elevation", type=float, default=20.0, help="orbit elevation, degrees")
    s.add_argument("--background", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("R", "G", "B"))
    s.add_argument("--no-reference", action="store_true",
                   help="skip the full-resolution reference frames and the metrics")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    return parser


def _cmd_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import images
    from .fitting import fit
    from .gaussians import save_gaussians

    if args.steps < 0:
        raise ValueError(f"--steps must be >= 0, got {args.steps}")
    source = images.sample_image(args.sample) if args.sample else images.load_image(args.image)
    target = images.to_tensor(source)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=args.steps, unit="step", disable=args.quiet, desc="fit")

    def progress(fraction: float, message: str) -> None:
        bar.n = int(round(fraction * args.steps))
        bar.set_postfix_str(message.split("  ")[-1])
        bar.refresh()

    try:
        result = fit(target, args.num_gaussians, args.steps, mode=args.mode, init=args.init, loss=args.loss,
                     target_psnr=args.target_psnr, seed=args.seed, device=args.device, progress=progress)
    finally:
        bar.close()
    g = result.gaussians
    g.metadata.update({"source": args.sample or str(args.image), "steps": result.steps})
    save_gaussians(g, out / "gaussians.npz")
    images.save_image(out / "render.png", result.render.cpu())
    images.save_error_map(out / "error.png", result.render.cpu(), target)
    metrics = dict(result.metrics, num_gaussians=len(g), steps=result.steps, time_s=result.time_s,
                   stopped=result.stopped, mode=args.mode, init=args.init, image_size=list(g.image_size))
    from ._io import atomic_write

    with atomic_write(out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=2)
    ms = metrics.get("ms_ssim")
    print(f"{len(g)} Gaussians, PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}"
          + (f", MS-SSIM {ms:.4f}" if ms is not None else "") + f", {result.time_s:.1f} s -> {out}/")
    return 0


def _reconstruct_outputs(folder: Path) -> list[Path]:
    return [folder / name for name in ("gaussians.npz", "render.png", "error.png", "metrics.json")]


def _check_not_input(outputs: Sequence[Path], inputs: Sequence[Path]) -> None:
    """Refuse to write over an input image."""
    sources = {p.resolve() for p in inputs}
    for p in outputs:
        if p.resolve() in sources:
            raise ValueError(f"output {str(p)!r} would overwrite the input image; choose another -o folder")


def _write_reconstruction(result, target, folder: Path, record: dict) -> dict:
    """gaussians.npz, render.png, error.png, metrics.json of one image in ``folder``; returns the record."""
    from . import images
    from ._io import atomic_write
    from .gaussians import save_gaussians

    folder.mkdir(parents=True, exist_ok=True)
    g = result.gaussians
    g.metadata.update({"source": record["image"]})
    save_gaussians(g, folder / "gaussians.npz")
    final = result.render
    images.save_image(folder / "render.png", final[:1] if result.gray else final)
    images.save_error_map(folder / "error.png", final, target)
    h, w = g.image_size
    report = dict(record, width=w, height=h, num_gaussians=len(g), stages=result.stages, counts=result.counts,
                  patch_size=result.patch_size, refine_steps=result.refine_steps, refined=result.refined,
                  gray=result.gray, metrics=result.metrics, timings=result.timings)
    with atomic_write(folder / "metrics.json", "w") as fh:
        json.dump(report, fh, indent=2)
    return report


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import csv
    import io
    import math

    from tqdm import tqdm

    from . import images
    from ._device import resolve_device
    from ._io import atomic_write
    from .predictor import AIRPredictor, load_predictor, reconstruct

    if args.refine_steps < 0:
        raise ValueError(f"--refine-steps must be >= 0, got {args.refine_steps}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {str(out)!r} exists and is not a folder")
    # inputs first (bad input -> exit 2 before any model is loaded)
    folder_mode = False
    if args.sample:
        sources: list = [args.sample]
    else:
        src = Path(args.input)
        if not src.exists():
            raise FileNotFoundError(f"input not found: {str(src)!r}")
        if src.is_dir():
            folder_mode = True
            sources = sorted((p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                             key=lambda p: p.name)
            if not sources:
                raise ValueError(f"folder {str(src)!r} contains no images ({', '.join(IMAGE_SUFFIXES)})")
        else:
            sources = [src]
    dev = resolve_device(args.device)
    if not folder_mode:
        source = sources[0]
        if args.sample:
            array, name = images.sample_image(source), f"sample:{source}"
        else:
            _check_not_input(_reconstruct_outputs(out), [source])
            array, name = images.load_image(source), str(source)
        target = images.to_tensor(array, argument=name)
    model: AIRPredictor = load_predictor(args.weights, dev)
    if args.stages is not None and args.stages > model.num_stages:
        raise ValueError(f"--stages must be in 1 .. {model.num_stages} (the model's stages), got {args.stages}")

    if not folder_mode:
        bar = tqdm(total=100, unit="%", disable=args.quiet, desc="reconstruct")

        def progress(fraction: float, message: str) -> None:
            bar.n = int(round(100 * fraction))
            bar.set_postfix_str(message.split("  ")[-1])
            bar.refresh()

        try:
            result = reconstruct(array, args.stages, args.refine_steps, dev, progress, model=model, seed=args.seed)
        finally:
            bar.close()
        out.mkdir(parents=True, exist_ok=True)
        report = _write_reconstruction(result, target, out, {"image": name, "weights": _weights_name(args)})
        m = report["metrics"]
        ms = m.get("ms_ssim")
        print(f"{report['num_gaussians']} Gaussians (per stage {result.counts}), PSNR {m['psnr']:.2f} dB"
              + (f", SSIM {m['ssim']:.4f}" if m["ssim"] is not None else "")
              + (f", MS-SSIM {ms:.4f}" if ms is not None else "")
              + f", feed-forward {1e3 * result.timings['feedforward']:.1f} ms"
              + (f", refine {result.timings['refine']:.2f} s" if args.refine_steps else "") + f" -> {out}/")
        return 0

    # a folder: one sub-folder per image (by stem; suffixed when two images share a stem)
    stems = [p.stem for p in sources]
    names = [p.stem if stems.count(p.stem) == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in sources]
    _check_not_input([f for n in names for f in _reconstruct_outputs(out / n)]
                     + [out / "summary.json", out / "summary.csv"], sources)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    failures: list[dict] = []
    bar = tqdm(list(zip(sources, names)), unit="image", disable=args.quiet, desc="reconstruct")
    for path, name in bar:
        bar.set_postfix_str(path.name)
        try:
            array = images.load_image(path)
            target = images.to_tensor(array, argument=str(path))
            result = reconstruct(array, args.stages, args.refine_steps, dev, model=model, seed=args.seed)
            report = _write_reconstruction(result, target, out / name,
                                           {"image": str(path), "weights": _weights_name(args)})
        except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError, MemoryError) as exc:
            failures.append({"image": str(path), "error": f"{type(exc).__name__}: {exc}"})
            tqdm.write(f"air reconstruct: skipped {path.name}: {exc}", file=sys.stderr)
            continue
        m = report["metrics"]
        rows.append({"image": path.name, "folder": name, "width": report["width"], "height": report["height"],
                     "num_gaussians": report["num_gaussians"], "psnr": m["psnr"], "ssim": m["ssim"],
                     "ms_ssim": m["ms_ssim"], "feedforward_s": report["timings"]["feedforward"],
                     "refine_s": report["timings"]["refine"], "time_s": report["timings"]["total"]})
    bar.close()

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None and math.isfinite(r[key])]
        return sum(values) / len(values) if values else None

    numeric = ("num_gaussians", "psnr", "ssim", "ms_ssim", "feedforward_s", "refine_s", "time_s")
    summary = {"input": str(args.input), "weights": _weights_name(args), "stages": args.stages,
               "refine_steps": args.refine_steps, "images": rows, "failed": failures,
               "mean": {k: mean(k) for k in numeric} if rows else None}
    with atomic_write(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    columns = ["image", "folder", "width", "height"] + list(numeric)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in columns})
    if rows:
        writer.writerow({"image": "mean", **{k: ("" if summary["mean"][k] is None else f"{summary['mean'][k]:.6g}")
                                             for k in numeric}})
    with atomic_write(out / "summary.csv", "w") as fh:
        fh.write(buf.getvalue())

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    width = max([len("image"), len("mean")] + [len(r["image"]) for r in rows])
    print(f"{'image':<{width}} {'size':>11} {'Gaussians':>10} {'PSNR dB':>8} {'MS-SSIM':>8} {'time s':>8}")
    for r in rows:
        print(f"{r['image']:<{width}} {str(r['width']) + 'x' + str(r['height']):>11} {r['num_gaussians']:>10} "
              f"{fmt(r['psnr'], '.2f'):>8} {fmt(r['ms_ssim'], '.4f'):>8} {fmt(r['time_s'], '.3f'):>8}")
    if rows:
        mm = summary["mean"]
        print(f"{'mean':<{width}} {'':>11} {fmt(mm['num_gaussians'], '.0f'):>10} {fmt(mm['psnr'], '.2f'):>8} "
              f"{fmt(mm['ms_ssim'], '.4f'):>8} {fmt(mm['time_s'], '.3f'):>8}")
    print(f"{len(rows)} of {len(sources)} images reconstructed -> {out}/")
    if failures:
        failed = ", ".join(Path(f["image"]).name for f in failures)
        print(f"air reconstruct: {len(failures)} image(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _weights_name(args: argparse.Namespace) -> str:
    from .predictor import PRETRAINED_PATH

    return str(args.weights) if args.weights else f"shipped ({PRETRAINED_PATH.name})"


def _cmd_render(args: argparse.Namespace) -> int:
    import torch

    from . import images
    from .gaussians import load_gaussians
    from .raster2d import render

    g = load_gaussians(args.file)
    with torch.no_grad():
        if args.size:
            img = render(g, size=tuple(args.size), scale=None, mode=args.mode, device=args.device)
        else:
            img = render(g, scale=args.scale, mode=args.mode, device=args.device)
    images.save_image(args.output, img.clamp(0, 1).cpu(), bit_depth=args.bit_depth)
    print(f"rendered {img.shape[2]}x{img.shape[1]} -> {args.output}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .gaussians import load_gaussians

    g = load_gaussians(args.file)
    size = Path(args.file).stat().st_size
    info = {
        "file": str(args.file), "num_gaussians": len(g), "image_size": list(g.image_size), "mode": g.mode,
        "channels": g.num_channels, "opacities": g.opacities is not None, "file_bytes": size,
        "bits_per_pixel": 8.0 * size / (g.image_size[0] * g.image_size[1]), "metadata": g.metadata,
    }
    if len(g):
        info["scale_px"] = {"min": float(g.scales.min()), "median": float(g.scales.median()),
                            "max": float(g.scales.max())}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>15}: {value}")
    return 0


def _cmd_splat_render(args: argparse.Namespace) -> int:
    import time

    import torch
    from tqdm import tqdm

    from . import images
    from ._io import atomic_write
    from .metrics import psnr, ssim
    from .splat3d import load_ply, orbit_cameras_for_scene
    from .upscale import METHODS, render_upscaled

    if len(args.size) not in (1, 2):
        raise ValueError(f"--size takes one number or WIDTH HEIGHT, got {len(args.size)} numbers")
    if args.scale < 1:
        raise ValueError(f"--scale must be >= 1, got {args.scale}")
    width, height = (args.size[0], args.size[0]) if len(args.size) == 1 else args.size
    scene = load_ply(args.scene)
    cameras = orbit_cameras_for_scene(scene, args.orbit, width=width, height=height, fov_y_deg=args.fov,
                                      elevation_deg=args.elevation)
    out = Path(args.output)
    (out / "upscaled").mkdir(parents=True, exist_ok=True)
    if not args.no_reference:
        (out / "reference").mkdir(exist_ok=True)
    background = torch.tensor(args.background, dtype=torch.float32)
    compare = [m for m in METHODS if m != "nearest"] if not args.no_reference else [args.method]
    if args.method not in compare:
        compare.append(args.method)
    from .splat3d import render

    rows = []
    with torch.no_grad():
        # warm-up: the first call loads (or compiles) the numba kernels; keep it out of the timings
        warm = cameras[0].resized(max(1, width // 8), max(1, height // 8))
        render_upscaled(scene, warm, min(args.scale, 2.0), method=args.method, background=background)
        render(scene, warm, background=background)
    for i, cam in enumerate(tqdm(cameras, unit="view", disable=args.quiet, desc="splat render")):
        row: dict = {"view": i}
        with torch.no_grad():
            t0 = time.perf_counter()
            upscaled = render_upscaled(scene, cam, args.scale, method=args.method, background=background)
            row["upscaled_time_s"] = time.perf_counter() - t0
            images.save_image(out / "upscaled" / f"view_{i:03d}.png", upscaled.clamp(0, 1))
            if not args.no_reference:
                t0 = time.perf_counter()
                ref = render(scene, cam, background=background).image
                row["reference_time_s"] = time.perf_counter() - t0
                images.save_image(out / "reference" / f"view_{i:03d}.png", ref.clamp(0, 1))
                # every method from one more low-resolution render (not timed)
                results = render_upscaled(scene, cam, args.scale, method=compare, background=background)
                for method in compare:
                    img = results[method].clamp(0, 1)
                    row[f"{method}_psnr"] = float(psnr(img, ref.clamp(0, 1)))
                    row[f"{method}_ssim"] = float(ssim(img, ref.clamp(0, 1)))
        rows.append(row)
    summary = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key != "view"}
    report = {"scene": str(args.scene), "num_gaussians": len(scene), "width": width, "height": height,
              "scale": args.scale, "method": args.method, "views": rows, "mean": summary,
              "cameras": [cam.to_dict() for cam in cameras]}
    with atomic_write(out / "metrics.json", "w") as fh:
        json.dump(report, fh, indent=2)
    keys = list(summary)
    with atomic_write(out / "metrics.csv", "w") as fh:
        fh.write(",".join(["view"] + keys) + "\n")
        for r in rows:
            fh.write(",".join([str(r["view"])] + [f"{r[k]:.6g}" for k in keys]) + "\n")
        fh.write(",".join(["mean"] + [f"{summary[k]:.6g}" for k in keys]) + "\n")
    print(f"{len(scene)} Gaussians, {len(rows)} views at {width}x{height}, rendered at 1/{args.scale:g} -> {out}/")
    if not args.no_reference:
        print(f"{'method':>12} {'PSNR dB':>8} {'SSIM':>7}")
        for method in compare:
            print(f"{method:>12} {summary[method + '_psnr']:8.2f} {summary[method + '_ssim']:7.4f}")
        print(f"time per view: {args.method} path (render at 1/{args.scale:g} + upscale) "
              f"{summary['upscaled_time_s'] * 1e3:.1f} ms, full resolution {summary['reference_time_s'] * 1e3:.1f} ms")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``air``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"reconstruct": _cmd_reconstruct, "fit": _cmd_fit, "render": _cmd_render, "info": _cmd_info,
                "splat": _cmd_splat_render}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("air: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"air {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, MemoryError) as exc:
        print(f"air {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
