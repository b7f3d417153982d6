"""Benchmark: guided upsampling quality of label maps (BSDS500) and chroma (Kodak), JBU vs baselines.

    .venv/bin/python bench/jbu_quality.py                       # full run (long: hours on 2 CPU cores)
    .venv/bin/python bench/jbu_quality.py --bsds-images 3 --kodak-images 2 --tune-images 2 \\
        --train-steps 5 --train-images 8                          # a quick check that everything runs

Data (read from ../shared/data, never copied): BSDS500 test photos and human segmentations
(``groundTruth[0, k]['Segmentation']``, every annotator k), BSDS500 *train* photos / segmentations for
parameter tuning and training, Kodak for chroma.

Label maps (BSDS500 test): each human segmentation is downsampled by 8 and 16 (``--downsample mode``:
the most frequent label of each block, or ``nearest``: the label at the block centre) to
round(H / f) x round(W / f), then upsampled back to full resolution guided by the full-resolution photo.
Scores against the full-resolution segmentation: mean IoU over the segmentation's labels (a label that
vanished in the downsampling counts as IoU 0 for every method), and the boundary F-measure (boundary
pixels: label differs from the right or lower neighbour; precision / recall = fraction of predicted /
true boundary pixels within a tolerance of the other, by distance transform, no one-to-one matching) at
2 px and at the BSDS tolerance 0.0075 x image diagonal (about 4.3 px). Means over all (image, annotator)
pairs.

Chroma (Kodak): RGB -> YCbCr (full-range BT.601, as JPEG); Cb and Cr averaged over 4 x 4 and 8 x 8
blocks, upsampled guided by the full-resolution luma; PSNR of (Cb, Cr) against the originals (values
in [0, 1], outputs clipped to [0, 1]).

Methods, side by side: nearest, bilinear (on the one-hot map for labels, then argmax), bicubic
(chroma only), classical JBU (``air_core.jbu``, Kopf et al. 2007), learned JBU (a FeatUp JBU stack
trained with ``air_core.jbu.fit_jbu``), OpenCV's ``cv2.ximgproc.jointBilateralFilter`` and
``cv2.ximgproc.guidedFilter`` (opencv-contrib) applied to the bilinearly upsampled map (one-hot for
labels, then argmax) with the photo / luma as the joint image.

Parameters: classical JBU (sigma_spatial, sigma_range, guidance_blur), OpenCV's joint bilateral filter (sigmaSpace,
sigmaColor; window diameter 2f + 1) and guided filter (radius, eps) are each chosen per task and factor
from a small grid by the score on ``--tune-images`` BSDS500 *train* images (mIoU of the first
annotator's segmentation for labels, chroma PSNR for chroma); the test images are never used for
choices. The chosen values are in the JSON.

Learned JBU, trained only on BSDS500 *train* photos (``--train-images``), one stack per task and factor:

* labels: trained on the task itself, with the BSDS500 *train* segmentations (``--train-images``
  photos, annotator n mod the number of annotators for photo n). Each segment gets a random unit vector
  in R^16; the photo carries that embedding as 16 auxiliary channels, the "backbone" is its f x f block
  average (a pooled label map), and since the full-resolution embedding is known the stack is trained
  with ``fit_jbu``'s supervised objective (``hr_target_fn``: mean squared error of the upsampled
  embedding) and convex kernels (``convex_kernels=True``, so the label map stays a weighted vote at
  inference too), on random ``--label-crop`` crops (x16: 128) of the photos at their own resolution,
  batch ``--label-batch``, NAdam ``--label-lr`` with the gradient norm clipped at 1, for
  ``--label-train-steps`` steps. Settings chosen on held-out BSDS500 *train* images (the last 12,
  first annotator): FeatUp's multi-view objective on the same embedding scored mIoU 0.641 there after
  100 steps, the supervised objective 0.649 (150 steps, 224 px crops, non-convex kernels made convex at
  inference) and 0.664 (600 steps, 112 px crops, convex kernels), against 0.647 for the classical JBU.
  (Earlier proxies, a fixed random convolutional backbone and soft assignments to 16 random colours,
  stayed at or below the classical JBU and got worse with longer training: colour edges are not
  segment boundaries.)
* chroma: the "backbone" is the chroma itself: (Cb, Cr) - 0.5 (signed chroma) averaged over f x f
  blocks, and the stack's guidance is the luma (``guidance_fn``), exactly the test situation. The
  stack's kernels are not normalised after the refinement MLP (FeatUp), so a signal with a large offset
  would be scaled with the kernel sum; signed chroma avoids that, and 0.5 is added back after
  upsampling.

  Chroma stacks (``--chroma-objective supervised``): ``fit_jbu``'s supervised objective against the
  full-resolution signed chroma, with the label stacks' crop, batch and learning rate, for
  ``--train-steps`` steps. Default (``multiview``): FeatUp's multi-view objective: features not channel-normalised and not randomly
  projected (two channels), FeatUp's other settings (batch 4, 5 jitters, attention downsampler,
  outlier-aware loss, NAdam) on ``--train-size`` crops of ``--chroma-train-images`` photos for
  ``--train-steps`` steps with learning rate ``--train-lr`` = 1e-2 (FeatUp: 1e-3 for one epoch of COCO
  on GPUs; on 2 CPU cores a few hundred steps is what fits, and 1e-3 barely moves the kernels in that
  many steps; chosen on train images).

``--stack-dir`` keeps trained stacks between runs.

Results: ``bench/results/jbu_quality.json`` (written after every task and factor).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.io as sio
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from air_core import load_image, to_tensor  # noqa: E402
from air_core.jbu import JBUStack, fit_jbu, jbu_upsample  # noqa: E402
from air_core.jbu.learned import convex_kernel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BSDS = DATA / "train"
KODAK = DATA / "kodak"

LABEL_METHODS = ("nearest", "bilinear", "classical", "learned", "opencv_jbf", "opencv_guided")
CHROMA_METHODS = ("nearest", "bilinear", "bicubic", "classical", "learned", "opencv_jbf", "opencv_guided")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def bsds_items(split: str, count: int | None) -> list[tuple[Path, Path]]:
    gt_dir, img_dir = BSDS / f"BSDS500_groundTruth_{split}", BSDS / f"BSDS500_{split}"
    mats = sorted(gt_dir.glob("*.mat"))[:count]
    return [(m, img_dir / f"{m.stem}.jpg") for m in mats]


def read_photo(path: Path) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1]."""
    return to_tensor(load_image(path))


