"""Pure maths of the add-on (no ``bpy``): object transforms, scene merging, rendering to RGBA, pixel layout.

Design (object transforms and several objects): every splat object's Gaussians are moved into WORLD
space exactly, then all objects are concatenated into one :class:`air_core.splat3d.GaussianScene` and
rendered once, so the depth sorting between objects is the renderer's own per-Gaussian sorting
(objects may interpenetrate). An object's ``matrix_world`` must be a similarity transform
``M = [s R | t]`` (uniform scale s > 0, rotation R, no shear, no mirroring):

* means: ``s R x + t``; log-scales: ``+ log s``; quaternions: ``q_R * q`` (Hamilton product, w x y z);
  normals: ``R n``;
* spherical harmonics are rotated band by band: the colour seen along a world direction d must be the
  colour the file gives for the local direction ``R^T d``. Each band l spans a rotation-invariant
  space, so ``Y_l(R^T d) = D_l Y_l(d)`` for a (2l+1)^2 matrix ``D_l``, found exactly by least squares
  from :func:`air_core.splat3d.eval_sh` at a few dozen directions; the coefficients become
  ``D_l^T c``. Hence the view-dependent colour is the one seen from the camera's true position in the
  object's frame, for any number of rotated objects.

Non-uniform scale, shear and mirroring are rejected (a sheared Gaussian is still a Gaussian, but the
SH directions would no longer transform by a rotation).

``torch`` and ``air_core`` are imported inside the functions: this module loads without them.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["decompose_similarity", "rotation_to_quaternion", "sh_rotation_matrices", "transform_scene",
           "merge_scenes", "render_rgba", "view_rgba", "to_blender_pixels", "linear_to_srgb", "view_key"]

_SCALE_TOL = 1e-4
_ORTHO_TOL = 1e-4


def decompose_similarity(matrix, name: str = "object") -> tuple[np.ndarray, np.ndarray, float]:
    """Split a 4x4 ``matrix_world`` into (rotation [3, 3], translation [3], uniform scale s).

    Raises:
        ValueError: a last row other than (0, 0, 0, 1), a zero, negative (mirrored) or non-uniform
            scale, or shear; the message names ``name``.
    """
    m = np.array(matrix, dtype=np.float64).reshape(4, 4)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name}: its transform holds NaN or Inf values")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
        raise ValueError(f"{name}: its transform is projective (last row {m[3].tolist()}); only rotation, "
                         "translation and uniform scale are supported")
    a = m[:3, :3]
    norms = np.linalg.norm(a, axis=0)
    if norms.min() <= 1e-12:
        raise ValueError(f"{name}: its scale is zero along an axis")
    s = float(norms.mean())
    if np.abs(norms - s).max() > _SCALE_TOL * s:
        raise ValueError(f"{name}: non-uniform scale {tuple(round(float(v), 6) for v in norms)} is not supported "
                         "(Gaussian splats only follow rotation, translation and uniform scale); apply the scale "
                         "or make it uniform")
    r = a / s
    if np.abs(r.T @ r - np.eye(3)).max() > _ORTHO_TOL:
        raise ValueError(f"{name}: its transform is sheared (e.g. scaled under a rotated parent); only rotation, "
                         "translation and uniform scale are supported")
    if np.linalg.det(r) < 0:
        raise ValueError(f"{name}: its transform is mirrored (negative scale); splats cannot be mirrored")
    return r, m[:3, 3].copy(), s


def rotation_to_quaternion(r) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a 3x3 rotation matrix (Shepperd's method)."""
    r = np.asarray(r, dtype=np.float64)
    tr = np.trace(r)
    if tr > 0:
        w = math.sqrt(1.0 + tr) * 2
        q = [0.25 * w, (r[2, 1] - r[1, 2]) / w, (r[0, 2] - r[2, 0]) / w, (r[1, 0] - r[0, 1]) / w]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        x = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2
        q = [(r[2, 1] - r[1, 2]) / x, 0.25 * x, (r[0, 1] + r[1, 0]) / x, (r[0, 2] + r[2, 0]) / x]
    elif r[1, 1] > r[2, 2]:
        y = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2
        q = [(r[0, 2] - r[2, 0]) / y, (r[0, 1] + r[1, 0]) / y, 0.25 * y, (r[1, 2] + r[2, 1]) / y]
    else:
        z = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2
        q = [(r[1, 0] - r[0, 1]) / z, (r[0, 2] + r[2, 0]) / z, (r[1, 2] + r[2, 1]) / z, 0.25 * z]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def sh_rotation_matrices(rotation, degree: int) -> list:
    """Per band l = 1..degree, the float64 torch matrix D_l with ``Y_l(R^T d) = D_l Y_l(d)``.

    The coefficients of a band transform as ``c' = D_l^T c`` (see the module docstring).
    """
    import torch

    from air_core.splat3d import eval_sh

    if degree == 0:
        return []
    k = (degree + 1) ** 2
    gen = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    r = torch.as_tensor(np.asarray(rotation), dtype=torch.float64)
    eye = torch.eye(k, dtype=torch.float64).expand(dirs.shape[0], k, k)
    basis = eval_sh(eye, dirs)             # [n, k]: Y_j(d)
    basis_rot = eval_sh(eye, dirs @ r)     # rows are (R^T d)^T = d^T R
    out = []
    for band in range(1, degree + 1):
        lo, hi = band * band, (band + 1) ** 2
        # basis_rot[:, band] = basis[:, band] @ D^T  ->  least squares for D^T
        d_t = torch.linalg.lstsq(basis[:, lo:hi], basis_rot[:, lo:hi]).solution
        out.append(d_t.T.contiguous())
    return out


