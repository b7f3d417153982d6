"""Drive the add-on in a real Blender window (not headless bpy): viewport preview and modal render.

    blender -b --factory-startup --python-expr "import bpy; bpy.ops.wm.save_as_mainfile(filepath='/tmp/empty.blend')"
    xvfb-run -a -s "-screen 0 1600x900x24" blender --factory-startup --enable-event-simulate /tmp/empty.blend \
        --python scripts/blender_gui_check.py -- --zip dist/air_splat-0.1.0.zip \
        --site-packages .venv/lib/python3.11/site-packages --out OUTDIR

(opening a .blend file keeps the splash screen away from the screenshots; Debian's ``blender``
package also needs ``python3-numpy``, which Blender's own builds bundle)

What headless ``bpy`` cannot run (no window, no GPU context, no event loop), this script runs inside
a real Blender session: it installs and enables the add-on zip, points its preferences at a
site-packages folder that has torch and air_core, imports the donut scene, aims the 3D viewport at
it, switches the viewport preview on, waits until the preview's background render is done and
drawn by the draw handler, checks where the overlay landed, orbits the view and waits for the new
image (timing the renders and the draw callbacks), and saves screenshots of the viewport; then it adds a camera and runs ``air.render_splats`` through its UI path (the modal
operator with its timer events and progress bar) at 1/4 resolution, waits for it to finish, saves
the "AIR Render" image; with ``--enable-event-simulate`` it then starts a full-resolution render
and cancels it with an Esc key event, checking that the previous image is untouched; and quits. It writes ``OUTDIR/gui_check.json`` with what happened (each step's
outcome, the pixels of the preview's region that differ from a screenshot without the preview) and the
screenshots. Exit status 0 when every step passed.

Everything is scheduled with ``bpy.app.timers`` so that Blender's window, draw loop and event loop run
between the steps, as they do for a user.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import bpy

DONUT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "splats", "v3dg_donut_iter30000_fused.ply")


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    parser = argparse.ArgumentParser()
    parser.add_argument("--zip", required=True)
    parser.add_argument("--site-packages", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ply", default=DONUT)
    return parser.parse_args(argv)


ARGS = parse_args()
os.makedirs(ARGS.out, exist_ok=True)
REPORT: dict = {"blender": bpy.app.version_string, "gpu": "", "date": time.strftime("%Y-%m-%d"), "steps": []}
AGAIN = "again"  # a step's answer: run me again shortly


def log(step: str, ok: bool, **info) -> None:
    REPORT["steps"].append({"step": step, "ok": ok, **info})
    print(f"[gui-check] {step}: {'ok' if ok else 'FAILED'} {info}", flush=True)


def finish() -> None:
    REPORT["ok"] = all(s["ok"] for s in REPORT["steps"])
    REPORT["screenshots"] = sorted(f for f in os.listdir(ARGS.out) if f.endswith(".png"))
    for key in ("without_preview", "with_preview", "with_preview_orbit", "render_started", "old_key",
                "wait_started", "draw_callback_ms"):
        REPORT.pop(key, None)
    with open(os.path.join(ARGS.out, "gui_check.json"), "w") as f:
        json.dump(REPORT, f, indent=1)
    print("[gui-check] done", json.dumps({"ok": REPORT["ok"]}), flush=True)
    os._exit(0 if REPORT["ok"] else 1)


def view3d():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                region = next(r for r in area.regions if r.type == "WINDOW")
                return window, area, region
    raise RuntimeError("no 3D viewport in the window")


def override():
    window, area, region = view3d()
    return bpy.context.temp_override(window=window, area=area, region=region, screen=window.screen)


def screenshot(name: str) -> str:
    window, area, region = view3d()
    path = os.path.join(ARGS.out, name)
    with bpy.context.temp_override(window=window, area=area, region=region, screen=window.screen):
        bpy.ops.screen.screenshot_area(filepath=path)
    return path


def check_alignment(before: str, after: str) -> None:
    """Where the overlay landed: the bounding box of the screenshot pixels that the preview changed
    against the bounding box of the splats' means projected by Blender's own view
    (``location_3d_to_region_2d``), both in window-region pixels. The splats reach beyond their
    means by their size, so the drawn box must contain the means' box and exceed it only a little."""
    import numpy as np
    from bpy_extras.view3d_utils import location_3d_to_region_2d

    window, area, region = view3d()
    rv3d = area.spaces.active.region_3d
    obj = next(o for o in bpy.data.objects if o.type == "MESH")
    points = np.empty(len(obj.data.vertices) * 3)
    obj.data.vertices.foreach_get("co", points)
    world = np.asarray(obj.matrix_world)
    points = points.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    xy = np.array([tuple(location_3d_to_region_2d(region, rv3d, p)) for p in points[::7]])
    means_box = [float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())]
    a, b = (np.asarray(load_png(p), dtype=np.float64) for p in (before, after))
    changed = np.abs(a - b).sum(-1) > 0.1
    rows, cols = np.nonzero(changed)
    # screenshot rows run top-down over the whole area; region y runs bottom-up from the region's corner
    off_x, off_y = region.x - area.x, region.y - area.y
    height = a.shape[0]
    drawn_box = [float(cols.min() - off_x), float(height - 1 - rows.max() - off_y),
                 float(cols.max() - off_x), float(height - 1 - rows.min() - off_y)]
    inside = (drawn_box[0] <= means_box[0] + 2 and drawn_box[1] <= means_box[1] + 2
              and drawn_box[2] >= means_box[2] - 2 and drawn_box[3] >= means_box[3] - 2)
    margin = max(means_box[0] - drawn_box[0], means_box[1] - drawn_box[1], drawn_box[2] - means_box[2],
                 drawn_box[3] - means_box[3])
    log("overlay aligned with Blender's projection of the splats", inside and margin < 40,
        means_box_px=[round(v, 1) for v in means_box], drawn_box_px=drawn_box, largest_margin_px=round(margin, 1))


