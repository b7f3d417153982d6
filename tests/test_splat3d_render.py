"""3DGS renderer: projection, SH colour, depth sort, tile blending vs the dense reference,
image derivatives vs finite differences of sub-pixel-shifted renders, gradients, real scenes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from air_core.splat3d import Camera, GaussianScene, eval_sh, load_ply, look_at, orbit_cameras_for_scene, project, render
from air_core.splat3d.sh import SH_C0, rgb_to_sh_dc, sh_colours

SPLATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "splats"
needs_splats = pytest.mark.skipif(not SPLATS.is_dir(), reason=f"real scenes not found at {SPLATS}")


def random_scene(n: int = 60, degree: int = 3, seed: int = 0, dtype=torch.float64, spread: float = 1.0,
                 sh_scale: float = 0.3) -> GaussianScene:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread
    log_scales = torch.log(0.05 + 0.2 * torch.rand(n, 3, generator=g, dtype=dtype))
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    opacity_logits = torch.randn(n, generator=g, dtype=dtype)
    sh = torch.randn(n, k, 3, generator=g, dtype=dtype) * sh_scale
    return GaussianScene(means=means, log_scales=log_scales, quats=quats, opacity_logits=opacity_logits,
                         sh_coeffs=sh)


def front_camera(width: int = 48, height: int = 40, dtype=torch.float64) -> Camera:
    return look_at((0.3, -0.2, -4.0), (0.0, 0.0, 0.0), (0.0, -1.0, 0.0), width=width, height=height, fov_y_deg=45.0)


def shifted(camera: Camera, dx: float, dy: float) -> Camera:
    """Same camera with the principal point moved by (dx, dy) pixels: the image moves by (dx, dy)."""
    k = camera.K.clone()
    k[0, 2] += dx
    k[1, 2] += dy
    return Camera(viewmat=camera.viewmat, K=k, width=camera.width, height=camera.height)


# ------------------------------------------------------------------------------------------ projection


def test_projection_of_an_isotropic_gaussian_matches_hand_values():
    s, z = 0.1, 5.0
    scene = GaussianScene(means=torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
                          log_scales=torch.full((1, 3), math.log(s), dtype=torch.float64),
                          quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
                          opacity_logits=torch.tensor([2.0], dtype=torch.float64),
                          sh_coeffs=torch.zeros(1, 1, 3, dtype=torch.float64))
    cam = Camera(viewmat=torch.eye(4, dtype=torch.float64),
                 K=torch.tensor([[100.0, 0, 32.0], [0, 120.0, 24.0], [0, 0, 1]], dtype=torch.float64),
                 width=64, height=48)
    p = project(scene, cam)
    assert p.ids.tolist() == [0]
    assert torch.allclose(p.means2d[0], torch.tensor([32.0, 24.0], dtype=torch.float64))
    var_x = (100.0 * s / z) ** 2 + 0.3
    var_y = (120.0 * s / z) ** 2 + 0.3
    assert torch.allclose(p.conics[0], torch.tensor([1 / var_x, 0.0, 1 / var_y], dtype=torch.float64))
    assert torch.allclose(p.depths, torch.tensor([z], dtype=torch.float64))
    assert torch.allclose(p.opacities, torch.sigmoid(torch.tensor([2.0], dtype=torch.float64)))
    assert torch.allclose(p.colours, torch.full((1, 3), 0.5, dtype=torch.float64))


def test_culling_behind_the_camera_outside_the_image_and_depth_order():
    scene = random_scene(4, degree=0)
    scene.means.copy_(torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0], [0.0, 0.0, 1.0], [50.0, 0.0, 2.0]],
                                   dtype=torch.float64))
    cam = Camera(viewmat=torch.eye(4, dtype=torch.float64),
                 K=torch.tensor([[50.0, 0, 16.0], [0, 50.0, 16.0], [0, 0, 1]], dtype=torch.float64),
                 width=32, height=32)
    p = project(scene, cam)
    assert p.ids.tolist() == [2, 0]  # behind the camera and far outside the image culled; sorted by depth
    assert p.depths.tolist() == [1.0, 3.0]
    assert render(scene, cam).num_visible == 2
    near = project(scene, cam, near_plane=2.0)
    assert near.ids.tolist() == [0]


def test_front_gaussian_hides_the_back_one_whatever_the_list_order():
    def two(order):
        means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]], dtype=torch.float64)[order]
        rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)[order]
        return GaussianScene(means=means, log_scales=torch.full((2, 3), math.log(0.5), dtype=torch.float64),
                             quats=torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64),
                             opacity_logits=torch.full((2,), 8.0, dtype=torch.float64),
                             sh_coeffs=rgb_to_sh_dc(rgb)[:, None, :])
    cam = Camera(viewmat=torch.eye(4, dtype=torch.float64),
                 K=torch.tensor([[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]], dtype=torch.float64), width=16, height=16)
    for order in ([0, 1], [1, 0]):
        out = render(two(order), cam)
        centre = out.image[:, 8, 8]
        assert centre[0] > 0.98 and centre[1] < 0.02
        assert abs(float(out.depth[8, 8]) - 2.0) < 0.05
        assert float(out.alpha[8, 8]) > 0.98


def test_sh_evaluation_degree_one_and_view_dependence():
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 2, 0] = 1.0  # the z-linear basis function on the red channel
    d = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(eval_sh(sh, d), torch.tensor([[0.4886025119029199, 0.0, 0.0]], dtype=torch.float64))
    mean = torch.zeros(1, 3, dtype=torch.float64)
    from_below = sh_colours(sh, mean, torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64))  # dir = +z
    from_above = sh_colours(sh, mean, torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))  # dir = -z
    assert from_below[0, 0] > 0.9 and from_above[0, 0] < 0.1
    assert torch.allclose(sh_colours(sh[:, :1], mean, torch.ones(3, dtype=torch.float64)),
                          torch.full((1, 3), 0.5, dtype=torch.float64))
    assert abs(SH_C0 - 0.5 / math.sqrt(math.pi)) < 1e-15
    with pytest.raises(ValueError, match="degree"):
        eval_sh(sh, d, degree=2)


# ------------------------------------------------------------------------------------------ rasterization


@pytest.mark.parametrize("degree", [0, 3])
def test_tile_renderer_matches_the_dense_reference(degree):
    scene = random_scene(80, degree=degree, seed=degree)
    cam = front_camera()
    bg = torch.tensor([0.2, 0.4, 0.1], dtype=torch.float64)
    fast = render(scene, cam, background=bg, backend="cpu")
    dense = render(scene, cam, background=bg, backend="dense")
    assert fast.num_visible > 40
    assert torch.allclose(fast.image, dense.image, atol=1e-10)
    assert torch.allclose(fast.alpha, dense.alpha, atol=1e-10)
    assert torch.allclose(fast.depth, dense.depth, atol=1e-8)
    assert float(fast.alpha.max()) > 0.5


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("background", [(0.0, 0.0, 0.0), (0.3, 0.9, 0.5)])
def test_image_derivatives_match_finite_differences_of_shifted_renders(background):
    scene = random_scene(40, degree=3, seed=3)
    cam = front_camera()
    bg = torch.tensor(background, dtype=torch.float64)
    out = render(scene, cam, background=bg, return_derivatives=True)
    # moving the principal point by +h moves the image content by +h: I_h(p) = I(p - h)
    h = 1e-5

    def img(dx, dy):
        return render(scene, shifted(cam, dx, dy), background=bg).image

    fd_x = -(img(h, 0) - img(-h, 0)) / (2 * h)
    fd_y = -(img(0, h) - img(0, -h)) / (2 * h)
    h2 = 1e-4
    fd_xy = (img(h2, h2) - img(h2, -h2) - img(-h2, h2) + img(-h2, -h2)) / (4 * h2 * h2)
    assert float(fd_x.abs().max()) > 0.01  # the test image has real structure
    assert _rel_err(out.image_dx, fd_x) < 1e-3
    assert _rel_err(out.image_dy, fd_y) < 1e-3
    assert _rel_err(out.image_dxy, fd_xy) < 1e-3


def test_gradients_of_the_scene_parameters_match_finite_differences():
    scene = random_scene(6, degree=1, seed=5, spread=0.6)
    cam = front_camera(16, 14)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    weights = torch.rand(3, 14, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def loss_of(means, log_scales, quats, opacity_logits, sh_coeffs, background):
        s = GaussianScene(means=means, log_scales=log_scales, quats=quats, opacity_logits=opacity_logits,
                          sh_coeffs=sh_coeffs)
        return (render(s, cam, background=background).image * weights).sum()

    inputs = [t.clone().requires_grad_(True) for t in (scene.means, scene.log_scales, scene.quats,
                                                       scene.opacity_logits, scene.sh_coeffs, bg)]
    assert torch.autograd.gradcheck(loss_of, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_bad_arguments():
    scene = random_scene(5, degree=1)
    cam = front_camera()
    with pytest.raises(TypeError, match="scene"):
        render("scene.ply", cam)
    with pytest.raises(TypeError, match="camera"):
        render(scene, torch.eye(4))
    with pytest.raises(ValueError, match="background"):
        render(scene, cam, background=(0.0, 1.0))
    with pytest.raises(ValueError, match="sh_degree"):
        render(scene, cam, sh_degree=2)
    with pytest.raises(ValueError, match="near_plane"):
        render(scene, cam, near_plane=0.0)
    with pytest.raises(ValueError, match="dense"):
        render(scene, cam, backend="dense", return_derivatives=True)


def test_empty_view_renders_the_background():
    scene = random_scene(5, degree=0)
    cam = look_at((0.0, 0.0, 10.0), (0.0, 0.0, 20.0), (0.0, -1.0, 0.0), width=8, height=6, fov_y_deg=30.0)
    out = render(scene, cam, background=(0.25, 0.5, 0.75), return_derivatives=True)
    assert out.num_visible == 0
    assert torch.allclose(out.image, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)[:, None, None].expand(3, 6, 8))
    assert float(out.alpha.abs().max()) == 0.0 and float(out.image_dx.abs().max()) == 0.0


# ------------------------------------------------------------------------------------------ real scenes


@needs_splats
@pytest.mark.parametrize("name", ["v3dg_donut_iter30000_fused.ply", "kacytran1122_try_iter7000.ply",
                                  "loadersgl_tandt_train_1000.ply", "supersplat_pr291_fruit_drops_minimal.ply"])
def test_real_scenes_render_from_orbit_cameras(name):
    scene = load_ply(SPLATS / name)
    cams = orbit_cameras_for_scene(scene, 2, width=96, height=80)
    for cam in cams:
        out = render(scene, cam, return_derivatives=True)
        assert out.image.shape == (3, 80, 96) and out.image_dx.shape == (3, 80, 96)
        assert bool(torch.isfinite(out.image).all()) and bool(torch.isfinite(out.image_dxy).all())
        assert out.num_visible > 0.2 * len(scene)
        # the scene is in view (the tandt file is a sparse 1,000-Gaussian excerpt, hence the low bar)
        assert float(out.alpha.mean()) > 0.02 and float(out.alpha.max()) > 0.9


@needs_splats
def test_real_scene_tiles_match_dense_reference():
    scene = load_ply(SPLATS / "loadersgl_tandt_train_1000.ply").to(dtype=torch.float64)
    cam = orbit_cameras_for_scene(scene, 1, width=40, height=32)[0]
    fast = render(scene, cam, backend="cpu").image
    dense = render(scene, cam, backend="dense").image
    assert torch.allclose(fast, dense, atol=1e-9)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_numba_projection_matches_the_differentiable_path(degree):
    scene = random_scene(300, degree=degree, seed=10 + degree, spread=2.5)
    cam = front_camera(64, 48)
    fast = project(scene, cam, eps2d=0.1)  # no gradient needed: numba path
    grad_scene = GaussianScene(means=scene.means.clone().requires_grad_(True), log_scales=scene.log_scales,
                               quats=scene.quats, opacity_logits=scene.opacity_logits, sh_coeffs=scene.sh_coeffs)
    slow = project(grad_scene, cam, eps2d=0.1)
    assert slow.means2d.requires_grad and not fast.means2d.requires_grad
    assert 50 < len(fast.ids) < 300  # some culled (behind the camera or off screen), most kept
    assert torch.equal(fast.ids, slow.ids)
    for name in ("means2d", "conics", "depths", "colours", "opacities"):
        assert torch.allclose(getattr(fast, name), getattr(slow, name).detach(), rtol=1e-10, atol=1e-12), name
    lower = project(scene, cam, sh_degree=max(0, degree - 1))
    assert torch.allclose(lower.colours, project(grad_scene, cam, sh_degree=max(0, degree - 1)).colours.detach())


@needs_splats
def test_numba_projection_matches_on_a_real_scene():
    scene = load_ply(SPLATS / "supersplat_pr291_fruit_drops_minimal.ply").to(dtype=torch.float64)
    cam = orbit_cameras_for_scene(scene, 3, width=200, height=150)[2]
    fast = project(scene, cam)
    with torch.enable_grad():
        slow = project(GaussianScene(means=scene.means.clone().requires_grad_(True), log_scales=scene.log_scales,
                                     quats=scene.quats, opacity_logits=scene.opacity_logits,
                                     sh_coeffs=scene.sh_coeffs), cam)
    assert torch.equal(fast.ids, slow.ids) and len(fast.ids) > 1000
    assert torch.allclose(fast.conics, slow.conics.detach(), rtol=1e-9)
    assert torch.allclose(fast.colours, slow.colours.detach(), atol=1e-12)


def test_nan_in_the_scene_is_reported_on_both_paths():
    scene = random_scene(10, degree=1)
    scene.log_scales[3, 1] = float("nan")
    cam = front_camera()
    with pytest.raises(ValueError, match="NaN or Inf.*index 3"):
        render(scene, cam)
    with torch.enable_grad():
        grad_scene = GaussianScene(means=scene.means.clone().requires_grad_(True), log_scales=scene.log_scales,
                                   quats=scene.quats, opacity_logits=scene.opacity_logits, sh_coeffs=scene.sh_coeffs)
        with pytest.raises(ValueError, match="NaN or Inf.*index 3"):
            render(grad_scene, cam)


def test_half_precision_scene_and_bad_tile_size():
    scene = random_scene(30, degree=2, seed=4)
    cam = front_camera()
    ref = render(scene, cam).image
    half = render(scene.to(dtype=torch.float16), cam).image
    assert half.dtype == torch.float16
    assert float((half.double() - ref).abs().max()) < 0.02
    with pytest.raises(ValueError, match="tile_size"):
        render(scene, cam, tile_size=(0, 16))
    with pytest.raises(ValueError, match="tile_size"):
        render(scene, cam, tile_size=(16, 16, 1))
