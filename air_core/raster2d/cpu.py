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
    qmax, rx, ry = _kernels.extents(conics, opacities)
    offsets, ids, tiles_x, tiles_y = _kernels.bin_tiles(means, qmax, rx, ry, height, width, *tile)
    return qmax, ry, offsets, ids, tiles_x, tiles_y


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colours, opacities, background, height, width, alpha_mode, want_derivs,
                tile_size):
        arrs = [_np64(t) for t in (means2d, conics, colours, opacities, background)]
        binning = _bin(arrs[0], arrs[1], arrs[3], height, width, tile_size)
        image, trans, last, derivs = _kernels.forward(*arrs, *binning, height, width, *tile_size, alpha_mode,
                                                      want_derivs)
        dtype, device = means2d.dtype, means2d.device
        to_t = lambda a: torch.from_numpy(a).to(device=device, dtype=dtype)  # noqa: E731
        image_t = to_t(image).permute(2, 0, 1).contiguous()
        trans_t = to_t(trans)
        derivs_t = to_t(derivs).permute(0, 3, 1, 2).contiguous() if want_derivs else None
        # the backward pass needs only the float64 copies the kernels already work on
        ctx.cache = (arrs, binning, trans, last, height, width, alpha_mode, tile_size, dtype, device)
        ctx.mark_non_differentiable(trans_t)
        if derivs_t is not None:
            ctx.mark_non_differentiable(derivs_t)
        return image_t, trans_t, derivs_t

    @staticmethod
    def backward(ctx, grad_image, grad_trans, grad_derivs):
        arrs, binning, trans, last, height, width, alpha_mode, tile_size, dtype, device = ctx.cache
        g_img = np.ascontiguousarray(grad_image.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy())
        grads = _kernels.backward(*arrs, *binning, height, width, *tile_size, alpha_mode, trans, last, g_img)
        grads = torch.from_numpy(grads).to(device=device, dtype=dtype)
        grad_bg = None
        if alpha_mode and ctx.needs_input_grad[4]:
            grad_bg = torch.from_numpy(np.einsum("hw,hwc->c", trans, g_img)).to(device, dtype)
        return (grads[:, 0:2], grads[:, 2:5], grads[:, 6:], grads[:, 5], grad_bg, None, None, None, None, None)


def rasterize_to_pixels_cpu(means2d: torch.Tensor, conics: torch.Tensor, colours: torch.Tensor,
                            opacities: torch.Tensor, background: torch.Tensor, width: int, height: int,
                            mode: str, return_derivatives: bool, tile_size: tuple[int, int] = (16, 128)):
    """See :func:`air_core.raster2d.rasterize_to_pixels`; inputs already validated.

    Returns (image [C, H, W], transmittance [H, W], derivatives [3, C, H, W] or None).
    """
    return _Rasterize.apply(means2d, conics, colours, opacities, background, int(height), int(width),
                            mode == "alpha", bool(return_derivatives), (int(tile_size[0]), int(tile_size[1])))
