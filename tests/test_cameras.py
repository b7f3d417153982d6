"""Tests of air_core.splat3d.camera: the OpenCV Camera, placement helpers and the Blender conversions (no bpy)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from air_core.splat3d.camera import (
    Camera,
    blender_view_to_camera,
    camera_from_blender,
    intrinsic_matrix,
    look_at,
    orbit_cameras,
    orbit_cameras_for_scene,
)
from air_core.splat3d.scene import GaussianScene, load_ply

DONUT = Path(__file__).parents[2] / "shared" / "data" / "splats" / "v3dg_donut_iter30000_fused.ply"
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL <-> OpenCV camera axes (its own inverse)


def _k(fx=100.0, fy=100.0, cx=50.0, cy=40.0):
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _blender_world(rotation_columns, location, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A Blender matrix_world whose rotation columns are the camera's local X, Y, Z axes in world space."""
    m = np.eye(4)
    m[:3, :3] = np.array(rotation_columns, dtype=np.float64).T * np.array(scale)
    m[:3, 3] = location
    return m


def _rot(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _blender_defaults(**overrides):
    args = dict(matrix_world=np.eye(4), lens_mm=50.0, sensor_width_mm=36.0, sensor_height_mm=24.0,
                sensor_fit="AUTO", shift_x=0.0, shift_y=0.0, resolution_x=1920, resolution_y=1080)
    args.update(overrides)
    return args


def _project(camera: Camera, *points) -> np.ndarray:
    xy, depth = camera.world_to_pixels(np.array(points, dtype=np.float64))
    assert bool((depth > 0).all())
    return xy.numpy()


# ----------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------


def test_camera_properties_and_projection():
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    cam = Camera(viewmat, _k(), 100, 80)
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == (100.0, 100.0, 50.0, 40.0)
    torch.testing.assert_close(cam.camera_center, torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64))
    torch.testing.assert_close(cam.rotation, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(cam.translation, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert cam.fov_x == pytest.approx(2 * math.atan(50 / 100))
    assert cam.fov_y == pytest.approx(2 * math.atan(40 / 100))
    # world (0, 0, 7) -> camera (1, 2, 10) -> (100 * 0.1 + 50, 100 * 0.2 + 40)
    xy, depth = cam.world_to_pixels(np.array([[0.0, 0.0, 7.0]]))
    np.testing.assert_allclose(xy.numpy(), [[60.0, 60.0]])
    np.testing.assert_allclose(depth.numpy(), [10.0])
    assert xy.dtype == torch.float64
    with pytest.raises(ValueError, match="points must have shape \\[N, 3\\]"):
        cam.world_to_pixels(torch.zeros(4, 2))


def test_camera_off_centre_fov():
    cam = Camera(torch.eye(4), _k(cx=0.0), 100, 80)
    assert cam.fov_x == pytest.approx(math.atan(100 / 100))


def test_camera_accepts_numpy_and_float32():
    cam = Camera(np.eye(4, dtype=np.float32), _k().float().numpy(), np.int64(100), 80)
    assert cam.viewmat.dtype == torch.float64 and cam.K.dtype == torch.float64
    assert isinstance(cam.width, int)


def test_camera_validation_errors():
    good_v, good_k = torch.eye(4, dtype=torch.float64), _k()
    scaled = good_v.clone()
    scaled[:3, :3] *= 2
    mirrored = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    bad_row = good_v.clone()
    bad_row[3, 0] = 0.5
    nan_v = good_v.clone()
    nan_v[0, 3] = float("nan")
    skewed = _k()
    skewed[0, 1] = 1.0
    cases = [
        (dict(viewmat=scaled), "orthonormal"),
        (dict(viewmat=mirrored), "determinant \\+1"),
        (dict(viewmat=bad_row), "last row must be \\(0, 0, 0, 1\\)"),
        (dict(viewmat=nan_v), "viewmat contains NaN"),
        (dict(viewmat=torch.eye(3)), "viewmat must have shape \\[4, 4\\]"),
        (dict(K=torch.eye(4)), "K must have shape \\[3, 3\\]"),
        (dict(K=_k(fx=0.0)), "focal lengths must be > 0"),
        (dict(K=_k(fy=-5.0)), "focal lengths must be > 0"),
        (dict(K=skewed), "K must have the form"),
        (dict(width=0), "width must be >= 1"),
    ]
    for override, message in cases:
        args = dict(viewmat=good_v, K=good_k, width=10, height=10)
        args.update(override)
        with pytest.raises(ValueError, match=message):
            Camera(**args)
    with pytest.raises(TypeError, match="height must be an int"):
        Camera(good_v, good_k, 10, 10.0)
    with pytest.raises(TypeError, match="width must be an int"):
        Camera(good_v, good_k, True, 10)


def test_camera_dict_round_trip():
    cam = look_at((1.0, -4.0, 2.0), (0.0, 0.5, 0.0), width=64, height=48, fov_y_deg=50)
    data = json.loads(json.dumps(cam.to_dict()))
    again = Camera.from_dict(data)
    assert torch.equal(again.viewmat, cam.viewmat) and torch.equal(again.K, cam.K)
    assert (again.width, again.height) == (64, 48)
    with pytest.raises(ValueError, match="missing the keys \\['K'\\]"):
        Camera.from_dict({"viewmat": data["viewmat"], "width": 1, "height": 1})
    with pytest.raises(TypeError, match="data must be a dict"):
        Camera.from_dict([1, 2])


def test_resized_scales_projections():
    cam = look_at((3.0, -5.0, 2.0), (0.0, 0.0, 0.0), width=120, height=90, fov_y_deg=45, cx=57.0, cy=48.5)
    points = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xy, depth = cam.world_to_pixels(points)
    small = cam.resized(40, 45)  # anisotropic: 1/3 in x, 1/2 in y
    xy2, depth2 = small.world_to_pixels(points)
    torch.testing.assert_close(xy2, xy * torch.tensor([40 / 120, 45 / 90], dtype=torch.float64))
    torch.testing.assert_close(depth2, depth)
    centred = look_at((3.0, -5.0, 2.0), (0.0, 0.0, 0.0), width=120, height=90).resized(37, 21)
    assert (centred.cx, centred.cy) == (18.5, 10.5)
    assert centred.fov_y == pytest.approx(math.radians(40))  # same view, same vertical field of view
    with pytest.raises(ValueError, match="width must be >= 1"):
        cam.resized(0, 10)


# ----------------------------------------------------------------------------------------------
# look_at, intrinsics, orbits
# ----------------------------------------------------------------------------------------------


def test_look_at_orientation():
    cam = look_at((0.0, -10.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), width=200, height=100, fov_y_deg=60)
    torch.testing.assert_close(cam.camera_center, torch.tensor([0.0, -10.0, 0.0], dtype=torch.float64))
    target, above, right = _project(cam, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0))
    np.testing.assert_allclose(target, [100.0, 50.0], atol=1e-9)
    assert above[1] < 50 and above[0] == pytest.approx(100.0)  # up is the image's upper half
    assert right[0] > 100 and right[1] == pytest.approx(50.0)  # right-handed: +x is on the right seen from -y
    assert cam.fov_y == pytest.approx(math.radians(60))
    assert cam.fx == cam.fy


def test_look_at_general_direction():
    eye, target, up = (2.0, 3.0, -1.0), (-1.0, 0.5, 4.0), (0.3, 1.0, 0.2)
    cam = look_at(eye, target, up, width=64, height=64, fx=80.0)
    np.testing.assert_allclose(_project(cam, target)[0], [32.0, 32.0], atol=1e-9)
    point_up = np.array(target) + 0.5 * np.array(up)
    assert _project(cam, point_up)[0][1] < 32
    torch.testing.assert_close(cam.camera_center, torch.tensor(eye, dtype=torch.float64))


def test_look_at_errors():
    with pytest.raises(ValueError, match="eye and target must differ"):
        look_at((1.0, 2.0, 3.0), (1.0, 2.0, 3.0), width=10, height=10)
    with pytest.raises(ValueError, match="parallel to the view direction"):
        look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), width=10, height=10)
    with pytest.raises(ValueError, match="up must be a non-zero vector"):
        look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), width=10, height=10)
    with pytest.raises(ValueError, match="eye must have shape \\[3\\]"):
        look_at((0.0, 5.0), (0.0, 0.0, 0.0), width=10, height=10)


