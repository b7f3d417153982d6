"""Pinhole cameras in the OpenCV convention, camera placement around a scene, and Blender conversions.

Conventions (DESIGN.md): camera coordinates x right, y down, z forward (the camera looks along +z);
``viewmat`` is the 4x4 world -> camera transform ``[[R, t], [0, 0, 0, 1]]`` (x_cam = R x_world + t);
``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels. A point at camera coordinates (x, y, z),
z > 0, lands at the continuous image position (u, v) = (fx x / z + cx, fy y / z + cy); the image covers
[0, W] x [0, H] and pixel (row i, column j) has its centre at (j + 0.5, i + 0.5), so a centred
principal point is (cx, cy) = (W / 2, H / 2). This is the camera gsplat's ``rasterization`` takes
(``viewmats``, ``Ks``).

Blender cameras look down their local -Z with +Y up (OpenGL convention); the conversions
:func:`camera_from_blender` (a camera object) and :func:`blender_view_to_camera` (the 3D viewport) are
pure functions of numbers and matrices, so they are tested without ``bpy``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from .scene import GaussianScene

__all__ = [
    "Camera",
    "intrinsic_matrix",
    "look_at",
    "orbit_cameras",
    "orbit_cameras_for_scene",
    "camera_from_blender",
    "blender_view_to_camera",
]

_ROTATION_TOL = 1e-5
_LAST_ROW_TOL = 1e-9
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _matrix(name: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """``value`` (tensor, numpy array, nested sequence, mathutils.Matrix) as a float64 CPU tensor of ``shape``."""
    try:
        t = value.detach().to("cpu") if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        t = t.to(torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor, array or nested sequence of numbers, "
                        f"got {type(value).__name__}") from None
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _finite(name: str, value: Any, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(v) or (positive and not v > 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return v


def _unit(name: str, v: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(v)
    if not float(norm) > 1e-12:
        raise ValueError(f"{name} must be a non-zero vector, got {v.tolist()}")
    return v / norm


# ----------------------------------------------------------------------------------------------
# The camera
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Camera:
    """A pinhole camera: world -> camera ``viewmat``, intrinsics ``K`` and the image size in pixels.

    Attributes:
        viewmat: [4, 4] float64 CPU tensor, world -> camera (OpenCV axes: x right, y down, z forward),
            rigid: its rotation part is orthonormal (within 1e-5) with determinant +1, its last row
            is (0, 0, 0, 1).
        K: [3, 3] float64 CPU tensor ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, pixels, fx, fy > 0.
        width: image width W in pixels, >= 1.
        height: image height H in pixels, >= 1.

    Tensors, numpy arrays and nested sequences are accepted and converted. Construction validates
    everything and raises ``ValueError`` (``TypeError`` for wrong types) naming the argument.
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        self.viewmat = _matrix("viewmat", self.viewmat, (4, 4))
        self.K = _matrix("K", self.K, (3, 3))
        self.width = _positive_int("width", self.width)
        self.height = _positive_int("height", self.height)
        last = self.viewmat[3]
        if float((last - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)).abs().max()) > _LAST_ROW_TOL:
            raise ValueError(f"viewmat's last row must be (0, 0, 0, 1), got {last.tolist()}")
        r = self.viewmat[:3, :3]
        err = float((r @ r.T - torch.eye(3, dtype=torch.float64)).abs().max())
        if err > _ROTATION_TOL:
            raise ValueError(f"viewmat's rotation part must be orthonormal (rigid transform, no scale or shear); "
                             f"|R R^T - I| = {err:.3g}")
        det = float(torch.linalg.det(r))
        if det < 0:
            raise ValueError(f"viewmat's rotation part must have determinant +1 (a right-handed rotation), "
                             f"got {det:.6g}")
        k = self.K
        if float(k[0, 1]) != 0 or float(k[1, 0]) != 0 or k[2].tolist() != [0.0, 0.0, 1.0]:
            raise ValueError(f"K must have the form [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {k.tolist()}")
        if not (float(k[0, 0]) > 0 and float(k[1, 1]) > 0):
            raise ValueError(f"K's focal lengths must be > 0, got fx = {float(k[0, 0])}, fy = {float(k[1, 1])}")

    def __repr__(self) -> str:
        c = self.camera_center.tolist()
        return (f"Camera({self.width}x{self.height}, fx={self.fx:.6g}, fy={self.fy:.6g}, cx={self.cx:.6g}, "
                f"cy={self.cy:.6g}, center=({c[0]:.6g}, {c[1]:.6g}, {c[2]:.6g}))")

    # -- intrinsics and pose ---------------------------------------------------------------------
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def rotation(self) -> torch.Tensor:
        """[3, 3] world -> camera rotation R (rows: the camera's x, y, z axes in world coordinates)."""
        return self.viewmat[:3, :3]

    @property
    def translation(self) -> torch.Tensor:
        """[3] world -> camera translation t."""
        return self.viewmat[:3, 3]

    @property
    def camera_center(self) -> torch.Tensor:
        """[3] the camera position in world coordinates, ``-R^T t``."""
        return -self.rotation.T @ self.translation

    @property
    def fov_x(self) -> float:
        """Horizontal field of view (radians) spanned by the image width, ``atan(cx/fx) + atan((W-cx)/fx)``.

        Equals ``2 atan(W / (2 fx))`` for a centred principal point.
        """
        return math.atan(self.cx / self.fx) + math.atan((self.width - self.cx) / self.fx)

    @property
    def fov_y(self) -> float:
        """Vertical field of view (radians), ``atan(cy/fy) + atan((H-cy)/fy)``."""
        return math.atan(self.cy / self.fy) + math.atan((self.height - self.cy) / self.fy)

    # -- derived cameras, serialisation, projection ---------------------------------------------------
    def resized(self, width: int, height: int) -> "Camera":
        """The same view rendered at another resolution.

        Continuous image coordinates scale with the image edges: fx' = fx W'/W, cx' = cx W'/W,
        fy' = fy H'/H, cy' = cy H'/H, so a point at (u, v) moves to (u W'/W, v H'/H) and pixel centres
        stay at +0.5. The pose is unchanged.

        Raises:
            TypeError / ValueError: ``width`` / ``height`` not ints >= 1.
        """
        width, height = _positive_int("width", width), _positive_int("height", height)
        sx, sy = width / self.width, height / self.height
        k = self.K.clone()
        k[0] *= sx
        k[1] *= sy
        return Camera(self.viewmat.clone(), k, width, height)

    def to_dict(self) -> dict:
        """JSON-friendly dict ``{"viewmat": 4x4 lists, "K": 3x3 lists, "width": W, "height": H}``."""
        return {"viewmat": self.viewmat.tolist(), "K": self.K.tolist(), "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: dict) -> "Camera":
        """Inverse of :meth:`to_dict`.

        Raises:
            TypeError: ``data`` is not a dict.
            ValueError: a key is missing, or the values are invalid (see :class:`Camera`).
        """
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        missing = [k for k in ("viewmat", "K", "width", "height") if k not in data]
        if missing:
            raise ValueError(f"camera dict is missing the keys {missing}")
        return cls(data["viewmat"], data["K"], data["width"], data["height"])

    def world_to_pixels(self, points: torch.Tensor | np.ndarray | Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points to continuous image coordinates.

        Args:
            points: [N, 3] world coordinates (tensor on any device, array or nested sequence).

        Returns:
            (xy [N, 2], depth [N]) float64 tensors on the device of ``points`` (CPU for non-tensors):
            xy = (u, v) in pixels (pixel (i, j) centred at (j + 0.5, i + 0.5)), depth = camera z.
            Points with depth <= 0 are behind the camera; their xy is meaningless (inf at depth 0).

        Raises:
            ValueError: ``points`` is not [N, 3].
        """
        pts = points if isinstance(points, torch.Tensor) else torch.as_tensor(np.asarray(points, dtype=np.float64))
        if pts.dim() != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must have shape [N, 3], got {list(pts.shape)}")
        pts = pts.to(torch.float64)
        r, t, k = (m.to(pts.device) for m in (self.rotation, self.translation, self.K))
        cam = pts @ r.T + t
        depth = cam[:, 2]
        xy = cam[:, :2] / depth[:, None] * torch.stack([k[0, 0], k[1, 1]]) + k[:2, 2]
        return xy, depth


# ----------------------------------------------------------------------------------------------
# Building cameras
# ----------------------------------------------------------------------------------------------


def intrinsic_matrix(width: int, height: int, *, fov_y_deg: float | None = None, fov_x_deg: float | None = None,
                     fx: float | None = None, fy: float | None = None, cx: float | None = None,
                     cy: float | None = None) -> torch.Tensor:
    """3x3 float64 intrinsics for a ``width`` x ``height`` image.

    The focal length comes from exactly one of ``fov_y_deg`` (vertical field of view, degrees, in
    (0, 180)), ``fov_x_deg`` (horizontal) or ``fx`` (pixels); with none of them, ``fov_y_deg = 40``.
    Pixels are square (fy = fx) unless ``fy`` is given together with ``fx``. The principal point
    defaults to the image centre (W / 2, H / 2).

    Raises:
        ValueError: more than one focal specification, ``fy`` without ``fx``, a field of view outside
            (0, 180) degrees, focal lengths <= 0, or bad ``width`` / ``height``.
    """
    width, height = _positive_int("width", width), _positive_int("height", height)
    given = [name for name, v in (("fov_y_deg", fov_y_deg), ("fov_x_deg", fov_x_deg), ("fx", fx)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of fov_y_deg, fov_x_deg and fx, got {given}")
    if fy is not None and fx is None:
        raise ValueError("fy needs fx (with a field of view, pixels are square)")
    for name, fov in (("fov_y_deg", fov_y_deg), ("fov_x_deg", fov_x_deg)):
        if fov is not None and not 0 < fov < 180:
            raise ValueError(f"{name} must be in (0, 180) degrees, got {fov}")
    if fx is not None:
        focal_x, focal_y = float(fx), float(fy if fy is not None else fx)
    elif fov_x_deg is not None:
        focal_x = focal_y = width / 2 / math.tan(math.radians(fov_x_deg) / 2)
    else:
        focal_x = focal_y = height / 2 / math.tan(math.radians(40.0 if fov_y_deg is None else fov_y_deg) / 2)
    if not (focal_x > 0 and focal_y > 0):
        raise ValueError(f"focal lengths must be > 0, got fx = {focal_x}, fy = {focal_y}")
    return torch.tensor([[focal_x, 0.0, width / 2 if cx is None else float(cx)],
                         [0.0, focal_y, height / 2 if cy is None else float(cy)],
                         [0.0, 0.0, 1.0]], dtype=torch.float64)


def look_at(eye, target, up=(0.0, 0.0, 1.0), *, width: int, height: int, fov_y_deg: float | None = None,
            fov_x_deg: float | None = None, fx: float | None = None, fy: float | None = None,
            cx: float | None = None, cy: float | None = None) -> Camera:
    """A camera at ``eye`` looking at ``target``, with ``up`` pointing up in the image.

    The camera's z axis is ``normalize(target - eye)``, its x axis (image right) ``normalize(z x up)``
    and its y axis (image down) ``z x x``, so the image's -y is ``up`` projected onto the image plane.
    The intrinsics come from :func:`intrinsic_matrix` (default: 40 degree vertical field of view,
    centred principal point).

    Args:
        eye, target, up: 3-vectors in world coordinates (sequences, arrays or tensors).
        width, height: image size in pixels.
        fov_y_deg, fov_x_deg, fx, fy, cx, cy: see :func:`intrinsic_matrix`.

    Raises:
        ValueError: ``eye`` == ``target``, ``up`` zero or parallel to the view direction, wrong
            shapes, or bad intrinsics.
    """
    eye = _matrix("eye", eye, (3,))
    target = _matrix("target", target, (3,))
    up = _unit("up", _matrix("up", up, (3,)))
    forward = target - eye
    if not float(torch.linalg.vector_norm(forward)) > 1e-12 * max(1.0, float(torch.linalg.vector_norm(eye))):
        raise ValueError(f"eye and target must differ, both are {eye.tolist()}")
    forward = forward / torch.linalg.vector_norm(forward)
    right = torch.linalg.cross(forward, up)
    if not float(torch.linalg.vector_norm(right)) > 1e-9:
        raise ValueError(f"up {up.tolist()} is parallel to the view direction {forward.tolist()}; choose another up")
    right = right / torch.linalg.vector_norm(right)
    down = torch.linalg.cross(forward, right)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = torch.stack([right, down, forward])
    viewmat[:3, 3] = -viewmat[:3, :3] @ eye
    k = intrinsic_matrix(width, height, fov_y_deg=fov_y_deg, fov_x_deg=fov_x_deg, fx=fx, fy=fy, cx=cx, cy=cy)
    return Camera(viewmat, k, width, height)


def _orbit_basis(up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors spanning the plane orthogonal to ``up`` (azimuth 0 and 90 degrees).

    Azimuth 0 is the world axis least aligned with ``up`` (the first one on ties: +x for up = +z),
    projected onto the plane; azimuth 90 degrees is ``up x e1`` (counter-clockwise seen from above).
    """
    axis = torch.zeros(3, dtype=torch.float64)
    axis[int(torch.argmin(up.abs()))] = 1.0
    e1 = axis - (axis @ up) * up
    e1 = e1 / torch.linalg.vector_norm(e1)
    return e1, torch.linalg.cross(up, e1)


def orbit_cameras(center, radius: float, n: int, *, width: int, height: int, fov_y_deg: float = 40.0,
                  elevation_deg: float = 20.0, up=(0.0, 0.0, 1.0), distance: float | None = None,
                  start_azimuth_deg: float = 0.0, margin: float = 1.1) -> list[Camera]:
    """``n`` cameras on a circle around ``center``, evenly spaced in azimuth, all looking at ``center``.

    Camera k sits at ``center + distance (cos(el) (cos(az) e1 + sin(az) e2) + sin(el) up)`` with
    ``az = start_azimuth + 360 k / n`` degrees, ``el = elevation_deg``, ``e1`` / ``e2`` the azimuth-0 /
    azimuth-90 directions orthogonal to ``up`` (azimuth 0 = the world axis least aligned with ``up``,
    so +x for the default +z up; azimuth grows counter-clockwise seen from above). Square pixels,
    centred principal point.

    Args:
        center: [3] the orbit's centre and the point every camera looks at.
        radius: radius (> 0) of the sphere around ``center`` that must fit in the view.
        n: number of cameras, >= 1.
        width, height: image size in pixels.
        fov_y_deg: vertical field of view, degrees, in (0, 180).
        elevation_deg: angle above the plane orthogonal to ``up``, in (-90, 90) degrees.
        up: world up direction (non-zero; normalised).
        distance: distance from ``center``; if None, the smallest distance at which the sphere of
            ``radius`` fits in the narrower field of view, times ``margin``:
            ``margin * radius / sin(min(fov_x, fov_y) / 2)``.
        start_azimuth_deg: azimuth of the first camera, degrees.
        margin: the framing margin used when ``distance`` is None, >= 1.

    Raises:
        ValueError: ``radius``, ``distance`` or ``n`` not positive, ``margin`` < 1, an elevation of
            +-90 degrees or more, a zero ``up``, or bad image size / field of view.
    """
    n = _positive_int("n", n)
    center = _matrix("center", center, (3,))
    up = _unit("up", _matrix("up", up, (3,)))
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if not -90 < elevation_deg < 90:
        raise ValueError(f"elevation_deg must be in (-90, 90), got {elevation_deg}")
    if not margin >= 1:
        raise ValueError(f"margin must be >= 1, got {margin}")
    k = intrinsic_matrix(width, height, fov_y_deg=fov_y_deg)
    if distance is None:
        half_fov = min(math.atan(width / 2 / float(k[0, 0])), math.atan(height / 2 / float(k[1, 1])))
        distance = margin * radius / math.sin(half_fov)
    elif not distance > 0:
        raise ValueError(f"distance must be > 0, got {distance}")
    e1, e2 = _orbit_basis(up)
    el = math.radians(elevation_deg)
    cameras = []
    for i in range(n):
        az = math.radians(start_azimuth_deg + 360.0 * i / n)
        direction = math.cos(el) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(el) * up
        cameras.append(look_at(center + distance * direction, center, up, width=width, height=height,
                               fx=float(k[0, 0])))
    return cameras


def _auto_up(scene: "GaussianScene", quantile: float) -> torch.Tensor:
    """Unit normal of the scene's dominant plane: the smallest-variance principal axis of the trimmed means.

    Means outside the ``quantile`` bounds (:meth:`GaussianScene.bounds`) are dropped first. The sign
    makes the largest-magnitude component positive (deterministic; the true up may be the opposite).
    """
    lo, hi = scene.bounds(quantile)
    means = scene.means.detach()
    inside = ((means >= lo) & (means <= hi)).all(dim=1)
    pts = means[inside].to(device="cpu", dtype=torch.float64)
    if pts.shape[0] < 3:
        raise ValueError("up='auto' needs at least 3 Gaussians inside the trimmed bounds")
    centred = pts - pts.mean(dim=0)
    _, vecs = torch.linalg.eigh(centred.T @ centred / pts.shape[0])
    normal = vecs[:, 0]
    return normal if float(normal[int(torch.argmax(normal.abs()))]) > 0 else -normal


def orbit_cameras_for_scene(scene: "GaussianScene", n: int, *, width: int, height: int, fov_y_deg: float = 40.0,
                            elevation_deg: float = 20.0, up="auto", quantile: float = 0.01,
                            distance: float | None = None, start_azimuth_deg: float = 0.0,
                            margin: float = 1.1) -> list[Camera]:
    """:func:`orbit_cameras` around ``scene.center_and_radius(quantile)``.

    Args:
        scene: a :class:`~air_core.splat3d.scene.GaussianScene` with at least one Gaussian.
        n, width, height, fov_y_deg, elevation_deg, distance, start_azimuth_deg, margin: see
            :func:`orbit_cameras`.
        up: a world direction, or ``"auto"``: the eigenvector of the smallest eigenvalue of the
            covariance of the means that lie inside the ``quantile``-trimmed bounds, i.e. the normal of
            the plane the scene is flattest along. That suits flat objects (a donut, a table top, a
            scanned ground plane) but can pick a sideways axis for tall, thin scenes; pass an explicit
            ``up`` then. Its sign is chosen so that its largest-magnitude component is positive, which
            is deterministic but may put the scene upside down; the scene file has no up direction.
        quantile: fraction of outlying means ignored per side and axis (floaters), in [0, 0.5).

    Raises:
        ValueError: an empty scene, all (trimmed) means at one point (radius 0), ``up="auto"`` with
            fewer than 3 Gaussians in the trimmed bounds, or the errors of :func:`orbit_cameras`.
    """
    center, radius = scene.center_and_radius(quantile)
    if not radius > 0:
        raise ValueError("the scene's (trimmed) means all lie at one point; cannot frame it")
    if isinstance(up, str):
        if up != "auto":
            raise ValueError(f"up must be 'auto' or a 3-vector, got {up!r}")
        up = _auto_up(scene, quantile)
    return orbit_cameras(center.to(device="cpu", dtype=torch.float64), radius, n, width=width, height=height,
                         fov_y_deg=fov_y_deg, elevation_deg=elevation_deg, up=up, distance=distance,
                         start_azimuth_deg=start_azimuth_deg, margin=margin)


# ----------------------------------------------------------------------------------------------
# Blender
# ----------------------------------------------------------------------------------------------


def camera_from_blender(matrix_world, lens_mm: float, sensor_width_mm: float, sensor_height_mm: float,
                        sensor_fit: str, shift_x: float, shift_y: float, resolution_x: int, resolution_y: int,
                        resolution_percentage: int = 100, pixel_aspect_x: float = 1.0,
                        pixel_aspect_y: float = 1.0) -> Camera:
    """The OpenCV :class:`Camera` of a Blender perspective camera (pure function; no ``bpy``).

    Pass ``camera.matrix_world`` (after ``view_layer.update()``), ``camera.data.lens``,
    ``.sensor_width``, ``.sensor_height``, ``.sensor_fit``, ``.shift_x``, ``.shift_y`` and
    ``scene.render.resolution_x``, ``.resolution_y``, ``.resolution_percentage``, ``.pixel_aspect_x``,
    ``.pixel_aspect_y``.

    Pose: Blender cameras look down local -Z with +Y up. Scale is removed from ``matrix_world`` by
    normalising its three rotation columns; then ``viewmat = diag(1, -1, -1, 1) @ inverse(M)``. A
    sheared or mirrored ``matrix_world`` is rejected by :class:`Camera`'s rigidity check.

    Intrinsics follow Blender's ``BKE_camera_params_compute_viewplane`` (source/blender/blenkernel/
    intern/camera.cc), with ``ycor = pixel_aspect_y / pixel_aspect_x``:

    * image size ``W = resolution_x * resolution_percentage // 100``, ``H`` likewise (integer
      division, as ``BKE_render_resolution``);
    * fit: ``AUTO`` becomes ``HORIZONTAL`` if ``W * pixel_aspect_x >= H * pixel_aspect_y`` else
      ``VERTICAL``; the sensor size is ``sensor_height`` for an explicit ``VERTICAL`` fit and
      ``sensor_width`` otherwise (``AUTO`` applies ``sensor_width`` to the larger side);
    * ``viewfac = W`` for a horizontal fit, ``ycor * H`` for a vertical one: the view plane spans
      ``viewfac`` units of ``sensor / lens`` slope, i.e. the tangent per unit is
      ``s = sensor / (lens * viewfac)``, along x one unit per pixel and along y ``ycor`` units per pixel;
    * the plane spans x in ``[-W/2 + dx, W/2 + dx] * s`` and y in ``[-ycor H/2 + dy, ycor H/2 + dy] * s``
      with the lens shift ``dx = shift_x * viewfac``, ``dy = shift_y * viewfac``.

    Column u (0 at the left edge) therefore sees slope ``X/d = (u - W/2 + dx) s``, row v (0 at the top,
    Blender's y up) sees ``Y/d = (ycor H/2 + dy - ycor v) s``; with OpenCV x = X, y = -Y, z = d:

        fx = lens * viewfac / sensor          cx = W/2 - shift_x * viewfac
        fy = fx / ycor = fx * pixel_aspect_x / pixel_aspect_y
        cy = H/2 + shift_y * viewfac / ycor

    For square pixels and ``AUTO`` fit, ``viewfac = max(W, H)``: fx = fy = lens / sensor_width * max(W, H),
    cx = W/2 - shift_x max(W, H), cy = H/2 + shift_y max(W, H). Wide pixels (``pixel_aspect_x >
    pixel_aspect_y``) cover more angle each, hence fx < fy. Blender's "zoom" (1 for camera renders)
    and orthographic / panoramic cameras are not handled.

    Raises:
        ValueError: ``lens_mm``, a sensor size or a pixel aspect <= 0, a non-finite shift, an unknown
            ``sensor_fit``, a zero-scale ``matrix_world`` column or a last row other than (0, 0, 0, 1), a
            sheared or mirrored pose, a resolution or percentage < 1, or an image size that rounds to
            0 pixels.
        TypeError: a resolution or percentage that is not an int, a parameter that is not a number.
    """
    m = _matrix("matrix_world", matrix_world, (4, 4))
    if m[3].tolist() != [0.0, 0.0, 0.0, 1.0]:
        raise ValueError(f"matrix_world's last row must be (0, 0, 0, 1), got {m[3].tolist()}")
    lens_mm = _finite("lens_mm", lens_mm, positive=True)
    sensor_width_mm = _finite("sensor_width_mm", sensor_width_mm, positive=True)
    sensor_height_mm = _finite("sensor_height_mm", sensor_height_mm, positive=True)
    pixel_aspect_x = _finite("pixel_aspect_x", pixel_aspect_x, positive=True)
    pixel_aspect_y = _finite("pixel_aspect_y", pixel_aspect_y, positive=True)
    shift_x, shift_y = _finite("shift_x", shift_x), _finite("shift_y", shift_y)
    fit = str(sensor_fit).upper()
    if fit not in ("AUTO", "HORIZONTAL", "VERTICAL"):
        raise ValueError(f"sensor_fit must be 'AUTO', 'HORIZONTAL' or 'VERTICAL', got {sensor_fit!r}")
    res_x, res_y = _positive_int("resolution_x", resolution_x), _positive_int("resolution_y", resolution_y)
    pct = _positive_int("resolution_percentage", resolution_percentage)
    width, height = res_x * pct // 100, res_y * pct // 100
    if width < 1 or height < 1:
        raise ValueError(f"resolution {res_x}x{res_y} at {pct} % is {width}x{height} pixels; need at least 1x1")

    rot = m[:3, :3]
    norms = torch.linalg.vector_norm(rot, dim=0)
    if not bool((norms > 1e-12).all()):
        raise ValueError(f"matrix_world has a zero-scale axis (column norms {norms.tolist()})")
    rot = rot / norms
    world_to_blender = torch.eye(4, dtype=torch.float64)
    world_to_blender[:3, :3] = rot.T
    world_to_blender[:3, 3] = -rot.T @ m[:3, 3]
    viewmat = _OPENGL_TO_OPENCV @ world_to_blender

    if fit == "AUTO":
        fit = "HORIZONTAL" if width * pixel_aspect_x >= height * pixel_aspect_y else "VERTICAL"
        sensor = sensor_width_mm
    else:
        sensor = sensor_height_mm if fit == "VERTICAL" else sensor_width_mm
    ycor = pixel_aspect_y / pixel_aspect_x
    viewfac = width if fit == "HORIZONTAL" else ycor * height
    fx = lens_mm * viewfac / sensor
    k = torch.tensor([[fx, 0.0, width / 2 - shift_x * viewfac],
                      [0.0, fx / ycor, height / 2 + shift_y * viewfac / ycor],
                      [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Camera(viewmat, k, width, height)


def blender_view_to_camera(view_matrix, projection_matrix, width: int, height: int) -> Camera:
    """The OpenCV :class:`Camera` of a Blender 3D-viewport view (pure function; no ``bpy``).

    Args:
        view_matrix: [4, 4] ``region_3d.view_matrix`` (world -> view, OpenGL axes: the view looks down
            -Z with +Y up), rigid.
        projection_matrix: [4, 4] OpenGL perspective projection, ``region_3d.window_matrix``. (Not
            ``perspective_matrix``, which is ``window_matrix @ view_matrix``.) Row-major as
            ``numpy.array(matrix)`` gives it.
        width, height: the region's size in pixels (``region.width``, ``region.height``).

    Derivation: with view coordinates (x, y, z), z < 0 in front, a perspective matrix has last row
    (0, 0, -1, 0), so ``ndc_x = P00 x / (-z) - P02`` and ``ndc_y = P11 y / (-z) - P12``. NDC spans
    [-1, 1] with y up; pixels have u = (ndc_x + 1) W / 2 and, y down, v = (1 - ndc_y) H / 2. With
    OpenCV coordinates (x, -y, -z) = (x', y', z'):

        u = (P00 W/2) x'/z' + W/2 (1 - P02)      v = (P11 H/2) y'/z' + H/2 (1 + P12)

    so ``viewmat = diag(1, -1, -1, 1) @ view_matrix``, ``fx = P00 W/2``, ``fy = P11 H/2``,
    ``cx = W/2 (1 - P02)``, ``cy = H/2 (1 + P12)``.

    Raises:
        ValueError: an orthographic projection (``P[3, 3] == 1``; only perspective is supported), a
            matrix whose last row is not (0, 0, -1, 0) or with off-diagonal x/y terms, wrong shapes,
            a non-rigid ``view_matrix``, or a bad image size.
    """
    view = _matrix("view_matrix", view_matrix, (4, 4))
    p = _matrix("projection_matrix", projection_matrix, (4, 4))
    width, height = _positive_int("width", width), _positive_int("height", height)
    if abs(float(p[3, 3]) - 1.0) < 1e-9 and float(p[3, :3].abs().max()) < 1e-9:
        raise ValueError("projection_matrix is orthographic (P[3, 3] == 1); only perspective views are supported")
    if float((p[3] - torch.tensor([0.0, 0.0, -1.0, 0.0], dtype=torch.float64)).abs().max()) > 1e-9:
        raise ValueError(f"projection_matrix is not an OpenGL perspective matrix: its last row must be "
                         f"(0, 0, -1, 0), got {p[3].tolist()}")
    if float(p[0, 1]) != 0 or float(p[1, 0]) != 0 or float(p[0, 3]) != 0 or float(p[1, 3]) != 0:
        raise ValueError("projection_matrix has off-axis x/y terms (P01, P10, P03, P13 must be 0); "
                         f"got {p[:2].tolist()}")
    k = torch.tensor([[float(p[0, 0]) * width / 2, 0.0, width / 2 * (1 - float(p[0, 2]))],
                      [0.0, float(p[1, 1]) * height / 2, height / 2 * (1 + float(p[1, 2]))],
                      [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Camera(_OPENGL_TO_OPENCV @ view, k, width, height)
