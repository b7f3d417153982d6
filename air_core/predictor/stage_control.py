"""AIR's Stage Control: per-patch error tests that decide which candidates of a stage are kept.

A patch is *active* (its candidate is kept) when the previous render is still poor there
(AIR, github.com/whoiszzj/AIR; /work/shared/reference/air_and_2d_gaussian_images.md):

    MSE(patch) > mse_threshold (default 10^-3.5, the 35 dB level)   OR   1 - SSIM(patch) > ssim_threshold (0.05)

MSE is over the patch's pixels and channels. SSIM uses the whole patch's statistics (no sliding window):
per channel, with means mu, population variances sigma^2 (1/n) and covariance sigma_xy over the patch's
n pixels, SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),
C1 = 0.01^2, C2 = 0.03^2 (data range 1), averaged over channels. Partial patches at the right / bottom
border use their valid pixels only.

Difference from the reference: when no patch of an image is active, the reference keeps all candidates;
here the mask stays all False, so nothing is added.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .parameterization import check_patch_size

__all__ = ["stage_control", "patch_errors", "MSE_THRESHOLD", "SSIM_THRESHOLD"]

#: AIR's MSE threshold 10^-3.5 (PSNR 35 dB).
MSE_THRESHOLD = 10 ** -3.5
#: AIR's 1 - SSIM threshold.
SSIM_THRESHOLD = 0.05
_C1 = 0.01 ** 2
_C2 = 0.03 ** 2


def _check_image(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{name} must be [C, H, W] or [B, C, H, W], got shape {list(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {list(x.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
    return x if x.dim() == 4 else x.unsqueeze(0)


def _check_threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _patch_sums(x: torch.Tensor, ps: int, grid: tuple[int, int]) -> torch.Tensor:
    """Sum of [B, C, H, W] over each ps x ps patch (zero-padded to the grid) -> [B, C, ph, pw]."""
    ph, pw = grid
    b, c, h, w = x.shape
    x = F.pad(x, (0, pw * ps - w, 0, ph * ps - h))
    return x.reshape(b, c, ph, ps, pw, ps).sum((3, 5))


@torch.no_grad()
def patch_errors(previous_render: torch.Tensor, target: torch.Tensor,
                 patch_size: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch MSE and whole-patch SSIM of ``previous_render`` against ``target`` (no gradient).

    Args:
        previous_render, target: float tensors of one shape, [C, H, W] or [B, C, H, W] (C >= 1, values
            nominally in [0, 1]; a "sum" render is compared as it is, not clamped), finite.
        patch_size: ps, int >= 1; (ph, pw) = (ceil(H / ps), ceil(W / ps)).

    Returns:
        (mse, ssim), each float64 [B, ph, pw] (B = 1 for 3-D inputs): MSE over the patch's valid pixels and
        channels; SSIM from the patch statistics, averaged over channels (see the module docstring).

    Raises:
        TypeError / ValueError: as :func:`stage_control`.
    """
    ps = check_patch_size(patch_size)
    x = _check_image(previous_render, "previous_render")
    y = _check_image(target, "target")
    if x.shape != y.shape:
        raise ValueError(f"previous_render and target must have one shape, got {list(previous_render.shape)} "
                         f"and {list(target.shape)}")
    x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
    h, w = x.shape[-2:]
    grid = (math.ceil(h / ps), math.ceil(w / ps))
    n = _patch_sums(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device), ps, grid)  # valid pixels
    mse = _patch_sums((x - y).square(), ps, grid).mean(1) / n[:, 0]
    mx, my = _patch_sums(x, ps, grid) / n, _patch_sums(y, ps, grid) / n
    vx = _patch_sums(x * x, ps, grid) / n - mx * mx
    vy = _patch_sums(y * y, ps, grid) / n - my * my
    cov = _patch_sums(x * y, ps, grid) / n - mx * my
    ssim = ((2 * mx * my + _C1) * (2 * cov + _C2)) / ((mx * mx + my * my + _C1) * (vx + vy + _C2))
    return mse, ssim.mean(1)


@torch.no_grad()
def stage_control(previous_render: torch.Tensor, target: torch.Tensor, patch_size: int = 7,
                  mse_threshold: float = MSE_THRESHOLD, ssim_threshold: float = SSIM_THRESHOLD) -> torch.Tensor:
    """AIR's Stage Control keep mask: which patches still need a Gaussian (see the module docstring).

    Args:
        previous_render: [C, H, W] or [B, C, H, W] float render of the Gaussians so far (zeros before the
            first stage); detached internally, no gradient flows.
        target: the image, same shape, nominally in [0, 1].
        patch_size: ps, int >= 1.
        mse_threshold: a patch is active if its MSE (over pixels and channels) exceeds this
            (default 10^-3.5, i.e. below 35 dB PSNR).
        ssim_threshold: ... or if 1 - SSIM(patch) exceeds this (default 0.05).

    Returns:
        bool tensor [B, ph, pw] (B = 1 for 3-D inputs), True = keep that patch's candidate. All False
        when no patch is active (unlike the reference, which then keeps all).

    Raises:
        TypeError: an image is not a floating-point tensor; ``patch_size`` not an int; a threshold not a
            real number.
        ValueError: wrong dims, empty or mismatched shapes, NaN / Inf values, ``patch_size`` < 1, a
            non-finite threshold.
    """
    mse_threshold = _check_threshold(mse_threshold, "mse_threshold")
    ssim_threshold = _check_threshold(ssim_threshold, "ssim_threshold")
    mse, ssim = patch_errors(previous_render, target, patch_size)
    return (mse > mse_threshold) | (1 - ssim > ssim_threshold)