def segmentations(mat: Path) -> list[np.ndarray]:
    gt = sio.loadmat(str(mat))["groundTruth"]
    return [np.asarray(gt[0, k]["Segmentation"][0, 0]).astype(np.int64) for k in range(gt.shape[1])]


def downsample_labels(seg: np.ndarray, factor: int, how: str) -> torch.Tensor:
    """[H, W] labels -> [round(H / f), round(W / f)] by block majority ("mode") or block centre ("nearest")."""
    big_h, big_w = seg.shape
    h, w = max(1, round(big_h / factor)), max(1, round(big_w / factor))
    lab = torch.from_numpy(seg)
    if how == "nearest":
        rows = ((torch.arange(h) + 0.5) * big_h / h).long().clamp(max=big_h - 1)
        cols = ((torch.arange(w) + 0.5) * big_w / w).long().clamp(max=big_w - 1)
        return lab[rows][:, cols]
    classes = torch.unique(lab)
    counts = torch.stack([F.adaptive_avg_pool2d((lab == c).float()[None, None], (h, w))[0, 0] for c in classes])
    return classes[counts.argmax(0)]


def ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB in [0, 1] -> [3, H, W] (Y, Cb, Cr) full-range BT.601 (JPEG), in [0, 1]."""
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr])


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def mean_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    n = int(max(pred.max(), gt.max())) + 1
    conf = np.bincount(gt.ravel() * n + pred.ravel(), minlength=n * n).reshape(n, n)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    return float(np.mean(inter[present] / union[present]))


def boundary_map(lab: np.ndarray) -> np.ndarray:
    b = np.zeros(lab.shape, dtype=bool)
    b[:, :-1] |= lab[:, 1:] != lab[:, :-1]
    b[:-1, :] |= lab[1:, :] != lab[:-1, :]
    return b


def boundary_f(pred: np.ndarray, gt: np.ndarray, tolerances: tuple[float, ...]) -> list[float]:
    bp, bg = boundary_map(pred), boundary_map(gt)
    if not bp.any() and not bg.any():
        return [1.0] * len(tolerances)
    if not bp.any() or not bg.any():
        return [0.0] * len(tolerances)
    dist_to_gt = distance_transform_edt(~bg)
    dist_to_pred = distance_transform_edt(~bp)
    out = []
    for tol in tolerances:
        precision = float(np.mean(dist_to_gt[bp] <= tol))
        recall = float(np.mean(dist_to_pred[bg] <= tol))
        out.append(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-20))


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------


def _hwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy().astype(np.float32))


def _opencv_filter(name: str, joint: np.ndarray, src: np.ndarray, params: dict) -> np.ndarray:
    """src [H, W, C] float32 filtered with joint [H, W(, G)]; jointBilateralFilter takes 1 or 3 channels."""
    import cv2

    if name == "opencv_guided":
        out = cv2.ximgproc.guidedFilter(joint, src, params["radius"], params["eps"])
        return out.reshape(src.shape)
    parts = []
    for c0 in range(0, src.shape[2], 3):
        chunk = src[:, :, c0: c0 + 3]
        n = chunk.shape[2]
        if n == 2:
            chunk = np.concatenate([chunk, np.zeros_like(chunk[:, :, :1])], axis=2)
        chunk = np.ascontiguousarray(chunk if n != 1 else chunk[:, :, 0])
        out = cv2.ximgproc.jointBilateralFilter(joint, chunk, params["d"], params["sigma_color"],
                                                params["sigma_space"])
        parts.append(out.reshape(*src.shape[:2], -1)[:, :, :n])
    return np.concatenate(parts, axis=2)


def upsample_labels(method: str, low: torch.Tensor, photo: torch.Tensor, params: dict,
                    stack: JBUStack | None) -> np.ndarray:
    if method in ("nearest", "bilinear", "classical", "learned"):
        return jbu_upsample(low, photo, method=method, map_type="labels", device="cpu",
                            model=stack if method == "learned" else None, **params).numpy()
    classes = torch.unique(low)
    onehot = (low[None] == classes[:, None, None]).float()
    up = F.interpolate(onehot[None], size=photo.shape[-2:], mode="bilinear", align_corners=False)[0]
    scores = _opencv_filter(method, _hwc(photo), _hwc(up), params)
    return classes[torch.from_numpy(scores.argmax(2))].numpy()


def upsample_chroma(method: str, low: torch.Tensor, luma: torch.Tensor, params: dict,
                    stack: JBUStack | None) -> torch.Tensor:
    if method == "learned":  # the stack was trained on signed chroma (see the module docstring)
        out = jbu_upsample(low - 0.5, luma, method=method, device="cpu", model=stack) + 0.5
    elif method in ("nearest", "bilinear", "bicubic", "classical"):
        out = jbu_upsample(low, luma, method=method, device="cpu", **params)
    else:
        up = F.interpolate(low[None], size=luma.shape[-2:], mode="bilinear", align_corners=False)[0]
        out = torch.from_numpy(_opencv_filter(method, luma[0].numpy().astype(np.float32), _hwc(up),
                                              params)).permute(2, 0, 1)
    return out.clamp(0, 1)


def grid(method: str, factor: int) -> list[dict]:
    """Candidate parameters of the tunable methods (the first entry is the default when not tuning)."""
    if method == "classical":
        return [{"sigma_spatial": s, "sigma_range": r, "guidance_blur": b}
                for b in (0.0, 1.0) for s in (1.0, 0.5) for r in (0.06, 0.03, 0.12)]
    if method == "opencv_jbf":
        return [{"d": 2 * factor + 1, "sigma_space": s * factor, "sigma_color": c}
                for s in (0.5, 1.0) for c in (0.06, 0.03, 0.12)]
    if method == "opencv_guided":
        return [{"radius": max(1, int(r * factor)), "eps": e} for r in (1.0, 0.5) for e in (1e-3, 1e-4, 1e-2)]
    return [{}]


# ----------------------------------------------------------------------------------------------
# learned stacks
# ----------------------------------------------------------------------------------------------


class ChromaBackbone(nn.Module):
    """Signed chroma (Cb, Cr) - 0.5 averaged over f x f blocks: the chroma a subsampling codec keeps."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(torch.stack([ycbcr(im)[1:] for im in x]), self.factor) - 0.5


