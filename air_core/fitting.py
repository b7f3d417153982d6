"""Per-image fitting of 2D Gaussians (the GaussianImage-style optimiser).

Used three ways: as the baseline representation (fit an image from scratch), as test-time
refinement of a predictor's output (``init=`` a :class:`~air_core.gaussians.Gaussians2D`), and
inside predictor training (``freeze=`` keeps earlier stages fixed).

Method (GaussianImage, Zhang et al. ECCV 2024; Image-GS, Zhang et al. SIGGRAPH 2025):

* Parameters: means (pixels), log-scales, rotations (radians), colours and, in alpha mode, opacity
  logits, optimised with Adam. Learning rates start from Image-GS's, with positions in pixels
  (the mean rate is multiplied by max(H, W)), raised for short budgets (see ``_LR``).
* Initialisation "gradient" (Image-GS): positions drawn with probability proportional to
  0.7 |grad I|^2 / sum |grad I|^2 + 0.3 / (H W), colours sampled from the image at those pixels;
  "random": uniform positions. Each Gaussian's scale is set from the local sampling density,
  s = 0.5 / sqrt(N p(pixel)) (half the spacing of neighbours), and in sum mode the sampled colour
  is multiplied by 2 / pi, the inverse of the expected coverage sum at that density.
* Error-guided progressive addition (Image-GS): with ``progressive=True`` the fit starts with
  half of the budget and adds the rest in five equal batches during the first half of the steps,
  sampled in proportion to the Gaussian-blurred squared error; new colours are the residual (sum
  mode) or the image colour (alpha mode).
* Loss: "l2" (MSE, GaussianImage; the default, it maximises PSNR and is cheap on a CPU), "l1", or
  "l1+ssim" = 0.7 L1 + 0.3 (1 - SSIM) (AIR's weights).
* Early stopping when a target PSNR is reached or the loss stops improving (``patience``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ._device import frees_gpu_memory, resolve_device
from .gaussians import Gaussians2D
from .images import check_memory, to_tensor
from .metrics import compute_metrics, ssim_loss
from .raster2d import render

__all__ = ["fit", "FitResult", "initialize", "INITS", "LOSSES"]

INITS = ("gradient", "random")
LOSSES = ("l2", "l1", "l1+ssim")
# Adam learning rates. Image-GS uses 5e-4 on [0, 1] positions, 2e-3 scale / rotation, 5e-3 colour;
# for the short CPU budgets here, rates 4x higher (12x for the log-scales) gained 3-5 dB at 250 steps
# on Kodak crops (kodim05, kodim23; 5k Gaussians) and stayed stable over 1000 steps.
_LR = {"means": 2e-3, "log_scales": 0.12, "rotations": 0.08, "colours": 0.02, "opacity_logits": 0.08}
_PROGRESSIVE_BATCHES = 5


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        gaussians: the fitted Gaussians (detached, on the fitting device, float32).
        render: [3, H, W] final render clamped to [0, 1].
        metrics: {"psnr", "ssim", "ms_ssim", "mse"} of the clamped render vs the image.
        history: one dict per logged step: step, loss, psnr, num_gaussians, time_s.
        steps: optimisation steps run.
        time_s: wall time of the optimisation (initialisation included).
        stopped: "steps", "target_psnr", "converged" or "cancelled".
    """

    gaussians: Gaussians2D
    render: torch.Tensor
    metrics: dict
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    time_s: float = 0.0
    stopped: str = "steps"


def _grad_energy(image: torch.Tensor) -> torch.Tensor:
    """|grad I|^2 summed over channels, [H, W] (central differences, numpy.gradient)."""
    arr = image.detach().cpu().numpy().astype(np.float64)
    energy = np.zeros(arr.shape[1:])
    for ch in arr:
        if min(ch.shape) < 2:
            continue
        gy, gx = np.gradient(ch)
        energy += gx * gx + gy * gy
    return torch.from_numpy(energy)