def _quat_multiply(a, b):
    """Hamilton product a * b of (w, x, y, z) quaternions, broadcasting."""
    import torch

    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def transform_scene(scene, matrix, name: str = "object"):
    """The :class:`GaussianScene` ``scene`` moved by the similarity ``matrix`` (4x4, e.g. ``matrix_world``).

    Exact for means, covariances, opacities and view-dependent colour (SH rotated band by band).
    ``extra`` properties are kept, metadata copied.

    Raises:
        ValueError: see :func:`decompose_similarity`.
    """
    import torch

    from air_core.splat3d import GaussianScene

    r, t, s = decompose_similarity(matrix, name)
    if np.allclose(r, np.eye(3), atol=1e-12) and np.allclose(t, 0.0, atol=0.0) and s == 1.0:
        return scene
    dev, dt = scene.means.device, scene.means.dtype
    r64 = torch.as_tensor(r, dtype=torch.float64, device=dev)
    means = (s * scene.means.to(torch.float64) @ r64.T + torch.as_tensor(t, dtype=torch.float64, device=dev)).to(dt)
    q = torch.as_tensor(rotation_to_quaternion(r), dtype=torch.float64, device=dev)
    quats = _quat_multiply(q, scene.quats.to(torch.float64)).to(dt)
    sh = scene.sh_coeffs
    if sh.shape[1] > 1:
        degree = int(round(math.sqrt(sh.shape[1]))) - 1
        bands = [sh[:, :1]]
        for band, d in enumerate(sh_rotation_matrices(r, degree), start=1):
            lo, hi = band * band, (band + 1) ** 2
            # c'_j = sum_k D_kj c_k  (per colour channel): [N, 2l+1, 3] = D^T @ c
            bands.append(torch.einsum("kj,nkc->njc", d.to(device=dev, dtype=torch.float64),
                                      sh[:, lo:hi].to(torch.float64)).to(dt))
        sh = torch.cat(bands, dim=1).contiguous()
    normals = None if scene.normals is None else (scene.normals.to(torch.float64) @ r64.T).to(dt)
    return GaussianScene(means=means, log_scales=scene.log_scales + math.log(s), quats=quats,
                         opacity_logits=scene.opacity_logits, sh_coeffs=sh, normals=normals,
                         extra=dict(scene.extra), metadata=dict(scene.metadata))


def merge_scenes(scenes: Sequence):
    """One :class:`GaussianScene` holding all ``scenes`` (same device); SH zero-padded to the largest degree.

    Normals, ``extra`` properties and metadata are dropped (rendering does not use them).

    Raises:
        ValueError: no scenes.
    """
    import torch

    from air_core.splat3d import GaussianScene

    scenes = list(scenes)
    if not scenes:
        raise ValueError("no splat scenes to merge")
    if len(scenes) == 1:
        return scenes[0]
    k = max(s.sh_coeffs.shape[1] for s in scenes)
    dt = scenes[0].means.dtype

    def padded(s):
        sh = s.sh_coeffs.to(dt)
        if sh.shape[1] < k:
            sh = torch.cat([sh, sh.new_zeros(sh.shape[0], k - sh.shape[1], 3)], dim=1)
        return sh

    return GaussianScene(means=torch.cat([s.means.to(dt) for s in scenes]),
                         log_scales=torch.cat([s.log_scales.to(dt) for s in scenes]),
                         quats=torch.cat([s.quats.to(dt) for s in scenes]),
                         opacity_logits=torch.cat([s.opacity_logits.to(dt) for s in scenes]),
                         sh_coeffs=torch.cat([padded(s) for s in scenes]))


