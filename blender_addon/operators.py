"""Operators: import / export .ply splats, render from the scene camera, dependency check, preview toggle.

Every operator turns expected failures (missing dependencies, bad files, no camera, an orthographic
camera, a non-uniform object scale, ...) into ``self.report({'ERROR'}, message)`` + ``{'CANCELLED'}``;
unexpected exceptions are reported the same way (with their type) instead of a traceback.
"""

from __future__ import annotations

import os
import uuid

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import deps, store
from .store import UserError

IMAGE_NAME = "AIR Render"
SCALE_ITEMS = [("1", "Full", "Render every pixel"),
               ("2", "1/2", "Render at half resolution and upscale with the gradient-aware upscaler"),
               ("3", "1/3", "Render at a third of the resolution and upscale"),
               ("4", "1/4", "Render at a quarter of the resolution and upscale")]


def _run(op, fn):
    """Call ``fn()``; report user-facing errors (and unexpected ones) instead of raising."""
    try:
        return fn()
    except (UserError, deps.DependencyError) as exc:
        op.report({"ERROR"}, str(exc))
    except Exception as exc:  # never show a traceback to the user
        op.report({"ERROR"}, f"AIR: unexpected {type(exc).__name__}: {exc}")
    return {"CANCELLED"}


class AIR_OT_import_splat(bpy.types.Operator, ImportHelper):
    """Import a 3D Gaussian Splatting scene (INRIA .ply) as a point object rendered by AIR"""

    bl_idname = "import_scene.air_splat_ply"
    bl_label = "Import 3D Gaussian Splatting (.ply)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})

    def execute(self, context):
        return _run(self, lambda: self._import(context))

    def _import(self, context):
        store.ensure_core(context)
        from air_core.splat3d import load_ply

        path = os.path.abspath(bpy.path.abspath(self.filepath))
        try:
            scene = load_ply(path)
        except FileNotFoundError:
            raise UserError(f"AIR: file not found: {path}") from None
        except (ValueError, OSError) as exc:
            raise UserError(f"AIR: cannot import {os.path.basename(path)}: {exc}") from None
        if len(scene) == 0:
            raise UserError(f"AIR: {os.path.basename(path)} holds no Gaussians")
        name = os.path.splitext(os.path.basename(path))[0] or "Splats"
        mesh = bpy.data.meshes.new(name)
        mesh.vertices.add(len(scene))
        mesh.vertices.foreach_set("co", scene.means.detach().cpu().float().numpy().reshape(-1))
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
        key = uuid.uuid4().hex
        obj[store.ID_KEY] = key
        obj[store.PATH_KEY] = path
        obj[store.COUNT_KEY] = len(scene)
        store.SCENES[key] = scene
        (context.collection or context.scene.collection).objects.link(obj)
        for other in context.view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        self.report({"INFO"}, f"AIR: imported {len(scene):,} Gaussians (SH degree {scene.sh_degree}) as {obj.name!r}")
        return {"FINISHED"}


class AIR_OT_export_splat(bpy.types.Operator, ExportHelper):
    """Export the active splat object's Gaussians to an INRIA .ply file"""

    bl_idname = "export_scene.air_splat_ply"
    bl_label = "Export 3D Gaussian Splatting (.ply)"

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})
    apply_transform: BoolProperty(
        name="Apply Object Transform",
        description="Write the Gaussians in world space (rotation, translation and uniform scale applied, "
                    "spherical harmonics rotated); off writes the file's own coordinates",
        default=False)

    @classmethod
    def poll(cls, context):
        return store.is_splat(context.active_object)

    def execute(self, context):
        return _run(self, lambda: self._export(context))

    def _export(self, context):
        obj = context.active_object
        if not store.is_splat(obj):
            raise UserError("AIR: select a splat object (imported with File > Import > 3D Gaussian Splatting)")
        store.ensure_core(context)
        from air_core.splat3d import save_ply

        from . import splat_math

        scene = store.scene_of(obj)
        if self.apply_transform:
            try:
                scene = splat_math.transform_scene(scene, obj.matrix_world, name=repr(obj.name))
            except ValueError as exc:
                raise UserError(f"AIR: {exc}") from None
        path = os.path.abspath(bpy.path.abspath(self.filepath))
        try:
            save_ply(scene, path)
        except (ValueError, OSError) as exc:
            raise UserError(f"AIR: cannot write {path}: {exc}") from None
        self.report({"INFO"}, f"AIR: wrote {len(scene):,} Gaussians to {path}")
        return {"FINISHED"}


def camera_for_render(context):
    """air_core Camera of the active scene camera at the scene's render resolution (or UserError)."""
    from air_core.splat3d import camera_from_blender

    scene = context.scene
    cam = scene.camera
    if cam is None:
        raise UserError("AIR: the scene has no active camera; add one (Add > Camera) and make it active "
                        "(Ctrl+Numpad 0)")
    if cam.type != "CAMERA":
        raise UserError(f"AIR: the active camera {cam.name!r} is not a camera object")
    if cam.data.type != "PERSP":
        raise UserError(f"AIR: camera {cam.name!r} is {cam.data.type.lower()}; only perspective cameras are "
                        "supported")
    context.view_layer.update()
    r = scene.render
    try:
        d = cam.data
        return camera_from_blender(np.array(cam.matrix_world, dtype=np.float64), d.lens, d.sensor_width,
                                   d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y, r.resolution_x,
                                   r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y)
    except ValueError as exc:
        raise UserError(f"AIR: camera {cam.name!r} cannot be used: {exc}") from None