def _sample_gaussians(prob: torch.Tensor, n: int, colour_source: torch.Tensor, mode: str,
                      generator: torch.Generator, image_size: tuple[int, int], colour_factor: float
                      ) -> dict[str, torch.Tensor]:
    """Draw n Gaussians at pixels sampled from ``prob`` [H, W] (sums to 1), colours from
    ``colour_source`` [3, H, W]; scale from the sampling density (see module docstring)."""
    h, w = image_size
    flat = prob.reshape(-1).to(torch.float64)
    idx = torch.multinomial(flat, n, replacement=True, generator=generator)
    rows, cols = idx // w, idx % w
    jitter = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    means = torch.stack([cols + jitter[:, 0], rows + jitter[:, 1]], -1)
    density = (n * flat[idx]).clamp_min(1e-12)  # Gaussians per pixel around the sample
    s = (0.5 / density.sqrt()).clamp(0.5, 0.25 * max(h, w))
    scales = torch.stack([s, s], -1)
    rotations = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    colours = colour_source[:, rows, cols].T.to(torch.float64) * colour_factor
    out = {"means": means, "scales": scales, "rotations": rotations, "colours": colours}
    if mode == "alpha":
        out["opacities"] = torch.full((n,), 0.5, dtype=torch.float64)
    return out


def initialize(image: Any, num_gaussians: int, *, init: str = "gradient", mode: str = "sum", seed: int = 0,
               device: str | torch.device = "cpu") -> Gaussians2D:
    """Initial Gaussians for ``image`` ([3, H, W] tensor or any image :func:`~air_core.images.to_tensor`
    accepts) by the "gradient" or "random" rule (see module docstring). Deterministic for a seed.

    Raises:
        ValueError: unknown ``init`` or ``mode``; ``num_gaussians`` <= 0.
    """
    target = to_tensor(image)
    _check_common(num_gaussians, init, mode)
    gen = torch.Generator().manual_seed(int(seed))
    return _init_from_tensor(target, num_gaussians, init, mode, gen).to(resolve_device(device))


def _init_from_tensor(target: torch.Tensor, n: int, init: str, mode: str, gen: torch.Generator) -> Gaussians2D:
    _, h, w = target.shape
    uniform = torch.full((h, w), 1.0 / (h * w), dtype=torch.float64)
    if init == "gradient":
        energy = _grad_energy(target)
        total = float(energy.sum())
        prob = 0.3 * uniform + (0.7 * energy / total if total > 0 else 0.7 * uniform)
    else:
        prob = uniform
    factor = 2.0 / math.pi if mode == "sum" else 1.0
    p = _sample_gaussians(prob, n, target, mode, gen, (h, w), factor)
    return Gaussians2D(p["means"], p["scales"], p["rotations"], p["colours"], p.get("opacities"), (h, w),
                       {"mode": mode}).to(dtype=torch.float32)


def _check_common(num_gaussians: Any, init: Any, mode: str) -> None:
    if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, (int, np.integer)):
        raise TypeError(f"num_gaussians must be an int, got {type(num_gaussians).__name__}")
    if num_gaussians <= 0:
        raise ValueError(f"num_gaussians must be > 0, got {num_gaussians}")
    if isinstance(init, str) and init not in INITS:
        raise ValueError(f"init must be one of {INITS} or a Gaussians2D, got {init!r}")
    if mode not in ("sum", "alpha"):
        raise ValueError(f"mode must be 'sum' or 'alpha', got {mode!r}")


class _Parameters:
    """Unconstrained tensors optimised by Adam, and the Gaussians they describe."""

    names = ("means", "log_scales", "rotations", "colours", "opacity_logits")

    def __init__(self, g: Gaussians2D, mode: str) -> None:
        self.mode = mode
        self.image_size = g.image_size
        g = g.detach()
        self.tensors = {
            "means": g.means.clone(),
            "log_scales": g.scales.clamp_min(1e-4).log(),
            "rotations": g.rotations.clone(),
            "colours": g.colours.clone(),
        }
        if mode == "alpha":
            op = g.opacities if g.opacities is not None else torch.full_like(g.rotations, 0.5)
            op = op.clamp(1e-4, 1 - 1e-4)
            self.tensors["opacity_logits"] = torch.log(op) - torch.log1p(-op)
        for t in self.tensors.values():
            t.requires_grad_(True)

    def gaussians(self) -> Gaussians2D:
        t = self.tensors
        op = torch.sigmoid(t["opacity_logits"]) if "opacity_logits" in t else None
        return Gaussians2D(t["means"], t["log_scales"].exp(), t["rotations"], t["colours"], op, self.image_size,
                           {"mode": self.mode})

    def extend(self, new: Gaussians2D, optimizer: torch.optim.Adam) -> None:
        """Append Gaussians, extending Adam's moment buffers with zeros (3DGS densification style)."""
        extra = _Parameters(new, self.mode).tensors
        for group in optimizer.param_groups:
            name = group["name"]
            old = group["params"][0]
            grown = torch.cat([old.detach(), extra[name].detach()], 0).requires_grad_(True)
            state = optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = torch.cat([state[key], torch.zeros_like(extra[name])], 0)
                optimizer.state[grown] = state
            group["params"][0] = grown
            self.tensors[name] = grown