def _white(scene):
    """The scene with every Gaussian's colour 1 (DC only): rendered on black, its image is the alpha."""
    import torch

    from air_core.splat3d import SH_C0, GaussianScene

    dc = torch.full((len(scene), 1, 3), 0.5 / SH_C0, dtype=scene.means.dtype, device=scene.means.device)
    return GaussianScene(means=scene.means, log_scales=scene.log_scales, quats=scene.quats,
                         opacity_logits=scene.opacity_logits, sh_coeffs=dc)


def render_rgba(scene, camera, scale: float = 1.0, background: Iterable[float] | None = (0.0, 0.0, 0.0),
                transparent: bool = False) -> np.ndarray:
    """Render ``scene`` from ``camera`` into a top-down float32 RGBA array [H, W, 4], values in [0, 1].

    ``scale`` 1 renders at the camera's resolution with :func:`air_core.splat3d.render`; ``scale`` > 1
    renders at 1/scale resolution with image derivatives and upscales with the gradient-aware Hermite
    upscaler (:func:`air_core.upscale.render_upscaled`). Opaque (``transparent`` False): the
    ``background`` colour is composited and alpha is 1. Transparent: premultiplied colour on black and
    the accumulated alpha; when upscaling, the alpha is the Hermite-upscaled render of the same
    Gaussians coloured white (a second low-resolution render).
    """
    import torch

    from air_core.splat3d import render
    from air_core.upscale import render_upscaled

    bg = torch.zeros(3) if transparent or background is None else torch.as_tensor(list(background)).float()
    with torch.no_grad():
        if scale == 1:
            out = render(scene, camera, background=bg)
            rgb = out.image
            alpha = out.alpha if transparent else torch.ones_like(out.alpha)
        else:
            rgb = render_upscaled(scene, camera, scale, method="hermite", background=bg)
            if transparent:
                alpha = render_upscaled(_white(scene), camera, scale, method="hermite")[0]
            else:
                alpha = torch.ones_like(rgb[0])
        rgba = torch.cat([rgb, alpha[None]], dim=0).clamp(0.0, 1.0)
        if transparent:  # premultiplied: colour never exceeds alpha
            rgba[:3] = torch.minimum(rgba[:3], rgba[3:])
    return np.ascontiguousarray(rgba.permute(1, 2, 0).to(device="cpu", dtype=torch.float32).numpy())


def to_blender_pixels(rgba: np.ndarray) -> np.ndarray:
    """Flat float32 pixels for ``Image.pixels.foreach_set``: rows flipped (Blender images are bottom-up)."""
    rgba = np.asarray(rgba, dtype=np.float32)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"rgba must have shape [H, W, 4], got {list(rgba.shape)}")
    return np.ascontiguousarray(rgba[::-1]).reshape(-1)


def linear_to_srgb(values) -> tuple[float, ...]:
    """sRGB transfer function of linear colour components (Blender's world colour is scene-linear)."""
    out = []
    for v in values:
        v = min(max(float(v), 0.0), 1.0)
        out.append(12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055)
    return tuple(out)


def view_key(view_matrix, window_matrix, width: int, height: int, objects: Iterable = ()) -> tuple:
    """Hashable key of a viewport view: the rounded view and projection matrices, the region size and
    ``objects`` (e.g. (id, matrix_world) pairs); the preview re-renders only when it changes."""
    def rounded(m):
        return tuple(round(float(v), 6) for v in np.asarray(m, dtype=np.float64).reshape(-1))

    objs = tuple((str(i), rounded(m)) for i, m in objects)
    return rounded(view_matrix), rounded(window_matrix), int(width), int(height), objs


def view_rgba(scene, view_matrix, window_matrix, width: int, height: int, scale: float) -> np.ndarray:
    """Transparent (premultiplied) top-down RGBA of ``scene`` seen from a 3D-viewport view.

    ``view_matrix`` / ``window_matrix`` are ``region_3d.view_matrix`` / ``.window_matrix`` and
    (``width``, ``height``) the region size; rendered at 1/``scale`` and Hermite-upscaled.

    Raises:
        ValueError: an orthographic view (only perspective views are supported), bad matrices or size.
    """
    from air_core.splat3d import blender_view_to_camera

    camera = blender_view_to_camera(np.array(view_matrix, dtype=np.float64),
                                    np.array(window_matrix, dtype=np.float64), int(width), int(height))
    return render_rgba(scene, camera, scale, transparent=True)
