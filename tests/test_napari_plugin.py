"""napari plugin tests: a real viewer (napari's ``make_napari_viewer`` fixture) under Xvfb.

Run with ``xvfb-run -a -s "-screen 0 1280x1024x24" python -m pytest tests/test_napari_plugin.py``.
Every job runs on small crops of a real photo (scikit-image's astronaut) with a tiny untrained
predictor (``napari_air._widgets.DEFAULT_MODEL``), so the file needs no shipped weights.

Without a display or the GUI stack the file is skipped, unless ``AIR_REQUIRE_GUI`` is set (scripts/test.sh
sets it under CI): then the missing piece is an error, not a silent skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import threading
import time

import numpy as np
import pytest

REQUIRE_GUI = os.environ.get("AIR_REQUIRE_GUI", "") not in ("", "0")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    if REQUIRE_GUI:
        raise RuntimeError("AIR_REQUIRE_GUI is set but there is no display (run under xvfb-run)")
    pytest.skip("napari tests need a display (run under xvfb-run)", allow_module_level=True)
if REQUIRE_GUI:
    import napari  # noqa: F401 - an ImportError fails the run
    import pytestqt  # noqa: F401
else:
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")

import air_core  # noqa: E402

pytestmark = pytest.mark.napari

PLUGIN = "napari-air"
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def photo():
    return air_core.sample_image("astronaut")[:64, 200:264].copy()  # [64, 64, 3] uint8: face and helmet


@pytest.fixture
def tiny_model(monkeypatch):
    import torch
    from air_core.predictor.model import AIRPredictor

    import napari_air._widgets as widgets

    torch.manual_seed(0)
    model = AIRPredictor(width=8).eval()
    monkeypatch.setattr(widgets, "DEFAULT_MODEL", model)
    return model


def _open(viewer, name):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    widget.reset_choices()
    return widget


def _assert_placed(out, like, shape, scale, translate, axis_labels):
    """An output layer's data shape and world placement; units are the input layer's."""
    assert out.data.shape == shape
    np.testing.assert_allclose(out.scale, scale)
    np.testing.assert_allclose(out.translate, translate)
    assert tuple(out.axis_labels) == axis_labels
    assert tuple(str(u) for u in out.units) == tuple(str(u) for u in like.units)


def _run(qtbot, widget):
    worker = widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    return worker


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def _gaussians_file(tmp_path, image):
    """A small fitted Gaussian image saved as .npz (the reader's and Render widget's input)."""
    fitted = air_core.fit(image, 120, 40, seed=0, device="cpu")
    path = tmp_path / "fitted.npz"
    air_core.save_gaussians(fitted.gaussians.to("cpu"), path)
    return path, fitted


# -- manifest and menus ------------------------------------------------------------------------------------


def test_manifest_validates_and_menus_exist(make_napari_viewer):
    npe2 = Path(sys.executable).with_name("npe2")
    cmd = [str(npe2)] if npe2.exists() else [sys.executable, "-m", "npe2"]
    res = subprocess.run([*cmd, "validate", PLUGIN, "--imports"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

    from importlib.resources import files

    assert (files("napari_air") / "napari.yaml").is_file()  # the manifest is inside the package

    viewer = make_napari_viewer()
    from app_model.types import MenuItem
    from napari._app_model import get_app_model

    app = get_app_model()

    def commands(menu_id):
        return {item.command.id for item in app.menus.get_menu(menu_id) if isinstance(item, MenuItem)}

    assert {"napari-air.reconstruct_widget", "napari-air.fit_widget"} <= commands("napari/layers/filter")
    assert {"napari-air.render_widget", "napari-air.jbu_widget"} <= commands("napari/layers/transform")
    widget_ids = {"napari-air.reconstruct_widget", "napari-air.render_widget", "napari-air.jbu_widget",
                  "napari-air.fit_widget"}
    plugins = set()
    for menu_id, menu in app.menus:
        if str(menu_id).startswith("napari/plugins"):
            plugins |= {item.command.id for item in menu if isinstance(item, MenuItem)}
    assert widget_ids <= plugins

    # choosing the menu item opens the dock widget
    app.commands.execute_command("napari-air.jbu_widget").result()
    assert any("Upsample with JBU" in name for name in viewer.window.dock_widgets)


# -- Reconstruct with AIR ------------------------------------------------------------------------------------


def test_reconstruct_widget_outputs_bound_to_input_and_rerun_updates(make_napari_viewer, qtbot, tiny_model, photo,
                                                                       tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_image(photo, name="crop", scale=(0.5, 0.25), translate=(10.0, 20.0), units=("um", "um"),
                             axis_labels=("y", "x"))
    other = viewer.add_image(photo[:, :, 0], name="other")
    before = photo.copy()
    w = _open(viewer, "Reconstruct with AIR")
    w.image.value = layer
    w.stages.value = 4
    worker = w.run()
    reports = []
    worker.yielded.connect(lambda r: r is not None and reports.append(r))
    bar = []
    worker.yielded.connect(lambda r: w._pbar is not None and bar.append(w._pbar.n))
    viewer.layers.selection.active = other  # the result must still go to "crop"
    w.image.value = other
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert worker is not None and w.last_error is None, w.last_error
    # progress advances: one report per stage at least, increasing, and the bar follows
    fractions = [f for f, _m in reports]
    stage_reports = [f for f, m in reports if m.startswith("stage")]
    assert len(stage_reports) >= 4, reports
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0, abs=0.01), reports
    assert len(set(stage_reports)) >= 4, reports
    assert bar == sorted(bar) and len(set(bar)) >= 4 and bar[-1] >= 99, bar

    rec = viewer.layers["crop [AIR]"]
    assert rec.rgb
    _assert_placed(rec, layer, (64, 64, 3), (0.5, 0.25), (10.0, 20.0), ("y", "x"))
    g = rec.metadata["air_gaussians"]
    keep = rec.metadata["air_keep"]
    assert keep.shape == (4, 10, 10) and int(keep.sum()) == len(g) and rec.metadata["air_patch_size"] == 7
    psnr = rec.metadata["air_metrics"]["psnr"]
    assert np.isfinite(psnr) and psnr == pytest.approx(air_core.psnr(rec.data,
                                                                      photo), abs=0.05)
    assert f"PSNR {psnr:.2f} dB" in w.results.value and "SSIM" in w.results.value

    stages = viewer.layers["crop [AIR stages]"]
    assert stages.data.shape == (4, 64, 64, 3)
    np.testing.assert_allclose(stages.scale, (1.0, 0.5, 0.25))
    err = viewer.layers["crop [AIR error]"]
    assert err.data.shape == (64, 64) and err.data.min() >= 0
    masks = viewer.layers["crop [AIR stage masks]"]
    assert masks.data.shape == (4, 10, 10)
    assert set(np.unique(masks.data)) <= {0, 1, 2, 3, 4}
    np.testing.assert_allclose(masks.scale, (1.0, 3.5, 1.75))  # patch size 7 x the pixel scale
    np.testing.assert_allclose(masks.translate, (0.0, 10.0 + 0.5 * 3, 20.0 + 0.25 * 3))
    pts = viewer.layers["crop [AIR centres]"]
    assert len(pts.data) == len(g)
    assert pts.face_color.shape == (len(g), 4) and (pts.face_color >= 0).all() and (pts.face_color <= 1).all()
    expected = g.means.numpy()[:, ::-1] - 0.5
    np.testing.assert_allclose(pts.data, expected, atol=1e-5)

    # the input layer is untouched; only the five outputs were added
    np.testing.assert_array_equal(layer.data, before)
    names = [lay.name for lay in viewer.layers]
    assert len(names) == 7

    # the .air writer keeps the patch layout; reading it back restores the masks
    out = tmp_path / "rec.air"
    rec.save(str(out), plugin=PLUGIN)
    back = viewer.open(str(out), plugin=PLUGIN)[0]
    np.testing.assert_array_equal(back.metadata["air_keep"], keep)
    assert len(back.metadata["air_gaussians"]) == len(g)
    assert air_core.psnr(back.data, rec.data) > 30
    viewer.layers.remove(back)

    # re-run (fewer stages, no extras): the same layers are updated, the switched-off outputs' layers of
    # the first run are removed (no stale layer), nothing piles up
    w.image.value = layer
    w.stages.value = 1
    w.out_stages.value = w.out_error.value = w.out_masks.value = False
    w.custom_control.value = True  # thresholds no patch exceeds: stage control keeps nothing
    w.log_mse.value = 0.0
    w.ssim_threshold.value = 2.0
    _run(qtbot, w)
    assert w.last_error is None, w.last_error
    assert [lay.name for lay in viewer.layers] == ["crop", "other", "crop [AIR]", "crop [AIR centres]"]
    assert viewer.layers["crop [AIR]"].metadata["air_keep"].shape == (1, 10, 10)
    assert len(viewer.layers["crop [AIR]"].metadata["air_gaussians"]) == 0
    assert len(viewer.layers["crop [AIR centres]"].data) == 0
    assert tiny_model.mse_threshold == pytest.approx(10 ** -3.5)  # the model itself is not modified


def test_reconstruct_cancel_leaves_viewer_unchanged(make_napari_viewer, qtbot, tiny_model, photo, tmp_path,
                                                    monkeypatch):
    import napari_air._widgets as widgets

    weights = tmp_path / "tiny.safetensors"  # this run reads the model from a weights file
    tiny_model.save_pretrained(weights)
    monkeypatch.setattr(widgets, "DEFAULT_MODEL", None)
    viewer = make_napari_viewer()
    viewer.add_image(photo[:32, :32], name="small")
    w = _open(viewer, "Reconstruct with AIR")
    w.weights.value = str(weights)
    w.refine_steps.value = 5000  # long enough to be cancelled
    names = [lay.name for lay in viewer.layers]
    w.run()
    qtbot.waitUntil(lambda: w.status.value.startswith("refine"), timeout=WAIT_MS)
    helper = w.job["thread"]
    assert isinstance(helper, threading.Thread) and helper.is_alive()
    cancelled_at = time.perf_counter()
    w.cancel()
    # the job is over only when the computation is: Run stays disabled meanwhile
    assert w.running and not w.run_button.enabled and w.status.value.startswith("cancelling")
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    stopped_in = time.perf_counter() - cancelled_at
    assert not helper.is_alive() and w.job["outcome"] == "ReconstructCancelled", w.job
    assert stopped_in < 5.0, stopped_in  # a full run (5000 refinement steps) takes far longer
    qtbot.wait(200)
    assert [lay.name for lay in viewer.layers] == names
    assert w.last_error is None and w.status.value == "cancelled"
    assert w.run_button.enabled and not w.cancel_button.enabled

    # closing the dock widget cancels a running job
    w.run()
    qtbot.waitUntil(lambda: w.status.value.startswith("refine"), timeout=WAIT_MS)
    helper = w.job["thread"]
    viewer.window.remove_dock_widget(w.native)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert not helper.is_alive() and w.job["outcome"] == "ReconstructCancelled", w.job
    assert [lay.name for lay in viewer.layers] == names


def test_bad_input_gives_notifications(make_napari_viewer, qtbot, tiny_model, photo, monkeypatch):
    viewer = make_napari_viewer()
    w = _open(viewer, "Reconstruct with AIR")
    n_errors = len(_errors())
    assert w.run() is None and "no image layer" in w.last_error  # nothing to reconstruct

    viewer.add_image(np.zeros((1, 40), np.float32), name="strip")  # napari cannot hold a 0 x 0 image layer
    w.reset_choices()
    w.image.value = viewer.layers["strip"]
    assert w.run() is None and "at least 2 x 2" in w.last_error

    viewer.add_image(np.full((2, 2, 3), 128, np.uint8), name="dot", rgb=True)
    w.reset_choices()
    w.image.value = viewer.layers["dot"]
    _run(qtbot, w)  # refused inside air_core (the worker): still a notification
    assert w.last_error and "2 x 2" in w.last_error

    # missing shipped weights -> a clear notification
    import napari_air._widgets as widgets
    from air_core.predictor import model as model_module

    viewer.add_image(photo[:16, :16], name="tile", rgb=True)
    w.reset_choices()
    w.image.value = viewer.layers["tile"]
    monkeypatch.setattr(widgets, "DEFAULT_MODEL", None)
    monkeypatch.setattr(model_module, "PRETRAINED_PATH", Path("/nonexistent/air_ps7_s4.safetensors"))
    _run(qtbot, w)
    assert w.last_error and "weights are not installed" in w.last_error

    # the JBU guidance offers image layers only
    j = _open(viewer, "Upsample with JBU")
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="labels")
    j.reset_choices()
    assert "labels" not in [c.name for c in j.guidance.choices]
    assert "labels" in [c.name for c in j.low.choices]

    # an unexpected exception in _prepare: a notification (traceback on the console), no dialog
    def boom():
        raise RuntimeError("boom")

    w._prepare = boom  # (an instance attribute: magicgui's Container cannot delete through monkeypatch)
    assert w.run() is None and "RuntimeError" in w.last_error and "boom" in w.last_error
    del w.__dict__["_prepare"]

    # a 3D display, rolled dims, a rotated layer: refused with a clear message
    stack = viewer.add_image(np.zeros((3, 16, 16), np.float32), name="vol")
    w.reset_choices()
    w.image.value = stack
    viewer.dims.ndisplay = 3
    assert w.run() is None and "3D display" in w.last_error
    viewer.dims.ndisplay = 2
    viewer.dims.order = (1, 0, 2)  # the plane shown is (z, x), not the last two axes
    assert w.run() is None and "last two axes" in w.last_error
    viewer.dims.order = (0, 1, 2)
    stack.rotate = 30
    assert w.run() is None and "rotation" in w.last_error

    assert len(_errors()) == n_errors + 8
    assert [lay.name for lay in viewer.layers] == ["strip", "dot", "tile", "labels", "vol"]


# -- Render at scale, reader / writer ------------------------------------------------------------------------------


def test_reader_render_at_scale_and_writer_roundtrip(make_napari_viewer, qtbot, photo, tmp_path):
    crop = photo[:32, :48]
    path, fitted = _gaussians_file(tmp_path, crop)
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin=PLUGIN)[0]
    assert layer.name == "fitted" and layer.data.shape == (32, 48, 3)
    g = layer.metadata["air_gaussians"]
    assert len(g) == len(fitted.gaussians)
    layer.scale = (2.0, 2.0)
    layer.translate = (5.0, -3.0)

    r = _open(viewer, "Render at scale")
    r.source.value = layer
    r.scale.value = 2.5
    _run(qtbot, r)
    assert r.last_error is None, r.last_error
    out = viewer.layers["fitted [render]"]
    assert out.data.shape == (80, 120, 3)
    np.testing.assert_allclose(out.scale, (0.8, 0.8))
    np.testing.assert_allclose(out.translate, (5.0 + 2.0 * (0.2 - 0.5), -3.0 + 2.0 * (0.2 - 0.5)))
    exact = out.data.copy()

    r.method.value = r.METHODS[1]  # gradient-aware preview, same layer updated
    r.scale.value = 2.0
    _run(qtbot, r)
    assert r.last_error is None, r.last_error
    assert viewer.layers["fitted [render]"] is out, [lay.name for lay in viewer.layers]
    assert out.data.shape == (64, 96, 3) and len(viewer.layers) == 2
    assert out.metadata["air_render_method"] == "hermite"
    assert np.isfinite(out.data).all() and exact.shape == (80, 120, 3)

    # rendering a render again refers to the Gaussians' own image, not to the render's pixels
    r.reset_choices()
    r.source.value = out
    r.scale.value = 1.0
    r.method.value = r.METHODS[0]
    _run(qtbot, r)
    again_render = viewer.layers["fitted [render] [render]"]
    assert again_render.data.shape == (32, 48, 3)
    np.testing.assert_allclose(again_render.scale, layer.scale)
    np.testing.assert_allclose(again_render.translate, layer.translate, atol=1e-9)
    np.testing.assert_allclose(again_render.data, layer.data, atol=1e-5)
    viewer.layers.remove(again_render)

    # writer round trips: .npz exact, .air (free layout) close
    npz = tmp_path / "saved.npz"
    layer.save(str(npz), plugin=PLUGIN)
    back = air_core.load_gaussians(npz)
    np.testing.assert_allclose(back.means.numpy(), g.means.numpy())
    np.testing.assert_allclose(back.colours.numpy(), g.colours.numpy())
    again = viewer.open(str(npz), plugin=PLUGIN)[0]
    np.testing.assert_allclose(again.data, layer.data, atol=1e-6)
    air = tmp_path / "saved.air"
    layer.save(str(air), plugin=PLUGIN)
    decoded = viewer.open(str(air), plugin=PLUGIN)[0]
    assert decoded.data.shape == layer.data.shape and "air_keep" not in decoded.metadata
    assert air_core.psnr(decoded.data, layer.data) > 25

    # a plain image cannot be saved as Gaussians: no file, no crash
    plain = viewer.add_image(crop, name="plain")
    with pytest.raises(TypeError, match="carries no AIR Gaussians"):
        plain.save(str(tmp_path / "plain.npz"), plugin=PLUGIN)
    assert not (tmp_path / "plain.npz").exists()


# -- Upsample with JBU ---------------------------------------------------------------------------------------------


def test_jbu_widget_labels_and_features(make_napari_viewer, qtbot, photo):
    viewer = make_napari_viewer()
    guide = viewer.add_image(photo, name="guide", scale=(0.5, 0.5), translate=(1.0, 2.0))
    gray = photo.mean(-1)
    labels_lo = (gray[::4, ::4] > gray.mean()).astype(np.int32) + 1  # [16, 16], labels 1 / 2
    viewer.add_labels(labels_lo, name="seg", scale=(2.0, 2.0))
    viewer.add_image(photo[::4, ::4], name="lowrgb", rgb=True)
    viewer.add_image(np.stack([gray[::4, ::4] / 255.0, 1 - gray[::4, ::4] / 255.0]).astype(np.float32),
                     name="feats")
    j = _open(viewer, "Upsample with JBU")
    j.guidance.value = guide

    j.low.value = viewer.layers["seg"]
    _run(qtbot, j)
    assert j.last_error is None, j.last_error
    up = viewer.layers["seg [JBU]"]
    from napari.layers import Image, Labels

    assert isinstance(up, Labels) and up.data.shape == (64, 64)
    assert set(np.unique(up.data)) <= {1, 2}
    np.testing.assert_allclose(up.scale, (0.5, 0.5))
    np.testing.assert_allclose(up.translate, (1.0, 2.0))

    j.low.value = viewer.layers["lowrgb"]
    _run(qtbot, j)
    assert j.last_error is None, j.last_error
    rgb = viewer.layers["lowrgb [JBU]"]
    assert isinstance(rgb, Image) and rgb.rgb and rgb.data.shape == (64, 64, 3) and rgb.data.dtype == np.uint8

    j.low.value = viewer.layers["feats"]
    j.map_type.value = "probabilities"
    j.channels.value = True  # [C, h, w]: the channels axis is explicit
    _run(qtbot, j)
    assert j.last_error is None, j.last_error
    probs = viewer.layers["feats [JBU]"]
    assert probs.data.shape == (2, 64, 64)
    np.testing.assert_allclose(probs.data.sum(0), 1.0, atol=1e-4)

    # without 'channels axis', a gray volume [Z, h, w] is an nD layer: the plane shown is upsampled
    vol = np.stack([gray[::4, ::4], 255 - gray[::4, ::4]]).astype(np.float32) / 255.0  # [2, 16, 16]
    viewer.add_image(vol, name="vol", scale=(7.0, 4.0, 4.0))
    viewer.dims.set_point(0, 7.0)  # world z of plane 1 ("feats" also spans z, with step 1)
    j.reset_choices()
    j.low.value = viewer.layers["vol"]
    j.map_type.value = "features"
    j.channels.value = False
    _run(qtbot, j)
    assert j.last_error is None, j.last_error
    up = viewer.layers["vol [JBU]"]
    assert up.data.shape == (64, 64)  # the guidance is 2D: a 2D output
    assert np.corrcoef(up.data[::4, ::4].ravel(), vol[1].ravel())[0, 1] > 0.8


# -- Fit ----------------------------------------------------------------------------------------------------------


def test_fit_widget_on_the_current_plane_of_a_stack(make_napari_viewer, qtbot, photo):
    viewer = make_napari_viewer()
    stack = np.stack([photo[:32, :32, 0], photo[32:, 32:, 1]])  # [2, 32, 32] gray planes
    stack_layer = viewer.add_image(stack, name="stack", scale=(5.0, 3.0, 3.0), translate=(0.0, 1.0, 2.0),
                                   units=("mm", "um", "um"), axis_labels=("z", "y", "x"))
    viewer.dims.set_current_step(0, 1)  # plane 1 (napari 0.6+: world z in um here)
    f = _open(viewer, "Fit Gaussians")
    f.num_gaussians.value = 80
    f.steps.value = 40
    f.device.value = "cpu"
    _run(qtbot, f)
    assert f.last_error is None, f.last_error
    fit_layer = viewer.layers["stack [fit]"]
    # one plane, kept on its z: the leading axis has length 1, translated to plane 1's world position
    assert not fit_layer.rgb
    _assert_placed(fit_layer, stack_layer, (1, 32, 32), (5.0, 3.0, 3.0), (5.0, 1.0, 2.0), ("z", "y", "x"))
    assert fit_layer.metadata["air_plane_index"] == (1,)
    psnr = fit_layer.metadata["air_metrics"]["psnr"]
    assert psnr > 12 and f"PSNR {psnr:.2f} dB" in f.results.value
    assert psnr == pytest.approx(air_core.psnr(fit_layer.data[0], stack[1] / 255.0), abs=0.05)
    assert len(fit_layer.metadata["air_gaussians"]) == 80
    np.testing.assert_array_equal(stack_layer.data, stack)

    # all planes: a stack of the same geometry
    f.planes.value = "all planes"
    _run(qtbot, f)
    assert f.last_error is None, f.last_error
    fit_layer = viewer.layers["stack [fit]"]
    assert fit_layer.data.shape == (2, 32, 32)
    np.testing.assert_allclose(fit_layer.scale, (5.0, 3.0, 3.0))
    np.testing.assert_allclose(fit_layer.translate, (0.0, 1.0, 2.0))
    for z in range(2):
        assert air_core.psnr(fit_layer.data[z], stack[z] / 255.0) > 12
    assert len(fit_layer.metadata["air_gaussians_planes"]) == 2


def test_reconstruct_all_planes_of_a_stack(make_napari_viewer, qtbot, tiny_model, photo):
    viewer = make_napari_viewer()
    stack = np.stack([photo[:32, :32, 0], photo[32:, 32:, 1], photo[16:48, 16:48, 2]])  # [3, 32, 32] gray
    layer = viewer.add_image(stack, name="stack", scale=(5.0, 0.5, 0.5), translate=(10.0, 1.0, 2.0),
                             units=("mm", "um", "um"), axis_labels=("z", "y", "x"))
    viewer.dims.set_current_step(0, 1)  # plane 1
    w = _open(viewer, "Reconstruct with AIR")
    w.image.value = layer
    w.stages.value = 2
    w.planes.value = "all planes"
    worker = w.run()
    reports = []
    worker.yielded.connect(lambda r: r is not None and reports.append(r))
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert w.last_error is None, w.last_error
    fractions = [f for f, _m in reports]
    assert fractions == sorted(fractions), reports
    for i in (1, 2, 3):
        assert any(m.startswith(f"plane {i}/3") for _f, m in reports), reports
    assert any(f >= 2 / 3 and m.startswith("plane 3/3") for f, m in reports)

    rec = viewer.layers["stack [AIR]"]
    _assert_placed(rec, layer, (3, 32, 32), (5.0, 0.5, 0.5), (10.0, 1.0, 2.0), ("z", "y", "x"))
    meta = rec.metadata
    assert len(meta["air_gaussians_planes"]) == 3 and meta["air_plane_indices"] == [(0,), (1,), (2,)]
    assert meta["air_plane_index"] == (1,)  # air_gaussians: the plane shown at the start
    assert np.array_equal(meta["air_gaussians"].means.numpy(), meta["air_gaussians_planes"][1].means.numpy())
    for z in range(3):
        assert air_core.psnr(rec.data[z], stack[z] / 255.0) == pytest.approx(
            meta["air_metrics_planes"][z]["psnr"], abs=0.05)
    stages = viewer.layers["stack [AIR stages]"]
    assert stages.data.shape == (2, 3, 32, 32)  # the stage axis first: z stays aligned with the input's
    np.testing.assert_allclose(stages.scale, (1.0, 5.0, 0.5, 0.5))
    assert tuple(stages.axis_labels) == ("stage", "z", "y", "x")
    assert viewer.layers["stack [AIR error]"].data.shape == (3, 32, 32)
    masks = viewer.layers["stack [AIR stage masks]"]
    assert masks.data.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(masks.translate, (0.0, 10.0, 1.0 + 0.5 * 3, 2.0 + 0.5 * 3))
    pts = viewer.layers["stack [AIR centres]"]
    assert pts.data.shape[1] == 3 and len(pts.data) == sum(len(g) for g in meta["air_gaussians_planes"])
    assert set(np.unique(pts.data[:, 0])) <= {0.0, 1.0, 2.0}
    np.testing.assert_allclose(pts.scale, (5.0, 0.5, 0.5))
    np.testing.assert_array_equal(layer.data, stack)

    # the current plane only: a one-plane stack drawn at plane 1's z; render it at scale 2 there
    w.planes.value = "current plane"
    _run(qtbot, w)
    assert w.last_error is None, w.last_error
    rec = viewer.layers["stack [AIR]"]
    assert rec.data.shape == (1, 32, 32)
    np.testing.assert_allclose(rec.translate, (15.0, 1.0, 2.0))
    assert viewer.layers["stack [AIR stages]"].data.shape == (2, 1, 32, 32)
    r = _open(viewer, "Render at scale")
    r.source.value = rec
    r.scale.value = 2.0
    _run(qtbot, r)
    assert r.last_error is None, r.last_error
    out = viewer.layers["stack [AIR] [render]"]
    assert out.data.shape == (1, 64, 64)
    np.testing.assert_allclose(out.scale, (5.0, 0.25, 0.25))
    np.testing.assert_allclose(out.translate[0], 15.0)


def test_empty_layer_is_refused(make_napari_viewer, qtbot, tiny_model):
    """An empty layer through the real widget when napari can hold one; else the plugin's own check."""
    from napari.layers import Image

    try:
        empty = Image(np.zeros((0, 16, 16), np.float32), name="empty")
    except ValueError:  # napari (0.5 - 0.9) cannot hold an empty image layer: check the plugin's refusal
        empty = None
    if empty is not None:
        viewer = make_napari_viewer()
        viewer.add_layer(empty)
        w = _open(viewer, "Reconstruct with AIR")
        w.image.value = empty
        assert w.run() is None and "empty" in w.last_error
        return
    from types import SimpleNamespace

    from napari_air._layers import layer_plane

    fake = SimpleNamespace(data=np.zeros((0, 0), np.float32), name="empty", rgb=False, multiscale=False,
                           scale=(1.0, 1.0), translate=(0.0, 0.0), units=("pixel", "pixel"), axis_labels=("y", "x"),
                           contrast_limits=(0.0, 1.0))
    with pytest.raises(ValueError, match="empty"):
        layer_plane(fake)


