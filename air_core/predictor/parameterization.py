"""AIR's per-patch parameterisation of 2D Gaussians: patch centres and the raw 8-vector decoder.

Each stage of AIR tiles the image into ps x ps patches and predicts one raw 8-vector r per patch
(AIR, github.com/whoiszzj/AIR; /work/shared/reference/air_and_2d_gaussian_images.md, "AIR, enough to
reimplement"):

* position   mu = c + ps * tanh(r[0:2])          (pixels, x then y; c = the patch centre)
* scale      s = ps * sigmoid(r[2:4]) + 0.5       (pixels, standard deviations along the rotated axes)
* angle      theta = 2 pi sigmoid(r[4])           (radians)
* colour     tanh(r[5:8])                         (signed: later stages add residual colour)
* opacity    1 (the "sum" rasterizer; the Gaussians carry no opacities and ``metadata["mode"] = "sum"``)

Patch centre c: the geometric centre of the patch in row i, column j, in this project's convention
(the image covers [0, W] x [0, H], pixel centres at j + 0.5): x = (j ps + min((j + 1) ps, W)) / 2, and
likewise y; for a full patch that is j ps + ps / 2 (AIR's j ps + (ps - 1) / 2 with its integer pixel
centres), for a partial patch at the right / bottom border the centre of its valid part.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..gaussians import Gaussians2D

__all__ = ["RAW_CHANNELS", "check_patch_size", "patch_grid", "patch_centres", "decode_candidates"]

#: Raw channels per patch: 2 position, 2 scale, 1 angle, 3 colour.
RAW_CHANNELS = 8


def check_patch_size(patch_size: Any, name: str = "patch_size") -> int:
    """``patch_size`` must be an int >= 1 (not a bool); returns it.

    Raises:
        TypeError: not an int.
        ValueError: < 1.
    """
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(patch_size).__name__} {patch_size!r}")
    if patch_size < 1:
        raise ValueError(f"{name} must be an int >= 1, got {patch_size}")
    return patch_size


def _check_image_size(image_size: Any) -> tuple[int, int]:
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise TypeError(f"image_size must be a pair of ints (H, W), got {image_size!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (h, w)):
        raise TypeError(f"image_size must be a pair of ints (H, W), got {image_size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive (H, W), got {image_size!r}")
    return h, w


def patch_grid(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Patch rows and columns (ph, pw) = (ceil(H / ps), ceil(W / ps)) covering an (H, W) image.

    Raises:
        TypeError / ValueError: ``image_size`` not a pair of positive ints, ``patch_size`` not an int >= 1.
    """
    h, w = _check_image_size(image_size)
    ps = check_patch_size(patch_size)
    return math.ceil(h / ps), math.ceil(w / ps)


def patch_centres(image_size: tuple[int, int], patch_size: int, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Centres of the ps x ps patches tiling an (H, W) image, AIR's candidate anchors.

    Args:
        image_size: (H, W) in pixels, positive ints.
        patch_size: ps, an int >= 1. The grid has (ph, pw) = (ceil(H / ps), ceil(W / ps)) patches; the
            last row / column may be partial.
        dtype, device: of the result.

    Returns:
        [P, 2] tensor, P = ph * pw, rows in row-major patch order (index i * pw + j for patch row i,
        column j): x = (j ps + min((j + 1) ps, W)) / 2, y = (i ps + min((i + 1) ps, H)) / 2 pixels
        (the patch's geometric centre; see the module docstring).

    Raises:
        TypeError / ValueError: bad ``image_size`` or ``patch_size``.
    """
    h, w = _check_image_size(image_size)
    ph, pw = patch_grid((h, w), patch_size)
    starts_x = torch.arange(pw, dtype=torch.float64) * patch_size
    starts_y = torch.arange(ph, dtype=torch.float64) * patch_size
    xs = (starts_x + (starts_x + patch_size).clamp(max=w)) / 2
    ys = (starts_y + (starts_y + patch_size).clamp(max=h)) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1).to(dtype=dtype, device=device)


def _decode_flat(raw: torch.Tensor, centres: torch.Tensor, patch_size: int,
                 image_size: tuple[int, int]) -> Gaussians2D:
    means = centres + patch_size * torch.tanh(raw[:, 0:2])
    scales = patch_size * torch.sigmoid(raw[:, 2:4]) + 0.5
    rotations = 2 * math.pi * torch.sigmoid(raw[:, 4])
    colours = torch.tanh(raw[:, 5:8])
    return Gaussians2D(means, scales, rotations, colours, None, image_size, {"mode": "sum"})


def decode_candidates(raw: torch.Tensor, image_size: tuple[int, int],
                      patch_size: int) -> Gaussians2D | list[Gaussians2D]:
    """Decode raw per-patch 8-vectors into AIR candidate Gaussians (see the module docstring).

    Args:
        raw: float tensor, either [B, 8, ph, pw] (a head's output map) or [P, 8] (one image, P = ph * pw
            in row-major patch order), with (ph, pw) = (ceil(H / ps), ceil(W / ps)). Finite values.
        image_size: (H, W) of the image, pixels.
        patch_size: ps, int >= 1.

    Returns:
        For [P, 8]: one :class:`Gaussians2D` of P Gaussians in row-major patch order; for
        [B, 8, ph, pw]: a list of B of them. Means in (c - ps, c + ps), scales in (0.5, ps + 0.5),
        rotations in (0, 2 pi), colours in (-1, 1); no opacities, ``metadata = {"mode": "sum"}``.
        Same dtype / device as ``raw``; differentiable with respect to ``raw``.

    Raises:
        TypeError: ``raw`` is not a floating-point tensor; bad ``image_size`` / ``patch_size`` types.
        ValueError: wrong shape for the patch grid, NaN / Inf in ``raw``, non-positive sizes.
    """
    if not isinstance(raw, torch.Tensor):
        raise TypeError(f"raw must be a torch.Tensor, got {type(raw).__name__}")
    if not raw.is_floating_point():
        raise TypeError(f"raw must be a floating-point tensor, got {raw.dtype}")
    h, w = _check_image_size(image_size)
    ph, pw = patch_grid((h, w), patch_size)
    if raw.dim() == 2:
        if raw.shape != (ph * pw, RAW_CHANNELS):
            raise ValueError(f"raw must have shape [{ph * pw}, {RAW_CHANNELS}] for image_size {(h, w)} and "
                             f"patch_size {patch_size}, got {list(raw.shape)}")
    elif raw.dim() == 4:
        if raw.shape[1:] != (RAW_CHANNELS, ph, pw):
            raise ValueError(f"raw must have shape [B, {RAW_CHANNELS}, {ph}, {pw}] for image_size {(h, w)} and "
                             f"patch_size {patch_size}, got {list(raw.shape)}")
    else:
        raise ValueError(f"raw must be [B, {RAW_CHANNELS}, ph, pw] or [P, {RAW_CHANNELS}], got shape "
                         f"{list(raw.shape)}")
    with torch.no_grad():
        if not bool(torch.isfinite(raw).all()):
            raise ValueError("raw contains NaN or Inf values")
    centres = patch_centres((h, w), patch_size, dtype=raw.dtype, device=raw.device)
    if raw.dim() == 2:
        return _decode_flat(raw, centres, patch_size, (h, w))
    flat = raw.flatten(2).transpose(1, 2)  # [B, P, 8], row-major patches
    return [_decode_flat(r, centres, patch_size, (h, w)) for r in flat]
