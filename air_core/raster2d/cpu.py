"""CPU backend: the numba tile rasterizer wrapped as a differentiable PyTorch op.

The kernels (:mod:`._kernels`) compute in float64 whatever the input dtype; results are cast back
to the dtype of ``means2d``. Gradients flow to means2d, conics, colours, opacities and background.
The image-space derivative outputs are returned without gradient (they feed the upscaler).
"""

from __future__ import annotations

import numpy as np
import torch

from . import _kernels

__all__ = ["rasterize_to_pixels_cpu"]


def _np64(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())


def _bin(means: np.ndarray, conics: np.ndarray, opacities: np.ndarray, height: int, width: int,
         tile: tuple[int, int]):
    qmax, rx, ry, consts = _kernels.prepare(conics, opacities)
    offsets, ids, tiles_x, tiles_y = _kernels.bin_tiles(means, qmax, rx, ry, height, width, *tile)
    return qmax, ry, consts, offsets, ids, tiles_x, tiles_y


def render_arrays(means: np.ndarray, conics: np.ndarray, colours: np.ndarray, opacities: np.ndarray,
                  background: np.ndarray, height: int, width: int, alpha_mode: bool, deriv_channels: int,
                  tile_size: tuple[int, int], out_dtype) -> tuple:
    """Bin and blend float64 arrays (the rasterizer's inputs, already valid) into new output arrays
    of ``out_dtype`` (np.float32 / np.float64).

    Returns (image [C, H, W], transmittance [H, W] float64, last [H, W] int64, derivatives
    [3, D, H, W] or a zero-size array, binning) as :func:`_kernels.forward` fills them.
    """
    binning = _bin(means, conics, opacities, height, width, tile_size)
    # outputs are written by the kernel directly in their final layout and dtype; it writes every
    # pixel (each tile writes its whole rectangle), so they need no zero-fill (a fresh zero-filled
    # 36 MB derivative array costs ~15 ms of page faults at 1024^2)
    image = np.empty((colours.shape[1], height, width), dtype=out_dtype)
    derivs = np.empty((3, deriv_channels, height, width) if deriv_channels else (3, 0, 0, 0), dtype=out_dtype)
    trans, last = _kernels.forward(means, conics, colours, opacities, background, *binning, height, width,
                                   *tile_size, alpha_mode, deriv_channels > 0, image, derivs)
    return image, trans, last, derivs, binning


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colours, opacities, background, height, width, alpha_mode, deriv_channels,
                tile_size):
        arrs = [_np64(t) for t in (means2d, conics, colours, opacities, background)]
        dtype, device = means2d.dtype, means2d.device
        image, trans, last, derivs, binning = render_arrays(
            *arrs, height, width, alpha_mode, deriv_channels, tile_size,
            np.float64 if dtype == torch.float64 else np.float32)
        to_t = lambda a: torch.from_numpy(a).to(device=device, dtype=dtype)  # noqa: E731
        image_t = to_t(image)
        trans_t = to_t(trans)
        derivs_t = to_t(derivs) if deriv_channels else None
        # the backward pass needs only the float64 copies the kernels already work on
        ctx.cache = (arrs, binning, trans, last, height, width, alpha_mode, tile_size, dtype, device)
        ctx.mark_non_differentiable(trans_t)
        if derivs_t is not None:
            ctx.mark_non_differentiable(derivs_t)
        return image_t, trans_t, derivs_t

    @staticmethod
    def backward(ctx, grad_image, grad_trans, grad_derivs):
        arrs, binning, trans, last, height, width, alpha_mode, tile_size, dtype, device = ctx.cache
        g_img = np.ascontiguousarray(grad_image.detach().to("cpu", torch.float64).numpy())
        grads = _kernels.backward(*arrs, *binning, height, width, *tile_size, alpha_mode, trans, last, g_img)
        grads = torch.from_numpy(grads).to(device=device, dtype=dtype)
        grad_bg = None
        if alpha_mode and ctx.needs_input_grad[4]:
            grad_bg = torch.from_numpy(np.einsum("hw,chw->c", trans, g_img)).to(device, dtype)
        return (grads[:, 0:2], grads[:, 2:5], grads[:, 6:], grads[:, 5], grad_bg, None, None, None, None, None)


def rasterize_to_pixels_cpu(means2d: torch.Tensor, conics: torch.Tensor, colours: torch.Tensor,
                            opacities: torch.Tensor, background: torch.Tensor, width: int, height: int,
                            mode: str, derivative_channels: int, tile_size: tuple[int, int] = (16, 128)):
    """See :func:`air_core.raster2d.rasterize_to_pixels`; inputs already validated.

    Returns (image [C, H, W], transmittance [H, W], derivatives [3, D, H, W] or None), with
    D = ``derivative_channels`` (0: no derivatives).
    """
    return _Rasterize.apply(means2d, conics, colours, opacities, background, int(height), int(width),
                            mode == "alpha", int(derivative_channels), (int(tile_size[0]), int(tile_size[1])))