def test_intrinsic_matrix():
    k = intrinsic_matrix(200, 100, fov_x_deg=90)
    torch.testing.assert_close(k, _k(fx=100.0, fy=100.0, cx=100.0, cy=50.0))
    k = intrinsic_matrix(200, 100)  # default 40 degree vertical field of view
    assert float(k[1, 1]) == pytest.approx(50 / math.tan(math.radians(20)))
    k = intrinsic_matrix(200, 100, fx=120.0, fy=60.0, cx=10.0, cy=20.0)
    torch.testing.assert_close(k, _k(fx=120.0, fy=60.0, cx=10.0, cy=20.0))
    with pytest.raises(ValueError, match="at most one of"):
        intrinsic_matrix(10, 10, fov_y_deg=40, fx=5.0)
    with pytest.raises(ValueError, match="fy needs fx"):
        intrinsic_matrix(10, 10, fy=5.0)
    with pytest.raises(ValueError, match="fov_y_deg must be in \\(0, 180\\)"):
        intrinsic_matrix(10, 10, fov_y_deg=180)
    with pytest.raises(ValueError, match="focal lengths must be > 0"):
        intrinsic_matrix(10, 10, fx=-1.0)


def test_orbit_cameras_geometry():
    center = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    radius, n, w, h = 2.0, 8, 160, 90
    cams = orbit_cameras(center, radius, n, width=w, height=h, fov_y_deg=40, elevation_deg=20)
    assert len(cams) == n
    half_fov = math.radians(20)  # landscape image: the vertical field of view is the narrower one
    expected_distance = 1.1 * radius / math.sin(half_fov)
    offsets = []
    for cam in cams:
        np.testing.assert_allclose(_project(cam, center.tolist())[0], [w / 2, h / 2], atol=1e-9)
        offset = cam.camera_center - center
        assert float(torch.linalg.vector_norm(offset)) == pytest.approx(expected_distance)
        assert float(offset[2]) / expected_distance == pytest.approx(math.sin(math.radians(20)))
        assert _project(cam, (center + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).tolist())[0][1] < h / 2
        offsets.append(offset[:2] / torch.linalg.vector_norm(offset[:2]))
    assert float(offsets[0][0]) == pytest.approx(1.0)  # azimuth 0 on +x for up = +z
    assert float(offsets[2][1]) == pytest.approx(1.0)  # counter-clockwise seen from above
    for a, b in zip(offsets, offsets[1:] + offsets[:1]):
        assert math.degrees(math.acos(float(a @ b))) == pytest.approx(45.0)
    # the whole sphere fits in every view
    gen = torch.Generator().manual_seed(0)
    sphere = torch.nn.functional.normalize(torch.randn(500, 3, generator=gen, dtype=torch.float64), dim=1)
    for cam in cams:
        xy, depth = cam.world_to_pixels(center + radius * sphere)
        assert bool((depth > 0).all())
        assert bool(((xy >= 0) & (xy <= torch.tensor([w, h], dtype=torch.float64))).all())


