"""The Blender add-on, driven through bpy (Blender as a Python module, no display).

Renders are compared with air_core's own render of the same camera (``camera_from_blender``); the
upscaled renders with the full-resolution render (bounds measured on these scenes at 160x120).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import mathutils  # noqa: E402  (ships with bpy)
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import blender_addon  # noqa: E402
from blender_addon import splat_math, store  # noqa: E402

from air_core.splat3d import GaussianScene, camera_from_blender, load_ply, render  # noqa: E402

pytestmark = pytest.mark.blender

DATA = ROOT.parent / "shared" / "data" / "splats"
DONUT = DATA / "v3dg_donut_iter30000_fused.ply"
TANDT = DATA / "loadersgl_tandt_train_1000.ply"
FRUIT = DATA / "supersplat_pr291_fruit_drops_minimal.ply"
W, H = 160, 120


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.name} is not available")
    return path


@pytest.fixture(scope="module", autouse=True)
def addon():
    blender_addon.register()
    yield
    blender_addon.unregister()


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    store.clear_caches()
    yield


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def import_splat(path: Path):
    assert bpy.ops.import_scene.air_splat_ply(filepath=str(path)) == {"FINISHED"}
    return bpy.context.view_layer.objects.active


def add_camera(obj, distance: float = 2.6, elevation: float = 0.35, lens: float = 35.0):
    """A perspective camera looking at the object's (trimmed) centre, and the scene at W x H."""
    centre, radius = store.scene_of(obj).center_and_radius()
    centre = obj.matrix_world @ mathutils.Vector(centre.tolist())
    radius *= obj.matrix_world.to_scale()[0]
    data = bpy.data.cameras.new("Cam")
    data.lens = lens
    cam = bpy.data.objects.new("Cam", data)
    bpy.context.scene.collection.objects.link(cam)
    eye = centre + mathutils.Vector((0.0, -distance * radius, elevation * distance * radius))
    cam.location = eye
    cam.rotation_euler = (centre - eye).to_track_quat("-Z", "Y").to_euler()
    scene = bpy.context.scene
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = W, H, 100
    bpy.context.view_layer.update()
    return cam


def core_camera(cam, matrix_world=None):
    r = bpy.context.scene.render
    d = cam.data
    m = np.array(cam.matrix_world if matrix_world is None else matrix_world, dtype=np.float64)
    return camera_from_blender(m, d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y,
                               r.resolution_x, r.resolution_y, r.resolution_percentage)


def render_op(scale: str = "1") -> np.ndarray:
    """Run the render operator; the image "AIR Render" as a top-down [H, W, 4] array."""
    assert bpy.ops.air.render_splats(scale=scale) == {"FINISHED"}
    image = bpy.data.images["AIR Render"]
    w, h = image.size
    pixels = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(h, w, 4)[::-1]


def core_rgba(scene: GaussianScene, camera, background=(0.0, 0.0, 0.0), transparent=False) -> np.ndarray:
    """air_core's render as [H, W, 4], clamped to [0, 1]; premultiplied colours clamped to alpha."""
    out = render(scene, camera, background=torch.tensor(background))
    rgb = out.image.clamp(0, 1).permute(1, 2, 0).numpy()
    alpha = out.alpha.clamp(0, 1).numpy()[..., None]
    return np.concatenate([np.minimum(rgb, alpha) if transparent else rgb, alpha], axis=2)


def expect_error(match: str, call):
    with pytest.raises(RuntimeError, match=match) as info:
        call()
    assert "Traceback" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------------------------


def test_register_unregister_and_menus():
    assert hasattr(bpy.types, "VIEW3D_PT_air_splats")
    assert bpy.types.VIEW3D_PT_air_splats.bl_category == "AIR"
    for op in ("import_scene.air_splat_ply", "export_scene.air_splat_ply", "air.render_splats",
               "air.check_dependencies", "air.toggle_preview"):
        group, name = op.split(".")
        assert hasattr(getattr(bpy.ops, group), name)
        assert getattr(getattr(bpy.ops, group), name).get_rna_type() is not None
    blender_addon.unregister()
    assert not hasattr(bpy.types, "VIEW3D_PT_air_splats")
    assert not hasattr(bpy.types.Scene, "air_splat")
    blender_addon.register()
    assert bpy.context.scene.air_splat.render_scale == "1"
    # without the preferences system the check still runs and reports what it found
    assert bpy.ops.air.check_dependencies() == {"FINISHED"}


