"""The ``air`` command-line tool.

    air reconstruct IMAGE|DIR|--sample NAME -o OUTDIR [--stages 4] [--refine-steps K] [--weights PATH]
                                  image(s) -> 2D Gaussians with the feed-forward AIR predictor (optionally
                                  refined per image); a folder is processed image by image with a summary
    air fit IMAGE|--sample NAME -n 20000 --steps 2000 -o OUTDIR   fit 2D Gaussians to an image
    air render FILE --scale 2 -o out.png                           render a Gaussian file at any scale
    air info FILE                                                  describe a Gaussian file
    air encode IMAGE|GAUSSIANS.npz|--sample NAME -o OUT.air [--stages N] [--refine-steps K] [--weights PATH]
               [--bits NAME=INT ...] [--json]
                                  image -> AIR predictor -> compressed .air file (AIR's quantizer + ANS), with
                                  the size (bits per pixel) and the PSNR / MS-SSIM of the decoded image; a
                                  Gaussian .npz is compressed as it is (free layout)
    air decode FILE.air -o out.png [--scale S | --size H W] [--gaussians OUT.npz]
                                  render an .air file at any scale (optionally save its Gaussians as .npz)
    air train [-o RUNDIR] [--train-dir DIR ...] [--val-dir DIR] [options]
                                  train the AIR predictor (PyTorch Lightning; ``air train --help``)
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


class _LazyParser(argparse.ArgumentParser):
    """An argument parser whose options are added on first use (``populate(parser)``).

    ``air train``'s options come from :mod:`air_core.predictor.training`, which imports Lightning (several
    seconds); building them lazily keeps ``air --help`` and the other commands fast.
    """

    def __init__(self, *args, populate=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ensure_populated(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args=None, namespace=None):
        self._ensure_populated()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._ensure_populated()
        return super().format_usage()

    def format_help(self) -> str:
        self._ensure_populated()
        return super().format_help()


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .predictor.training import add_train_arguments  # imports Lightning: only for ``air train``

    add_train_arguments(parser)



def _add_predictor_options(parser: argparse.ArgumentParser) -> None:
    """The options ``air reconstruct`` and ``air encode`` share: stages, refinement, weights, seed, device."""
    parser.add_argument("--stages", type=_positive_int, default=None,
                        help="predictor stages to run, 1 .. the model's (default: all, 4 for the shipped weights)")
    parser.add_argument("--refine-steps", type=int, default=0, metavar="K",
                        help="per-image optimisation steps after the prediction (default 0)")
    parser.add_argument("--weights", metavar="PATH", default=None,
                        help="predictor weights (.safetensors; default: the shipped ones)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the refinement")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="air", description="Gaussian-splat image toolkit (AIR).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_LazyParser)

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
    _add_predictor_options(rc)
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

    e = sub.add_parser("encode", help="image (or Gaussian .npz) -> compressed .air file, with size and quality")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("input", nargs="?", metavar="IMAGE|GAUSSIANS.npz",
                     help="an image file (run through the AIR predictor), or a Gaussian .npz written by "
                          "'air fit' / 'air reconstruct' (compressed as it is, free layout)")
    src.add_argument("--sample", metavar="NAME", help="a photo shipped with scikit-image, e.g. astronaut")
    e.add_argument("-o", "--output", required=True, help="output .air file")
    _add_predictor_options(e)
    e.add_argument("--bits", metavar="NAME=INT", nargs="+", action="extend", default=None,
                   help="quantizer bits per channel or group, 1..16, e.g. --bits colour=6 scale=6 (names: "
                        "offset_x, offset_y, pos_x, pos_y, position, scale_1, scale_2, scale, angle, colour_y, "
                        "colour_cb, colour_cr, colour, opacity; see air_core.codec); give INPUT before --bits")
    e.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("decode", help="render an .air file at any scale (optionally save its Gaussians)")
    d.add_argument("file", metavar="FILE.air", help="a file written by 'air encode'")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, default=1.0, help="output/input size ratio (e.g. 0.5, 2, 3.7)")
    size.add_argument("--size", type=_positive_int, nargs=2, metavar=("H", "W"), help="explicit output size")
    d.add_argument("--gaussians", metavar="OUT.npz", default=None,
                   help="also save the decoded Gaussians as a .npz Gaussian file")
    d.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    d.add_argument("--device", default="auto")
    d.add_argument("-o", "--output", required=True, help="output PNG")

    sub.add_parser("train", help="train the AIR predictor (PyTorch Lightning; 'air train --help' for the options)",
                   description="Train the AIR predictor: Predict-Optimize-Distill, then cross-stage finetuning "
                               "(air_core.predictor.training).", populate=_add_train_arguments)

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



def _reconstruct_with_bar(array, args: argparse.Namespace, dev, model, desc: str):
    """``reconstruct`` one image with a tqdm percentage bar (``--stages``, ``--refine-steps``, ``--seed``)."""
    from tqdm import tqdm

    from .predictor import reconstruct

    bar = tqdm(total=100, unit="%", disable=args.quiet, desc=desc)

    def progress(fraction: float, message: str) -> None:
        bar.n = int(round(100 * fraction))
        bar.set_postfix_str(message.split("  ")[-1])
        bar.refresh()

    try:
        return reconstruct(array, args.stages, args.refine_steps, dev, progress, model=model, seed=args.seed)
    finally:
        bar.close()

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
        result = _reconstruct_with_bar(array, args, dev, model, "reconstruct")
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


def _render_to_png(g, args: argparse.Namespace, mode: str | None = None):
    """Render ``g`` at ``args.scale`` or ``args.size`` on ``args.device`` into the PNG ``args.output``."""
    import torch

    from . import images
    from .raster2d import render

    with torch.no_grad():
        if args.size:
            img = render(g, size=tuple(args.size), scale=None, mode=mode, device=args.device)
        else:
            img = render(g, scale=args.scale, mode=mode, device=args.device)
    images.save_image(args.output, img.clamp(0, 1).cpu(), bit_depth=args.bit_depth)
    return img


def _cmd_render(args: argparse.Namespace) -> int:
    from .gaussians import load_gaussians

    g = load_gaussians(args.file)
    img = _render_to_png(g, args, args.mode)
    print(f"rendered {img.shape[2]}x{img.shape[1]} -> {args.output}")
    return 0


def _parse_bits(items: Sequence[str] | None) -> dict[str, int] | None:
    """``--bits NAME=INT ...`` -> {name: int}, checked by the codec's own rules (bad input: ValueError)."""
    if not items:
        return None
    import torch

    from .codec import quantize
    from .gaussians import Gaussians2D

    bits: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = int(value)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise ValueError(f"--bits expects NAME=INT (e.g. colour=6), got {item!r}")
        bits[name] = number
    # the codec's checks (names, 1..16) on a one-Gaussian set, before any slow work
    probe = Gaussians2D(torch.full((1, 2), 0.5), torch.ones(1, 2), torch.zeros(1), torch.zeros(1, 3),
                        torch.full((1,), 0.5), (1, 1), {"mode": "alpha"})
    try:
        quantize(probe, bits=bits)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--bits: {exc}") from None
    return bits


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _cmd_encode(args: argparse.Namespace) -> int:
    import os
    import time

    import torch

    from . import codec, images
    from ._device import resolve_device
    from .gaussians import load_gaussians
    from .metrics import compute_metrics
    from .raster2d import render

    if args.refine_steps < 0:
        raise ValueError(f"--refine-steps must be >= 0, got {args.refine_steps}")
    out = Path(args.output)
    if out.is_dir():
        raise ValueError(f"-o {str(out)!r} is a folder; give the .air file to write")
    bits = _parse_bits(args.bits)
    # inputs first (bad input -> exit 2 before any model is loaded)
    gaussian_input = False
    if args.sample:
        name = f"sample:{args.sample}"
    else:
        src = Path(args.input)
        if not src.exists():
            raise FileNotFoundError(f"input not found: {str(src)!r}")
        if src.is_dir():
            raise ValueError(f"input {str(src)!r} is a folder; 'air encode' takes one image or Gaussian .npz file")
        if _same_file(out, src):
            raise ValueError(f"output {str(out)!r} would overwrite the input; choose another -o file")
        gaussian_input = src.suffix.lower() == ".npz"
        name = str(src)
    dev = resolve_device(args.device)
    report: dict = {"input": name, "output": str(out)}
    target = result = None
    if gaussian_input:
        for option, value in (("--stages", args.stages), ("--refine-steps", args.refine_steps or None),
                              ("--weights", args.weights)):
            if value is not None:
                raise ValueError(f"{option} applies to images only; {name!r} is a Gaussian file "
                                 f"(encoded as it is)")
        g = load_gaussians(src)
        keep = patch_size = None
        report.update(source="gaussians")
    else:
        from .predictor import load_predictor

        array = images.sample_image(args.sample) if args.sample else images.load_image(src)
        target = images.to_tensor(array, argument=name)
        model = load_predictor(args.weights, dev)
        if args.stages is not None and args.stages > model.num_stages:
            raise ValueError(f"--stages must be in 1 .. {model.num_stages} (the model's stages), got {args.stages}")
        result = _reconstruct_with_bar(array, args, dev, model, "encode")
        g = result.gaussians
        keep, patch_size = result.keep, result.patch_size
        if len(g) != int(keep.sum()):  # not the kept candidates any more: no patch structure to exploit
            keep = patch_size = None
        report.update(source="image", weights=_weights_name(args), stages=result.stages,
                      refine_steps=result.refine_steps, refined=result.refined)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stats = codec.encode(g, out, keep=keep, patch_size=patch_size, bits=bits)
    encode_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = codec.decode(out, device="cpu")
    decode_time = time.perf_counter() - t0
    with torch.no_grad():
        decoded_render = render(decoded, device=dev).clamp(0, 1).cpu()
        reference = result.render if result is not None else render(g, device=dev).clamp(0, 1).cpu()
    h, w = g.image_size
    num_bytes = os.path.getsize(out)
    n = len(g)
    report.update(layout=stats.layout, mode=g.mode, image_size=[h, w], num_gaussians=n, bytes=num_bytes,
                  bits_per_pixel=8.0 * num_bytes / (h * w), bits_per_gaussian=8.0 * num_bytes / n if n else None,
                  raw_bits_per_gaussian=stats.raw_bits_per_gaussian, header_bytes=stats.header_bytes,
                  mask_bytes=stats.mask_bytes, channel_bytes=stats.channel_bytes, bits=bits or {})
    keys = ("psnr", "ssim", "ms_ssim")
    if target is not None:
        if target.shape[0] == 1:  # a gray image: the Gaussians' colour channels are equal
            decoded_render = decoded_render.mean(0, keepdim=True)
            reference = reference.mean(0, keepdim=True)
        m = compute_metrics(decoded_render, target)
        report["metrics"] = {k: m[k] for k in keys}
        report["metrics_unquantized"] = {k: result.metrics[k] for k in keys}
    else:
        report["metrics"] = None  # no image to compare with
        report["metrics_unquantized"] = None
    report["psnr_vs_unquantized"] = compute_metrics(decoded_render, reference)["psnr"]
    report["timings"] = {"reconstruct_s": result.timings["total"] if result is not None else 0.0,
                         "encode_s": encode_time, "decode_s": decode_time}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    bpg = f", {report['bits_per_gaussian']:.1f} bits/Gaussian" if n else ""
    print(f"{n} Gaussians ({stats.layout} layout) -> {out}: {num_bytes} bytes, "
          f"{report['bits_per_pixel']:.4f} bpp{bpg}, encode {encode_time:.3f} s")
    if target is not None:
        m, u = report["metrics"], report["metrics_unquantized"]
        ms = f", MS-SSIM {m['ms_ssim']:.4f}" if m["ms_ssim"] is not None else ""
        print(f"decoded image: PSNR {m['psnr']:.2f} dB{ms} (before quantization {u['psnr']:.2f} dB)")
    else:
        print(f"no image to compare with (the input is a Gaussian file); decoded render vs the unquantized "
              f"render: PSNR {report['psnr_vs_unquantized']:.2f} dB")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from . import codec
    from .gaussians import Gaussians2D, save_gaussians

    src, out = Path(args.file), Path(args.output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"-o must be a .png file, got {str(out)!r}")
    dests = [out] + ([Path(args.gaussians)] if args.gaussians else [])
    if args.gaussians and Path(args.gaussians).suffix.lower() != ".npz":
        raise ValueError(f"--gaussians must be a .npz file, got {args.gaussians!r}")
    if args.gaussians and _same_file(dests[0], dests[1]):
        raise ValueError("-o and --gaussians name the same file")
    if src.exists():
        for p in dests:
            if _same_file(p, src):
                raise ValueError(f"output {str(p)!r} would overwrite the input; choose another file")
    g = codec.decode(src, device="cpu")
    for p in dests:
        p.parent.mkdir(parents=True, exist_ok=True)
    img = _render_to_png(g, args)
    print(f"decoded {len(g)} Gaussians ({g.image_size[1]}x{g.image_size[0]}), rendered "
          f"{img.shape[2]}x{img.shape[1]} -> {args.output}")
    if args.gaussians:
        # the patch layout's keep masks (a tensor) are not JSON: keep the serialisable facts
        meta = {"mode": g.mode, "source": str(src)}
        keep = g.metadata.get("keep")
        if keep is not None:
            meta.update(patch_size=int(g.metadata["patch_size"]),
                        counts=[int(c) for c in keep.reshape(keep.shape[0], -1).sum(1)])
        plain = Gaussians2D(g.means, g.scales, g.rotations, g.colours, g.opacities, g.image_size, meta)
        save_gaussians(plain, args.gaussians)
        print(f"Gaussians -> {args.gaussians}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import signal

    from .predictor.training import config_from_args, train

    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover
        MisconfigurationException = ValueError  # noqa: N806

    config = config_from_args(args)
    try:
        record = train(config, resume=args.resume, progress_bar=not args.quiet)
    except MisconfigurationException as exc:  # a bad --accelerator / --devices / --strategy / --precision
        raise ValueError(str(exc)) from None
    except SystemExit as exc:
        # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1), leaving SIGINT ignored
        if exc.code == 1 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise
    if "export" not in record:  # a non-zero rank of a multi-process run: rank 0 reports
        return 0
    print(f"trained {record['steps']} steps in {record['wall_time_s']:.1f} s on {record['hardware']} "
          f"-> {record['export']}")
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
                "encode": _cmd_encode, "decode": _cmd_decode, "train": _cmd_train, "splat": _cmd_splat_render}
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
