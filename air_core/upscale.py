"""Image upscaling: gradient-aware bicubic Hermite patches and the standard interpolation baselines.

Conventions (DESIGN.md): images are float32 / float64 torch tensors [C, h, w] or [B, C, h, w] on any
device; low-resolution pixel (i, j) has its centre at (x, y) = (j + 0.5, i + 0.5), x to the right
(columns), y down (rows). Derivatives are in *low-resolution pixel* units: ``image_dx`` = dI/dx,
``image_dy`` = dI/dy, ``image_dxy`` = d2I/dxdy per low-res pixel, which is what
:func:`air_core.raster2d.render_with_derivatives` returns when it renders at the low resolution.

Alignment. Along an axis with n_in input and n_out output pixels (k = n_out / n_in, the exact
per-axis ratio, so for ``scale`` = 2.5 and h = 7 the y ratio is round(17.5) / 7 = 18 / 7), output
pixel u samples the low-res coordinate x = (u + 0.5) / k, i.e. the cell coordinate
s = (u + 0.5) / k - 0.5 measured from the first pixel centre. This is the half-pixel alignment of
``torch.nn.functional.interpolate(..., align_corners=False)`` and of the rasterizer's scale
convention.

* :func:`hermite_upscale` -- bicubic Hermite patch interpolation from f, f_x, f_y, f_xy
  (Niedermayr et al. 2025, "Lightweight Gradient-Aware Upscaling of 3D Gaussian Splatting Images",
  arXiv 2503.14171, Sec. 3).
* :func:`finite_difference_derivatives` -- f_x, f_y, f_xy from the image alone (the "hermite-fd"
  baseline).
* :func:`upscale` -- one entry point for all :data:`METHODS`.
* :func:`render_upscaled` -- render a 3DGS scene (from a camera) or a 2D Gaussian image at 1/scale
  resolution, with derivatives when a Hermite method needs them, and upscale to full resolution.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from .images import check_memory
from .raster2d import output_size

__all__ = ["METHODS", "upscale", "hermite_upscale", "finite_difference_derivatives", "render_upscaled",
           "low_resolution_size", "low_resolution_eps2d"]

#: Methods accepted by :func:`upscale`.
METHODS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "hermite-fd", "hermite")

_FLOAT_DTYPES = (torch.float32, torch.float64)
#: Working copies of the output that an upscale holds at its peak (output, pass-1 rows, gathers).
_WORKING_COPIES = 4


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _check_image(image, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 tensor, got {image.dtype}")
    if image.dim() not in (3, 4):
        raise ValueError(f"{name} must have shape [C, h, w] or [B, C, h, w], got {list(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {list(image.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(image).all()):
            raise ValueError(f"{name} contains NaN or Inf values")


def _check_like(tensor, name: str, image: torch.Tensor) -> None:
    """``tensor`` must be a finite float tensor with the shape, dtype and device of ``image``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 tensor, got {tensor.dtype}")
    if tensor.shape != image.shape:
        raise ValueError(f"{name} must have the shape of image {list(image.shape)}, got {list(tensor.shape)}")
    if tensor.dtype != image.dtype or tensor.device != image.device:
        raise ValueError(f"{name} must be {image.dtype} on {image.device} like image, "
                         f"got {tensor.dtype} on {tensor.device}")
    with torch.no_grad():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or Inf values")


def _resolve_size(image: torch.Tensor, scale, size) -> tuple[int, int]:
    """Output (H, W) from exactly one of ``scale`` (>= 1) and ``size`` (>= the input size)."""
    h, w = image.shape[-2:]
    if scale is not None and size is not None:
        raise ValueError(f"give either scale or size, not both (got scale={scale!r}, size={size!r})")
    if scale is None and size is None:
        raise ValueError("give one of scale (a number >= 1) or size (H, W)")
    if scale is not None:
        if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
            raise TypeError(f"scale must be a real number >= 1, got {type(scale).__name__}")
        if not math.isfinite(scale) or scale < 1:
            raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
        return output_size((h, w), float(scale))
    try:
        if len(size) != 2 or any(isinstance(v, bool) for v in size):
            raise TypeError
        out_h, out_w = (operator.index(v) for v in size)
    except TypeError:
        raise TypeError(f"size must be a pair of ints (H, W), got {size!r}") from None
    if out_h < h or out_w < w:
        raise ValueError(f"size must be at least the input size ({h}, {w}) in both dimensions, got {size!r}")
    return out_h, out_w