def test_orbit_cameras_options():
    cams = orbit_cameras((0.0, 0.0, 0.0), 1.0, 3, width=50, height=50, up=(0.0, 1.0, 0.0), distance=7.0,
                         start_azimuth_deg=90.0, elevation_deg=-30.0)
    for cam in cams:
        assert float(torch.linalg.vector_norm(cam.camera_center)) == pytest.approx(7.0)
        assert float(cam.camera_center[1]) == pytest.approx(-7.0 * math.sin(math.radians(30)))
        assert _project(cam, (0.0, 0.5, 0.0))[0][1] < 25  # +y (up) is the upper half
    for kwargs, message in [(dict(radius=0.0), "radius must be > 0"), (dict(n=0), "n must be >= 1"),
                            (dict(elevation_deg=90.0), "elevation_deg must be in \\(-90, 90\\)"),
                            (dict(distance=-1.0), "distance must be > 0"), (dict(margin=0.5), "margin must be >= 1"),
                            (dict(up=(0.0, 0.0, 0.0)), "up must be a non-zero vector")]:
        args = dict(center=(0.0, 0.0, 0.0), radius=1.0, n=2, width=10, height=10)
        args.update(kwargs)
        with pytest.raises(ValueError, match=message):
            orbit_cameras(**args)


def _disc_scene(normal, n=2000, seed=0) -> GaussianScene:
    gen = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.tensor(normal, dtype=torch.float64), dim=0)
    a = torch.nn.functional.normalize(torch.linalg.cross(normal, torch.tensor([0.3, 0.2, 0.9], dtype=torch.float64)),
                                      dim=0)
    b = torch.linalg.cross(normal, a)
    uv = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    thickness = 0.02 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    means = 5.0 + uv[:, :1] * a + uv[:, 1:] * b + thickness * normal
    z = torch.zeros(n, 3)
    return GaussianScene(means.float(), z, torch.ones(n, 4), torch.zeros(n), torch.zeros(n, 1, 3))