def load_png(path: str):
    """RGB float array [H, W, 3] of a PNG, read with Blender's own image loader."""
    import numpy as np

    image = bpy.data.images.load(path, check_existing=False)
    w, h = image.size
    pixels = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    bpy.data.images.remove(image)
    return pixels.reshape(h, w, 4)[::-1, :, :3]  # Blender's pixels run bottom-up


def step_install():
    bpy.ops.preferences.addon_install(filepath=os.path.abspath(ARGS.zip), overwrite=True)
    bpy.ops.preferences.addon_enable(module="air_splat")
    prefs = bpy.context.preferences.addons["air_splat"].preferences
    prefs.source = "FOLDER"
    prefs.site_packages = os.path.abspath(ARGS.site_packages)
    bpy.ops.air.check_dependencies()
    import air_core  # the add-on put the folder on sys.path

    log("install + enable + dependencies", True, air_core=os.path.dirname(air_core.__file__))
    # empty scene, then the splats
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    t0 = time.perf_counter()
    result = bpy.ops.import_scene.air_splat_ply(filepath=os.path.abspath(ARGS.ply))
    splats = [o for o in bpy.data.objects if o.type == "MESH"]
    log("import .ply", result == {"FINISHED"} and len(splats) == 1, seconds=round(time.perf_counter() - t0, 2),
        vertices=len(splats[0].data.vertices) if splats else 0)
    with override():
        bpy.ops.object.select_all(action="SELECT")
        bpy.ops.view3d.view_selected()
        space = bpy.context.area.spaces.active
        space.region_3d.view_perspective = "PERSP"
        space.overlay.show_overlays = False  # grid and axes off: the screenshot shows the splats alone
    return 1.0


def step_before_preview():
    import gpu

    REPORT["gpu"] = f"{gpu.platform.vendor_get()} {gpu.platform.renderer_get()} {gpu.platform.version_get()}"
    REPORT["without_preview"] = screenshot("viewport_without_preview.png")
    from air_splat import preview, splat_math  # the add-on's modules (legacy install name)

    # time the preview's renders (splat_math.view_rgba, in the worker thread) and the draw callback
    # itself (what Blender's draw loop waits for)
    render_view, draw_view = splat_math.view_rgba, preview._draw_view

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                REPORT.setdefault(key, []).append(round((time.perf_counter() - t0) * 1e3, 1))
        return wrapper

    splat_math.view_rgba = timed(render_view, "preview_render_ms")
    preview._draw_view = timed(draw_view, "draw_callback_ms")
    with override():
        result = bpy.ops.air.toggle_preview()

    log("toggle preview on", result == {"FINISHED"} and preview.is_enabled())
    view3d()[1].tag_redraw()
    REPORT["wait_started"] = time.perf_counter()
    return 0.2


def preview_ready(previous_key=None) -> bool:
    """The preview shows a finished image of a view other than ``previous_key`` and nothing is in flight."""
    from air_splat import preview

    state = preview._STATE
    return (state["texture"] is not None and state["key"] is not None and state["key"] != previous_key
            and not state["renderer"].busy and state["pixels"] is None)


