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

Banded rendering (progress and cancelling): :class:`BandedRender` splits the (low-resolution, when
upscaling) render into horizontal bands of rows. The scene is projected ONCE with the whole
(low-resolution) camera -- same K, viewmat, eps2d, culling and frustum clamp as the unbanded render --
and each band rasterizes the projected Gaussians onto its rows only (centres shifted by -y0, i.e.
the camera cropped to those rows: cy - y0, height = band rows); the bands are stacked into the whole
image (+ alpha, + derivatives when upscaling) and the Hermite upscale runs once on it, as before.
Rendering each band with its own cropped :class:`air_core.splat3d.Camera` would not be exact: the
projection clamps the EWA Jacobian to a frustum 1.3x the image, so Gaussians centred above or below
a thin band but reaching into it would get another footprint (measured: up to 0.019 on the donut at
160x130 with 7-row bands; the shared projection makes the bands agree to float rounding).

``torch`` and ``air_core`` are imported inside the functions: this module loads without them.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["decompose_similarity", "rotation_to_quaternion", "sh_rotation_matrices", "transform_scene",
           "merge_scenes", "Cancelled", "BandedRender", "band_ranges", "render_rgba", "view_rgba",
           "to_blender_pixels", "linear_to_srgb", "view_key"]

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


class Cancelled(Exception):
    """Raised by :func:`render_rgba` when its ``progress`` callback returns False."""


#: default band height in (low-resolution) rendered rows; images up to 1.5x this are one band
BAND_ROWS = 96


