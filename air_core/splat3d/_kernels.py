"""Numba CPU fast path of :func:`air_core.splat3d.render.project` (used when no gradient is needed).

It evaluates, per Gaussian and in float64, exactly the arithmetic of the PyTorch path (which is the
differentiable reference and is tested against this one): activations, camera-space mean, the
square root V = R_view R_q S of the camera-space covariance, the clamped EWA Jacobian, the dilated
2D covariance and its conic, the 1/255 footprint test against the image, and the SH colour seen from
the camera centre (same basis and constants as :mod:`air_core.splat3d.sh`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .sh import SH_C0, _C1, _C2, _C3


@njit(inline="always")
def _sh_channel(sh, g, ch, degree, x, y, z):
    out = SH_C0 * sh[g, 0, ch]
    if degree == 0:
        return out
    out += -_C1 * y * sh[g, 1, ch] + _C1 * z * sh[g, 2, ch] - _C1 * x * sh[g, 3, ch]
    if degree == 1:
        return out
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    out += (_C2[0] * xy * sh[g, 4, ch] + _C2[1] * yz * sh[g, 5, ch] + _C2[2] * (2.0 * zz - xx - yy) * sh[g, 6, ch]
            + _C2[3] * xz * sh[g, 7, ch] + _C2[4] * (xx - yy) * sh[g, 8, ch])
    if degree == 2:
        return out
    out += (_C3[0] * y * (3.0 * xx - yy) * sh[g, 9, ch] + _C3[1] * xy * z * sh[g, 10, ch]
            + _C3[2] * y * (4.0 * zz - xx - yy) * sh[g, 11, ch]
            + _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[g, 12, ch]
            + _C3[4] * x * (4.0 * zz - xx - yy) * sh[g, 13, ch] + _C3[5] * z * (xx - yy) * sh[g, 14, ch]
            + _C3[6] * x * (xx - 3.0 * yy) * sh[g, 15, ch])
    return out


@njit(inline="always")
def _add_column(viewmat, m0, m1, m2, gx, gy, u, w, a, b, c):
    """Add column m of R_q S, rotated into the camera (v = R_view m) and mapped by the EWA Jacobian
    rows (t0, t1) = (gx (v0 - u v2), gy (v1 - w v2)), to the 2D covariance (a, b, c)."""
    v0 = viewmat[0, 0] * m0 + viewmat[0, 1] * m1 + viewmat[0, 2] * m2
    v1 = viewmat[1, 0] * m0 + viewmat[1, 1] * m1 + viewmat[1, 2] * m2
    v2 = viewmat[2, 0] * m0 + viewmat[2, 1] * m1 + viewmat[2, 2] * m2
    t0 = gx * (v0 - u * v2)
    t1 = gy * (v1 - w * v2)
    return a + t0 * t0, b + t0 * t1, c + t1 * t1


@njit(parallel=True, cache=True, nogil=True)
def project_all(means, log_scales, quats, opacity_logits, sh, degree, viewmat, intr, width, height, near, far, eps2d,
                limits, center):
    """Project every Gaussian. ``intr`` = (fx, fy, cx, cy), ``limits`` = (x+, x-, y+, y-) of the
    clamped tangent, ``center`` the camera centre.

    Returns float64 arrays means2d [N, 2], conics [N, 3], depths [N], colours [N, 3],
    opacities [N], a bool mask [N] of the Gaussians that are in the depth range and on screen, and a
    bool mask [N] of the Gaussians with a NaN or Inf parameter (never kept).
    """
    n = means.shape[0]
    means2d = np.empty((n, 2))
    conics = np.empty((n, 3))
    depths = np.empty(n)
    colours = np.empty((n, 3))
    opacities = np.empty(n)
    keep = np.zeros(n, dtype=np.bool_)
    bad = np.zeros(n, dtype=np.bool_)
    fx, fy, cx, cy = intr[0], intr[1], intr[2], intr[3]
    for g in prange(n):
        finite = math.isfinite(opacity_logits[g])
        for k in range(3):
            finite = finite and math.isfinite(means[g, k]) and math.isfinite(log_scales[g, k])
        for k in range(4):
            finite = finite and math.isfinite(quats[g, k])
        for k in range(sh.shape[1]):
            for ch in range(3):
                finite = finite and math.isfinite(sh[g, k, ch])
        if not finite:
            bad[g] = True
            depths[g] = 0.0
            continue
        mx, my, mz = float(means[g, 0]), float(means[g, 1]), float(means[g, 2])
        px = viewmat[0, 0] * mx + viewmat[0, 1] * my + viewmat[0, 2] * mz + viewmat[0, 3]
        py = viewmat[1, 0] * mx + viewmat[1, 1] * my + viewmat[1, 2] * mz + viewmat[1, 3]
        pz = viewmat[2, 0] * mx + viewmat[2, 1] * my + viewmat[2, 2] * mz + viewmat[2, 3]
        depths[g] = pz
        if not (pz > near and pz < far):
            continue
        qw, qx, qy, qz = float(quats[g, 0]), float(quats[g, 1]), float(quats[g, 2]), float(quats[g, 3])
        qn = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
        qw, qx, qy, qz = qw / qn, qx / qn, qy / qn, qz / qn
        # rotation matrix of the unit quaternion (INRIA build_rotation), row-major scalars
        r00, r01, r02 = 1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)
        r10, r11, r12 = 2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)
        r20, r21, r22 = 2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)
        inv_z = 1.0 / pz
        u = min(limits[0], max(-limits[1], px * inv_z))
        w = min(limits[2], max(-limits[3], py * inv_z))
        s0 = math.exp(float(log_scales[g, 0]))
        s1 = math.exp(float(log_scales[g, 1]))
        s2 = math.exp(float(log_scales[g, 2]))
        a, b, c = _add_column(viewmat, r00 * s0, r10 * s0, r20 * s0, fx * inv_z, fy * inv_z, u, w, eps2d, 0.0, eps2d)
        a, b, c = _add_column(viewmat, r01 * s1, r11 * s1, r21 * s1, fx * inv_z, fy * inv_z, u, w, a, b, c)
        a, b, c = _add_column(viewmat, r02 * s2, r12 * s2, r22 * s2, fx * inv_z, fy * inv_z, u, w, a, b, c)
        det = a * c - b * b
        o = 1.0 / (1.0 + math.exp(-float(opacity_logits[g])))
        q = 2.0 * math.log(255.0 * o) if o > 0.0 else -1.0
        if q <= 0.0 or det <= 0.0:
            continue
        x2 = fx * px * inv_z + cx
        y2 = fy * py * inv_z + cy
        rx = math.sqrt(q * a)
        ry = math.sqrt(q * c)
        if not (x2 + rx > 0.0 and x2 - rx < width and y2 + ry > 0.0 and y2 - ry < height):
            continue
        keep[g] = True
        means2d[g, 0] = x2
        means2d[g, 1] = y2
        conics[g, 0] = c / det
        conics[g, 1] = -b / det
        conics[g, 2] = a / det
        opacities[g] = o
        dx, dy, dz = mx - center[0], my - center[1], mz - center[2]
        dn = max(math.sqrt(dx * dx + dy * dy + dz * dz), 1e-12)
        dx, dy, dz = dx / dn, dy / dn, dz / dn
        for ch in range(3):
            colours[g, ch] = max(_sh_channel(sh, g, ch, degree, dx, dy, dz) + 0.5, 0.0)
    return means2d, conics, depths, colours, opacities, keep, bad


@njit(cache=True)
def _radix_argsort_positive(ids, keys):
    """``ids`` reordered so that keys[ids] ascends; stable. Keys must be positive finite float64
    (depths beyond the near plane), whose IEEE-754 bit patterns then sort like unsigned integers:
    a least-significant-digit radix sort, 4 passes of 16 bits (several times faster than a merge
    sort for the 10^4..10^6 Gaussians of a scene)."""
    m = ids.shape[0]
    bits = np.empty(m, dtype=np.uint64)
    for k in range(m):
        bits[k] = keys[ids[k]:ids[k] + 1].view(np.uint64)[0]
    src_ids, src_bits = ids.copy(), bits
    dst_ids, dst_bits = np.empty_like(ids), np.empty_like(bits)
    counts = np.empty(65537, dtype=np.int64)
    for shift in range(0, 64, 16):
        counts[:] = 0
        for k in range(m):
            counts[((src_bits[k] >> np.uint64(shift)) & np.uint64(0xFFFF)) + 1] += 1
        if counts.max() == m:  # every key has the same digit: nothing to reorder
            continue
        for d in range(65536):
            counts[d + 1] += counts[d]
        for k in range(m):
            d = (src_bits[k] >> np.uint64(shift)) & np.uint64(0xFFFF)
            pos = counts[d]
            counts[d] = pos + 1
            dst_ids[pos] = src_ids[k]
            dst_bits[pos] = src_bits[k]
        src_ids, dst_ids = dst_ids, src_ids
        src_bits, dst_bits = dst_bits, src_bits
    return src_ids


@njit(cache=True, nogil=True)
def compact_sorted(keep, depths, means2d, conics, colours, opacities):
    """Kept Gaussians sorted front to back (stable in index order): returns ids [M] and the gathered
    means2d [M, 2], conics [M, 3], depths [M], colours [M, 3], opacities [M] (float64)."""
    ids = _radix_argsort_positive(np.flatnonzero(keep), depths)
    m = ids.shape[0]
    out_means = np.empty((m, 2))
    out_conics = np.empty((m, 3))
    out_depths = np.empty(m)
    out_colours = np.empty((m, 3))
    out_opacities = np.empty(m)
    for k in range(m):
        g = ids[k]
        out_means[k, 0] = means2d[g, 0]
        out_means[k, 1] = means2d[g, 1]
        for j in range(3):
            out_conics[k, j] = conics[g, j]
            out_colours[k, j] = colours[g, j]
        out_depths[k] = depths[g]
        out_opacities[k] = opacities[g]
    return ids, out_means, out_conics, out_depths, out_colours, out_opacities