def store_image(rgba, name: str = IMAGE_NAME, premultiplied: bool = False):
    """Write a top-down RGBA float array into the float Image datablock ``name`` (created or resized)."""
    from . import splat_math

    h, w = rgba.shape[:2]
    image = bpy.data.images.get(name)
    if image is not None and (not image.is_float or image.source != "GENERATED"):
        bpy.data.images.remove(image)
        image = None
    if image is None:
        image = bpy.data.images.new(name, w, h, alpha=True, float_buffer=True)
    elif tuple(image.size) != (w, h):
        image.scale(w, h)
    image.colorspace_settings.name = "sRGB"  # the renderer's colours are display (sRGB) values
    image.alpha_mode = "PREMUL" if premultiplied else "STRAIGHT"
    image.pixels.foreach_set(splat_math.to_blender_pixels(rgba))
    image.update()
    return image


def _show_image(context, image) -> None:
    screen = getattr(context, "screen", None)
    for area in (screen.areas if screen is not None else []):
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            area.tag_redraw()


class AIR_OT_render_splats(bpy.types.Operator):
    """Render every splat object from the active camera at the scene's resolution into the image "AIR Render"
    (optionally at 1/2, 1/3 or 1/4 resolution, upscaled with the gradient-aware upscaler)"""

    bl_idname = "air.render_splats"
    bl_label = "Render Splats"
    bl_options = {"REGISTER"}

    scale: EnumProperty(name="Resolution", items=SCALE_ITEMS, default="1",
                        description="Render resolution; below full, the image is upscaled from exact derivatives")
    use_scene_settings: BoolProperty(name="Use Panel Settings", default=True, options={"HIDDEN", "SKIP_SAVE"},
                                     description="Take the resolution from the AIR panel instead of 'scale'")

    def invoke(self, context, event):
        settings = getattr(context.scene, "air_splat", None)
        if self.use_scene_settings and settings is not None:
            self.scale = settings.render_scale
        return self.execute(context)

    def execute(self, context):
        return _run(self, lambda: self._render(context))

    def _render(self, context):
        from . import splat_math

        wm = context.window_manager if context.window is not None else None
        store.ensure_core(context)
        camera = camera_for_render(context)
        objects = store.splat_objects(context, for_render=True)
        if not objects:
            raise UserError("AIR: no splat objects to render (import one with File > Import > "
                            "3D Gaussian Splatting, and check it is not disabled in renders)")
        if wm is not None:
            wm.progress_begin(0, 3)
        try:
            dev = store.device(context)
            scene = store.world_scene(objects, dev)
            if wm is not None:
                wm.progress_update(1)
            transparent = bool(context.scene.render.film_transparent)
            world = context.scene.world
            background = splat_math.linear_to_srgb(world.color) if world is not None else (0.0, 0.0, 0.0)
            rgba = splat_math.render_rgba(scene, camera, int(self.scale), background, transparent)
            if wm is not None:
                wm.progress_update(2)
            image = store_image(rgba, premultiplied=transparent)
            _show_image(context, image)
        finally:
            if wm is not None:
                wm.progress_end()
        label = "full resolution" if self.scale == "1" else f"1/{self.scale} resolution, upscaled"
        self.report({"INFO"}, f"AIR: rendered {len(scene):,} Gaussians of {len(objects)} object(s) at "
                              f"{camera.width}x{camera.height} ({label}) into image {IMAGE_NAME!r}")
        return {"FINISHED"}


class AIR_OT_check_dependencies(bpy.types.Operator):
    """Report whether PyTorch and air_core can be imported, from where, and whether CUDA is available"""

    bl_idname = "air.check_dependencies"
    bl_label = "Check Dependencies"

    def execute(self, context):
        prefs = store.addon_prefs(context)
        folder = prefs.site_packages if prefs is not None and prefs.source == "FOLDER" else ""
        info = deps.check(folder)
        if prefs is not None:
            prefs.last_check = ("OK: " if info["ok"] else "Missing: ") + _summary(info)
        if not info["ok"]:
            self.report({"ERROR"}, "AIR: " + "; ".join(info["messages"]) + ". " + deps.HINT)
            return {"CANCELLED"}
        self.report({"INFO"}, "AIR: " + _summary(info))
        return {"FINISHED"}


def _summary(info: dict) -> str:
    parts = [f"torch {info['torch']}" if info["torch"] else "torch missing",
             f"air_core at {info['air_core']}" if info["air_core"] else "air_core missing"]
    if info["torch"]:
        parts.append(f"CUDA: {info['cuda']}" if info["cuda"] else "CUDA: not available (CPU rendering)")
    return ", ".join(parts)


class AIR_OT_toggle_preview(bpy.types.Operator):
    """Show or hide the splats in the 3D viewport (a low-resolution render upscaled with the
    gradient-aware upscaler, refreshed when the view changes)"""

    bl_idname = "air.toggle_preview"
    bl_label = "Toggle Splat Preview"

    def execute(self, context):
        from . import preview

        if preview.is_enabled():
            preview.disable()
            self.report({"INFO"}, "AIR: viewport preview off")
            return {"FINISHED"}
        return _run(self, lambda: self._enable(context, preview))

    def _enable(self, context, preview):
        store.ensure_core(context)
        preview.enable()
        for area in (context.screen.areas if context.screen is not None else []):
            if area.type == "VIEW_3D":
                area.tag_redraw()
        self.report({"INFO"}, "AIR: viewport preview on")
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(AIR_OT_import_splat.bl_idname, text="3D Gaussian Splatting (.ply)")


def menu_export(self, context):
    self.layout.operator(AIR_OT_export_splat.bl_idname, text="3D Gaussian Splatting (.ply)")


classes = (AIR_OT_import_splat, AIR_OT_export_splat, AIR_OT_render_splats, AIR_OT_check_dependencies,
           AIR_OT_toggle_preview)