@frees_gpu_memory
def fit(image: Any, num_gaussians: int | None = 10000, steps: int = 2000, *, mode: str = "sum",
        init: str | Gaussians2D = "gradient", loss: str = "l2", lr_scale: float = 1.0, progressive: bool = True,
        freeze: torch.Tensor | np.ndarray | None = None, target_psnr: float | None = None,
        patience: int | None = None, log_every: int = 50,
        progress: Callable[[float, str], Any] | None = None, seed: int = 0,
        device: str | torch.device = "auto", backend: str = "auto") -> FitResult:
    """Fit 2D Gaussians to an image by gradient descent (see the module docstring for the method).

    Args:
        image: anything :func:`~air_core.images.to_tensor` accepts (numpy [H, W(, C)] uint8/uint16/
            float in [0, 1], tensor, PIL image, file path).
        num_gaussians: Gaussian budget N > 0. With ``init`` a Gaussians2D, None means len(init);
            a larger budget adds the difference by error-guided sampling.
        steps: Adam steps (>= 0).
        mode: "sum" (accumulated summation, signed colours) or "alpha" (front-to-back blending).
        init: "gradient", "random", or an initial :class:`Gaussians2D` of this image's size.
        loss: "l2", "l1" or "l1+ssim".
        lr_scale: multiplies every learning rate.
        progressive: start with half of the budget and add the rest guided by the error. (With
            ``init`` a Gaussians2D smaller than the budget, the difference is always added that way.)
        freeze: optional bool mask [len(init)] of initial Gaussians that must not change.
        target_psnr: stop once the PSNR (dB, of the unclamped render, checked every ``log_every``
            steps) reaches this value.
        patience: stop when the loss has not improved by 0.1 % for this many steps.
        log_every: history / progress interval in steps.
        progress: callback(fraction in [0, 1], message); returning ``False`` cancels the fit.
        seed: seeds initialisation and sampling; same seed, same result on the same backend.
        device: "auto", "cpu" or "cuda".
        backend: rasterizer backend (see :mod:`air_core.raster2d`).

    Returns:
        :class:`FitResult`.

    Raises:
        TypeError / ValueError: bad image, budget, mode, init, loss, freeze mask or steps.
        air_core.images.ImageTooLargeError: the image cannot be fitted in the available memory.
    """
    dev = resolve_device(device)
    target = to_tensor(image, device=dev)
    _, h, w = target.shape
    if isinstance(init, Gaussians2D):
        if init.image_size != (h, w):
            raise ValueError(f"init has image_size {init.image_size}, the image is {(h, w)}")
        if num_gaussians is None:
            num_gaussians = len(init)
        if num_gaussians < len(init):
            raise ValueError(f"num_gaussians ({num_gaussians}) must be >= len(init) ({len(init)})")
    elif num_gaussians is None:
        raise ValueError("num_gaussians is required unless init is a Gaussians2D")
    _check_common(num_gaussians, init, mode)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (isinstance(lr_scale, (int, float)) and lr_scale > 0):
        raise ValueError(f"lr_scale must be > 0, got {lr_scale!r}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every!r}")
    # per-step working memory: image-sized buffers (render, grads, loss terms) + per-Gaussian state
    check_memory(h * w * 3 * 8 * 24 + num_gaussians * 200, f"fitting a {w}x{h} image with {num_gaussians} Gaussians")

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(init, Gaussians2D):
        start = init.detach().to(dev, torch.float32)
        if mode == "alpha" and start.opacities is None:
            start = Gaussians2D(start.means, start.scales, start.rotations, start.colours,
                                torch.full_like(start.rotations, 0.5), start.image_size, dict(start.metadata))
        n_start = len(start)
    else:
        n_start = max(1, num_gaussians // 2) if progressive else num_gaussians
        start = _init_from_tensor(target.cpu(), n_start, init, mode, gen).to(dev)

    frozen = None
    if freeze is not None:
        if not isinstance(init, Gaussians2D):
            raise ValueError("freeze needs init to be a Gaussians2D")
        frozen = torch.as_tensor(np.asarray(freeze) if not isinstance(freeze, torch.Tensor) else freeze)
        if frozen.dtype != torch.bool or frozen.shape != (len(init),):
            raise ValueError(f"freeze must be a bool mask of shape [{len(init)}], got {frozen.dtype} "
                             f"{list(frozen.shape)}")
        frozen = frozen.to(dev)

    params = _Parameters(start, mode)
    optimizer = torch.optim.Adam(
        [{"params": [t], "name": k, "lr": lr_scale * _LR[k] * (max(h, w) if k == "means" else 1.0)}
         for k, t in params.tensors.items()])

    remaining = num_gaussians - n_start
    add_steps = []
    if remaining > 0 and steps > 0:
        add_steps = sorted({max(1, int(steps * 0.5 * (k + 1) / _PROGRESSIVE_BATCHES))
                            for k in range(_PROGRESSIVE_BATCHES)})
    batches = np.diff(np.linspace(0, remaining, len(add_steps) + 1).round().astype(int)).tolist()

    def loss_fn(out: torch.Tensor) -> torch.Tensor:
        if loss == "l2":
            return torch.mean((out - target) ** 2)
        l1 = torch.mean(torch.abs(out - target))
        return l1 if loss == "l1" else 0.7 * l1 + 0.3 * ssim_loss(out, target)

    history: list[dict] = []
    stopped = "steps"
    best, best_step = math.inf, 0
    step = 0
    for step in range(1, steps + 1):
        if add_steps and step == add_steps[0]:
            add_steps.pop(0)
            n_new = batches.pop(0)
            if n_new > 0:
                with torch.no_grad():
                    cur = render(params.gaussians(), backend=backend, mode=mode)
                params.extend(_error_guided(target, cur, n_new, mode, gen), optimizer)
        optimizer.zero_grad(set_to_none=True)
        out = render(params.gaussians(), backend=backend, mode=mode)
        value = loss_fn(out)
        value.backward()
        if frozen is not None:
            for t in params.tensors.values():
                if t.grad is not None:
                    t.grad[: len(frozen)][frozen] = 0
        optimizer.step()
        lv = float(value.detach())
        if lv < best * (1 - 1e-3):
            best, best_step = lv, step
        log_now = step % log_every == 0 or step == steps
        if log_now:
            mse = float(torch.mean((out.detach().clamp(0, 1) - target) ** 2))
            psnr = 10 * math.log10(1.0 / max(mse, 1e-20))
            history.append({"step": step, "loss": lv, "psnr": psnr, "num_gaussians": len(params.tensors["means"]),
                            "time_s": time.perf_counter() - t0})
            if progress is not None and progress(step / steps, f"step {step}/{steps}  PSNR {psnr:.2f} dB") is False:
                stopped = "cancelled"
                break
            if target_psnr is not None and psnr >= target_psnr:
                stopped = "target_psnr"
                break
        if patience is not None and step - best_step >= patience:
            stopped = "converged"
            break
    result_g = params.gaussians().detach()
    with torch.no_grad():
        final = render(result_g, backend=backend, mode=mode).clamp(0, 1)
    metrics = compute_metrics(final, target)
    return FitResult(result_g, final, metrics, history, step if steps else 0, time.perf_counter() - t0, stopped)


def _error_guided(target: torch.Tensor, current: torch.Tensor, n: int, mode: str,
                  gen: torch.Generator) -> Gaussians2D:
    """n new Gaussians sampled in proportion to the blurred squared error (Image-GS)."""
    from skimage.filters import gaussian

    residual = (target - current).detach()
    err = (residual ** 2).sum(0).cpu().numpy().astype(np.float64)
    err = gaussian(err, sigma=2.0)
    total = err.sum()
    h, w = err.shape
    prob = torch.from_numpy(err / total) if total > 0 else torch.full((h, w), 1.0 / (h * w), dtype=torch.float64)
    source = residual.cpu() if mode == "sum" else target.cpu()
    factor = 2.0 / math.pi if mode == "sum" else 1.0
    p = _sample_gaussians(prob, n, source, mode, gen, (h, w), factor)
    return Gaussians2D(p["means"], p["scales"], p["rotations"], p["colours"], p.get("opacities"), (h, w),
                       {"mode": mode}).to(target.device, torch.float32)