def test_orbit_cameras_for_scene_auto_up():
    normal = (0.2, -1.0, 0.3)
    scene = _disc_scene(normal)
    cams = orbit_cameras_for_scene(scene, 4, width=80, height=60)
    center, _ = scene.center_and_radius()
    unit = np.array(normal) / np.linalg.norm(normal)
    sign = -1.0  # the largest-magnitude component (y) is made positive
    for cam in cams:
        np.testing.assert_allclose(_project(cam, center.double().tolist())[0], [40.0, 30.0], atol=1e-6)
        offset = (cam.camera_center - center.double()).numpy()
        elevation = math.degrees(math.asin(float(offset @ (sign * unit)) / np.linalg.norm(offset)))
        assert elevation == pytest.approx(20.0, abs=0.5)
    again = orbit_cameras_for_scene(scene, 4, width=80, height=60)
    assert all(torch.equal(a.viewmat, b.viewmat) for a, b in zip(cams, again))  # deterministic
    explicit = orbit_cameras_for_scene(scene, 2, width=80, height=60, up=(0.0, 0.0, 1.0))
    assert len(explicit) == 2
    with pytest.raises(ValueError, match="up must be 'auto' or a 3-vector"):
        orbit_cameras_for_scene(scene, 2, width=8, height=8, up="z")
    with pytest.raises(ValueError, match="all lie at one point"):
        orbit_cameras_for_scene(scene[[0]], 2, width=8, height=8)


def test_orbit_cameras_for_real_donut():
    if not DONUT.is_file():
        pytest.skip(f"shared splat data not available: {DONUT} is missing")
    scene = load_ply(DONUT)
    cams = orbit_cameras_for_scene(scene, 6, width=128, height=96)
    center, _ = scene.center_and_radius()
    for cam in cams:
        np.testing.assert_allclose(_project(cam, center.double().tolist())[0], [64.0, 48.0], atol=1e-4)
        xy, depth = cam.world_to_pixels(scene.means)
        inside = (depth > 0) & (xy[:, 0] >= 0) & (xy[:, 0] <= 128) & (xy[:, 1] >= 0) & (xy[:, 1] <= 96)
        assert float(inside.double().mean()) > 0.97


# ----------------------------------------------------------------------------------------------
# Blender camera objects
# ----------------------------------------------------------------------------------------------


