"""Image quality metrics: PSNR, SSIM, MS-SSIM, MSE, and the differentiable SSIM loss.

The formulas come from well-kept libraries, not from this package: PSNR and MSE from
scikit-image (:func:`skimage.metrics.peak_signal_noise_ratio`, :func:`skimage.metrics.mean_squared_error`),
SSIM and MS-SSIM from ``pytorch_msssim`` (Gaussian window, sigma 1.5, K = (0.01, 0.03), data range 1).

Inputs: float torch tensors [C, H, W] or [B, C, H, W] in the core convention (values are *clamped*
to [0, 1], since renders may overshoot), or any user image :func:`air_core.images.to_tensor`
accepts (numpy [H, W] / [H, W, C] of uint8, uint16, float, ...; floats outside [0, 1] are clamped
here rather than rejected). The second image is moved to the first one's device. The reported
metrics are computed without gradients; :func:`ssim_loss` is the differentiable one.

Small images. pytorch_msssim's default Gaussian window is 11 pixels. For images whose smaller side
is below 11 pixels, SSIM uses the largest odd window that fits (>= 3); MS-SSIM downsamples four
times and needs ``min(H, W) > (win_size - 1) * 16`` (161 pixels for the default window), so it uses
the largest odd window <= 11 satisfying that (>= 3, i.e. at least 33 x 33 pixels). Values computed
with a reduced window are not directly comparable with values computed with the standard 11-pixel
window. Images too small even for a 3-pixel window raise ``ValueError`` (or give ``None`` in
:func:`compute_metrics`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_msssim
import torch

from .images import _as_pair

__all__ = [
    "psnr",
    "ssim",
    "ms_ssim",
    "ssim_loss",
    "compute_metrics",
    "ssim_win_size",
    "ms_ssim_win_size",
    "SSIM_MIN_SIZE",
    "MS_SSIM_MIN_SIZE",
]

#: The standard (and largest used) SSIM window, pixels.
DEFAULT_WIN_SIZE = 11
#: Smallest side (pixels) for which :func:`ssim` works (window 3).
SSIM_MIN_SIZE = 3
#: Smallest side (pixels) for which :func:`ms_ssim` works (window 3: side > (3 - 1) * 2**4).
MS_SSIM_MIN_SIZE = 2 * 2**4 + 1
_MS_SSIM_LEVELS = 5  # pytorch_msssim's default weights have 5 scales: 4 downsamplings


def ssim_win_size(height: int, width: int) -> int:
    """Gaussian window for SSIM on an H x W image: 11, or the largest odd size <= min(H, W).

    Raises:
        ValueError: ``min(H, W) < 3``.
    """
    side = min(int(height), int(width))
    if side < SSIM_MIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIZE} x {SSIM_MIN_SIZE} pixels; "
                         f"got {height} x {width}")
    win = min(DEFAULT_WIN_SIZE, side)
    return win if win % 2 else win - 1


def ms_ssim_win_size(height: int, width: int) -> int:
    """Gaussian window for MS-SSIM on an H x W image: the largest odd w <= 11 with min(H, W) > (w - 1) * 16.

    Raises:
        ValueError: ``min(H, W) < 33`` (no window >= 3 fits the four downsamplings).
    """
    side = min(int(height), int(width))
    factor = 2 ** (_MS_SSIM_LEVELS - 1)
    win = min(DEFAULT_WIN_SIZE, (side - 1) // factor + 1)
    if win % 2 == 0:
        win -= 1
    if win < 3:
        raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIZE} x {MS_SSIM_MIN_SIZE} pixels "
                         f"(the smaller side must exceed (win_size - 1) * 16 with win_size >= 3); "
                         f"got {height} x {width}")
    return win


# ----------------------------------------------------------------------------------------------
# Internals on prepared [B, C, H, W] tensors in [0, 1]
# ----------------------------------------------------------------------------------------------


def _psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    from skimage.metrics import peak_signal_noise_ratio  # imported here: it pulls in scipy.stats (~0.8 s)

    x = a.cpu().double().numpy()
    y = b.cpu().double().numpy()
    if np.array_equal(x, y):
        return math.inf
    return float(peak_signal_noise_ratio(y, x, data_range=data_range))


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    win = ssim_win_size(a.shape[-2], a.shape[-1])
    with torch.no_grad():
        value = pytorch_msssim.ssim(a, b, data_range=1.0, size_average=True, win_size=win)
    return float(value)


def _ms_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    win = ms_ssim_win_size(a.shape[-2], a.shape[-1])
    with torch.no_grad():
        value = pytorch_msssim.ms_ssim(a, b, data_range=1.0, size_average=True, win_size=win)
    return float(value)


def _check_data_range(data_range: float) -> float:
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be a positive number, got {data_range!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Public metrics
# ----------------------------------------------------------------------------------------------


def psnr(x: Any, y: Any, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, via :func:`skimage.metrics.peak_signal_noise_ratio`.

    PSNR = 10 log10(data_range^2 / MSE), with the MSE over all pixels and channels (and over the
    whole batch for [B, C, H, W] inputs: one PSNR of the pooled MSE, not a mean of per-image PSNRs).

    Args:
        x, y: images (see the module docstring), same shape after conversion; clamped to [0, 1].
        data_range: the peak value. Inputs are in [0, 1], so keep the default 1.0 unless you
            deliberately want another reference level.

    Returns:
        PSNR in dB as a float; ``math.inf`` for identical images.

    Raises:
        ValueError: shapes differ (both are named), NaN / Inf, invalid images, bad ``data_range``.
        TypeError: an input of an unsupported type.
    """
    dr = _check_data_range(data_range)
    a, b, _ = _as_pair(x, y, ("x", "y"))
    return _psnr(a, b, dr)