def band_ranges(height: int, band_rows: int | None = None) -> list[tuple[int, int]]:
    """Row ranges [(y0, y1), ...] covering ``height`` rows top-down, in bands of ``band_rows`` rows
    (the last one may be shorter).

    By default the bands hold about :data:`BAND_ROWS` rows (64 to 128 for images taller than 144
    rows; a single band below that), rounded up to whole 16-row rasterizer tiles.
    """
    height = int(height)
    if height < 1:
        raise ValueError(f"height must be >= 1, got {height}")
    if band_rows is None:
        n = max(1, round(height / BAND_ROWS))
        band_rows = -(-height // n)
        band_rows = min(height, -(-band_rows // 16) * 16)
    elif int(band_rows) < 1:
        raise ValueError(f"band_rows must be >= 1, got {band_rows}")
    band_rows = int(band_rows)
    return [(y0, min(height, y0 + band_rows)) for y0 in range(0, height, band_rows)]


class BandedRender:
    """A render of ``scene`` from ``camera`` done band by band (see the module docstring), for progress
    reports and cancelling: ``step()`` renders the next band, ``result()`` returns the RGBA array once
    every band is done. Arguments and result as :func:`render_rgba`; ``band_rows`` as
    :func:`band_ranges`.

    Constructing it projects the scene (the bands only rasterize). Nothing is written anywhere until
    the caller uses ``result()``, so abandoning it half way has no effect.
    """

    def __init__(self, scene, camera, scale: float = 1.0, background: Iterable[float] | None = (0.0, 0.0, 0.0),
                 transparent: bool = False, band_rows: int | None = None):
        import torch

        from air_core.splat3d import project
        from air_core.upscale import low_resolution_eps2d, low_resolution_size

        self.full_size = (camera.height, camera.width)
        self.transparent = bool(transparent)
        # exactly air_core.upscale.render_upscaled (scale 1: the full-resolution render itself)
        low_h, low_w = low_resolution_size(camera.height, camera.width, scale)
        eps2d = low_resolution_eps2d(0.3, self.full_size, (low_h, low_w))
        if (low_h, low_w) != self.full_size:
            camera = camera.resized(low_w, low_h)
        self.low_size = (low_h, low_w)
        self.upscale = (low_h, low_w) != self.full_size
        dt, dev = scene.means.dtype, scene.means.device
        bg = [0.0, 0.0, 0.0] if transparent or background is None else [float(v) for v in background]
        with torch.no_grad():
            proj = project(scene, camera, eps2d=eps2d)
            colours = proj.colours.detach()
            self.background = torch.as_tensor(bg, dtype=dt, device=dev)
            if self.upscale and transparent:
                # a 4th channel of colour 1 on black is the accumulated alpha (the white render), with
                # its own derivatives for the Hermite upscale
                colours = torch.cat([colours, torch.ones_like(colours[:, :1])], dim=1)
                self.background = torch.cat([self.background, self.background[:1] * 0])
            self.means2d = proj.means2d.detach()
            self.conics = proj.conics.detach()
            self.opacities = proj.opacities.detach()
            self.colours = colours.contiguous()
            # vertical half-extent of each footprint (o exp(-q/2) >= 1/255): sqrt(qmax Sigma_yy),
            # Sigma_yy = a / det(conic); a Gaussian is given to the bands it can reach
            a, b, c = self.conics.unbind(1)
            qmax = 2.0 * torch.log((255.0 * self.opacities).clamp_min(1e-30))
            extent = torch.sqrt(qmax.clamp_min(0) * a / (a * c - b * b)) + 1.0
            self.extent_y = torch.nan_to_num(extent, nan=math.inf)
        self.bands = band_ranges(low_h, band_rows)
        self._parts: list = []

    @property
    def total(self) -> int:
        """Number of bands."""
        return len(self.bands)

    @property
    def done(self) -> int:
        """Bands rendered so far."""
        return len(self._parts)

    @property
    def finished(self) -> bool:
        return self.done == self.total

    def step(self) -> bool:
        """Render the next band; True once every band is done."""
        import torch

        from air_core.raster2d import rasterize_to_pixels
        from air_core.splat3d.render import TILE_SIZE

        if self.finished:
            return True
        y0, y1 = self.bands[self.done]
        with torch.no_grad():
            my = self.means2d[:, 1]
            sel = torch.nonzero((my + self.extent_y > y0) & (my - self.extent_y < y1)).squeeze(1)
            means2d = self.means2d[sel]
            if y0:
                means2d = means2d - torch.tensor([0.0, float(y0)], dtype=means2d.dtype, device=means2d.device)
            out = rasterize_to_pixels(means2d, self.conics[sel], self.colours[sel], self.opacities[sel],
                                      width=self.low_size[1], height=y1 - y0, mode="alpha",
                                      background=self.background, return_derivatives=self.upscale,
                                      tile_size=TILE_SIZE)
        self._parts.append((out.image, 1.0 - out.transmittance, out.image_dx, out.image_dy, out.image_dxy))
        return self.finished

    def result(self) -> np.ndarray:
        """The top-down float32 RGBA [H, W, 4] array (all bands must be done)."""
        import torch

        from air_core.upscale import hermite_upscale

        if not self.finished:
            raise RuntimeError(f"only {self.done} of {self.total} bands are rendered")
        with torch.no_grad():
            image = torch.cat([p[0] for p in self._parts], dim=1)
            alpha = torch.cat([p[1] for p in self._parts], dim=0)
            if self.upscale:
                dx, dy, dxy = (torch.cat([p[i] for p in self._parts], dim=1) for i in (2, 3, 4))
                image = hermite_upscale(image, dx, dy, dxy, size=self.full_size)
                if self.transparent:
                    image, alpha = image[:3], image[3]
            # one [H, W, 4] float32 array written channel by channel, clamped in place (a full-size
            # frame is large: no intermediate copies)
            rgba = torch.empty((*image.shape[1:], 4), dtype=torch.float32)
            rgba[..., :3] = image.permute(1, 2, 0)
            rgba[..., 3] = alpha if self.transparent else 1.0
            rgba.clamp_(0.0, 1.0)
            if self.transparent:  # premultiplied: colour never exceeds alpha
                torch.minimum(rgba[..., :3], rgba[..., 3:], out=rgba[..., :3])
        return rgba.numpy()


def render_rgba(scene, camera, scale: float = 1.0, background: Iterable[float] | None = (0.0, 0.0, 0.0),
                transparent: bool = False, *, band_rows: int | None = None, progress=None) -> np.ndarray:
    """Render ``scene`` from ``camera`` into a top-down float32 RGBA array [H, W, 4], values in [0, 1].

    ``scale`` 1 renders at the camera's resolution (as :func:`air_core.splat3d.render`); ``scale`` > 1
    renders at 1/scale resolution with image derivatives and the eps2d of
    :func:`air_core.upscale.render_upscaled`, and upscales with the gradient-aware Hermite upscaler.
    Opaque (``transparent`` False): the ``background`` colour is composited and alpha is 1.
    Transparent: premultiplied colour on black and the accumulated alpha; when upscaling, the alpha is
    the Hermite-upscaled accumulated alpha (the same Gaussians coloured white, on black).

    The render is done in horizontal bands (:class:`BandedRender`, ``band_rows`` as
    :func:`band_ranges`); ``progress(done_bands, total_bands)`` is called after every band and
    returning False (not None) cancels.

    Raises:
        Cancelled: ``progress`` returned False.
    """
    job = BandedRender(scene, camera, scale, background, transparent, band_rows=band_rows)
    while True:
        finished = job.step()
        if progress is not None and progress(job.done, job.total) is False:
            raise Cancelled(f"cancelled after {job.done} of {job.total} bands")
        if finished:
            return job.result()


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
