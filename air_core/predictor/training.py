"""Training the AIR predictor with PyTorch Lightning: Predict-Optimize-Distill, then cross-stage finetuning.

The schedule follows AIR's reference (github.com/whoiszzj/AIR; /work/shared/reference/
air_and_2d_gaussian_images.md, "Predict-Optimize-Distill" and "Finetuning"), in one Lightning run of
``pod_steps + finetune_steps`` optimiser steps:

* **POD pretraining** (steps ``0 .. pod_steps - 1``). Stages are switched on one after another
  (``1 + step // pod_steps_per_stage`` of them, at most S). For every running stage s the raw parameters
  of its kept candidates are copied (detached) and refined by ``pod_inner_steps * (s + 1)`` Adam steps
  (lr ``pod_inner_lr``, betas 0.9 / 0.999; AIR: 20 (s + 1) steps at 1e-3) on
  0.7 L1 + 0.3 (1 - SSIM) of R_{s-1} + render(new Gaussians) against the image, with R_{s-1} (the
  previous stages' unrefined render) fixed, so only stage s's new Gaussians move. The loss is the
  distillation term 100 SmoothL1(sigmoid(r_pred), sigmoid(r_refined)) over the kept candidates, summed
  over stages; the next stage sees the unrefined render. (The residual a stage sees is not detached
  here either, so a stage's distillation term also reaches the earlier stages through it.)
* **Finetuning** (the remaining ``finetune_steps``). All stages on; loss = sum over stages of
  0.7 L1(R_s, I) + 0.3 (1 - SSIM(R_s, I)); the residual fed to each stage is not detached, so
  gradients cross stages.

Optimiser: AdamW (weight decay 1e-4) with a linear warm-up and a cosine decay inside each phase
(``lr`` for POD, ``finetune_lr`` for finetuning). Data: random square crops of the BSDS500 photos
(``../shared/data/train``, train and test splits, 400 images) with random down-scaling (0.5-1x,
antialiased), flips, 90-degree rotations and colour-channel permutations; validation: the Set14 HR
images (``../shared/data/sr/Set14/x2/HR``), PSNR / SSIM of the final clamped render. Kodak is never
used here.

Everything else is Lightning's: devices and DDP (``accelerator``, ``devices``, ``num_nodes``,
``strategy``), checkpoints (``last.ckpt`` every ``checkpoint_every`` steps, resumption with
``resume=True``), CSV and TensorBoard logs, the fixed seed (``seed_everything(seed, workers=True)``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..images import load_image, to_tensor
from ..metrics import ssim_loss
from ..raster2d import render
from .model import AIRPredictor
from .parameterization import decode_candidates

__all__ = ["TrainConfig", "CropDataset", "ImageFolderDataset", "AIRLightningModule", "train",
           "default_train_dirs", "default_val_dir", "plot_loss_curves", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_train_dirs() -> list[Path]:
    """BSDS500 train + test splits next to the project (``../shared/data/train``)."""
    return [_SHARED / "train" / "BSDS500_train", _SHARED / "train" / "BSDS500_test"]


def default_val_dir() -> Path:
    """Set14 HR images (``../shared/data/sr/Set14/x2/HR``)."""
    return _SHARED / "sr" / "Set14" / "x2" / "HR"


def _list_images(dirs: Sequence[str | os.PathLike], what: str) -> list[Path]:
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {d}")
        files += sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the {what} directories {list(map(str, dirs))}")
    return files


def _load_rgb(path: Path) -> torch.Tensor:
    """[3, H, W] float32 in [0, 1]; grey images are replicated to 3 channels, alpha is dropped."""
    t = to_tensor(load_image(path), argument=str(path))
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t[:3].contiguous()


class CropDataset(Dataset):
    """Random augmented square crops of a set of photos, held in memory as uint8.

    Each item is a [3, crop, crop] float32 tensor in [0, 1]: a random region of a random photo,
    down-scaled by a random factor in [``min_scale``, 1] (antialiased), randomly flipped, rotated by a
    multiple of 90 degrees and with its colour channels permuted. Item ``index`` is drawn with its own
    generator seeded from (``seed``, the DDP process rank, ``index``): a seed fixes the stream, and DDP
    processes see different crops.

    Args:
        dirs: folders of images (PNG / JPEG / TIFF / BMP).
        crop: crop side in pixels, int >= 8.
        length: items per epoch (the crops are random, so an epoch is just a logging unit).
        min_scale: smallest down-scaling factor, in (0, 1].
        seed: seed of the crop stream.

    Raises:
        FileNotFoundError / ValueError: a folder is missing or holds no image; an image is smaller than
            ``crop``; bad ``crop`` / ``length`` / ``min_scale``.
    """

    def __init__(self, dirs: Sequence[str | os.PathLike], crop: int = 128, length: int = 4000,
                 min_scale: float = 0.5, seed: int = 0) -> None:
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 8:
            raise ValueError(f"crop must be an int >= 8, got {crop!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be an int >= 1, got {length!r}")
        if not (0 < min_scale <= 1):
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale!r}")
        self.files = _list_images(dirs, "training")
        self.images = [(_load_rgb(p) * 255).round().to(torch.uint8) for p in self.files]
        small = [str(p) for p, im in zip(self.files, self.images) if min(im.shape[-2:]) < crop]
        if small:
            raise ValueError(f"crop={crop} is larger than {len(small)} training image(s), e.g. {small[0]}")
        self.crop, self.length, self.min_scale, self.seed = crop, length, float(min_scale), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        # one generator per item, from (seed, process rank, index): every DDP process draws its own crops,
        # and the same seed gives the same crop stream on any number of data-loader workers
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + rank) * 1_000_000_007 + int(index))
        image = self.images[int(torch.randint(len(self.images), (), generator=gen))]
        h, w = image.shape[-2:]
        lo = max(self.min_scale, self.crop / min(h, w))
        scale = lo + (1 - lo) * float(torch.rand((), generator=gen))
        side = min(h, w, max(self.crop, round(self.crop / scale)))
        y = int(torch.randint(h - side + 1, (), generator=gen))
        x = int(torch.randint(w - side + 1, (), generator=gen))
        patch = image[:, y:y + side, x:x + side].float().div_(255)
        if side != self.crop:
            patch = F.interpolate(patch[None], size=(self.crop, self.crop), mode="bilinear",
                                  antialias=True, align_corners=False)[0].clamp_(0, 1)
        if bool(torch.rand((), generator=gen) < 0.5):
            patch = patch.flip(-1)
        patch = torch.rot90(patch, int(torch.randint(4, (), generator=gen)), (-2, -1))
        patch = patch[torch.randperm(3, generator=gen)]
        return patch.contiguous()


class ImageFolderDataset(Dataset):
    """Whole images of a folder, one [3, H, W] float32 tensor in [0, 1] per item (validation)."""

    def __init__(self, dirs: Sequence[str | os.PathLike], limit: int | None = None) -> None:
        self.files = _list_images(dirs, "validation")[:limit]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _load_rgb(self.files[index])


@dataclass
class TrainConfig:
    """Everything :func:`train` needs; saved next to the checkpoints and into the exported weights.

    Sizes are in pixels, learning rates per AdamW step. See the module docstring for the schedule.
    """

    out_dir: str = "runs/air"
    train_dirs: list[str] = field(default_factory=lambda: [str(p) for p in default_train_dirs()])
    val_dir: str | None = field(default_factory=lambda: str(default_val_dir()))
    val_limit: int | None = None
    num_stages: int = 4
    patch_size: int = 7
    width: int = 64
    crop: int = 128
    batch_size: int = 8
    pod_steps: int = 400
    pod_steps_per_stage: int = 100
    pod_inner_steps: int = 5
    pod_inner_lr: float = 1e-3
    finetune_steps: int = 2000
    lr: float = 1e-3
    finetune_lr: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    val_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 10
    export: str | None = None
    init_weights: str | None = None

    def validate(self) -> "TrainConfig":
        for name in ("num_stages", "patch_size", "width", "batch_size", "pod_steps_per_stage",
                     "val_every", "checkpoint_every", "log_every", "num_nodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("pod_steps", "finetune_steps", "pod_inner_steps", "warmup_steps", "num_workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if self.pod_steps + self.finetune_steps < 1:
            raise ValueError("pod_steps + finetune_steps must be >= 1")
        for name in ("lr", "finetune_lr", "pod_inner_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        return self


def _pair_loss(render_: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AIR's 0.7 L1 + 0.3 (1 - SSIM), batch mean."""
    return 0.7 * (render_ - target).abs().mean() + 0.3 * ssim_loss(render_, target)