def _check_output_memory(image: torch.Tensor, out_h: int, out_w: int) -> None:
    if image.device.type == "cpu":
        numel = image[..., :1, :1].numel() * out_h * out_w
        check_memory(numel * image.element_size() * _WORKING_COPIES, f"a {out_w}x{out_h} upscale")


# ----------------------------------------------------------------------------------------------
# Hermite patches
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _axis_plan(n_in: int, n_out: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output pixel along one axis: the cell's two input indices and the four basis weights.

    Returns (i0, i1, weights) with i0, i1 int64 [n_out] and weights [4, n_out] for
    (f[i0], f[i1], f'[i0], f'[i1]). s = (2u + 1) n_in / (2 n_out) - 1/2 is formed in integers, so the
    cell index is exact and t = s - i has one rounding; output pixels that land on a pixel centre get
    exactly the weights (1, 0, 0, 0) or (0, 1, 0, 0). The edge cells are extended to the outer half
    pixel (t down to -(1 - 1/k) / 2, up to 1 + (1 - 1/k) / 2); an axis of size 1 uses f + s f'.
    Cached (an interactive preview asks for the same plans every frame); callers must not modify
    the returned tensors.
    """
    u = torch.arange(n_out, dtype=torch.int64)
    numerator = (2 * u + 1) * n_in - n_out
    denominator = 2 * n_out
    if n_in == 1:
        i0 = torch.zeros(n_out, dtype=torch.int64)
        s = numerator.to(torch.float64) / denominator
        weights = torch.stack([torch.ones_like(s), torch.zeros_like(s), s, torch.zeros_like(s)])
    else:
        i0 = torch.div(numerator, denominator, rounding_mode="floor").clamp(0, n_in - 2)
        t = (numerator - i0 * denominator).to(torch.float64) / denominator
        t2, t3 = t * t, t * t * t
        weights = torch.stack([2 * t3 - 3 * t2 + 1, -2 * t3 + 3 * t2, t3 - 2 * t2 + t, t3 - t2])
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0.to(device), i1.to(device), weights.to(device=device, dtype=dtype)


def _hermite_1d(values: torch.Tensor, derivatives: torch.Tensor, plan, dim: int) -> torch.Tensor:
    """Cubic Hermite interpolation of (values, derivatives) along ``dim`` with an :func:`_axis_plan`."""
    i0, i1, weights = plan
    if dim == -2:
        weights = weights.unsqueeze(-1)
    out = values.index_select(dim, i0) * weights[0]
    out.addcmul_(values.index_select(dim, i1), weights[1])
    out.addcmul_(derivatives.index_select(dim, i0), weights[2])
    out.addcmul_(derivatives.index_select(dim, i1), weights[3])
    return out


@njit(parallel=True, cache=True, nogil=True)
def _hermite_kernel(f, fx, fy, fxy, i0x, i1x, wx, i0y, i1y, wy):
    """Separable Hermite evaluation on [B*C, h, w] arrays (the no-gradient CPU fast path):
    along x, (f, f_x) -> g and (f_y, f_xy) -> g_y on the h low-res rows, then along y, (g, g_y)."""
    nc, h, _ = f.shape
    out_w = i0x.shape[0]
    out_h = i0y.shape[0]
    g = np.empty((nc, h, out_w), dtype=f.dtype)
    gy = np.empty((nc, h, out_w), dtype=f.dtype)
    for r in prange(nc * h):
        c = r // h
        i = r % h
        for u in range(out_w):
            a, b = i0x[u], i1x[u]
            g[c, i, u] = f[c, i, a] * wx[0, u] + f[c, i, b] * wx[1, u] + fx[c, i, a] * wx[2, u] + fx[c, i, b] * wx[3, u]
            gy[c, i, u] = (fy[c, i, a] * wx[0, u] + fy[c, i, b] * wx[1, u] + fxy[c, i, a] * wx[2, u]
                           + fxy[c, i, b] * wx[3, u])
    out = np.empty((nc, out_h, out_w), dtype=f.dtype)
    for r in prange(nc * out_h):
        c = r // out_h
        v = r % out_h
        a, b = i0y[v], i1y[v]
        w0, w1, w2, w3 = wy[0, v], wy[1, v], wy[2, v], wy[3, v]
        for u in range(out_w):
            out[c, v, u] = g[c, a, u] * w0 + g[c, b, u] * w1 + gy[c, a, u] * w2 + gy[c, b, u] * w3
    return out


def hermite_upscale(image: torch.Tensor, image_dx: torch.Tensor, image_dy: torch.Tensor, image_dxy: torch.Tensor,
                    scale: float | None = None, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Upscale with bicubic Hermite patches built from the image and its analytic derivatives.

    Niedermayr et al. 2025 (arXiv 2503.14171, Sec. 3): for output pixel (v, u) with cell coordinates
    s_x = (u + 0.5) / k_x - 0.5, s_y = (v + 0.5) / k_y - 0.5, j = floor(s_x), i = floor(s_y),
    t_x = s_x - j, t_y = s_y - i, the 2 x 2 low-res neighbours (j, j+1) x (i, i+1) give 16 constraints
    (f, f_x, f_y, f_xy at each corner) and

        p(t_x, t_y) = [1 t_x t_x^2 t_x^3] M F M^T [1 t_y t_y^2 t_y^3]^T,
        M = [[1, 0, 0, 0], [0, 0, 1, 0], [-3, 3, -2, -1], [2, -2, 1, 1]],
        F = [[f00, f01, fy00, fy01], [f10, f11, fy10, fy11],
             [fx00, fx01, fxy00, fxy01], [fx10, fx11, fxy10, fxy11]]   (f_ab: x corner a, y corner b),

    i.e. the tensor product of the cubic Hermite basis h00 = 2t^3 - 3t^2 + 1, h01 = -2t^3 + 3t^2,
    h10 = t^3 - 2t^2 + t, h11 = t^3 - t^2 (derivative terms scaled by the cell width, 1 low-res
    pixel). The result is C1 across cells and reproduces any bicubic polynomial exactly. It is
    evaluated separably, which is exact for tensor-product patches: along x, (f, f_x) give g and
    (f_y, f_xy) give g_y at the output columns (2 tensors [.., h, W]); then along y, (g, g_y) give
    the output. No [16, C, H, W] intermediate is built.

    Borders: output pixels in the outer half low-res pixel (s < 0 or s > n_in - 1) use the edge cell's
    cubic, evaluated at t down to -(1 - 1/k) / 2 or up to 1 + (1 - 1/k) / 2 (less than half a pixel
    outside [0, 1]);
    with exact derivatives this is an accurate extrapolation (exact for bicubic polynomials). Along an
    axis of size 1 the first-order Taylor expansion from the single sample is used, f + f_x dx (and
    f_y + f_xy dx for the y-derivative feeding the other axis), so a 1 x 1 image gives
    f + f_x dx + f_y dy + f_xy dx dy. Values are not clamped.

    Args:
        image: [C, h, w] or [B, C, h, w] float32 / float64 image f (any value range, any device).
        image_dx: dI/dx (x = column direction, right) per low-res pixel; same shape, dtype, device.
        image_dy: dI/dy (y = row direction, down) per low-res pixel.
        image_dxy: d2I/dxdy per low-res pixel squared.
        scale: upscale factor k >= 1 (integer or not); output round(h k) x round(w k). The patches use
            the exact per-axis ratios H / h and W / w.
        size: explicit output (H, W) instead of ``scale``, each >= the input size.

    Returns:
        [C, H, W] or [B, C, H, W] tensor of the input dtype and device, differentiable with respect
        to all four inputs (it is linear in them).

    Raises:
        TypeError: an input is not a float32 / float64 tensor; ``scale`` is not a number; ``size`` is
            not a pair of ints.
        ValueError: bad or mismatched shapes, dtypes or devices; NaN / Inf values (the argument is
            named); ``scale`` < 1 or not finite; ``size`` smaller than the input; both or neither of
            ``scale`` and ``size``.
        ImageTooLargeError: (a ``ValueError``) a CPU output that does not fit in the available RAM.
    """
    _check_image(image)
    for name, tensor in (("image_dx", image_dx), ("image_dy", image_dy), ("image_dxy", image_dxy)):
        _check_like(tensor, name, image)
    out_h, out_w = _resolve_size(image, scale, size)
    _check_output_memory(image, out_h, out_w)
    return _hermite(image, image_dx, image_dy, image_dxy, out_h, out_w)


def _hermite(image, image_dx, image_dy, image_dxy, out_h: int, out_w: int) -> torch.Tensor:
    """:func:`hermite_upscale` on inputs already checked (or produced by the renderers, which are)."""
    h, w = image.shape[-2:]
    plan_x = _axis_plan(w, out_w, image.dtype, image.device)
    plan_y = _axis_plan(h, out_h, image.dtype, image.device)
    inputs = (image, image_dx, image_dy, image_dxy)
    if image.device.type == "cpu" and not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs)):
        # same arithmetic in one fused numba pass (no autograd graph needed)
        arrays = [t.detach().reshape(-1, h, w).contiguous().numpy() for t in inputs]
        plans = [p.numpy() for p in (*plan_x, *plan_y)]
        out = torch.from_numpy(_hermite_kernel(*arrays, *plans))
        return out.reshape(*image.shape[:-2], out_h, out_w)
    rows = _hermite_1d(image, image_dx, plan_x, dim=-1)
    rows_dy = _hermite_1d(image_dy, image_dxy, plan_x, dim=-1)
    return _hermite_1d(rows, rows_dy, plan_y, dim=-2)


