"""Differentiable 2D Gaussian rasterizer: "sum" and "alpha" modes, any output size, image derivatives.

Two layers:

* :func:`rasterize_to_pixels` works on Gaussians already projected to the output pixel grid
  (means2d in output pixels, conics in 1 / output pixels^2, colours, opacities). The 3DGS renderer
  uses it after its EWA projection and depth sort.
* :func:`render` / :func:`render_with_derivatives` render a :class:`~air_core.gaussians.Gaussians2D`
  image at scale k (or at an explicit size): output pixel (i, j) samples the image at
  ((j + 0.5) / k, (i + 0.5) / k) (DESIGN.md), so means scale by k and conics by 1 / k^2.

Backends: ``"cpu"`` (numba tile kernels, the default on CPU), ``"dense"`` (all-pairs PyTorch
reference; runs on any device, memory grows with pixels x Gaussians per chunk) and ``"auto"``
(``"cpu"`` for CPU tensors; ``"dense"`` for CUDA tensors until a GPU backend is installed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._device import resolve_device
from ..gaussians import Gaussians2D

__all__ = [
    "RenderOutput",
    "rasterize_to_pixels",
    "render",
    "render_with_derivatives",
    "project_gaussians",
    "output_size",
    "BACKENDS",
    "MODES",
]

MODES = ("sum", "alpha")
BACKENDS = ("auto", "cpu", "dense")


@dataclass
class RenderOutput:
    """Result of a render.

    Attributes:
        image: [C, H, W] rendered image (not clamped; "sum" mode may leave [0, 1]).
        transmittance: [H, W] final transmittance T (alpha mode; ones in sum mode). 1 - T is the
            accumulated opacity.
        image_dx, image_dy, image_dxy: [C, H, W] analytic derivatives dI/dx, dI/dy, d2I/dxdy with
            respect to the *output* pixel coordinates (x right, y down), or None when not requested.
            They carry no gradient.
    """

    image: torch.Tensor
    transmittance: torch.Tensor
    image_dx: torch.Tensor | None = None
    image_dy: torch.Tensor | None = None
    image_dxy: torch.Tensor | None = None


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cpu" if device.type == "cpu" else "dense"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
    return backend


def rasterize_to_pixels(means2d: torch.Tensor, conics: torch.Tensor, colours: torch.Tensor,
                        opacities: torch.Tensor | None = None, *, width: int, height: int, mode: str = "sum",
                        background: torch.Tensor | None = None, return_derivatives: bool = False,
                        backend: str = "auto", tile_size: int | tuple[int, int] = (16, 128),
                        derivative_channels: int | None = None) -> RenderOutput:
    """Rasterize projected 2D Gaussians onto a ``height`` x ``width`` pixel grid.

    Args:
        means2d: [N, 2] centres (x, y) in output pixels; pixel (i, j) has its centre at (j + .5, i + .5).
        conics: [N, 3] (a, b, c) of the inverse covariance [[a, b], [b, c]], 1 / pixels^2, positive
            definite.
        colours: [N, C] colours (any C >= 1; signed allowed).
        opacities: [N] opacities o >= 0 (default 1). The raw weight is v = o exp(-q/2),
            q = d^T conic d, d = p - mean; terms with v < 1/255 are skipped.
        width, height: output size in pixels (>= 1).
        mode: "sum": I = sum c min(1, v) (GaussianImage accumulated summation, Zhang et al. 2024,
            Eq. 5; AIR). "alpha": front-to-back alpha blending in list order with
            alpha = min(0.99, v), early stop when T would drop to <= 1e-4, and
            I = sum c alpha T + T_final * background (3DGS, Kerbl et al. 2023, Eq. 3).
        background: [C] background colour, alpha mode only (default zeros).
        return_derivatives: also return dI/dx, dI/dy, d2I/dxdy (Niedermayr et al. 2025, Sec. 3).
        derivative_channels: with ``return_derivatives``, compute the derivatives of the first D
            channels only (default all C); e.g. the 3DGS renderer blends depth as a fourth channel
            but needs derivatives of RGB alone. The derivative tensors then have D channels.
        backend: "auto", "cpu" (numba tiles) or "dense" (all-pairs PyTorch reference).
        tile_size: tile (height, width) in pixels for binning, or one int for square tiles. There is no
            cap on Gaussians per tile. The default 16 x 128 keeps image rows long inside a tile (each
            row segment costs a few exp() to start) while leaving enough tiles to balance threads.

    Returns:
        :class:`RenderOutput`. The image is differentiable w.r.t. means2d, conics, colours,
        opacities and background; gradients are accumulated in float64 on the CPU backend.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: wrong shapes, mismatched devices/dtypes, non-finite values, conics that are not
            positive definite, negative opacities, a bad mode/backend, a non-positive size, or
            derivatives requested from the dense backend.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, t in (("means2d", means2d), ("conics", conics), ("colours", colours)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                            f"{type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
    n = means2d.shape[0] if means2d.dim() == 2 else -1
    if means2d.dim() != 2 or means2d.shape[1] != 2:
        raise ValueError(f"means2d must have shape [N, 2], got {list(means2d.shape)}")
    if conics.shape != (n, 3):
        raise ValueError(f"conics must have shape [{n}, 3], got {list(conics.shape)}")
    if colours.dim() != 2 or colours.shape[0] != n or colours.shape[1] < 1:
        raise ValueError(f"colours must have shape [{n}, C] with C >= 1, got {list(colours.shape)}")
    dtype, device = means2d.dtype, means2d.device
    nch = colours.shape[1]
    if opacities is None:
        opacities = torch.ones(n, dtype=dtype, device=device)
    if background is None:
        background = torch.zeros(nch, dtype=dtype, device=device)
    for name, t in (("opacities", opacities), ("background", background)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                            f"{type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
    if opacities.shape != (n,):
        raise ValueError(f"opacities must have shape [{n}], got {list(opacities.shape)}")
    if background.shape != (nch,):
        raise ValueError(f"background must have shape [{nch}], got {list(background.shape)}")
    for name, t in (("conics", conics), ("colours", colours), ("opacities", opacities), ("background", background)):
        if t.device != device or t.dtype != dtype:
            raise ValueError(f"{name} must be {dtype} on {device} like means2d, got {t.dtype} on {t.device}")
    if not (isinstance(width, int) and isinstance(height, int)) or width < 1 or height < 1:
        raise ValueError(f"width and height must be positive ints, got width={width!r}, height={height!r}")
    tiles = (tile_size, tile_size) if isinstance(tile_size, int) and not isinstance(tile_size, bool) else tile_size
    if (not isinstance(tiles, tuple) or len(tiles) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in tiles)):
        raise ValueError(f"tile_size must be a positive int or a pair of positive ints (h, w), got {tile_size!r}")
    with torch.no_grad():
        for name, t in (("means2d", means2d), ("conics", conics), ("colours", colours),
                        ("opacities", opacities), ("background", background)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or Inf values")
        if n and not bool(((conics[:, 0] > 0) & (conics[:, 0] * conics[:, 2] - conics[:, 1] ** 2 > 0)).all()):
            raise ValueError("conics must be positive definite (a > 0 and a*c - b^2 > 0)")
        if n and not bool((opacities >= 0).all()):
            raise ValueError("opacities must be >= 0")
    nder = nch if derivative_channels is None else derivative_channels
    if not (isinstance(nder, int) and not isinstance(nder, bool) and 1 <= nder <= nch):
        raise ValueError(f"derivative_channels must be an int in 1..{nch}, got {derivative_channels!r}")
    return _rasterize(means2d, conics, colours, opacities, background, width, height, mode,
                      nder if return_derivatives else 0, backend, tiles)


def check_render_memory(height: int, width: int, channels: int, derivative_channels: int) -> None:
    """Raise :class:`air_core.images.ImageTooLargeError` when a render's float64 buffers and outputs
    would not fit in the available RAM."""
    from ..images import check_memory

    check_memory(height * width * (channels + 3 * derivative_channels) * 8 * 2, f"a {width}x{height} render")


def _rasterize(means2d, conics, colours, opacities, background, width: int, height: int, mode: str,
               derivative_channels: int, backend: str, tiles: tuple[int, int]) -> RenderOutput:
    """:func:`rasterize_to_pixels` on validated inputs (the 3DGS renderer's projection produces
    them valid by construction); ``derivative_channels`` 0 means no derivatives."""
    nch = colours.shape[1]
    return_derivatives = derivative_channels > 0
    check_render_memory(height, width, nch, derivative_channels)
    chosen = _pick_backend(backend, means2d.device)
    if chosen == "cpu":
        from .cpu import rasterize_to_pixels_cpu

        image, trans, derivs = rasterize_to_pixels_cpu(means2d, conics, colours, opacities, background, width,
                                                       height, mode, derivative_channels, tiles)
        if derivs is None:
            return RenderOutput(image, trans)
        return RenderOutput(image, trans, derivs[0], derivs[1], derivs[2])
    if return_derivatives:
        raise ValueError("return_derivatives=True is not available with backend='dense'; use backend='cpu'")
    from .dense import rasterize_to_pixels_dense

    image, trans = rasterize_to_pixels_dense(means2d, conics, colours, opacities, background, width, height, mode)
    return RenderOutput(image, trans)


def output_size(image_size: tuple[int, int], scale: float | tuple[float, float]) -> tuple[int, int]:
    """Output (H, W) for rendering an image of ``image_size`` at ``scale``: max(1, round(H * k))."""
    ky, kx = (scale, scale) if not isinstance(scale, tuple) else scale
    return max(1, int(round(image_size[0] * ky))), max(1, int(round(image_size[1] * kx)))


def project_gaussians(gaussians: Gaussians2D, scale_x: float, scale_y: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Means2d [N, 2] and conics [N, 3] in the pixels of an output grid scaled by (scale_x, scale_y).

    x_out = k_x x, y_out = k_y y, so Sigma_out = K Sigma K and conic_out = K^-1 conic K^-1 with
    K = diag(k_x, k_y). Differentiable.
    """
    conics = gaussians.conics()
    k = torch.tensor([scale_x, scale_y], dtype=gaussians.dtype, device=gaussians.device)
    means2d = gaussians.means * k
    conics = conics * torch.stack([1 / (k[0] * k[0]), 1 / (k[0] * k[1]), 1 / (k[1] * k[1])])
    return means2d, conics


def _resolve_scale(gaussians: Gaussians2D, scale, size) -> tuple[int, int, float, float]:
    h0, w0 = gaussians.image_size
    if size is not None:
        if scale is not None and scale != 1.0:
            raise ValueError("give either scale or size, not both")
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise TypeError(f"size must be a pair of ints (H, W), got {size!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"size must be positive (H, W), got {size!r}")
        return h, w, w / w0, h / h0
    k = 1.0 if scale is None else scale
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not (k > 0) or k == float("inf"):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    h, w = output_size((h0, w0), float(k))
    return h, w, float(k), float(k)


def render_with_derivatives(gaussians: Gaussians2D, *, scale: float | None = 1.0,
                            size: tuple[int, int] | None = None, mode: str | None = None,
                            background: torch.Tensor | None = None, return_derivatives: bool = True,
                            backend: str = "auto", device: str | torch.device | None = None) -> RenderOutput:
    """Render a Gaussian image at ``scale`` (or at ``size`` = (H, W)); see :func:`rasterize_to_pixels`.

    Args:
        gaussians: the Gaussian image (means/scales in pixels of ``gaussians.image_size``).
        scale: output/input size ratio k > 0 (non-integer allowed); output is round(H k) x round(W k)
            and output pixel (i, j) samples ((j + 0.5) / k, (i + 0.5) / k).
        size: explicit output (H, W) instead of ``scale`` (x and y scales may then differ).
        mode: "sum" or "alpha"; default ``gaussians.mode``.
        background: [C] alpha-mode background (default zeros).
        return_derivatives: compute dI/dx, dI/dy, d2I/dxdy in output pixel units.
        backend: "auto", "cpu" or "dense".
        device: None (the Gaussians' device), "auto", "cpu" or "cuda".

    Raises:
        TypeError / ValueError: see :func:`rasterize_to_pixels`; also for bad scale/size.
    """
    if not isinstance(gaussians, Gaussians2D):
        raise TypeError(f"gaussians must be a Gaussians2D, got {type(gaussians).__name__}")
    if device is not None:
        gaussians = gaussians.to(resolve_device(device))
    h, w, kx, ky = _resolve_scale(gaussians, scale, size)
    means2d, conics = project_gaussians(gaussians, kx, ky)
    mode = gaussians.mode if mode is None else mode
    opacities = gaussians.opacities
    if background is not None:
        background = torch.as_tensor(background, dtype=gaussians.dtype, device=gaussians.device)
    return rasterize_to_pixels(means2d, conics, gaussians.colours, opacities, width=w, height=h, mode=mode,
                               background=background, return_derivatives=return_derivatives, backend=backend)


def render(gaussians: Gaussians2D, *, scale: float | None = 1.0, size: tuple[int, int] | None = None,
           mode: str | None = None, background: torch.Tensor | None = None, backend: str = "auto",
           device: str | torch.device | None = None) -> torch.Tensor:
    """Render a Gaussian image; returns the image [C, H, W] (differentiable, not clamped).

    Same arguments as :func:`render_with_derivatives` (without derivatives).
    """
    return render_with_derivatives(gaussians, scale=scale, size=size, mode=mode, background=background,
                                   return_derivatives=False, backend=backend, device=device).image