def ssim(x: Any, y: Any) -> float:
    """Structural similarity (mean over pixels, channels and batch), via ``pytorch_msssim.ssim``.

    Gaussian window 11 (sigma 1.5), reduced to the largest odd size that fits for images smaller
    than 11 pixels (see :func:`ssim_win_size`), data range 1, inputs clamped to [0, 1].

    Returns:
        SSIM as a float, 1.0 for identical images (at most 1).

    Raises:
        ValueError: shapes differ, an image smaller than 3 x 3, NaN / Inf, invalid images.
        TypeError: an input of an unsupported type.
    """
    a, b, _ = _as_pair(x, y, ("x", "y"))
    return _ssim(a, b)


def ms_ssim(x: Any, y: Any) -> float:
    """Multi-scale SSIM (5 scales), via ``pytorch_msssim.ms_ssim``.

    Gaussian window 11 for images of at least 161 pixels per side; smaller images get the largest
    odd window that survives the four downsamplings (see :func:`ms_ssim_win_size`). Data range 1,
    inputs clamped to [0, 1].

    Returns:
        MS-SSIM as a float in [0, 1], 1.0 for identical images.

    Raises:
        ValueError: shapes differ; an image smaller than 33 x 33 pixels (the message states the
            minimum); NaN / Inf; invalid images.
        TypeError: an input of an unsupported type.
    """
    a, b, _ = _as_pair(x, y, ("x", "y"))
    return _ms_ssim(a, b)


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable SSIM loss, ``1 - pytorch_msssim.ssim(x, y, data_range=1, size_average=True)``.

    No clamping, so gradients flow for every value (renders may overshoot [0, 1]). Window as in
    :func:`ssim`.

    Args:
        x: float tensor [C, H, W] or [B, C, H, W] (e.g. a render that requires grad).
        y: float tensor of the same shape (e.g. the target); moved to ``x``'s device and dtype.

    Returns:
        Scalar tensor (0 for identical images), differentiable with respect to ``x`` (and ``y``).

    Raises:
        TypeError: ``x`` or ``y`` is not a float torch tensor.
        ValueError: wrong number of dimensions, shapes differ (both named), or min(H, W) < 3.
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            got = f"dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a float torch tensor, got {got}")
        if t.ndim not in (3, 4):
            raise ValueError(f"{name} must have shape [C, H, W] or [B, C, H, W]; got shape {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    a = x[None] if x.ndim == 3 else x
    b = (y[None] if y.ndim == 3 else y).to(device=a.device, dtype=a.dtype)
    win = ssim_win_size(a.shape[-2], a.shape[-1])
    return 1.0 - pytorch_msssim.ssim(a, b, data_range=1.0, size_average=True, win_size=win)


def compute_metrics(reconstruction: Any, target: Any) -> dict[str, float | None]:
    """PSNR, SSIM, MS-SSIM and MSE of a reconstruction against its target.

    Args:
        reconstruction, target: images as in :func:`psnr` (same shape after conversion; clamped).

    Returns:
        ``{"psnr": dB (inf if identical), "ssim": float or None, "ms_ssim": float or None,
        "mse": float}``. ``ssim`` is None for images smaller than 3 x 3 pixels and ``ms_ssim`` for
        images smaller than 33 x 33 pixels (see the module docstring). MSE is over [0, 1] values.

    Raises:
        ValueError: shapes differ (both named), NaN / Inf, invalid images.
        TypeError: an input of an unsupported type.
    """
    a, b, _ = _as_pair(reconstruction, target, ("reconstruction", "target"))
    h, w = int(a.shape[-2]), int(a.shape[-1])
    from skimage.metrics import mean_squared_error

    mse = float(mean_squared_error(a.cpu().double().numpy(), b.cpu().double().numpy()))
    return {
        "psnr": _psnr(a, b, 1.0),
        "ssim": _ssim(a, b) if min(h, w) >= SSIM_MIN_SIZE else None,
        "ms_ssim": _ms_ssim(a, b) if min(h, w) >= MS_SSIM_MIN_SIZE else None,
        "mse": mse,
    }
