"""Classical joint bilateral upsampling (Kopf et al. 2007), training-free, to any output size.

Kopf, Cohen, Lischinski and Uyttendaele, "Joint Bilateral Upsampling", ACM TOG 26(3), 2007, Eq. 2:

    S~(p) = 1 / k_p * sum_{q in Omega(p)} S(q) f(||p_low - q||) g(||I(p) - I~(q)||)

* S: the low-resolution map [B, C, h, w] (features, probabilities or one-hot labels);
* p: an output pixel; p_low = ((x + 0.5) w / W - 0.5, (y + 0.5) h / H - 0.5) its position in low-res
  pixel units (pixel centres at integer + 0.5 in both grids, DESIGN.md);
* Omega(p): the (2r + 1)^2 low-res pixels around the one nearest to p_low (window positions outside
  the map get zero weight, so borders are not biased towards the edge pixel);
* f: Gaussian of the distance p_low - q in low-res pixels, standard deviation ``sigma_spatial``;
* g: Gaussian of the Euclidean distance between the guidance at p and the guidance I~(q) of the
  low-res pixel q (the guidance averaged over q's footprint), standard deviation ``sigma_range`` in
  guidance units;
* k_p: the sum of the weights. The weights are normalised with a softmax over the window in the
  log domain, so a very small ``sigma_range`` cannot underflow to 0 / 0.
* optional (``guidance_blur`` > 0, not in Kopf et al.): I(p) in g is taken from the guidance
  pre-smoothed by a Gaussian of that standard deviation in output pixels.

Any output size works (integer or not, different factors along x and y), and factor 1 is a joint
bilateral filter. The kernel depends on the guidance alone, so it is computed once
(:func:`classical_kernel`) and applied to any number of channels (:func:`apply_classical_kernel`,
chunked like :func:`~air_core.jbu.adaptive_conv.adaptive_conv`). The output is differentiable with
respect to the map and the guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._checks import check_float_tensor, check_positive_number, check_size
from .adaptive_conv import window_conv

__all__ = [
    "ClassicalKernel",
    "classical_kernel",
    "apply_classical_kernel",
    "joint_bilateral_upsample",
    "resize_guidance",
]


@dataclass
class ClassicalKernel:
    """Normalised classical-JBU weights for one guidance image and one (feature size, output size).

    Attributes:
        weights: [B, H, W, k, k] weights of the low-res window of every output pixel; each window
            sums to 1 (zero outside the map).
        rows: [H, k] int64 low-res row of window row i for output row y (clamped into the map).
        cols: [W, k] int64 low-res column of window column j for output column x (clamped).
        feature_size: (h, w) of the low-res maps this kernel applies to.
    """

    weights: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    feature_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """Output size (H, W)."""
        return int(self.weights.shape[1]), int(self.weights.shape[2])


def resize_guidance(guidance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Guidance [B, G, H', W'] resampled to ``size``: area average when shrinking in both directions
    (FeatUp pools its guidance the same way), bilinear otherwise, unchanged at equal size."""
    if tuple(guidance.shape[-2:]) == tuple(size):
        return guidance
    if guidance.shape[-2] >= size[0] and guidance.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(guidance, size)
    return F.interpolate(guidance, size=size, mode="bilinear", align_corners=False)