def test_blender_identity_camera():
    cam = camera_from_blender(**_blender_defaults())
    assert (cam.width, cam.height) == (1920, 1080)
    assert cam.fx == pytest.approx(50 / 36 * 1920) and cam.fy == pytest.approx(cam.fx)
    assert (cam.cx, cam.cy) == (960.0, 540.0)
    np.testing.assert_allclose(_project(cam, (0.0, 0.0, -5.0))[0], [960.0, 540.0])
    up, right = _project(cam, (0.0, 1.0, -5.0), (1.0, 0.0, -5.0))
    assert up[1] == pytest.approx(540 - cam.fy / 5)  # Blender +Y is up in the image
    assert right[0] == pytest.approx(960 + cam.fx / 5)


def test_blender_sensor_fit():
    portrait = dict(resolution_x=1080, resolution_y=1920)
    cam = camera_from_blender(**_blender_defaults(sensor_fit="VERTICAL", **portrait))
    assert cam.fy == pytest.approx(50 / 24 * 1920) and cam.fx == pytest.approx(cam.fy)
    assert (cam.cx, cam.cy) == (540.0, 960.0)
    assert cam.fov_y == pytest.approx(2 * math.atan(12 / 50))  # sensor height over the image height
    cam = camera_from_blender(**_blender_defaults(sensor_fit="AUTO", **portrait))  # sensor width on the long side
    assert cam.fy == pytest.approx(50 / 36 * 1920)
    cam = camera_from_blender(**_blender_defaults(sensor_fit="HORIZONTAL", **portrait))
    assert cam.fx == pytest.approx(50 / 36 * 1080)
    assert cam.fov_x == pytest.approx(2 * math.atan(18 / 50))
    cam = camera_from_blender(**_blender_defaults(sensor_fit="VERTICAL"))  # landscape, vertical fit
    assert cam.fy == pytest.approx(50 / 24 * 1080)


def test_blender_shift():
    cam = camera_from_blender(**_blender_defaults(shift_x=0.1, shift_y=0.1))
    assert cam.cx == pytest.approx(960 - 192) and cam.cy == pytest.approx(540 + 192)
    # the optical axis now lands left of and below the centre (the view moved right and up)
    np.testing.assert_allclose(_project(cam, (0.0, 0.0, -5.0))[0], [768.0, 732.0])
    portrait = camera_from_blender(**_blender_defaults(shift_x=-0.25, resolution_x=1080, resolution_y=1920))
    assert portrait.cx == pytest.approx(540 + 0.25 * 1920)  # in units of the larger side
    # a shift of 0.5 moves the image by half the (horizontal-fit) sensor: the point at the old left edge is centred
    cam = camera_from_blender(**_blender_defaults(shift_x=-0.5))
    x_edge = -5.0 * 18 / 50
    assert _project(cam, (x_edge, 0.0, -5.0))[0][0] == pytest.approx(960.0)


def test_blender_resolution_percentage():
    full = camera_from_blender(**_blender_defaults(shift_x=0.05))
    half = camera_from_blender(**_blender_defaults(shift_x=0.05, resolution_percentage=50))
    assert (half.width, half.height) == (960, 540)
    torch.testing.assert_close(half.K[:2], full.K[:2] / 2)
    odd = camera_from_blender(**_blender_defaults(resolution_percentage=37))
    assert (odd.width, odd.height) == (710, 399)  # integer division, like Blender


def test_blender_pixel_aspect():
    wide = camera_from_blender(**_blender_defaults(pixel_aspect_x=2.0, shift_y=0.1))
    assert wide.fx == pytest.approx(50 / 36 * 1920) and wide.fy == pytest.approx(2 * wide.fx)
    assert wide.cy == pytest.approx(540 + 0.1 * 1920 * 2)
    # tall pixels flip the AUTO fit: 1000 * 1 < 800 * 2 -> vertical fit, viewfac = ycor * H = 2 * 800
    tall = camera_from_blender(**_blender_defaults(pixel_aspect_y=2.0, resolution_x=1000, resolution_y=800,
                                                   shift_x=0.1))
    assert tall.fx == pytest.approx(50 * 1600 / 36) and tall.fy == pytest.approx(tall.fx / 2)
    assert tall.cx == pytest.approx(500 - 0.1 * 1600)
    # physical check: the image's physical aspect is W * pixel_aspect_x : H * pixel_aspect_y, so the
    # tangents spanned by the image are in that ratio
    span = lambda cam: (cam.width / cam.fx, cam.height / cam.fy)  # noqa: E731
    sx, sy = span(wide)
    assert sx / sy == pytest.approx(1920 * 2.0 / 1080)
    sx, sy = span(tall)
    assert sx / sy == pytest.approx(1000 / (800 * 2.0))