def step_preview_drawn():
    from air_splat import preview

    if not preview_ready() and time.perf_counter() - REPORT["wait_started"] < 30 and not preview.message():
        view3d()[1].tag_redraw()
        return AGAIN
    path = screenshot("viewport_preview.png")
    REPORT["with_preview"] = path
    state = preview._STATE
    log("preview rendered in the background and drawn by the draw handler",
        state["texture"] is not None and not preview.message(), message=preview.message(),
        seconds=round(time.perf_counter() - REPORT["wait_started"], 2))
    check_alignment(REPORT["without_preview"], path)
    # orbit the view: the handler must ask for a new render and draw it
    REPORT["old_key"] = state["key"]
    with override():
        bpy.ops.view3d.view_orbit(angle=0.5, type="ORBITRIGHT")
    view3d()[1].tag_redraw()
    REPORT["wait_started"] = time.perf_counter()
    return 0.2


def step_preview_orbit():
    from air_splat import preview

    if (not preview_ready(REPORT["old_key"]) and time.perf_counter() - REPORT["wait_started"] < 30
            and not preview.message()):
        view3d()[1].tag_redraw()
        return AGAIN
    path = screenshot("viewport_preview_orbit.png")
    REPORT["with_preview_orbit"] = path
    region = view3d()[2]
    draws = REPORT.get("draw_callback_ms", [])
    log("preview re-rendered after orbiting", preview_ready(REPORT["old_key"]) and not preview.message(),
        message=preview.message(), region_px=[region.width, region.height],
        preview_render_ms=REPORT.get("preview_render_ms"), draw_callbacks=len(draws),
        slowest_draw_callback_ms=max(draws) if draws else None)
    with override():
        bpy.ops.air.toggle_preview()
    # a camera aimed at the splats, then the render operator through its UI (modal) path
    splat = next(o for o in bpy.data.objects if o.type == "MESH")
    cam_data = bpy.data.cameras.new("AIR check camera")
    cam = bpy.data.objects.new("AIR check camera", cam_data)
    bpy.context.scene.collection.objects.link(cam)
    bpy.context.scene.camera = cam
    with override():
        for obj in bpy.data.objects:
            obj.select_set(obj is splat)
        bpy.context.view_layer.objects.active = splat
        bpy.ops.view3d.camera_to_view_selected()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 960, 540, 100
    scene.air_splat.render_scale = "4"
    REPORT["render_started"] = time.perf_counter()
    with override():
        result = bpy.ops.air.render_splats("INVOKE_DEFAULT")
    log("render operator invoked (modal)", result == {"RUNNING_MODAL"}, result=sorted(result))
    return 0.5


def step_wait_render():
    image = bpy.data.images.get("AIR Render")
    elapsed = time.perf_counter() - REPORT["render_started"]
    if image is None and elapsed < 120:
        return AGAIN
    ok = image is not None and tuple(image.size) == (960, 540)
    if ok:
        image.filepath_raw = os.path.join(ARGS.out, "air_render_quarter.png")
        image.file_format = "PNG"
        image.save()
    log("modal render finished into 'AIR Render'", ok, seconds=round(elapsed, 2),
        size=list(image.size) if image is not None else None)
    if not SIMULATE:
        return 0.0
    # a full-resolution 1920x1080 render, cancelled with Esc through Blender's event loop
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = 1920, 1080
    scene.air_splat.render_scale = "1"
    with override():
        result = bpy.ops.air.render_splats("INVOKE_DEFAULT")
    log("second render invoked (modal, full resolution 1920x1080)", result == {"RUNNING_MODAL"})
    return 0.05


def step_press_esc():
    window = view3d()[0]
    window.event_simulate(type="ESC", value="PRESS")
    window.event_simulate(type="ESC", value="RELEASE")
    return 5.0  # far longer than the whole render would take


def step_check_cancelled():
    image = bpy.data.images.get("AIR Render")
    log("Esc cancelled the render; the previous 'AIR Render' is untouched",
        image is not None and tuple(image.size) == (960, 540), size=list(image.size) if image else None)
    return 0.0


# Blender started with --enable-event-simulate: the script can send key events (Blender then ignores
# real input, which nobody gives under Xvfb anyway)
SIMULATE = "--enable-event-simulate" in sys.argv
STEPS = [step_install, step_before_preview, step_preview_drawn, step_preview_orbit, step_wait_render]
if SIMULATE:
    STEPS += [step_press_esc, step_check_cancelled]


def runner():
    """One step per timer call; a step returns the seconds to wait before the next one, or AGAIN."""
    try:
        delay = STEPS[0]()
        if delay == AGAIN:
            return 0.5
        STEPS.pop(0)
        if STEPS:
            return delay
    except Exception as exc:
        log(f"exception in {STEPS[0].__name__}", False, error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc())
    finish()
    return None


bpy.app.timers.register(runner, first_interval=2.0)
