"""Viewport preview: a SpaceView3D draw handler that overlays an upscaled low-resolution splat render.

The maths (view -> camera, render, upscale, cache key) lives in :mod:`.splat_math` and is tested without a
display; this module only holds the handler, the cache of the last texture and the GPU calls, which need a
window (Blender's ``gpu`` drawing functions are unavailable in background mode). The render runs inside
the draw callback, so the viewport waits for it; the result is cached by view (view and projection
matrices, region size, splat objects and their transforms) and re-rendered only when that changes.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import splat_math, store

_STATE: dict = {"handler": None, "key": None, "texture": None, "message": ""}


def is_enabled() -> bool:
    return _STATE["handler"] is not None


def message() -> str:
    """The last problem the preview hit (shown in the panel), or ''."""
    return _STATE["message"]


def enable() -> None:
    if _STATE["handler"] is None:
        _STATE["handler"] = bpy.types.SpaceView3D.draw_handler_add(_draw, (), "WINDOW", "POST_PIXEL")
    _STATE.update(key=None, texture=None, message="")


def disable() -> None:
    if _STATE["handler"] is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_STATE["handler"], "WINDOW")
    _STATE.update(handler=None, key=None, texture=None, message="")


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
    if region is None or rv3d is None or region.width < 2 or region.height < 2:
        return
    objects = store.splat_objects(context, for_render=False)
    if not objects:
        _STATE.update(texture=None, message="")
        return
    scale = _preview_scale(context)
    key = splat_math.view_key(rv3d.view_matrix, rv3d.window_matrix, region.width, region.height,
                              [(o[store.ID_KEY], o.matrix_world) for o in objects]) + (scale,)
    if key != _STATE["key"]:
        _STATE["key"] = key
        if not rv3d.is_perspective:
            raise ValueError("AIR preview: only perspective views are supported (press Numpad 5)")
        scene = store.world_scene(objects, store.device(context))
        rgba = splat_math.view_rgba(scene, rv3d.view_matrix, rv3d.window_matrix, region.width, region.height,
                                    scale)
        pixels = np.ascontiguousarray(rgba[::-1], dtype=np.float32).reshape(-1)  # GPU textures are bottom-up
        buffer = gpu.types.Buffer("FLOAT", pixels.size, pixels)
        _STATE.update(texture=gpu.types.GPUTexture((region.width, region.height), format="RGBA32F", data=buffer),
                      message="")
    if _STATE["texture"] is not None:
        gpu.state.blend_set("ALPHA_PREMULT")
        draw_texture_2d(_STATE["texture"], (0, 0), region.width, region.height)
        gpu.state.blend_set("NONE")