def _render_kept(raw: torch.Tensor, keep: torch.Tensor, size: tuple[int, int], patch_size: int) -> torch.Tensor:
    """[B, 3, H, W] "sum" render of the kept candidates of one stage (raw [B, 8, ph, pw], keep [B, ph, pw])."""
    out = []
    for cand, mask in zip(decode_candidates(raw, size, patch_size), keep.flatten(1)):
        new = cand[mask]
        out.append(render(new, mode="sum") if len(new) else raw.new_zeros(3, *size))
    return torch.stack(out)


def pod_loss(model: AIRPredictor, image: torch.Tensor, stages: int, inner_steps: int, inner_lr: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Predict-Optimize-Distill loss of a batch (module docstring); returns (loss, log values)."""
    out = model(image, stages=stages)
    h, w = image.shape[-2:]
    ps = model.patch_size
    total = image.new_zeros(())
    logs: dict[str, float] = {}
    for s in range(stages):
        keep = out.keep[:, s]
        if not bool(keep.any()):
            continue
        previous = out.renders[:, s - 1].detach() if s > 0 else torch.zeros_like(image)
        raw_pred = out.raw[:, s]
        refined = raw_pred.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([refined], lr=inner_lr, betas=(0.9, 0.999))
        with torch.enable_grad():
            for _ in range(inner_steps * (s + 1)):
                opt.zero_grad(set_to_none=True)
                inner = _pair_loss(previous + _render_kept(refined, keep, (h, w), ps), image)
                inner.backward()
                opt.step()
        mask = keep[:, None].expand_as(raw_pred)
        distill = 100 * F.smooth_l1_loss(torch.sigmoid(raw_pred[mask]), torch.sigmoid(refined.detach()[mask]))
        total = total + distill
        logs[f"pod_distill_s{s}"] = float(distill.detach())
    with torch.no_grad():
        logs["psnr"] = float(-10 * torch.log10(F.mse_loss(out.render.clamp(0, 1), image)))
    return total, logs


def finetune_loss(model: AIRPredictor, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over stages of 0.7 L1(R_s, I) + 0.3 (1 - SSIM(R_s, I)); returns (loss, log values)."""
    out = model(image)
    total = image.new_zeros(())
    logs: dict[str, float] = {}
    for s in range(out.renders.shape[1]):
        term = _pair_loss(out.renders[:, s], image)
        total = total + term
        logs[f"loss_s{s}"] = float(term.detach())
    with torch.no_grad():
        logs["psnr"] = float(-10 * torch.log10(F.mse_loss(out.render.clamp(0, 1), image)))
        logs["gaussians_per_px"] = float(out.counts.sum()) / (image.shape[0] * image.shape[-2] * image.shape[-1])
    return total, logs


class AIRLightningModule(L.LightningModule):
    """The predictor and its two-phase loss (module docstring) as a LightningModule."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = TrainConfig(**config)
        self.model = AIRPredictor(num_stages=self.cfg.num_stages, patch_size=self.cfg.patch_size,
                                  width=self.cfg.width)
        if self.cfg.init_weights:
            self.model.load_state_dict(AIRPredictor.from_pretrained(self.cfg.init_weights).state_dict())

    def phase(self, step: int) -> str:
        return "pod" if step < self.cfg.pod_steps else "finetune"

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        step = int(self.global_step)
        if self.phase(step) == "pod":
            stages = min(self.cfg.num_stages, 1 + step // self.cfg.pod_steps_per_stage)
            loss, logs = pod_loss(self.model, batch, stages, self.cfg.pod_inner_steps, self.cfg.pod_inner_lr)
            logs["stages_on"] = float(stages)
        else:
            loss, logs = finetune_loss(self.model, batch)
        logs["phase_finetune"] = float(self.phase(step) == "finetune")
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.shape[0])
        self.log_dict({f"train_{k}": v for k, v in logs.items()}, batch_size=batch.shape[0])
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.model(batch)
        final = out.render.clamp(0, 1)
        psnr = -10 * torch.log10(F.mse_loss(final, batch))
        self.log("val_psnr", psnr, batch_size=1, sync_dist=True)
        self.log("val_ssim", 1 - ssim_loss(final, batch), batch_size=1, sync_dist=True)
        self.log("val_gaussians", out.counts.sum().float(), batch_size=1, sync_dist=True)

    def configure_optimizers(self):
        cfg = self.cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=1.0, weight_decay=cfg.weight_decay)

        def factor(step: int) -> float:
            if step < cfg.pod_steps:
                base, start, length = cfg.lr, 0, cfg.pod_steps
            else:
                base, start, length = cfg.finetune_lr, cfg.pod_steps, cfg.finetune_steps
            t = step - start
            warm = min(1.0, (t + 1) / max(1, cfg.warmup_steps))
            return base * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, t / max(1, length))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _write_json(path: Path, data: Any) -> None:
    from .._io import atomic_write

    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2)


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPU cores"


def train(config: TrainConfig, resume: bool = False, progress_bar: bool = True) -> dict[str, Any]:
    """Train (or resume training) the predictor and export its weights.

    Writes under ``config.out_dir``: ``config.json``, ``checkpoints/last.ckpt`` (every
    ``checkpoint_every`` steps and at the end), ``logs/`` (CSV ``metrics.csv`` and TensorBoard events),
    ``loss_curves.png``, and the exported safetensors weights (``config.export``, default
    ``out_dir/air_predictor.safetensors``) whose metadata records the command's config, hardware and
    wall time.

    Args:
        config: a :class:`TrainConfig`.
        resume: continue from ``checkpoints/last.ckpt`` (weights, optimiser, scheduler and step come
            back with it; the crop stream starts again from its beginning, as Lightning does not restore
            a mid-epoch data loader, and the current ``config`` is used, e.g. a new ``finetune_steps``).
            ``wall_time_s`` in the record is this call's time only.
        progress_bar: Lightning's progress bar.

    Returns:
        A record: ``steps``, ``wall_time_s``, ``hardware``, ``export`` path, last logged metrics.

    Raises:
        ValueError / FileNotFoundError: a bad config value or missing data; ``resume`` without a checkpoint.
    """
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cfg = config.validate()
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {last}")
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        _write_json(out / "config.json", asdict(cfg))
    L.seed_everything(cfg.seed, workers=True)

    data = CropDataset(cfg.train_dirs, crop=cfg.crop, seed=cfg.seed,
                       length=max(cfg.batch_size, (cfg.pod_steps + cfg.finetune_steps) * cfg.batch_size))
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers,
                        drop_last=True, persistent_workers=cfg.num_workers > 0)
    val_loader = None
    if cfg.val_dir:
        val_loader = DataLoader(ImageFolderDataset([cfg.val_dir], cfg.val_limit), batch_size=1,
                                num_workers=0)
    module = AIRLightningModule(asdict(cfg))
    # a new log version per run, so that a resumed run keeps the earlier run's log (logs/version_K)
    loggers = [CSVLogger(str(out), name="logs")]
    try:
        import tensorboard  # noqa: F401  (optional: TensorBoard events next to the CSV log)
        loggers.append(TensorBoardLogger(str(out), name="logs", version=loggers[0].version))
    except ImportError:
        pass
    checkpoint = ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step}", save_last=True,
                                 every_n_train_steps=cfg.checkpoint_every, save_top_k=1, monitor=None,
                                 auto_insert_metric_name=False)
    trainer = L.Trainer(max_steps=cfg.pod_steps + cfg.finetune_steps, accelerator=cfg.accelerator,
                        devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
                        precision=cfg.precision, logger=loggers, callbacks=[checkpoint, LearningRateMonitor("step")],
                        log_every_n_steps=cfg.log_every, val_check_interval=cfg.val_every if val_loader else None,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        limit_val_batches=1.0 if val_loader else 0, enable_progress_bar=progress_bar,
                        enable_model_summary=False, deterministic=False)
    t0 = time.perf_counter()
    trainer.fit(module, loader, val_loader, ckpt_path=str(last) if resume else None)
    wall = time.perf_counter() - t0
    record = {"steps": int(trainer.global_step), "wall_time_s": round(wall, 1), "hardware": _hardware(),
              "resumed": bool(resume), "config": asdict(cfg),
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    if trainer.is_global_zero:
        export = Path(cfg.export) if cfg.export else out / "air_predictor.safetensors"
        module.model.save_pretrained(export, training=record)
        record["export"] = str(export)
        csvs = sorted((out / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
        if csvs:
            try:
                plot_loss_curves(csvs, out / "loss_curves.png", pod_steps=cfg.pod_steps)
            except ImportError:
                pass
        _write_json(out / "train_record.json", record)
    return record


def plot_loss_curves(metrics_csv: str | os.PathLike | Sequence[str | os.PathLike], png: str | os.PathLike,
                     pod_steps: int | None = None) -> None:
    """Plot train loss, train PSNR and validation PSNR against the step from Lightning's CSV log(s).

    ``metrics_csv`` is one ``metrics.csv`` or several (a run and its resumptions, in order; a later
    file's rows replace an earlier file's rows from the step where it starts).

    Raises:
        ImportError: matplotlib is not installed (it comes with the ``bench`` extra).
    """
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [metrics_csv] if isinstance(metrics_csv, (str, os.PathLike)) else list(metrics_csv)
    rows: list[dict] = []
    for name in files:
        with open(name, newline="") as f:
            new = [r for r in csv.DictReader(f) if r.get("step") not in (None, "")]
        if new:
            start = min(int(r["step"]) for r in new)
            rows = [r for r in rows if int(r["step"]) < start] + new

    def series(key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts])) if pts else (np.zeros(0), np.zeros(0))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train loss (POD distill / finetune L1+SSIM)"),):
        x, y = series(key)
        axes[0].plot(x, y, lw=0.8, label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].legend()
    x, y = series("train_psnr")
    axes[1].plot(x, y, lw=0.8, alpha=0.6, label="train crops PSNR (dB)")
    x, y = series("val_psnr")
    axes[1].plot(x, y, "o-", label="Set14 val PSNR (dB)")
    axes[1].set_xlabel("step")
    axes[1].legend()
    for ax in axes:
        if pod_steps:
            ax.axvline(pod_steps, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle("AIR predictor training (dashed: POD -> finetuning)")
    fig.tight_layout()
    tmp = Path(str(png) + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png)


def add_train_arguments(parser: Any) -> None:
    """Add ``air train``'s options (one per :class:`TrainConfig` field) to an argparse parser."""
    d = TrainConfig()
    parser.add_argument("-o", "--output", dest="out_dir", default=d.out_dir,
                        help="run folder: checkpoints, logs, loss curves, exported weights (default runs/air)")
    parser.add_argument("--train-dir", dest="train_dirs", action="append", default=None, metavar="DIR",
                        help="training image folder (repeatable; default: BSDS500 train + test in ../shared/data)")
    parser.add_argument("--val-dir", default=d.val_dir, help="validation image folder (default: Set14 HR); '' for none")
    parser.add_argument("--val-limit", type=int, default=None, help="use only the first N validation images")
    for name, kind, help_ in (
            ("num_stages", int, "predictor stages (AIR: 4)"), ("patch_size", int, "patch size ps (AIR: 7)"),
            ("width", int, "channels of each stage's network"), ("crop", int, "training crop side (px)"),
            ("batch_size", int, "crops per step and device"),
            ("pod_steps", int, "Predict-Optimize-Distill steps (phase 1)"),
            ("pod_steps_per_stage", int, "POD steps before the next stage is switched on"),
            ("pod_inner_steps", int, "POD refinement: inner Adam steps x (stage + 1) (AIR: 20)"),
            ("pod_inner_lr", float, "POD refinement learning rate (AIR: 1e-3)"),
            ("finetune_steps", int, "cross-stage finetuning steps (phase 2)"),
            ("lr", float, "peak AdamW learning rate, POD"), ("finetune_lr", float, "peak AdamW learning rate, finetuning"),
            ("warmup_steps", int, "linear warm-up steps of each phase"), ("weight_decay", float, "AdamW weight decay"),
            ("seed", int, "global seed"), ("num_nodes", int, "nodes (DDP)"),
            ("num_workers", int, "data-loader worker processes"), ("val_every", int, "validate every N steps"),
            ("checkpoint_every", int, "write checkpoints/last.ckpt every N steps"),
            ("log_every", int, "log every N steps")):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=getattr(d, name),
                            help=f"{help_} (default {getattr(d, name)})")
    parser.add_argument("--accelerator", default=d.accelerator, help="Lightning accelerator: auto, cpu, gpu")
    parser.add_argument("--devices", default=d.devices, help="Lightning devices: auto, N or a list")
    parser.add_argument("--strategy", default=d.strategy, help="Lightning strategy: auto, ddp, ...")
    parser.add_argument("--precision", default=d.precision, help="Lightning precision, e.g. 32-true, bf16-mixed")
    parser.add_argument("--export", default=None, help="where to write the trained weights (.safetensors)")
    parser.add_argument("--init-weights", default=None, help="start from these predictor weights (.safetensors)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args: Any) -> TrainConfig:
    """A :class:`TrainConfig` from parsed :func:`add_train_arguments` options."""
    d = TrainConfig()
    values = {k: getattr(args, k) for k in asdict(d) if hasattr(args, k)}
    if values.get("train_dirs") is None:
        values["train_dirs"] = d.train_dirs
    if values.get("val_dir") == "":
        values["val_dir"] = None
    dev = values.get("devices")
    if isinstance(dev, str) and dev.isdigit():
        values["devices"] = int(dev)
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m air_core.predictor.training`` = ``air train``."""
    import argparse

    parser = argparse.ArgumentParser(prog="air train", description="train the AIR predictor (Lightning)")
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    record = train(config_from_args(args), resume=args.resume, progress_bar=not args.quiet)
    print(json.dumps({k: record[k] for k in ("steps", "wall_time_s", "hardware", "export") if k in record}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
