"""Dense all-pairs reference rasterizer in plain PyTorch (the test oracle; also runs on any device).

It evaluates every Gaussian at every pixel, in chunks of pixels so memory stays at
``chunk_pixels * N`` elements, and differentiates with autograd. The semantics are exactly those of
the tile kernels (see :mod:`air_core.raster2d._kernels`): weight v = o exp(-q/2) skipped below
1/255, clamped at 1 ("sum") or 0.99 ("alpha"), alpha blending front to back in list order with
the early stop at T <= 1e-4 and the background added with the final transmittance.
"""

from __future__ import annotations

import torch

from ._kernels import ALPHA_CAP, MIN_WEIGHT, T_STOP

__all__ = ["rasterize_to_pixels_dense"]


def rasterize_to_pixels_dense(means2d: torch.Tensor, conics: torch.Tensor, colours: torch.Tensor,
                              opacities: torch.Tensor, background: torch.Tensor, width: int, height: int,
                              mode: str, chunk_pixels: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """All-pairs render. Returns (image [C, H, W], transmittance [H, W]); differentiable by autograd.

    Raises:
        air_core.images.ImageTooLargeError: when autograd would have to keep more pixel x Gaussian
            intermediates than the device's free memory holds (the tile backend has no such limit).
    """
    device, dtype = means2d.device, means2d.dtype
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means2d, conics, colours, opacities, background))
    pairs = height * width * max(1, means2d.shape[0]) if needs_grad else chunk_pixels * max(1, means2d.shape[0])
    required = pairs * means2d.element_size() * 12  # ~12 saved pair-sized intermediates per chunk
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if required > free:
            from ..images import ImageTooLargeError

            raise ImageTooLargeError(f"the dense rasterizer needs about {required / 2**30:.1f} GiB for this "
                                     f"{width}x{height} render of {means2d.shape[0]} Gaussians; "
                                     f"{free / 2**30:.1f} GiB are free on {device}")
    else:
        from ..images import check_memory

        check_memory(required, f"a dense {width}x{height} render of {means2d.shape[0]} Gaussians")
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                            torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    px, py = xs.reshape(-1), ys.reshape(-1)
    a, b, c = conics.unbind(-1)
    qmax = 2.0 * torch.log(255.0 * opacities.clamp_min(1e-30))
    cap = ALPHA_CAP if mode == "alpha" else 1.0
    images, transs = [], []
    for start in range(0, px.numel(), chunk_pixels):
        dx = px[start:start + chunk_pixels, None] - means2d[None, :, 0]
        dy = py[start:start + chunk_pixels, None] - means2d[None, :, 1]
        q = a * dx * dx + 2.0 * b * dx * dy + c * dy * dy
        v = opacities * torch.exp(-0.5 * q)
        valid = (q <= qmax) & (v >= MIN_WEIGHT)
        w = torch.where(valid, torch.clamp(v, max=cap), torch.zeros_like(v))
        if mode == "sum":
            images.append(w @ colours)
            transs.append(torch.ones_like(px[start:start + chunk_pixels]))
            continue
        one_minus = 1.0 - w
        trans = torch.cat([torch.ones_like(one_minus[:, :1]), torch.cumprod(one_minus, 1)[:, :-1]], 1)
        included = valid & (trans * one_minus > T_STOP)
        contrib = torch.where(included, w * trans, torch.zeros_like(w))
        t_final = torch.where(included, one_minus, torch.ones_like(one_minus)).prod(1)
        images.append(contrib @ colours + t_final[:, None] * background[None, :])
        transs.append(t_final)
    image = torch.cat(images, 0).reshape(height, width, -1).permute(2, 0, 1)
    return image, torch.cat(transs, 0).reshape(height, width)

