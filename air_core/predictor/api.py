"""``reconstruct``: image -> 2D Gaussians with the AIR predictor, optionally refined per image.

The main job of the toolkit (DESIGN.md, "Data flow of the main job"):

    image --to_tensor--> [3, H, W] --AIRPredictor, stages 0..S-1 (inference mode)--> Gaussians ("sum" mode)
          --(refine_steps > 0) air_core.fit(init=those Gaussians, fixed count)--> refined Gaussians

The feed-forward part runs under :func:`torch.inference_mode`; each stage is timed (on CUDA the
device is synchronised around every stage so the times are real). The default model is the one
shipped with the package (:data:`~air_core.predictor.model.PRETRAINED_PATH`), loaded once per device
and weights file and kept in a module-level cache.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .._device import frees_gpu_memory, resolve_device
from ..gaussians import Gaussians2D
from ..images import to_tensor_with_info
from ..metrics import compute_metrics, psnr
from .model import PRETRAINED_PATH, AIRPredictor

__all__ = ["reconstruct", "ReconstructResult", "ReconstructCancelled", "load_predictor"]

#: Learning-rate factor of the refinement (multiplies :func:`air_core.fit`'s rates). fit's rates are
#: tuned for fits from scratch; Adam's first steps move every parameter by about the learning rate,
#: which costs a good starting point several dB. On a 128 x 128 astronaut crop (1500 Gaussians)
#: started from a 31.5 dB fit, 5 / 20 / 100 steps gave 24.5 / 31.1 / 37.9 dB at 1.0, 32.0 / 34.3 /
#: 37.6 dB at 0.25 and 32.6 / 34.1 / 37.1 dB at 0.1: 0.25 is the compromise.
REFINE_LR_SCALE = 0.25

_MODEL_CACHE: dict[tuple, AIRPredictor] = {}
_CACHE_LOCK = threading.Lock()
# the per-stage timing hooks live on the (possibly shared, cached) model: one feed-forward at a time
_FORWARD_LOCK = threading.Lock()


class ReconstructCancelled(Exception):
    """The ``progress`` callback of :func:`reconstruct` returned ``False``."""


@dataclass
class ReconstructResult:
    """Outcome of :func:`reconstruct` for one image of size (H, W), S stages. All tensors on the CPU.

    Attributes:
        gaussians: the final Gaussians ("sum" mode): the refined ones when ``refined``, else the
            feed-forward ones (the same object as ``predicted``).
        predicted: the feed-forward Gaussians, the kept candidates of all stages in stage order.
        renders: [S, 3, H, W] float, the feed-forward render after each stage (not clamped);
            ``renders[-1]`` is the render of ``predicted``.
        keep: [S, ph, pw] bool stage-control masks (True = that patch's candidate was kept).
        counts: Gaussians kept per stage (``keep[s].sum()``); ``sum(counts) == len(predicted)``.
        patch_size: the predictor's patch size ps.
        metrics: ``psnr``, ``ssim``, ``ms_ssim``, ``mse`` of the clamped final render (see
            :func:`~air_core.metrics.compute_metrics`; ``ms_ssim`` is None below 33 x 33 pixels),
            ``stage_psnr`` (list, one per stage, of the clamped feed-forward renders) and, when
            ``refine_steps`` > 0, ``feedforward`` (the same metrics of the feed-forward render).
        timings: seconds: ``stages`` (list, one per stage), ``feedforward`` (all stages),
            ``load_model`` (0 when the model was cached or given), ``refine`` (0 without
            refinement) and ``total`` (the whole call, image conversion included).
        refine_steps: refinement steps requested.
        refined: True when ``gaussians`` are the refined ones. False without refinement, when the
            predictor kept no Gaussian (nothing to refine, e.g. a black image), and when the
            refinement ended below the feed-forward PSNR (too few steps to recover from the
            optimiser's first moves): the feed-forward result is then kept.
        gray: the input had one channel (gray); the Gaussians' three colour channels are equal.
    """

    gaussians: Gaussians2D
    predicted: Gaussians2D
    renders: torch.Tensor = field(repr=False)
    keep: torch.Tensor = field(repr=False)
    counts: list[int]
    patch_size: int
    metrics: dict
    timings: dict
    refine_steps: int = 0
    refined: bool = False
    gray: bool = False
    final_render: torch.Tensor | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        h, w = self.image_size
        return (f"ReconstructResult({w}x{h}, stages={self.stages}, counts={self.counts}, "
                f"num_gaussians={self.num_gaussians}, refined={self.refined}, psnr={self.metrics['psnr']:.2f} dB, "
                f"total={self.timings['total']:.3f} s)")

    @property
    def num_gaussians(self) -> int:
        """len(gaussians)."""
        return len(self.gaussians)

    @property
    def stages(self) -> int:
        """Stages run, S."""
        return len(self.counts)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.gaussians.image_size

    @property
    def render(self) -> torch.Tensor:
        """[3, H, W] the final image, clamped to [0, 1] (what ``metrics`` measure)."""
        if self.final_render is not None:
            return self.final_render
        return self.renders[-1].clamp(0, 1)


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    expected = f"an int >= {low}" if high is None else f"an int in {low} .. {high}"
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def load_predictor(path: str | Path | None = None, device: str | torch.device = "auto") -> AIRPredictor:
    """The predictor in ``path`` (default: the shipped weights) on ``device``, in eval mode, cached.

    The cache is keyed by the file (path, modification time, size) and the device, so repeated calls
    do not reload, and a replaced weights file is read again. The returned model is shared: do not
    train or modify it.

    Raises:
        FileNotFoundError: the file does not exist (for the default: the pretrained weights are not
            installed).
        ValueError: not a predictor file, or a bad ``device``.
    """
    dev = resolve_device(device)
    p = Path(PRETRAINED_PATH if path is None else path).expanduser().resolve()
    if not p.is_file():
        if path is None:
            raise FileNotFoundError(
                f"the pretrained AIR predictor weights are not installed (expected {p}); pass model= an "
                f"AIRPredictor (or --weights PATH on the command line) or reinstall air_core")
        raise FileNotFoundError(f"predictor weights not found: {p}")
    stat = p.stat()
    key = (str(p), stat.st_mtime_ns, stat.st_size, str(dev))
    with _CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = AIRPredictor.from_pretrained(p, device=dev)
            for stale in [k for k in _MODEL_CACHE if k[0] == key[0] and k[3] == key[3]]:
                del _MODEL_CACHE[stale]
            _MODEL_CACHE[key] = model
    return model


def _model_device(model: AIRPredictor) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@frees_gpu_memory
def reconstruct(image: Any, stages: int | None = None, refine_steps: int = 0, device: str | torch.device = "auto",
                progress: Callable[[float, str], Any] | None = None, *, model: AIRPredictor | None = None,
                refine_loss: str = "l2", refine_lr_scale: float = REFINE_LR_SCALE, seed: int = 0,
                mse_threshold: float | None = None, ssim_threshold: float | None = None) -> ReconstructResult:
    """Turn an image into 2D Gaussians with the feed-forward AIR predictor, optionally refined.

    Args:
        image: anything :func:`~air_core.images.to_tensor` accepts: numpy [H, W(, C)] uint8 / uint16 /
            float in [0, 1], torch tensor (also channel-first), PIL image, or a file path. A gray image
            (one channel) is replicated to three channels for the predictor, and the Gaussians' three
            colour channels are then made equal (each replaced by their mean; the renders likewise),
            so the result stays gray. An RGBA image's alpha channel is dropped (as ``to_tensor`` does).
        stages: how many predictor stages to run, 1 .. ``model.num_stages`` (default: all, 4 for the
            shipped weights). Fewer stages give fewer Gaussians and a coarser image.
        refine_steps: >= 0 steps of per-image optimisation (:func:`air_core.fit`, "sum" mode, the
            Gaussian count fixed) continued from the predicted Gaussians. 0 = feed-forward only.
        device: "auto" (CUDA when available), "cpu", "cuda" or a torch.device. With ``model`` given,
            "auto" means the model's device, and another device is an error.
        progress: callback(fraction in [0, 1], message), called after each stage and during the
            refinement; returning ``False`` (not None) cancels with :class:`ReconstructCancelled`.
        model: an :class:`AIRPredictor` to use instead of the shipped one (default: the shipped weights
            via :func:`load_predictor`, cached per device).
        refine_loss: the refinement loss, "l2" (maximises PSNR), "l1" or "l1+ssim".
        refine_lr_scale: multiplies :func:`air_core.fit`'s learning rates in the refinement (default
            :data:`REFINE_LR_SCALE`; fit's own rates, meant for fits from scratch, first knock a good
            start down by several dB).
        seed: seed of the refinement (the feed-forward part is deterministic).
        mse_threshold, ssim_threshold: stage-control thresholds for this call (default: the model's,
            AIR's 10^-3.5 and 0.05): a patch's candidate is kept when the previous render's patch MSE
            is above ``mse_threshold`` or its 1 - SSIM above ``ssim_threshold``. Higher thresholds keep
            fewer Gaussians. The model itself is left unchanged.

    Returns:
        :class:`ReconstructResult` (tensors and Gaussians on the CPU). If the refinement ends below the
        feed-forward PSNR, the feed-forward Gaussians are returned (``result.refined`` is False).

    Raises:
        TypeError: ``image`` of an unsupported type; ``stages`` / ``refine_steps`` / ``seed`` not ints;
            ``model`` not an AIRPredictor; ``progress`` not callable.
        ValueError: a bad image (see ``to_tensor``), ``stages`` outside 1 .. num_stages,
            ``refine_steps`` < 0, an unknown ``refine_loss``, ``refine_lr_scale`` <= 0, a bad
            ``device`` or one that differs from the given model's.
        FileNotFoundError: ``image`` is a missing file, or (without ``model``) the shipped weights are
            not installed.
        ReconstructCancelled: ``progress`` returned False.
        air_core.images.ImageTooLargeError: the image does not fit in the available memory.
    """
    from ..fitting import LOSSES, fit

    t_start = time.perf_counter()
    if model is not None and not isinstance(model, AIRPredictor):
        raise TypeError(f"model must be an AIRPredictor or None, got {type(model).__name__}")
    if stages is not None:
        stages = _check_int(stages, "stages", 1, model.num_stages if model is not None else None)
    refine_steps = _check_int(refine_steps, "refine_steps", 0)
    seed = _check_int(seed, "seed", 0)
    thresholds = {}
    for name, value in (("mse_threshold", mse_threshold), ("ssim_threshold", ssim_threshold)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number or None, got {value!r}")
        thresholds[name] = float(value)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable (fraction, message) or None, got {type(progress).__name__}")
    if refine_loss not in LOSSES:
        raise ValueError(f"refine_loss must be one of {LOSSES}, got {refine_loss!r}")
    if (isinstance(refine_lr_scale, bool) or not isinstance(refine_lr_scale, (int, float))
            or not (math.isfinite(refine_lr_scale) and refine_lr_scale > 0)):
        raise ValueError(f"refine_lr_scale must be a positive finite number, got {refine_lr_scale!r}")

    if model is not None:
        dev = _model_device(model)
        if not (device is None or (isinstance(device, str) and device == "auto")):
            wanted = resolve_device(device)
            if wanted.type != dev.type or (wanted.index is not None and wanted.index != dev.index):
                raise ValueError(f"device {device!r} differs from the given model's device {dev}; move the "
                                 f"model with model.to(...) or pass device='auto'")
    else:
        dev = resolve_device(device)

    target, info = to_tensor_with_info(image, argument="image", device=dev)
    gray = info.channels == 1
    h, w = target.shape[-2:]

    t0 = time.perf_counter()
    if model is None:
        model = load_predictor(None, dev)
    load_time = time.perf_counter() - t0
    num = model.num_stages if stages is None else stages
    if num > model.num_stages:
        raise ValueError(f"stages must be an int in 1 .. {model.num_stages} (the model's num_stages), got {num}")

    ff_share = 1.0 if refine_steps == 0 else max(0.05, 5 * num / (5 * num + refine_steps))

    def report(fraction: float, message: str) -> None:
        if progress is not None and progress(min(1.0, max(0.0, fraction)), message) is False:
            raise ReconstructCancelled(f"reconstruct cancelled ({message})")

    # -- feed-forward, one timed stage after another ----------------------------------------------
    marks: list[float] = []

    def stage_start(_module: Any, _inputs: Any) -> None:
        _sync(dev)
        if marks:  # the previous stage is complete
            done = len(marks)
            report(ff_share * done / num, f"stage {done}/{num}")
        marks.append(time.perf_counter())

    report(0.0, f"stage 0/{num}")
    with _FORWARD_LOCK:
        handles = [net.register_forward_pre_hook(stage_start) for net in model.stages[:num]]
        was_training = model.training
        saved = {name: getattr(model, name) for name in thresholds}
        try:
            for name, value in thresholds.items():
                setattr(model, name, value)
            model.eval()
            with torch.inference_mode():
                out = model(target[None], stages=num)
                _sync(dev)
                marks.append(time.perf_counter())
        except ValueError as exc:  # e.g. GroupNorm on a 1 x 1 feature map of a narrow model
            raise ValueError(f"the predictor cannot process this {w} x {h} image: {exc}") from exc
        finally:
            for handle in handles:
                handle.remove()
            for name, value in saved.items():
                setattr(model, name, value)
            model.train(was_training)
    stage_times = [b - a for a, b in zip(marks[:-1], marks[1:])]
    if len(stage_times) != num:  # the model did not call its stage networks once each, in order
        stage_times = [(marks[-1] - marks[0]) / num] * num

    # out of inference mode: clone into ordinary CPU tensors (usable by autograd in the refinement)
    predicted = out.gaussians[0].to("cpu").clone()
    renders = out.renders[0].to("cpu").clone()
    keep = out.keep[0].to("cpu").clone()
    counts = [int(c) for c in out.counts[0]]
    del out
    if gray:
        colours = predicted.colours.mean(1, keepdim=True).expand(-1, 3).contiguous()
        predicted = Gaussians2D(predicted.means, predicted.scales, predicted.rotations, colours, None,
                                predicted.image_size, {})
        renders = renders.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    predicted.metadata = {"mode": "sum", "source": "air-predictor", "stages": num,
                          "patch_size": model.patch_size, "counts": counts}
    report(ff_share, f"stage {num}/{num}")

    target_cpu = target.cpu()
    ff_metrics = compute_metrics(renders[-1], target_cpu)
    stage_psnr = [psnr(r.clamp(0, 1), target_cpu) for r in renders]
    feedforward_time = marks[-1] - marks[0]

    # -- optional refinement ----------------------------------------------------------------------
    gaussians, final_render, refined, metrics = predicted, None, False, dict(ff_metrics)
    refine_time = 0.0
    if refine_steps > 0 and len(predicted) > 0:
        def refine_progress(fraction: float, message: str) -> bool:
            if progress is None:
                return True
            return progress(ff_share + (1 - ff_share) * fraction, f"refine {message}") is not False

        t0 = time.perf_counter()
        fitted = fit(target, None, refine_steps, mode="sum", init=predicted.to(dev), loss=refine_loss,
                     lr_scale=refine_lr_scale, progressive=False, log_every=max(1, refine_steps // 100),
                     progress=refine_progress, seed=seed, device=dev)
        refine_time = time.perf_counter() - t0
        if fitted.stopped == "cancelled":
            raise ReconstructCancelled(f"reconstruct cancelled during refinement (step {fitted.steps}/{refine_steps})")
        if fitted.metrics["psnr"] >= ff_metrics["psnr"]:
            g = fitted.gaussians.to("cpu")
            gaussians = Gaussians2D(g.means, g.scales, g.rotations, g.colours, None, g.image_size,
                                    dict(predicted.metadata, refine_steps=fitted.steps, refine_loss=refine_loss))
            final_render = fitted.render.to("cpu")
            metrics = dict(fitted.metrics)
            refined = True
        else:
            metrics = dict(ff_metrics, refine_discarded_psnr=fitted.metrics["psnr"])
        report(1.0, "refined" if refined else "refinement discarded")
    if refine_steps > 0:
        metrics["feedforward"] = dict(ff_metrics)
    metrics["stage_psnr"] = stage_psnr

    timings = {"stages": stage_times, "feedforward": feedforward_time, "load_model": load_time,
               "refine": refine_time, "total": time.perf_counter() - t_start}
    return ReconstructResult(gaussians=gaussians, predicted=predicted, renders=renders, keep=keep, counts=counts,
                             patch_size=model.patch_size, metrics=metrics, timings=timings,
                             refine_steps=refine_steps, refined=refined, gray=gray, final_render=final_render)
