"""Real spherical harmonics colour of 3D Gaussians (degrees 0 to 3).

The basis and its constants are the real SH basis used by 3D Gaussian Splatting (Kerbl et al. 2023,
INRIA ``utils/sh_utils.py``; the constants are those of Sloan, "Stupid Spherical Harmonics (SH)
Tricks", 2008, with the sign convention of the 3DGS code). Colour = max(SH(dir) + 0.5, 0) with
``dir`` the unit vector from the camera centre to the Gaussian's mean, in the scene's frame.
"""

from __future__ import annotations

import torch

__all__ = ["SH_C0", "eval_sh", "sh_colours", "rgb_to_sh_dc", "sh_dc_to_rgb", "num_sh_bases"]

SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
       1.445305721320277, -0.5900435899266435)


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel, K = (degree + 1)^2, for degree 0..3."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh degree must be 0, 1, 2 or 3, got {degree!r}")
    return (degree + 1) ** 2


def eval_sh(sh_coeffs: torch.Tensor, dirs: torch.Tensor, degree: int | None = None) -> torch.Tensor:
    """Evaluate real SH of ``degree`` at unit directions.

    Args:
        sh_coeffs: [N, K, C] coefficients, K >= (degree + 1)^2 (coefficient 0 is the DC term).
        dirs: [N, 3] unit directions (x, y, z) in the frame the coefficients were fitted in.
        degree: 0..3; default the largest degree K supports.

    Returns:
        [N, C] raw SH value (without the +0.5 offset). Differentiable in both inputs.

    Raises:
        ValueError: bad shapes or a degree that K does not support.
    """
    if sh_coeffs.dim() != 3 or sh_coeffs.shape[1] not in (1, 4, 9, 16):
        raise ValueError(f"sh_coeffs must have shape [N, K, C] with K in (1, 4, 9, 16), got {list(sh_coeffs.shape)}")
    if dirs.shape != (sh_coeffs.shape[0], 3):
        raise ValueError(f"dirs must have shape [{sh_coeffs.shape[0]}, 3], got {list(dirs.shape)}")
    max_degree = {1: 0, 4: 1, 9: 2, 16: 3}[sh_coeffs.shape[1]]
    degree = max_degree if degree is None else degree
    if degree not in (0, 1, 2, 3) or degree > max_degree:
        raise ValueError(f"degree must be in 0..{max_degree} for K = {sh_coeffs.shape[1]} coefficients, got {degree!r}")
    sh = sh_coeffs
    out = SH_C0 * sh[:, 0]
    if degree == 0:
        return out
    x, y, z = (dirs[:, i:i + 1] for i in range(3))
    out = out - _C1 * y * sh[:, 1] + _C1 * z * sh[:, 2] - _C1 * x * sh[:, 3]
    if degree == 1:
        return out
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    out = (out + _C2[0] * xy * sh[:, 4] + _C2[1] * yz * sh[:, 5] + _C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
           + _C2[3] * xz * sh[:, 7] + _C2[4] * (xx - yy) * sh[:, 8])
    if degree == 2:
        return out
    return (out + _C3[0] * y * (3.0 * xx - yy) * sh[:, 9] + _C3[1] * xy * z * sh[:, 10]
            + _C3[2] * y * (4.0 * zz - xx - yy) * sh[:, 11] + _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[:, 12]
            + _C3[4] * x * (4.0 * zz - xx - yy) * sh[:, 13] + _C3[5] * z * (xx - yy) * sh[:, 14]
            + _C3[6] * x * (xx - 3.0 * yy) * sh[:, 15])


def sh_colours(sh_coeffs: torch.Tensor, means: torch.Tensor, camera_center: torch.Tensor,
               degree: int | None = None) -> torch.Tensor:
    """View-dependent RGB of each Gaussian seen from ``camera_center``: max(SH(dir) + 0.5, 0).

    Args:
        sh_coeffs: [N, K, 3]; means: [N, 3] world positions; camera_center: [3] world position.
        degree: SH degree to use (default: all the coefficients).

    Returns:
        [N, 3] colours >= 0 (not clamped above, as in 3DGS). Differentiable.
    """
    if sh_coeffs.shape[1] == 1 or degree == 0:
        return torch.clamp_min(SH_C0 * sh_coeffs[:, 0] + 0.5, 0.0)
    dirs = means - camera_center.to(means)
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.clamp_min(eval_sh(sh_coeffs, dirs, degree) + 0.5, 0.0)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient that makes a Gaussian's colour ``rgb`` (any shape): (rgb - 0.5) / C0."""
    return (rgb - 0.5) / SH_C0


def sh_dc_to_rgb(dc: torch.Tensor) -> torch.Tensor:
    """Colour of a degree-0 Gaussian with DC coefficient ``dc``: 0.5 + C0 * dc (before clamping)."""
    return 0.5 + SH_C0 * dc