def test_open_without_plugin_argument(make_napari_viewer, photo, tmp_path, monkeypatch):
    """How napari picks a reader (napari 0.5+):

    * ``viewer.open(path, plugin=None)`` (what File > Open and drag-and-drop do): ``.air`` has no other
      reader, so ours opens it; ``.npz`` is also claimed by napari's builtins, so napari raises
      MultipleReaderError (the GUI asks which reader, and can remember the choice), unless the
      preference ``plugins.extension2reader["*.npz"] = "napari-air"`` is set.
    * ``viewer.open(path)`` from Python defaults to ``plugin="napari"`` (the builtins): it refuses ``.air``
      and reads an ``.npz`` as plain arrays; pass ``plugin="napari-air"``.
    """
    from napari.settings import get_settings

    crop = photo[:24, :24]
    path, _fitted = _gaussians_file(tmp_path, crop)
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin=PLUGIN)[0]
    air = tmp_path / "fitted.air"
    layer.save(str(air), plugin=PLUGIN)
    viewer.layers.clear()

    opened = viewer.open(str(air), plugin=None)
    assert len(opened) == 1 and "air_gaussians" in opened[0].metadata and opened[0].data.shape == (24, 24, 3)
    with pytest.raises(ValueError, match="napari-air"):
        viewer.open(str(air))  # plugin="napari" by default: the builtins cannot read .air

    with pytest.raises(Exception) as info:
        viewer.open(str(path), plugin=None)
    assert type(info.value).__name__ == "MultipleReaderError" and PLUGIN in str(info.value)
    settings = get_settings()
    monkeypatch.setattr(settings, "_save_on_change", False)  # never write the user's settings file
    monkeypatch.setattr(settings.plugins, "extension2reader",
                        {**settings.plugins.extension2reader, "*.npz": PLUGIN})
    opened = viewer.open(str(path), plugin=None)
    assert len(opened) == 1 and "air_gaussians" in opened[0].metadata