def test_enable_as_legacy_addon_with_preferences():
    import addon_utils

    blender_addon.unregister()
    try:
        addon_utils.enable("blender_addon", default_set=True, handle_error=None)
        prefs = bpy.context.preferences.addons["blender_addon"].preferences
        assert prefs.device == "AUTO" and prefs.source == "ENVIRONMENT"
        assert bpy.ops.air.check_dependencies() == {"FINISHED"}
        assert prefs.last_check.startswith("OK: torch")
        prefs.source, prefs.site_packages = "FOLDER", str(ROOT / "no such folder")
        expect_error("does not exist", bpy.ops.air.check_dependencies)
    finally:
        addon_utils.disable("blender_addon", default_set=True)
        blender_addon.register()


def test_loads_and_reports_without_air_core(tmp_path):
    """With torch and air_core unimportable the add-on still registers and says what is missing."""
    code = ("import sys; sys.path.insert(0, %r); sys.modules['air_core'] = None; sys.modules['torch'] = None\n"
            "import bpy, blender_addon\n"
            "blender_addon.register()\n"
            "from blender_addon import deps; assert not deps.available()\n"
            "try:\n"
            "    bpy.ops.import_scene.air_splat_ply(filepath=%r)\n"
            "except RuntimeError as e:\n"
            "    print('REPORTED', e)\n"
            "blender_addon.unregister()\n") % (str(ROOT), str(tmp_path / "x.ply"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "REPORTED" in res.stdout and "air_core cannot be imported" in res.stdout
    assert "Preferences" in res.stdout and "Traceback" not in res.stdout


def test_site_packages_folder_processes_pth_files(tmp_path):
    """The preferences' site-packages folder is added like Python's site module adds one: a package that
    a .pth file points to (an editable `pip install -e` install) imports, and the folder goes first."""
    site_dir, src = tmp_path / "site-packages", tmp_path / "src"
    (src / "pth_only_pkg").mkdir(parents=True)
    (src / "pth_only_pkg" / "__init__.py").write_text("VALUE = 7\n")
    site_dir.mkdir()
    (site_dir / "dev.pth").write_text(str(src) + "\n")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from blender_addon import deps\n"
            "assert deps.add_search_path(%r) is None\n"
            "import pth_only_pkg; assert pth_only_pkg.VALUE == 7\n"
            "assert sys.path.index(%r) < sys.path.index(%r)\n"
            "assert 'does not exist' in deps.add_search_path(%r)\n"
            "print('OK')\n") % (str(ROOT), str(site_dir), str(site_dir), str(ROOT), str(tmp_path / "missing"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.ply")) if DATA.is_dir() else ["missing"])
def test_import_real_scenes(name):
    path = need(DATA / name)
    obj = import_splat(path)
    scene = load_ply(path)
    assert len(obj.data.vertices) == len(scene) == obj[store.COUNT_KEY]
    assert obj[store.PATH_KEY] == str(path)
    co = np.empty(len(scene) * 3, dtype=np.float32)
    obj.data.vertices.foreach_get("co", co)
    np.testing.assert_allclose(co.reshape(-1, 3), scene.means.numpy(), rtol=1e-6, atol=1e-6)
    # the cache survives a reload from the file (e.g. after opening a .blend file)
    store.clear_caches()
    assert len(store.scene_of(obj)) == len(scene)


def test_render_matches_core_and_upscaled_psnr():
    """The donut (45,624 Gaussians): full resolution equals air_core; 1/2 and 1/4 stay close to it."""
    obj = import_splat(need(DONUT))
    cam = add_camera(obj)
    bpy.context.scene.world = bpy.data.worlds.new("W")
    bpy.context.scene.world.color = (0.0, 0.0, 0.0)
    full = render_op("1")
    assert full.shape == (H, W, 4)
    expected = core_rgba(load_ply(DONUT), core_camera(cam))
    assert expected[..., 3].mean() > 0.1  # the donut fills a good part of the frame
    full_psnr = psnr(full[..., :3], expected[..., :3])
    assert full_psnr >= 40, full_psnr
    assert np.all(full[..., 3] == 1.0)
    half, quarter = render_op("2"), render_op("4")
    assert half.shape == quarter.shape == (H, W, 4)
    p2, p4 = psnr(half[..., :3], full[..., :3]), psnr(quarter[..., :3], full[..., :3])
    print(f"donut {W}x{H}: full vs air_core {full_psnr:.1f} dB, x2 {p2:.1f} dB, x4 {p4:.1f} dB")
    assert p2 >= 32.0 and p4 >= 24.0 and p2 > p4 + 3


def test_world_background_and_transparent_film():
    obj = import_splat(need(FRUIT))
    cam = add_camera(obj)
    scene = bpy.context.scene
    scene.world = bpy.data.worlds.new("W")
    scene.world.color = (0.2, 0.5, 0.05)  # scene-linear
    bg = splat_math.linear_to_srgb(scene.world.color)
    expected = core_rgba(load_ply(FRUIT), core_camera(cam), background=bg)
    assert psnr(render_op("1")[..., :3], expected[..., :3]) >= 40
    scene.render.film_transparent = True
    rgba = render_op("1")
    assert bpy.data.images["AIR Render"].alpha_mode == "PREMUL"
    black = core_rgba(load_ply(FRUIT), core_camera(cam), transparent=True)
    assert psnr(rgba, black) >= 40  # premultiplied colour and the same alpha
    up = render_op("2")
    print(f"fruit: transparent {psnr(rgba, black):.1f} dB, x2 alpha {psnr(up[..., 3], black[..., 3]):.1f} dB")
    assert psnr(up[..., 3], black[..., 3]) >= 40
    assert np.all(up[..., :3] <= up[..., 3:] + 1e-6)


def test_object_transform_moves_the_render():
    obj = import_splat(need(TANDT))
    cam = add_camera(obj, distance=2.0)
    bpy.context.scene.render.film_transparent = True
    raw = load_ply(TANDT)

    def centroid(alpha):
        ys, xs = np.mgrid[:alpha.shape[0], :alpha.shape[1]]
        return np.array([(alpha * xs).sum(), (alpha * ys).sum()]) / alpha.sum()

    before = centroid(render_op()[..., 3])
    right = cam.matrix_world.to_3x3() @ mathutils.Vector((1.0, 0.0, 0.0))
    radius = store.scene_of(obj).center_and_radius()[1]
    obj.location = obj.location + right * (0.3 * radius)
    bpy.context.view_layer.update()
    after = centroid(render_op()[..., 3])
    assert after[0] > before[0] + 5 and abs(after[1] - before[1]) < 0.5 * (after[0] - before[0])

    # rotation + uniform scale: equal to the untouched scene seen from the inversely moved camera;
    # SH degree 3, so this also checks the rotated spherical harmonics
    obj.rotation_euler = (0.4, -0.3, 1.1)
    obj.scale = (1.3, 1.3, 1.3)
    bpy.context.view_layer.update()
    got = render_op()
    m = np.array(obj.matrix_world, dtype=np.float64)
    s = np.linalg.norm(m[:3, 0])
    local_cam = np.linalg.inv(m) @ np.array(cam.matrix_world, dtype=np.float64)
    local_cam[:3, 3] *= s  # the camera in the object's frame, with the scale folded into the scene
    scaled = GaussianScene(raw.means * s, raw.log_scales + math.log(s), raw.quats, raw.opacity_logits,
                           raw.sh_coeffs)
    expected = core_rgba(scaled, core_camera(cam, local_cam), transparent=True)
    assert expected[..., 3].mean() > 0.02
    assert psnr(got, expected) >= 40
    fg = expected[..., 3] > 0.05  # compare where there are splats (most of the frame is empty)
    p_fg = psnr(got[fg], expected[fg])
    print(f"rotated tandt: PSNR {psnr(got, expected):.1f} dB, on the splats {p_fg:.1f} dB, "
          f"max error {np.abs(got - expected).max():.2g}")
    assert p_fg >= 60

def test_transform_scene_rotates_spherical_harmonics():
    """Pure maths: a moved scene seen from a world camera has the colours of the file seen from the
    camera's position in the object's frame (SH degree 3), and the moved covariances."""
    from air_core.splat3d import sh_colours

    raw = load_ply(need(TANDT)).to(dtype=torch.float64)
    rot = np.array(mathutils.Euler((0.4, -0.3, 1.1)).to_matrix(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = 1.3 * rot, (0.3, -1.0, 2.0)
    moved = splat_math.transform_scene(raw, m)
    cam_world = np.array([5.0, -3.0, 4.0])
    cam_local = rot.T @ (cam_world - m[:3, 3]) / 1.3
    a = sh_colours(moved.sh_coeffs, moved.means, torch.as_tensor(cam_world))
    b = sh_colours(raw.sh_coeffs, raw.means, torch.as_tensor(cam_local))
    assert float((a - b).abs().max()) < 1e-6
    assert float((a - sh_colours(raw.sh_coeffs[:, :1], raw.means, torch.as_tensor(cam_local))).abs().max()) > 1e-3
    a_m = torch.as_tensor(m[:3, :3])
    torch.testing.assert_close(moved.covariances(), a_m @ raw.covariances() @ a_m.T)
    with pytest.raises(ValueError, match="non-uniform"):
        splat_math.transform_scene(raw, np.diag([1.0, 2.0, 1.0, 1.0]))


def test_two_objects_are_depth_sorted_together():
    obj = import_splat(need(FRUIT))
    cam = add_camera(obj, distance=3.0)
    bpy.context.scene.render.film_transparent = True
    twin = obj.copy()  # shares the splat id: one cached scene, two instances
    bpy.context.scene.collection.objects.link(twin)
    radius = store.scene_of(obj).center_and_radius()[1]
    shift = np.array([0.5 * radius, 0.4 * radius, 0.0])
    twin.location = mathutils.Vector(shift.tolist())
    bpy.context.view_layer.update()
    got = render_op()
    raw = load_ply(FRUIT)
    shifted = torch.as_tensor(shift, dtype=torch.float32)
    both = GaussianScene(torch.cat([raw.means, raw.means + shifted]), torch.cat([raw.log_scales] * 2),
                         torch.cat([raw.quats] * 2), torch.cat([raw.opacity_logits] * 2),
                         torch.cat([raw.sh_coeffs] * 2))
    assert psnr(got, core_rgba(both, core_camera(cam), transparent=True)) >= 40
    twin.hide_render = True
    assert psnr(render_op(), core_rgba(raw, core_camera(cam), transparent=True)) >= 40


def test_viewport_preview_maths_matches_camera_render():
    """The preview's pure function, fed the camera's view and projection matrices, equals the render."""
    obj = import_splat(need(FRUIT))
    cam = add_camera(obj)
    bpy.context.scene.render.film_transparent = True
    depsgraph = bpy.context.evaluated_depsgraph_get()
    window = cam.calc_matrix_camera(depsgraph, x=W, y=H)
    view = cam.matrix_world.inverted()
    scene = store.world_scene([obj], torch.device("cpu"))
    preview_full = splat_math.view_rgba(scene, view, window, W, H, 1)
    assert psnr(preview_full, render_op("1")) >= 40
    preview_quarter = splat_math.view_rgba(scene, view, window, W, H, 4)
    print(f"preview: full vs render {psnr(preview_full, render_op('1')):.1f} dB, "
          f"x4 vs full {psnr(preview_quarter, preview_full):.1f} dB")
    assert preview_quarter.shape == (H, W, 4) and psnr(preview_quarter, preview_full) >= 30
    key = splat_math.view_key(view, window, W, H, [(obj[store.ID_KEY], obj.matrix_world)])
    assert key == splat_math.view_key(view.copy(), window, W, H, [(obj[store.ID_KEY], obj.matrix_world)])
    obj.location.x += 0.1
    bpy.context.view_layer.update()
    assert key != splat_math.view_key(view, window, W, H, [(obj[store.ID_KEY], obj.matrix_world)])
    ortho = mathutils.Matrix.OrthoProjection("XY", 4)
    with pytest.raises(ValueError, match="only perspective"):
        splat_math.view_rgba(scene, view, ortho, W, H, 1)
    # the toggle installs and removes the draw handler (drawing itself needs a window)
    assert bpy.ops.air.toggle_preview() == {"FINISHED"}
    from blender_addon import preview

    assert preview.is_enabled() and bpy.app.timers.is_registered(preview._poll)  # the worker's poll
    assert bpy.ops.air.toggle_preview() == {"FINISHED"}
    assert not preview.is_enabled() and not bpy.app.timers.is_registered(preview._poll)

    # the preview renders in a worker thread: the same image as view_rgba
    renderer = preview.PreviewRenderer()
    renderer.request("k", scene, view, window, W, H, 4)
    renderer.wait()
    key, rgba, error = renderer.poll()
    assert (key, error) == ("k", None) and np.array_equal(rgba, preview_quarter)
    assert renderer.poll() is None and not renderer.busy


def test_preview_renderer_keeps_only_the_newest_view():
    """Views requested while a render runs replace each other: the newest is rendered next, the ones in
    between never; a failing render is reported through poll, and the worker goes on."""
    import threading

    from blender_addon import preview

    started, release = [], threading.Event()

    def fake_render(scene, view, window, width, height, scale):
        started.append(scene)
        if scene == "bad":
            raise ValueError("only perspective views are supported")
        release.wait(10)
        return np.full((height, width, 4), float(len(started)), np.float32)

    renderer = preview.PreviewRenderer(render=fake_render)
    eye = np.eye(4)
    renderer.request("a", "a", eye, eye, 3, 2, 4)
    renderer.request("b", "b", eye, eye, 3, 2, 4)
    renderer.request("c", "c", eye, eye, 3, 2, 4)
    assert renderer.busy and renderer.requested_key == "c" and renderer.poll() is None
    release.set()  # "a" finishes, then "c" (not "b") renders; "c" supersedes the uncollected "a"
    renderer.wait()
    key, rgba, error = renderer.poll()
    assert key == "c" and error is None and rgba.shape == (2, 3, 4) and float(rgba[0, 0, 0]) == 2.0
    assert started == ["a", "c"] and renderer.poll() is None
    renderer.request("x", "bad", eye, eye, 3, 2, 4)
    renderer.wait()
    key, rgba, error = renderer.poll()
    assert key == "x" and rgba is None and "only perspective" in error
    renderer.request("d", "d", eye, eye, 3, 2, 4)
    renderer.wait()
    assert renderer.poll()[0] == "d"


def test_banded_render_equals_one_band():
    """Pure maths: the render done in bands of 7 rows (a short last band) equals the one-band render,
    at full resolution and 1/2 upscaled, opaque and transparent; the callback sees every band."""
    from air_core.splat3d import orbit_cameras_for_scene
    from air_core.upscale import render_upscaled

    scene = load_ply(need(FRUIT))
    cam = orbit_cameras_for_scene(scene, 1, width=160, height=130)[0]
    assert splat_math.band_ranges(130, 7)[-1] == (126, 130) and len(splat_math.band_ranges(65, 7)) == 10
    assert splat_math.band_ranges(130) == [(0, 130)]  # small images: one band
    bands = splat_math.band_ranges(1080)
    assert bands[0][0] == 0 and bands[-1][1] == 1080 and all(64 <= b - a <= 128 for a, b in bands)
    bg = (0.2, 0.4, 0.1)
    for scale, transparent in ((1, False), (2, False), (2, True), (1, True)):
        one = splat_math.render_rgba(scene, cam, scale, bg, transparent, band_rows=10_000)
        seen = []
        many = splat_math.render_rgba(scene, cam, scale, bg, transparent, band_rows=7,
                                      progress=lambda k, n: seen.append((k, n)))
        total = math.ceil(130 / scale / 7)
        assert seen == [(k, total) for k in range(1, total + 1)]
        diff = float(np.abs(many - one).max())
        print(f"banded vs one band, scale {scale}, transparent {transparent}: max |diff| {diff:.2g}")
        assert many.shape == (130, 160, 4) and diff < 1e-4
        assert psnr(many, one) >= 60
    # one band is the former one-shot render: air_core's render_upscaled with the same eps2d
    expected = render_upscaled(scene, cam, 2, method="hermite", background=torch.tensor(bg)).clamp(0, 1)
    got = splat_math.render_rgba(scene, cam, 2, bg)
    assert float(np.abs(got[..., :3] - expected.permute(1, 2, 0).numpy()).max()) < 1e-5


def test_banded_render_cancels():
    scene = load_ply(need(FRUIT))
    from air_core.splat3d import orbit_cameras_for_scene

    cam = orbit_cameras_for_scene(scene, 1, width=160, height=130)[0]
    seen = []

    def stop_after_first(k, n):
        seen.append((k, n))
        return k < 1

    with pytest.raises(splat_math.Cancelled):
        splat_math.render_rgba(scene, cam, 2, band_rows=16, progress=stop_after_first)
    assert seen == [(1, 5)]
    job = splat_math.BandedRender(scene, cam, 1, band_rows=16)
    assert (job.total, job.done) == (9, 0) and not job.step() and job.done == 1
    with pytest.raises(RuntimeError, match="1 of 9 bands"):
        job.result()


class FakeWindowManager:
    """Records what the modal render asks of ``context.window_manager``."""

    def __init__(self):
        self.calls, self.timers = [], set()

    def progress_begin(self, lo, hi):
        self.calls.append(("begin", lo, hi))

    def progress_update(self, value):
        self.calls.append(("update", value))

    def progress_end(self):
        self.calls.append(("end",))

    def event_timer_add(self, step, window=None):
        timer = object()
        self.timers.add(timer)
        return timer

    def event_timer_remove(self, timer):
        self.timers.remove(timer)


def test_modal_render_steps_and_cancels():
    """The modal operator's logic (no window here): one band per TIMER event with the progress bar;
    ESC cancels without touching the previous image; timer and progress bar always end."""
    from types import SimpleNamespace

    from blender_addon import operators

    obj = import_splat(need(FRUIT))
    add_camera(obj)
    # invoked without a window (background mode), the operator renders synchronously
    assert bpy.ops.air.render_splats("INVOKE_DEFAULT") == {"FINISHED"}
    before = render_op("1")
    bpy.context.scene.render.film_transparent = True  # a finished render would now differ

    def modal(band_rows=16):
        reports = []
        op = SimpleNamespace(report=lambda kind, msg: reports.append((set(kind), msg)))
        ctx = SimpleNamespace(window=object(), window_manager=FakeWindowManager(), scene=bpy.context.scene,
                              view_layer=bpy.context.view_layer, preferences=bpy.context.preferences, screen=None)
        job = operators.RenderJob(ctx, 1, band_rows=band_rows)
        return operators.ModalRender(op, ctx, job), ctx, reports

    def pixels():
        image = bpy.data.images["AIR Render"]
        out = np.empty(image.size[0] * image.size[1] * 4, dtype=np.float32)
        image.pixels.foreach_get(out)
        return out.reshape(image.size[1], image.size[0], 4)[::-1]

    m, ctx, reports = modal()
    wm = ctx.window_manager
    assert m.job.total == 8 and wm.calls == [("begin", 0, 8)] and len(wm.timers) == 1
    assert m.handle(ctx, "MOUSEMOVE") == {"PASS_THROUGH"}
    assert m.handle(ctx, "TIMER") == {"RUNNING_MODAL"} and wm.calls[-1] == ("update", 1)
    assert m.handle(ctx, "ESC", "RELEASE") == {"PASS_THROUGH"}
    assert m.handle(ctx, "ESC") == {"CANCELLED"}
    assert reports == [({"INFO"}, "AIR: render cancelled")]
    assert not wm.timers and wm.calls[-1] == ("end",)
    np.testing.assert_array_equal(pixels(), before)
    assert bpy.data.images["AIR Render"].alpha_mode == "STRAIGHT"

    m, ctx, reports = modal()
    assert m.handle(ctx, "TIMER") == {"RUNNING_MODAL"}
    assert m.handle(ctx, "RIGHTMOUSE") == {"CANCELLED"} and not ctx.window_manager.timers
    np.testing.assert_array_equal(pixels(), before)

    m, ctx, reports = modal()
    results = [m.handle(ctx, "TIMER") for _ in range(8)]
    assert results == [{"RUNNING_MODAL"}] * 7 + [{"FINISHED"}]
    wm = ctx.window_manager
    assert wm.calls == [("begin", 0, 8)] + [("update", k) for k in range(1, 9)] + [("end",)] and not wm.timers
    assert reports[-1][0] == {"INFO"} and "rendered" in reports[-1][1]
    assert bpy.data.images["AIR Render"].alpha_mode == "PREMUL"
    assert psnr(pixels(), render_op("1")) >= 60  # equals the synchronous render

    # a failure during a band is reported, and still removes the timer and ends the progress bar
    m, ctx, reports = modal()

    def broken():
        raise RuntimeError("boom")

    m.job.step = broken
    assert m.handle(ctx, "TIMER") == {"CANCELLED"}
    assert reports == [({"ERROR"}, "AIR: unexpected RuntimeError: boom")]
    assert not ctx.window_manager.timers and ctx.window_manager.calls[-1] == ("end",)
    m.close()  # idempotent
    assert ctx.window_manager.calls.count(("end",)) == 1


def test_export_round_trip(tmp_path):
    obj = import_splat(need(FRUIT))
    dest = tmp_path / "out.ply"
    assert bpy.ops.export_scene.air_splat_ply(filepath=str(dest)) == {"FINISHED"}
    a, b = load_ply(FRUIT), load_ply(dest)
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh_coeffs"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert sorted(a.extra) == sorted(b.extra)  # the extra property survives
    obj.location = (1.0, 2.0, 3.0)
    bpy.context.view_layer.update()
    assert bpy.ops.export_scene.air_splat_ply(filepath=str(dest), apply_transform=True) == {"FINISHED"}
    torch.testing.assert_close(load_ply(dest).means, a.means + torch.tensor([1.0, 2.0, 3.0]))


def test_bad_inputs_are_reported(tmp_path):
    mesh_ply = tmp_path / "mesh.ply"
    mesh_ply.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                        "property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
    expect_error("not a 3D Gaussian splat file", lambda: bpy.ops.import_scene.air_splat_ply(filepath=str(mesh_ply)))
    broken = tmp_path / "broken.ply"
    broken.write_bytes(need(TANDT).read_bytes()[:5000])
    expect_error("truncated", lambda: bpy.ops.import_scene.air_splat_ply(filepath=str(broken)))
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"\x00\x01not a ply at all" * 10)
    expect_error("cannot import garbage.ply", lambda: bpy.ops.import_scene.air_splat_ply(filepath=str(garbage)))
    empty = tmp_path / "empty.ply"
    empty.write_text("ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                     "property float z\nproperty float opacity\nend_header\n")
    expect_error("no vertices", lambda: bpy.ops.import_scene.air_splat_ply(filepath=str(empty)))
    expect_error("not found", lambda: bpy.ops.import_scene.air_splat_ply(filepath=str(tmp_path / "nope.ply")))
    assert not [o for o in bpy.data.objects if store.is_splat(o)]

    expect_error("no active camera", bpy.ops.air.render_splats)
    obj = import_splat(need(TANDT))
    expect_error("no active camera", bpy.ops.air.render_splats)
    cam = add_camera(obj)
    cam.data.type = "ORTHO"
    expect_error("only perspective cameras are supported", bpy.ops.air.render_splats)
    cam.data.type = "PERSP"
    obj.scale = (1.0, 2.0, 1.0)
    expect_error("non-uniform scale", bpy.ops.air.render_splats)
    obj.scale = (-1.0, -1.0, -1.0)
    expect_error("mirrored", bpy.ops.air.render_splats)
    obj.scale = (1.0, 1.0, 1.0)
    obj.hide_render = True
    expect_error("no splat objects", bpy.ops.air.render_splats)
    obj.hide_render = False
    obj[store.PATH_KEY] = str(tmp_path / "moved.ply")
    store.clear_caches()
    expect_error("missing", bpy.ops.air.render_splats)


def test_build_zip(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_blender_addon.py"), "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    dest = Path(res.stdout.strip())
    manifest = tomllib.loads((ROOT / "blender_addon" / "blender_manifest.toml").read_text())
    assert dest.name == f"{manifest['id']}-{manifest['version']}.zip" and manifest["type"] == "add-on"
    with zipfile.ZipFile(dest) as zf:
        names = set(zf.namelist())
    assert {"air_splat/__init__.py", "air_splat/blender_manifest.toml", "air_splat/operators.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # installs and enables as a Blender extension (into a throw-away user folder)
    code = ("import bpy\n"
            f"print(bpy.ops.extensions.package_install_files(filepath={str(dest)!r}, repo='user_default', "
            "enable_on_install=True))\n"
            "prefs = bpy.context.preferences.addons['bl_ext.user_default.air_splat'].preferences\n"
            "print('DEVICE', prefs.device, bpy.ops.air.check_dependencies())\n")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "DEVICE AUTO {'FINISHED'}" in res.stdout, res.stdout + res.stderr
