"""Viewport preview: a SpaceView3D draw handler that overlays an upscaled low-resolution splat render.

The maths (view -> camera, render, upscale, cache key) lives in :mod:`.splat_math` and is tested without a
display. The render does not run in the draw callback: when the view changes, the callback hands the
view to a worker thread (:class:`PreviewRenderer`) and keeps drawing the last finished image, so
orbiting stays smooth while a new image is rendered; a timer polls the worker and asks the 3D views
to redraw when an image is ready, and the next draw uploads it as a texture. Only one render is in
flight; views that arrive meanwhile replace each other and the newest is rendered next. The worker
touches no Blender data (the splats are merged into a world-space scene on the main thread first) and
the toolkit's compiled kernels release the GIL, so Blender's UI keeps running beside it. Renders of
the add-on never overlap (:data:`.store.RENDER_LOCK`).
"""

from __future__ import annotations

import threading
import time

import bpy
import numpy as np

from . import splat_math, store

POLL_SECONDS = 0.05


class PreviewRenderer:
    """One background render at a time of the newest requested view (no bpy inside; testable headless).

    ``request(key, scene, view_matrix, window_matrix, width, height, scale)`` asks for a render (the
    matrices are copied); a request made while a render runs waits, replacing any request already
    waiting, and starts when the running render ends. ``poll()`` returns ``(key, rgba, error)`` of the
    newest finished render not yet collected (rgba a top-down float32 [H, W, 4] premultiplied array
    from :func:`.splat_math.view_rgba`, or None with the error message), else None. ``busy`` says
    whether a render is running or waiting.
    """

    def __init__(self, render=None):
        self._render = render  # default: splat_math.view_rgba, looked up at each render
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._waiting: tuple | None = None
        self._finished: tuple | None = None
        self.requested_key = None

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None or self._waiting is not None

    def request(self, key, scene, view_matrix, window_matrix, width: int, height: int, scale: float) -> None:
        job = (key, scene, np.array(view_matrix, dtype=np.float64), np.array(window_matrix, dtype=np.float64),
               int(width), int(height), scale)
        with self._lock:
            self.requested_key = key
            self._waiting = job
            if self._thread is None:
                self._start_locked()

    def _start_locked(self) -> None:
        job, self._waiting = self._waiting, None
        self._thread = threading.Thread(target=self._run, args=(job,), name="air-preview", daemon=True)
        self._thread.start()

    def _run(self, job) -> None:
        key, scene, view_matrix, window_matrix, width, height, scale = job
        render = self._render or splat_math.view_rgba
        try:
            with store.RENDER_LOCK:
                result = (key, render(scene, view_matrix, window_matrix, width, height, scale), None)
        except Exception as exc:  # reported by the draw handler; the worker must not die silently
            message = str(exc) if isinstance(exc, (store.UserError, ValueError)) else f"{type(exc).__name__}: {exc}"
            result = (key, None, f"AIR preview: {message}" if not message.startswith("AIR") else message)
        with self._lock:
            self._finished = result  # replaces an older result nobody collected: only the newest counts
            self._thread = None
            if self._waiting is not None:
                self._start_locked()

    def poll(self):
        with self._lock:
            result, self._finished = self._finished, None
        return result

    def wait(self, timeout: float = 60.0) -> None:
        """Block until no render is running or waiting (tests, shutdown); raise TimeoutError after
        ``timeout`` seconds. Finished results stay for :meth:`poll`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                return
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError("the preview render did not finish")


_STATE: dict = {"handler": None, "key": None, "texture": None, "pixels": None, "message": "",
                "renderer": None}


def is_enabled() -> bool:
    return _STATE["handler"] is not None


def message() -> str:
    """The last problem the preview hit (shown in the panel), or ''."""
    return _STATE["message"]


def enable() -> None:
    if _STATE["handler"] is None:
        _STATE["handler"] = bpy.types.SpaceView3D.draw_handler_add(_draw, (), "WINDOW", "POST_PIXEL")
    _STATE.update(key=None, texture=None, pixels=None, message="", renderer=PreviewRenderer())
    if not bpy.app.timers.is_registered(_poll):
        # persistent: the draw handler outlives loading a .blend file, so must the poll
        bpy.app.timers.register(_poll, first_interval=POLL_SECONDS, persistent=True)


def disable() -> None:
    if _STATE["handler"] is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_STATE["handler"], "WINDOW")
    if bpy.app.timers.is_registered(_poll):
        bpy.app.timers.unregister(_poll)
    renderer = _STATE["renderer"]
    if renderer is not None:  # let a render in flight finish (it holds the render lock)
        try:
            renderer.wait(timeout=30.0)
        except TimeoutError:
            pass
    _STATE.update(handler=None, key=None, texture=None, pixels=None, message="", renderer=None)


def _poll():
    """Timer (main thread): collect a finished render and ask the 3D views to redraw."""
    if _STATE["handler"] is None:
        return None
    renderer = _STATE["renderer"]
    result = renderer.poll() if renderer is not None else None
    if result is not None:
        key, rgba, error = result
        if error is not None:
            _STATE.update(message=error, pixels=None)
        else:
            # GPU textures are bottom-up; the texture itself is made by the next draw (GPU context)
            _STATE.update(pixels=(key, np.ascontiguousarray(rgba[::-1], dtype=np.float32).reshape(-1),
                                  rgba.shape[1], rgba.shape[0]), message="")
        for window in bpy.context.window_manager.windows:
            for area in window.screen.areas:
                if area.type == "VIEW_3D":
                    area.tag_redraw()
    return POLL_SECONDS


def _preview_scale(context) -> int:
    settings = getattr(context.scene, "air_splat", None)
    return int(settings.preview_scale) if settings is not None else 4


def _draw() -> None:
    try:
        _draw_view(bpy.context)
    except (store.UserError, ValueError) as exc:
        _STATE.update(message=str(exc), texture=None)
    except Exception as exc:  # a draw callback must never raise into Blender's draw loop
        _STATE.update(message=f"AIR preview: {type(exc).__name__}: {exc}", texture=None)


def _draw_view(context) -> None:
    import gpu
    from gpu_extras.presets import draw_texture_2d

    region, rv3d = context.region, context.region_data
    renderer = _STATE["renderer"]
    if region is None or rv3d is None or region.width < 2 or region.height < 2 or renderer is None:
        return
    objects = store.splat_objects(context, for_render=False)
    if not objects:
        _STATE.update(texture=None, key=None, message="")
        return
    scale = _preview_scale(context)
    key = splat_math.view_key(rv3d.view_matrix, rv3d.window_matrix, region.width, region.height,
                              [(o[store.ID_KEY], o.matrix_world) for o in objects]) + (scale,)
    if key != _STATE["key"] and key != renderer.requested_key:
        if not rv3d.is_perspective:
            raise ValueError("AIR preview: only perspective views are supported (press Numpad 5)")
        # bpy data is read here, on the main thread; the worker only renders
        scene = store.world_scene(objects, store.device(context))
        renderer.request(key, scene, rv3d.view_matrix, rv3d.window_matrix, region.width, region.height, scale)
    pixels = _STATE["pixels"]
    if pixels is not None:
        done_key, flat, width, height = pixels
        _STATE["pixels"] = None
        buffer = gpu.types.Buffer("FLOAT", flat.size, flat)
        _STATE.update(texture=(gpu.types.GPUTexture((width, height), format="RGBA32F", data=buffer), width, height),
                      key=done_key)
    if _STATE["texture"] is not None:
        texture, width, height = _STATE["texture"]
        gpu.state.blend_set("ALPHA_PREMULT")
        # the last finished image (an older view while a new one renders), at its own size
        draw_texture_2d(texture, (0, 0), width, height)
        gpu.state.blend_set("NONE")
