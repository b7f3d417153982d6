"""Splat objects and the scenes they hold.

A splat object is a mesh object whose vertices are the Gaussians' means (so the viewport shows the points
and the usual transform tools apply) with two custom properties: ``air_splat_id`` (a key into the
module-level cache of loaded :class:`air_core.splat3d.GaussianScene` objects) and ``air_splat_path`` (the
absolute path of the .ply file, used to reload the scene after Blender restarts, on undo or when a .blend
file is opened). Duplicated objects share the id, hence the scene (instancing).
"""

from __future__ import annotations

import os
import threading

import bpy

from . import deps

ID_KEY = "air_splat_id"
PATH_KEY = "air_splat_path"
COUNT_KEY = "air_splat_count"

#: splat id -> GaussianScene as loaded from its file (CPU, float32, object-local coordinates)
SCENES: dict = {}
#: one cached world-space merged scene: (key, scene)
_WORLD: dict = {}
#: held by every render of the add-on (render operator bands, viewport preview worker): they never
#: run at the same time (the compiled kernels' thread pool is not shared between concurrent callers)
RENDER_LOCK = threading.Lock()


class UserError(Exception):
    """A problem the user can fix; its message goes to ``Operator.report``."""


def addon_prefs(context=None):
    """The add-on preferences, or None when the add-on is registered without the preferences system."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def ensure_core(context=None) -> None:
    """Import torch and air_core (using the preferences' folder); raise DependencyError otherwise."""
    prefs = addon_prefs(context)
    folder = prefs.site_packages if prefs is not None and prefs.source == "FOLDER" else ""
    deps.require(folder)


def device(context=None):
    """The torch device chosen in the preferences ("auto" when there are none)."""
    from air_core._device import resolve_device

    prefs = addon_prefs(context)
    choice = prefs.device.lower() if prefs is not None else "auto"
    try:
        return resolve_device(choice)
    except ValueError as exc:
        raise UserError(f"AIR: {exc} (change the device in the add-on preferences)") from None


def is_splat(obj) -> bool:
    return obj is not None and obj.type == "MESH" and ID_KEY in obj


def splat_objects(context, for_render: bool) -> list:
    """Splat objects of the view layer that are visible in renders (``for_render``) or in the viewport."""
    view_layer = context.view_layer
    objs = [o for o in view_layer.objects if is_splat(o)]
    if for_render:
        return [o for o in objs if not o.hide_render]
    return [o for o in objs if o.visible_get(view_layer=view_layer)]


def scene_of(obj):
    """The object's GaussianScene (object-local), loading it again from its file when not cached."""
    key = obj[ID_KEY]
    scene = SCENES.get(key)
    if scene is not None:
        return scene
    from air_core.splat3d import load_ply

    path = obj.get(PATH_KEY, "")
    if not path or not os.path.isfile(path):
        raise UserError(f"AIR: the splat file of {obj.name!r} is missing ({path or 'no path stored'}); "
                        "import it again")
    try:
        scene = load_ply(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"AIR: cannot reload {obj.name!r} from {path}: {exc}") from None
    SCENES[key] = scene
    return scene


def world_scene(objects, dev):
    """All ``objects`` moved to world space and merged (see :mod:`.splat_math`), on ``dev``; cached."""
    from . import splat_math

    key = (str(dev),) + tuple((o[ID_KEY], tuple(v for row in o.matrix_world for v in row)) for o in objects)
    if _WORLD.get("key") == key:
        return _WORLD["scene"]
    parts = []
    for obj in objects:
        try:
            parts.append(splat_math.transform_scene(scene_of(obj), obj.matrix_world, name=repr(obj.name)))
        except ValueError as exc:
            raise UserError(f"AIR: {exc}") from None
    scene = splat_math.merge_scenes(parts).to(device=dev)
    _WORLD.update(key=key, scene=scene)
    return scene


def clear_caches() -> None:
    SCENES.clear()
    _WORLD.clear()