def luma_of(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([ycbcr(im)[:1] for im in x])


def label_training_items(count: int, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """BSDS500 *train* photos with their human segmentation as auxiliary channels: [3 + dim, H, W], the
    photo followed by a random unit vector per segment (annotator n mod the number of annotators for
    photo n; vectors drawn with ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for n, (mat, img) in enumerate(bsds_items("train", count)):
        segs = segmentations(mat)
        _, inverse = torch.unique(torch.from_numpy(segs[n % len(segs)]), return_inverse=True)
        emb = torch.randn(int(inverse.max()) + 1, dim, generator=g)
        emb = emb / emb.norm(dim=1, keepdim=True)
        items.append(torch.cat([read_photo(img), emb[inverse].permute(2, 0, 1)]))
    return items


def learned_stack(task: str, factor: int, args, log: dict) -> JBUStack:
    path = Path(args.stack_dir) / f"jbu_{task}_f{factor}.pt" if args.stack_dir else None
    if path is not None and path.is_file():
        log[f"{task}_f{factor}"] = {"loaded_from": str(path)}
        return JBUStack.load(path)

    def progress(fraction: float, message: str) -> None:
        print(f"  train {task} f={factor}: {message}", flush=True)

    crop = max(args.label_crop, 8 * factor)  # supervised stacks: at least 8 x 8 low-res pixels per crop
    if task == "labels":
        data = label_training_items(args.train_images)
        r = fit_jbu(lambda x: F.avg_pool2d(x[:, 3:], factor), data, steps=args.label_train_steps,
                    batch_size=args.label_batch, image_size=min(min(t.shape[-2:]) for t in data), crop_size=crop,
                    seed=0, lr=args.label_lr, normalize_features=False, random_projection=None, device="cpu",
                    hr_target_fn=lambda x: x[:, 3:], convex_kernels=True, clip_grad_norm=1.0,
                    log_every=max(1, args.label_train_steps // 10), progress=progress)
        settings = {"objective": "supervised (hr_target_fn: the segmentation's embedding)", "crop_size": crop,
                    "batch_size": args.label_batch, "lr": args.label_lr, "convex_kernels": True,
                    "train_images": len(data)}
    elif args.chroma_objective == "supervised":
        photos = [read_photo(p) for _, p in bsds_items("train", args.chroma_train_images)]
        r = fit_jbu(ChromaBackbone(factor), photos, steps=args.train_steps, batch_size=args.label_batch,
                    image_size=min(min(t.shape[-2:]) for t in photos), crop_size=crop,
                    seed=0, lr=args.label_lr, normalize_features=False, random_projection=None, device="cpu",
                    hr_target_fn=lambda x: torch.stack([ycbcr(im)[1:] for im in x]) - 0.5, clip_grad_norm=1.0,
                    log_every=max(1, args.train_steps // 10), progress=progress, guidance_fn=luma_of)
        settings = {"objective": "supervised (hr_target_fn: the full-resolution signed chroma)",
                    "crop_size": crop, "batch_size": args.label_batch,
                    "lr": args.label_lr, "train_images": len(photos)}
    else:
        photos = [read_photo(p) for _, p in bsds_items("train", args.chroma_train_images)]
        r = fit_jbu(ChromaBackbone(factor), photos, steps=args.train_steps, batch_size=4, image_size=args.train_size,
                    seed=0, lr=args.train_lr, normalize_features=False, random_projection=None, device="cpu",
                    log_every=max(1, args.train_steps // 10), progress=progress, guidance_fn=luma_of)
        settings = {"objective": "FeatUp multi-view", "crop_size": args.train_size, "batch_size": 4,
                    "lr": args.train_lr, "train_images": len(photos)}
    losses = [h["loss"] for h in r.history]
    log[f"{task}_f{factor}"] = {"steps": r.steps, "seconds": r.seconds, **settings,
                                "loss_first10": float(np.mean(losses[:10])),
                                "loss_last10": float(np.mean(losses[-10:])), "num_stages": r.stack.num_stages}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        r.stack.save(path)
    return r.stack


# ----------------------------------------------------------------------------------------------
# tasks
# ----------------------------------------------------------------------------------------------


def label_cases(split: str, count: int, factor: int, how: str, annotators: str):
    for mat, img in bsds_items(split, count):
        photo = read_photo(img)
        segs = segmentations(mat)
        if annotators == "first":
            segs = segs[:1]
        for k, seg in enumerate(segs):
            yield f"{mat.stem}/{k}", photo, seg, downsample_labels(seg, factor, how)


class LearnedLabels:
    """The learned stack's label upsampling with the kernels of the current photo cached (they depend on
    the guidance only, so the ~5 segmentations of a photo share them). Same result as
    ``jbu_upsample(low, photo, method="learned", map_type="labels", model=stack)`` (checked on the first
    segmentation of every run)."""

    def __init__(self, stack: JBUStack) -> None:
        self.stack, self.key, self.kernels, self.checked = stack, None, None, False

    def __call__(self, low: torch.Tensor, photo: torch.Tensor) -> np.ndarray:
        key = (photo.data_ptr(), tuple(low.shape))
        if key != self.key:
            with torch.no_grad():
                self.kernels = [convex_kernel(k) for k in self.stack.kernels(photo[None], tuple(low.shape))]
            self.key = key
        classes = torch.unique(low)
        onehot = (low[None] == classes[:, None, None]).float()[None]
        with torch.no_grad():
            scores = self.stack.apply(onehot, self.kernels, channel_agnostic=True)[0]
        pred = classes[scores.argmax(0)].numpy()
        if not self.checked:
            ref = jbu_upsample(low, photo, method="learned", map_type="labels", device="cpu", model=self.stack).numpy()
            if not np.array_equal(ref, pred):
                raise AssertionError("cached learned-label path differs from jbu_upsample")
            self.checked = True
        return pred


def chroma_cases(paths: list[Path], factor: int):
    for p in paths:
        ycc = ycbcr(read_photo(p))
        ycc = ycc[:, : ycc.shape[1] // factor * factor, : ycc.shape[2] // factor * factor]  # whole blocks only
        low = F.avg_pool2d(ycc[None, 1:], factor)[0]
        yield p.stem, ycc[:1], ycc[1:], low


def tune(task: str, method: str, factor: int, args) -> dict:
    candidates = grid(method, factor)
    if len(candidates) == 1 or args.tune_images == 0:
        return candidates[0]
    scores = []
    for params in candidates:
        vals = []
        if task == "labels":
            for _, photo, seg, low in label_cases("train", args.tune_images, factor, args.downsample, "first"):
                vals.append(mean_iou(upsample_labels(method, low, photo, params, None), seg))
        else:
            paths = [p for _, p in bsds_items("train", args.tune_images)]
            for _, luma, chroma, low in chroma_cases(paths, factor):
                vals.append(psnr(upsample_chroma(method, low, luma, params, None), chroma))
        scores.append(float(np.mean(vals)))
    best = int(np.argmax(scores))
    print(f"  tuned {method} f={factor}: {candidates[best]} ({scores[best]:.4f}; grid {np.round(scores, 4).tolist()})",
          flush=True)
    return candidates[best]


def run_labels(factor: int, args, stacks: dict, methods: list[str]) -> dict:
    tol_bsds = 0.0075 * math.hypot(321, 481)
    params = {m: tune("labels", m, factor, args) for m in methods}
    acc = {m: {"miou": [], "bf_2px": [], "bf_bsds": [], "time_s": 0.0} for m in methods}
    learned = LearnedLabels(stacks[("labels", factor)]) if "learned" in methods else None
    count = 0
    for name, photo, seg, low in label_cases("test", args.bsds_images, factor, args.downsample, args.annotators):
        count += 1
        for m in methods:
            t0 = time.perf_counter()
            if m == "learned":
                pred = learned(low, photo)
            else:
                pred = upsample_labels(m, low, photo, params[m], None)
            acc[m]["time_s"] += time.perf_counter() - t0
            acc[m]["miou"].append(mean_iou(pred, seg))
            f2, fb = boundary_f(pred, seg, (2.0, tol_bsds))
            acc[m]["bf_2px"].append(f2)
            acc[m]["bf_bsds"].append(fb)
        print(f"  labels f={factor} {name}: " + "  ".join(f"{m} {acc[m]['miou'][-1]:.3f}" for m in methods), flush=True)
    results = {m: {"miou": float(np.mean(a["miou"])), "bf_2px": float(np.mean(a["bf_2px"])),
                   "bf_bsds": float(np.mean(a["bf_bsds"])), "time_s_per_map": a["time_s"] / max(1, count)}
               for m, a in acc.items()}
    return {"params": params, "segmentations": count, "boundary_tolerance_bsds_px": tol_bsds, "results": results}


def run_chroma(factor: int, args, stacks: dict, methods: list[str]) -> dict:
    params = {m: tune("chroma", m, factor, args) for m in methods}
    paths = sorted(KODAK.glob("kodim*.png"))[: args.kodak_images]
    acc = {m: {"psnr": [], "time_s": 0.0} for m in methods}
    for name, luma, chroma, low in chroma_cases(paths, factor):
        for m in methods:
            t0 = time.perf_counter()
            out = upsample_chroma(m, low, luma, params[m], stacks.get(("chroma", factor)))
            acc[m]["time_s"] += time.perf_counter() - t0
            acc[m]["psnr"].append(psnr(out, chroma))
        print(f"  chroma f={factor} {name}: " + "  ".join(f"{m} {acc[m]['psnr'][-1]:.2f}" for m in methods), flush=True)
    n = max(1, len(paths))
    results = {m: {"psnr": float(np.mean(a["psnr"])), "time_s_per_image": a["time_s"] / n} for m, a in acc.items()}
    return {"params": params, "images": len(paths), "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bsds-images", type=int, default=200, help="BSDS500 test images (all: 200)")
    ap.add_argument("--annotators", choices=("all", "first"), default="all")
    ap.add_argument("--downsample", choices=("mode", "nearest"), default="mode")
    ap.add_argument("--label-factors", type=int, nargs="*", default=[8, 16])
    ap.add_argument("--kodak-images", type=int, default=24)
    ap.add_argument("--chroma-factors", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--tune-images", type=int, default=8, help="BSDS500 train images for the parameter grids")
    ap.add_argument("--train-images", type=int, default=200,
                    help="BSDS500 train photos (with segmentations) for the label stacks")
    ap.add_argument("--label-train-steps", type=int, default=600)
    ap.add_argument("--label-crop", type=int, default=112, help="label stacks: crop size (x16: at least 128)")
    ap.add_argument("--label-batch", type=int, default=8)
    ap.add_argument("--label-lr", type=float, default=3e-3)
    ap.add_argument("--chroma-train-images", type=int, default=100, help="BSDS500 train photos for the chroma stacks")
    ap.add_argument("--chroma-objective", choices=("multiview", "supervised"), default="multiview",
                    help="chroma stacks: FeatUp's multi-view objective, or the direct loss to the full-resolution "
                         "chroma (batch, crop and learning rate then as the label stacks)")
    ap.add_argument("--train-steps", type=int, default=120, help="chroma stacks: fit_jbu steps")
    ap.add_argument("--train-size", type=int, default=128, help="chroma stacks: crop size (FeatUp: 224)")
    ap.add_argument("--train-lr", type=float, default=1e-2, help="chroma stacks: learning rate")
    ap.add_argument("--stack-dir", default=None, help="load / save trained stacks here")
    ap.add_argument("--skip", nargs="*", default=[], choices=sorted(set(LABEL_METHODS + CHROMA_METHODS)),
                    help="methods to leave out")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "jbu_quality.json"))
    ap.add_argument("--update", action="store_true",
                    help="merge into the existing --out: replace only the methods run now (the replaced entries "
                         "are kept under 'superseded'), append this run's configuration to 'runs'")
    args = ap.parse_args()
    for folder in (BSDS / "BSDS500_groundTruth_test", BSDS / "BSDS500_train", KODAK):
        if not folder.is_dir():
            sys.exit(f"data not found: {folder} (expected ../shared/data beside the project)")
    torch.manual_seed(0)
    import cv2

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = json.loads(out.read_text()) if args.update and out.is_file() else None
    report = {"config": vars(args), "environment": {
        "torch": torch.__version__, "opencv": cv2.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "training": {}, "labels": {}, "chroma": {}}
    t_start = time.perf_counter()
    stacks: dict = {}
    for task, factors, all_methods, runner in (("labels", args.label_factors, LABEL_METHODS, run_labels),
                                               ("chroma", args.chroma_factors, CHROMA_METHODS, run_chroma)):
        methods = [m for m in all_methods if m not in args.skip]
        for f in factors:
            print(f"{task}, factor {f}", flush=True)
            if "learned" in methods:
                stacks[(task, f)] = learned_stack(task, f, args, report["training"])
            report[task][str(f)] = runner(f, args, stacks, methods)
            report["seconds"] = time.perf_counter() - t_start
            out.write_text(json.dumps(report if base is None else merged(base, report), indent=1))
    summary(report if base is None else merged(base, report))


def merged(base: dict, new: dict) -> dict:
    """``base`` with the methods (results, parameters) and trained stacks of ``new`` replacing its own;
    replaced entries go to ``superseded``, ``new``'s configuration is appended to ``runs``."""
    out = json.loads(json.dumps(base))
    runs = out.setdefault("runs", [{"config": base["config"], "seconds": base.get("seconds")}])
    runs.append({"config": new["config"], "seconds": new.get("seconds")})
    old = out.setdefault("superseded", [])
    for key, entry in new["training"].items():
        if key in out["training"]:
            old.append({"training": key, "entry": out["training"][key]})
        out["training"][key] = entry
    for task in ("labels", "chroma"):
        for f, r in new[task].items():
            target = out[task].setdefault(f, {"params": {}, "results": {}})
            for m, v in r["results"].items():
                if m in target["results"]:
                    old.append({"task": task, "factor": f, "method": m, "params": target["params"].get(m),
                                "results": target["results"][m]})
                target["results"][m] = v
                target["params"][m] = r["params"][m]
    return out


def summary(report: dict) -> None:
    for f, r in report["labels"].items():
        print(f"\nlabels x{f} ({r['segmentations']} segmentations)\n| method | mIoU | BF 2px | BF BSDS | s/map |")
        print("|---|---|---|---|---|")
        for m, v in r["results"].items():
            print(f"| {m} | {v['miou']:.4f} | {v['bf_2px']:.4f} | {v['bf_bsds']:.4f} | {v['time_s_per_map']:.2f} |")
    for f, r in report["chroma"].items():
        print(f"\nchroma x{f} ({r['images']} images)\n| method | PSNR dB | s/image |\n|---|---|---|")
        for m, v in r["results"].items():
            print(f"| {m} | {v['psnr']:.2f} | {v['time_s_per_image']:.2f} |")


if __name__ == "__main__":
    main()