def test_blender_camera_on_x_axis():
    # camera at +10 X looking at the origin, Blender up +Z: local -Z = world -X, local +Y = world +Z
    m = _blender_world([(0, 1, 0), (0, 0, 1), (1, 0, 0)], (10.0, 0.0, 0.0))
    cam = camera_from_blender(**_blender_defaults(matrix_world=m))
    torch.testing.assert_close(cam.camera_center, torch.tensor([10.0, 0.0, 0.0], dtype=torch.float64))
    origin, top, side = _project(cam, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0))
    np.testing.assert_allclose(origin, [960.0, 540.0], atol=1e-9)
    assert top[1] < 540
    assert side[0] > 960  # looking down -X with +Z up, world +Y is on the right


def test_blender_scaled_matrix_world_is_rigid():
    rot = _rot((0.3, -0.5, 0.8), 1.2)
    location = (1.0, -2.0, 3.0)
    plain = camera_from_blender(**_blender_defaults(matrix_world=_blender_world(rot.T, location)))
    scaled = camera_from_blender(**_blender_defaults(matrix_world=_blender_world(rot.T, location, (2.0, 0.3, 5.0))))
    r = scaled.rotation
    torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(scaled.viewmat, plain.viewmat)
    torch.testing.assert_close(scaled.camera_center, torch.tensor(location, dtype=torch.float64))