def _window(out_len: int, in_len: int, radius: int, sigma: float,
            device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamped low-res indices [out_len, k] and log spatial weights (-inf outside the map) along one axis."""
    centre = (torch.arange(out_len, device=device, dtype=torch.float64) + 0.5) * (in_len / out_len) - 0.5
    offsets = torch.arange(-radius, radius + 1, device=device)
    idx = torch.floor(centre + 0.5).long()[:, None] + offsets[None, :]
    dist = centre[:, None] - idx.to(torch.float64)
    logw = -dist.square() / (2.0 * sigma * sigma)
    logw = logw.masked_fill((idx < 0) | (idx >= in_len), -math.inf)
    return idx.clamp(0, in_len - 1), logw.to(dtype)


def classical_kernel(guidance: torch.Tensor, feature_size: tuple[int, int], size: tuple[int, int] | None = None, *,
                     sigma_spatial: float = 1.0, sigma_range: float = 0.1,
                     radius: int | None = None, guidance_blur: float = 0.0) -> ClassicalKernel:
    """Classical JBU weights (Kopf et al. 2007, Eq. 2; see the module docstring) from a guidance image.

    Args:
        guidance: [B, G, H', W'] float guidance (any G >= 1; an RGB image in [0, 1] for the default
            ``sigma_range``). Resampled to ``size`` with :func:`resize_guidance` when it differs.
        feature_size: (h, w) of the low-res maps to upsample.
        size: output (H, W); default the guidance size. Must be >= ``feature_size``.
        sigma_spatial: spatial standard deviation in low-res pixels (> 0).
        sigma_range: range standard deviation in guidance units (> 0).
        radius: window radius r in low-res pixels (window (2r + 1)^2); default ceil(2 sigma_spatial).
        guidance_blur: standard deviation, in output pixels (>= 0), of a Gaussian pre-smoothing of the
            full-resolution guidance I(p) in the range term (not in Kopf et al.; 0, the default, is
            their Eq. 2 exactly). A pixel's own colour is then compared with the block averages
            I~(q) at a scale nearer theirs, which removes label speckle in textured regions.

    Returns:
        :class:`ClassicalKernel` in the guidance's dtype and device (differentiable w.r.t. guidance).

    Raises:
        TypeError: guidance is not a floating-point tensor; bad size types.
        ValueError: wrong dimensions, NaN / Inf, guidance or output smaller than the features,
            non-positive sigmas, a negative radius.
    """
    guidance = check_float_tensor(guidance, "guidance", (4,))
    h, w = check_size(feature_size, "feature_size")
    hg, wg = guidance.shape[-2:]
    if hg < h or wg < w:
        raise ValueError(f"guidance ({hg} x {wg}) must not be smaller than the features ({h} x {w})")
    big_h, big_w = (hg, wg) if size is None else check_size(size)
    if big_h < h or big_w < w:
        raise ValueError(f"size ({big_h}, {big_w}) must not be smaller than the features ({h}, {w})")
    sigma_s = check_positive_number(sigma_spatial, "sigma_spatial")
    sigma_r = check_positive_number(sigma_range, "sigma_range")
    if radius is None:
        radius = max(1, math.ceil(2.0 * sigma_s))
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be an int >= 0 (low-res pixels), got {radius!r}")
    blur = check_guidance_blur(guidance_blur)
    dev, dtype = guidance.device, guidance.dtype
    hi = resize_guidance(guidance, (big_h, big_w))
    lo = F.adaptive_avg_pool2d(hi, (h, w))
    if blur > 0:
        hi = gaussian_blur(hi, blur)
    rows, log_y = _window(big_h, h, radius, sigma_s, dev, dtype)
    cols, log_x = _window(big_w, w, radius, sigma_s, dev, dtype)
    k = 2 * radius + 1
    inv = 1.0 / (2.0 * sigma_r * sigma_r)
    logits = []
    for i in range(k):
        lo_rows = lo.index_select(2, rows[:, i])  # [B, G, H, w]
        for j in range(k):
            d2 = (hi - lo_rows.index_select(3, cols[:, j])).square().sum(1)  # [B, H, W]
            logits.append(log_y[None, :, None, i] + log_x[None, None, :, j] - inv * d2)
    weights = torch.softmax(torch.stack(logits, dim=-1), dim=-1)
    return ClassicalKernel(weights.view(guidance.shape[0], big_h, big_w, k, k), rows, cols, (h, w))


def check_guidance_blur(value: float) -> float:
    """``guidance_blur`` as a float >= 0 (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"guidance_blur must be a number >= 0 (output pixels), got {value!r}")
    return float(value)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, G, H, W] with standard deviation ``sigma`` px (taps to 3 sigma,
    replicate borders); differentiable."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=image.device, dtype=image.dtype)
    g = torch.exp(-t.square() / (2 * sigma * sigma))
    g = g / g.sum()
    c = image.shape[1]
    x = F.conv2d(F.pad(image, [r, r, 0, 0], mode="replicate"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, [0, 0, r, r], mode="replicate"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def apply_classical_kernel(features: torch.Tensor, kernel: ClassicalKernel, *,
                           max_chunk_bytes: int | None = None) -> torch.Tensor:
    """Upsample ``features`` [B, C, h, w] with precomputed classical-JBU weights -> [B, C, H, W].

    Chunked over output rows and channels (``max_chunk_bytes``, see
    :func:`~air_core.jbu.adaptive_conv.adaptive_conv`); differentiable w.r.t. features and weights.

    Raises:
        TypeError: features is not a floating-point tensor.
        ValueError: wrong dimensions, NaN / Inf, a batch size / feature size / dtype / device that
            does not match the kernel.
    """
    features = check_float_tensor(features, "features", (4,))
    if not isinstance(kernel, ClassicalKernel):
        raise TypeError(f"kernel must be a ClassicalKernel, got {type(kernel).__name__}")
    b = kernel.weights.shape[0]
    if features.shape[0] != b:
        raise ValueError(f"features batch size {features.shape[0]} does not match the kernel's ({b})")
    if tuple(features.shape[-2:]) != kernel.feature_size:
        raise ValueError(f"features are {tuple(features.shape[-2:])}, the kernel was made for {kernel.feature_size}")
    if features.dtype != kernel.weights.dtype or features.device != kernel.weights.device:
        raise ValueError(f"features must be {kernel.weights.dtype} on {kernel.weights.device} like the kernel, "
                         f"got {features.dtype} on {features.device}")
    return window_conv(features, kernel.weights, kernel.rows, kernel.cols, max_chunk_bytes)


def joint_bilateral_upsample(features: torch.Tensor, guidance: torch.Tensor, size: tuple[int, int] | None = None,
                             *, sigma_spatial: float = 1.0, sigma_range: float = 0.1, radius: int | None = None,
                             guidance_blur: float = 0.0, max_chunk_bytes: int | None = None) -> torch.Tensor:
    """Classical joint bilateral upsampling (Kopf et al. 2007) of ``features`` guided by ``guidance``.

    Args:
        features: [B, C, h, w] floating-point low-res map.
        guidance: [B, G, H', W'] high-res guidance (see :func:`classical_kernel`); cast to the
            features' dtype.
        size, sigma_spatial, sigma_range, radius, guidance_blur: see :func:`classical_kernel`.
        max_chunk_bytes: see :func:`apply_classical_kernel`.

    Returns:
        [B, C, H, W] upsampled map (a convex combination of the low-res values at every pixel).

    Raises:
        TypeError / ValueError: as :func:`classical_kernel` and :func:`apply_classical_kernel`; also
            mismatched batch sizes.
    """
    features = check_float_tensor(features, "features", (4,))
    guidance = check_float_tensor(guidance, "guidance", (4,))
    if guidance.shape[0] != features.shape[0]:
        raise ValueError(f"guidance batch size {guidance.shape[0]} does not match features batch size "
                         f"{features.shape[0]}")
    kernel = classical_kernel(guidance.to(features.dtype), tuple(features.shape[-2:]), size,
                              sigma_spatial=sigma_spatial, sigma_range=sigma_range, radius=radius,
                              guidance_blur=guidance_blur)
    return apply_classical_kernel(features, kernel, max_chunk_bytes=max_chunk_bytes)