# ----------------------------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------------------------


def _difference(image: torch.Tensor, dim: int) -> torch.Tensor:
    """Central differences along ``dim`` (one-sided at the two ends; zeros for a size-1 axis)."""
    n = image.shape[dim]
    if n == 1:
        return torch.zeros_like(image)
    first = image.narrow(dim, 1, 1) - image.narrow(dim, 0, 1)
    inner = (image.narrow(dim, 2, n - 2) - image.narrow(dim, 0, n - 2)) / 2
    last = image.narrow(dim, n - 1, 1) - image.narrow(dim, n - 2, 1)
    return torch.cat([first, inner, last], dim=dim)


def finite_difference_derivatives(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimate dI/dx, dI/dy and d2I/dxdy from the pixels, in (low-res) pixel units.

    D_x f(x) = (f(x+1) - f(x-1)) / 2 inside, f(1) - f(0) and f(n-1) - f(n-2) at the first and last
    column (one-sided, first order), 0 along an axis of size 1; D_y likewise along the rows. The mixed
    derivative is D_y D_x f, which inside is (f(x+1,y+1) - f(x+1,y-1) - f(x-1,y+1) + f(x-1,y-1)) / 4
    (the baseline of Niedermayr et al. 2025, arXiv 2503.14171) and at the borders uses the matching
    one-sided differences. The scheme is exact everywhere, borders included, for f_x and f_y of any
    function affine along that axis and for f_xy of bilinear functions a + bx + cy + dxy.

    Args:
        image: [C, h, w] or [B, C, h, w] float32 / float64 tensor (any device).

    Returns:
        (dx, dy, dxy), each of the image's shape, dtype and device, differentiable.

    Raises:
        TypeError: ``image`` is not a float32 / float64 tensor.
        ValueError: bad shape, empty image, NaN / Inf values.
    """
    _check_image(image)
    dx = _difference(image, -1)
    return dx, _difference(image, -2), _difference(dx, -2)


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def upscale(image: torch.Tensor, scale: float | None = None, *, size: tuple[int, int] | None = None,
            method: str = "bicubic", image_dx: torch.Tensor | None = None, image_dy: torch.Tensor | None = None,
            image_dxy: torch.Tensor | None = None) -> torch.Tensor:
    """Upscale an image by ``scale`` (or to ``size``) with one of :data:`METHODS`.

    Methods (all with the half-pixel alignment of the module docstring, output not clamped):

    * ``"nearest"``: ``F.interpolate(mode="nearest-exact")``, the pixel whose centre is nearest
      (PyTorch's ``"nearest"`` mode would shift the image by up to half a low-res pixel).
    * ``"bilinear"``: ``F.interpolate(mode="bilinear", align_corners=False)``.
    * ``"bicubic"``: ``F.interpolate(mode="bicubic", align_corners=False)``: Keys' cubic convolution
      with a = -0.75 (PyTorch's choice; OpenCV also uses -0.75, PIL and MATLAB use -0.5), border
      pixels replicated. It can overshoot the input range.
    * ``"hermite-fd"``: :func:`hermite_upscale` with :func:`finite_difference_derivatives`. Away from
      the borders this equals Keys' cubic convolution with a = -0.5 (tensor-product Catmull-Rom); at
      the borders it uses one-sided differences and extrapolates the edge cells.
    * ``"hermite"``: :func:`hermite_upscale` with the given analytic derivatives (Niedermayr et al.
      2025, arXiv 2503.14171).

    Args:
        image: [C, h, w] or [B, C, h, w] float32 / float64 tensor (any device).
        scale: upscale factor >= 1 (integer or not); output round(h scale) x round(w scale). All
            methods use the exact per-axis ratios H / h and W / w.
        size: explicit output (H, W) instead of ``scale``, each >= the input size.
        method: one of :data:`METHODS`.
        image_dx, image_dy, image_dxy: dI/dx, dI/dy, d2I/dxdy per low-res pixel, like ``image``;
            required by ``"hermite"`` and rejected by the other methods.

    Returns:
        [C, H, W] or [B, C, H, W] tensor of the input dtype and device, differentiable.

    Raises:
        TypeError / ValueError: see :func:`hermite_upscale`; also an unknown ``method``, missing
            derivatives for ``"hermite"`` or derivatives given to another method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    derivatives = {"image_dx": image_dx, "image_dy": image_dy, "image_dxy": image_dxy}
    if method == "hermite":
        missing = [name for name, value in derivatives.items() if value is None]
        if missing:
            raise ValueError(f"method='hermite' needs image_dx, image_dy and image_dxy; missing {', '.join(missing)} "
                             f"(use method='hermite-fd' to estimate them from the image)")
        return hermite_upscale(image, image_dx, image_dy, image_dxy, scale, size=size)
    given = [name for name, value in derivatives.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} only apply to method='hermite', got method={method!r}")
    if method == "hermite-fd":
        return hermite_upscale(image, *finite_difference_derivatives(image), scale, size=size)
    _check_image(image)
    out_h, out_w = _resolve_size(image, scale, size)
    _check_output_memory(image, out_h, out_w)
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    if method == "nearest":
        out = F.interpolate(batch, size=(out_h, out_w), mode="nearest-exact")
    else:
        out = F.interpolate(batch, size=(out_h, out_w), mode=method, align_corners=False)
    return out if image.dim() == 4 else out.squeeze(0)


# ----------------------------------------------------------------------------------------------
# Render at low resolution, upscale
# ----------------------------------------------------------------------------------------------


def low_resolution_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) = (max(1, round(H / scale)), max(1, round(W / scale))): the render size for ``scale``.

    The upscaler then uses the exact ratios H / h and W / w, so the low-resolution render and the
    upscaled image cover the same field of view whatever the rounding.
    """
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not (1 <= scale < math.inf):
        raise ValueError(f"scale must be a finite number >= 1, got {scale!r}")
    return max(1, int(round(height / scale))), max(1, int(round(width / scale)))


def low_resolution_eps2d(eps2d: float, full_size: tuple[int, int], low_size: tuple[int, int]) -> float:
    """The 3DGS dilation to use for a render at ``low_size`` that must sample the same continuous image
    as a render at ``full_size`` with dilation ``eps2d`` (pixel^2 of the full-resolution grid):
    eps2d / (k_x k_y) low-resolution pixel^2, k = full / low per axis."""
    return eps2d * (low_size[0] * low_size[1]) / (full_size[0] * full_size[1])


def render_upscaled(source, camera=None, scale: float = 2.0, *, method="hermite",
                    size: tuple[int, int] | None = None, background=None, **render_kwargs):
    """Render at 1/``scale`` resolution and upscale to full resolution (the fast preview path).

    Two kinds of ``source``:

    * a :class:`air_core.splat3d.GaussianScene` with a ``camera``
      (:class:`air_core.splat3d.Camera`): the full resolution is the camera's (H, W) unless ``size``
      is given; the scene is rendered with ``camera.resized(w, h)`` by
      :func:`air_core.splat3d.render` (extra keyword arguments, e.g. ``sh_degree``, go there);
    * a :class:`air_core.gaussians.Gaussians2D` (``camera`` None): the full resolution is its
      ``image_size`` unless ``size`` is given; rendered with
      :func:`air_core.raster2d.render_with_derivatives` (extra keyword arguments, e.g. ``mode``,
      go there).

    (h, w) comes from :func:`low_resolution_size`. The analytic derivatives are computed only
    when ``"hermite"`` is requested (their cost is part of the fast path); the other methods use the
    plain low-resolution render.

    Args:
        source: the scene or Gaussian image.
        camera: the full-resolution camera (3DGS scenes only).
        scale: render-resolution divisor >= 1 (integer or not); 1 renders at full resolution.
        method: one of :data:`METHODS`, or a sequence of them to compare several methods on one
            low-resolution render.
        size: full-resolution (H, W) overriding the camera's / image's size.
        background: RGB background (3DGS default black; 2D images: alpha mode only).

    Returns:
        [C, H, W] tensor for one method; a dict method -> [C, H, W] for a sequence. Differentiable
        through the low-resolution image values (the analytic derivative images carry no gradient).

    Raises:
        TypeError: ``source`` is neither kind, or a camera is missing / given for a 2D image.
        ValueError: bad ``scale``, ``size`` or ``method`` (and the renderers' own errors).
    """
    from .gaussians import Gaussians2D
    from .raster2d import render_with_derivatives
    from .splat3d import GaussianScene
    from .splat3d import render as render_scene

    methods = [method] if isinstance(method, str) else list(method)
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"method must be one of {METHODS} or a non-empty sequence of them, got {method!r}")
    want_derivs = "hermite" in methods
    if isinstance(source, GaussianScene):
        if camera is None:
            raise TypeError("camera is required to render a GaussianScene")
        full_h, full_w = (camera.height, camera.width) if size is None else _as_size(size)
        low_h, low_w = low_resolution_size(full_h, full_w, scale)
        # the low-resolution render samples the full-resolution image's continuous function
        eps2d = low_resolution_eps2d(render_kwargs.pop("eps2d", 0.3), (full_h, full_w), (low_h, low_w))
        out = render_scene(source, camera.resized(low_w, low_h) if size is None else
                           camera.resized(full_w, full_h).resized(low_w, low_h), background=background,
                           return_derivatives=want_derivs, eps2d=eps2d, **render_kwargs)
    elif isinstance(source, Gaussians2D):
        if camera is not None:
            raise TypeError("camera applies to GaussianScene sources only; a Gaussians2D image has none")
        full_h, full_w = source.image_size if size is None else _as_size(size)
        low_h, low_w = low_resolution_size(full_h, full_w, scale)
        out = render_with_derivatives(source, size=(low_h, low_w), scale=None, background=background,
                                      return_derivatives=want_derivs, **render_kwargs)
    else:
        raise TypeError(f"source must be a GaussianScene or a Gaussians2D, got {type(source).__name__}")
    results = {}
    for m in methods:
        if (low_h, low_w) == (full_h, full_w):
            results[m] = out.image
        elif m == "hermite":
            # the renderer's outputs are finite and consistent: skip the argument checks
            _check_output_memory(out.image, full_h, full_w)
            results[m] = _hermite(out.image, out.image_dx, out.image_dy, out.image_dxy, full_h, full_w)
        else:
            results[m] = upscale(out.image, size=(full_h, full_w), method=m)
    return results[methods[0]] if isinstance(method, str) else results


def _as_size(size) -> tuple[int, int]:
    try:
        h, w = (operator.index(v) for v in size)
    except TypeError:
        raise TypeError(f"size must be a pair of ints (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive (H, W), got {size!r}")
    return h, w