def test_blender_errors():
    shear = np.eye(4)
    shear[0, 1] = 0.5
    mirrored = np.diag([1.0, 1.0, -1.0, 1.0])
    projective = np.eye(4)
    projective[3, 2] = 0.1
    for overrides, message in [
        (dict(sensor_fit="DIAGONAL"), "sensor_fit must be"),
        (dict(lens_mm=0.0), "lens_mm must be a finite number > 0"),
        (dict(sensor_width_mm=-36.0), "sensor_width_mm must be"),
        (dict(pixel_aspect_y=0.0), "pixel_aspect_y must be"),
        (dict(shift_x=float("nan")), "shift_x must be a finite number"),
        (dict(resolution_x=0), "resolution_x must be >= 1"),
        (dict(resolution_x=1, resolution_percentage=50), "need at least 1x1"),
        (dict(matrix_world=shear), "orthonormal"),
        (dict(matrix_world=mirrored), "determinant \\+1"),
        (dict(matrix_world=projective), "last row must be \\(0, 0, 0, 1\\)"),
        (dict(matrix_world=np.diag([1.0, 0.0, 1.0, 1.0])), "zero-scale axis"),
        (dict(matrix_world=np.eye(3)), "matrix_world must have shape \\[4, 4\\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            camera_from_blender(**_blender_defaults(**overrides))


# ----------------------------------------------------------------------------------------------
# Blender viewport (OpenGL view and projection matrices)
# ----------------------------------------------------------------------------------------------


def _frustum(left, right, bottom, top, near, far) -> np.ndarray:
    """OpenGL glFrustum matrix."""
    return np.array([
        [2 * near / (right - left), 0, (right + left) / (right - left), 0],
        [0, 2 * near / (top - bottom), (top + bottom) / (top - bottom), 0],
        [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
        [0, 0, -1, 0],
    ])


def _opengl_pixels(view, proj, points, width, height) -> np.ndarray:
    """The OpenGL pipeline: clip = P V p, NDC = clip / w, window x = (ndc_x + 1) W / 2, y down = (1 - ndc_y) H / 2."""
    hom = np.concatenate([points, np.ones((len(points), 1))], 1)
    clip = hom @ (proj @ view).T
    ndc = clip[:, :3] / clip[:, 3:]
    return np.stack([(ndc[:, 0] + 1) * width / 2, (1 - ndc[:, 1]) * height / 2], 1)


def test_viewport_projection_matches_opengl():
    width, height = 300, 200
    proj = _frustum(-0.4, 0.6, -0.25, 0.35, 0.5, 100.0)  # asymmetric (off-centre) frustum
    opencv = look_at((4.0, -3.0, 2.0), (0.0, 0.0, 0.5), (0.0, 0.0, 1.0), width=width, height=height)
    view = FLIP @ opencv.viewmat.numpy()  # the same pose in OpenGL axes
    cam = blender_view_to_camera(view, proj, width, height)
    points = np.random.default_rng(0).normal(size=(50, 3))
    xy, depth = cam.world_to_pixels(points)
    assert bool((depth > 0).all())
    np.testing.assert_allclose(xy.numpy(), _opengl_pixels(view, proj, points, width, height), atol=1e-8)
    torch.testing.assert_close(cam.viewmat, opencv.viewmat)
    # the frustum's corners at the near plane land on the image corners
    corners_view = np.array([[-0.4, 0.35, -0.5, 1.0], [0.6, -0.25, -0.5, 1.0]])  # top-left, bottom-right
    corners_world = (np.linalg.inv(view) @ corners_view.T).T[:, :3]
    np.testing.assert_allclose(cam.world_to_pixels(corners_world)[0].numpy(), [[0.0, 0.0], [300.0, 200.0]],
                               atol=1e-9)


def test_viewport_round_trip_with_blender_camera():
    rot = _rot((1.0, 2.0, 0.5), 2.0)
    matrix_world = _blender_world(rot.T, (0.5, -6.0, 2.0))
    cam = camera_from_blender(**_blender_defaults(matrix_world=matrix_world, shift_x=0.12, shift_y=-0.07,
                                                  pixel_aspect_x=1.5))
    w, h = cam.width, cam.height
    # the OpenGL projection of this camera (what Blender's viewport shows in camera view)
    proj = np.zeros((4, 4))
    proj[0, 0], proj[0, 2] = 2 * cam.fx / w, 1 - 2 * cam.cx / w
    proj[1, 1], proj[1, 2] = 2 * cam.fy / h, 2 * cam.cy / h - 1
    proj[2, 2], proj[2, 3], proj[3, 2] = -1.001, -0.2, -1.0
    view = np.linalg.inv(matrix_world)  # region_3d.view_matrix: world -> view, OpenGL axes
    again = blender_view_to_camera(view, proj, w, h)
    torch.testing.assert_close(again.K, cam.K)
    torch.testing.assert_close(again.viewmat, cam.viewmat)
    points = np.random.default_rng(1).normal(size=(10, 3))
    np.testing.assert_allclose(again.world_to_pixels(points)[0].numpy(), _opengl_pixels(view, proj, points, w, h),
                               atol=1e-7)


def test_viewport_errors():
    ortho = np.diag([0.2, 0.3, -0.01, 1.0])
    ortho[2, 3] = -1.0
    with pytest.raises(ValueError, match="orthographic.*only perspective"):
        blender_view_to_camera(np.eye(4), ortho, 100, 100)
    weird = _frustum(-1, 1, -1, 1, 1, 10)
    weird[3, 2] = -2.0
    with pytest.raises(ValueError, match="last row must be \\(0, 0, -1, 0\\)"):
        blender_view_to_camera(np.eye(4), weird, 100, 100)
    skew = _frustum(-1, 1, -1, 1, 1, 10)
    skew[0, 1] = 0.1
    with pytest.raises(ValueError, match="off-axis x/y terms"):
        blender_view_to_camera(np.eye(4), skew, 100, 100)
    scaled_view = np.diag([2.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="orthonormal"):
        blender_view_to_camera(scaled_view, _frustum(-1, 1, -1, 1, 1, 10), 100, 100)
    with pytest.raises(ValueError, match="projection_matrix must have shape \\[4, 4\\]"):
        blender_view_to_camera(np.eye(4), np.eye(3), 100, 100)
