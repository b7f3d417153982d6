"""Operators: import / export .ply splats, render from the scene camera, dependency check, preview toggle.

Every operator turns expected failures (missing dependencies, bad files, no camera, an orthographic
camera, a non-uniform object scale, ...) into ``self.report({'ERROR'}, message)`` + ``{'CANCELLED'}``;
unexpected exceptions are reported the same way (with their type) instead of a traceback.

Rendering (``air.render_splats``) goes band by band (:class:`RenderJob`). Invoked from the UI (a
window is there) it is modal (:class:`ModalRender`): one band per timer event, Blender's progress
bar, Esc or a right click cancels and leaves the previous "AIR Render" image as it was. ``execute``
(scripts, background mode, ``INVOKE_DEFAULT`` without a window) renders the same bands at once.
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


def _report_error(op, exc: Exception) -> set:
    """Report ``exc`` as the user sees it (no traceback) and return ``{'CANCELLED'}``."""
    if isinstance(exc, (UserError, deps.DependencyError)):
        op.report({"ERROR"}, str(exc))
    else:  # never show a traceback to the user
        op.report({"ERROR"}, f"AIR: unexpected {type(exc).__name__}: {exc}")
    return {"CANCELLED"}


def _run(op, fn):
    """Call ``fn()``; report user-facing errors (and unexpected ones) instead of raising."""
    try:
        return fn()
    except Exception as exc:
        return _report_error(op, exc)


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


class RenderJob:
    """One render of the splat objects from the active camera: the scene, camera and settings are taken
    when it is created, :meth:`step` renders one band (:class:`.splat_math.BandedRender`) and
    :meth:`store` writes the finished image into "AIR Render". Nothing touches the image before
    :meth:`store`, so a job dropped half way (cancelled) leaves a previous render as it was.

    Raises (on creation): UserError / DependencyError for what the user can fix.
    """

    def __init__(self, context, scale: int, band_rows: int | None = None):
        from . import splat_math

        store.ensure_core(context)
        self.camera = camera_for_render(context)
        self.objects = store.splat_objects(context, for_render=True)
        if not self.objects:
            raise UserError("AIR: no splat objects to render (import one with File > Import > "
                            "3D Gaussian Splatting, and check it is not disabled in renders)")
        self.scale = int(scale)
        self.scene = store.world_scene(self.objects, store.device(context))
        self.transparent = bool(context.scene.render.film_transparent)
        world = context.scene.world
        background = splat_math.linear_to_srgb(world.color) if world is not None else (0.0, 0.0, 0.0)
        with store.RENDER_LOCK:
            self.bands = splat_math.BandedRender(self.scene, self.camera, self.scale, background, self.transparent,
                                                 band_rows=band_rows)

    @property
    def total(self) -> int:
        return self.bands.total

    @property
    def done(self) -> int:
        return self.bands.done

    def step(self) -> bool:
        """Render the next band; True when all are done."""
        with store.RENDER_LOCK:
            return self.bands.step()

    def store(self, context):
        """Write the finished render into "AIR Render", show it, and return the report message."""
        image = store_image(self.bands.result(), premultiplied=self.transparent)
        _show_image(context, image)
        label = "full resolution" if self.scale == 1 else f"1/{self.scale} resolution, upscaled"
        return (f"AIR: rendered {len(self.scene):,} Gaussians of {len(self.objects)} object(s) at "
                f"{self.camera.width}x{self.camera.height} ({label}) into image {IMAGE_NAME!r}")


class ModalRender:
    """The modal part of :class:`AIR_OT_render_splats` as plain Python (testable without a window):
    a window-manager timer drives one band per TIMER event with the progress bar; ESC or a right
    click cancels. Whatever ends the render (done, cancelled, an error) removes the timer and ends
    the progress bar (:meth:`close`, safe to call more than once)."""

    CANCEL_EVENTS = {"ESC", "RIGHTMOUSE"}

    def __init__(self, op, context, job: RenderJob, interval: float = 0.01):
        self.op, self.job = op, job
        self.wm = context.window_manager
        self.timer = None
        self.progress = False
        try:
            self.wm.progress_begin(0, job.total)
            self.progress = True
            self.timer = self.wm.event_timer_add(interval, window=context.window)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            try:
                self.wm.event_timer_remove(timer)
            except Exception:  # the window may already be gone
                pass
        if self.progress:
            self.progress = False
            try:
                self.wm.progress_end()
            except Exception:
                pass

    def cancel(self) -> set:
        self.close()
        self.op.report({"INFO"}, "AIR: render cancelled")
        return {"CANCELLED"}

    def handle(self, context, event_type: str, event_value: str = "PRESS") -> set:
        """One event: returns the operator's modal result."""
        if event_type in self.CANCEL_EVENTS and event_value != "RELEASE":
            return self.cancel()
        if event_type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            finished = self.job.step()
            self.wm.progress_update(self.job.done)
            if not finished:
                return {"RUNNING_MODAL"}
            message = self.job.store(context)
        except Exception as exc:
            self.close()
            return _report_error(self.op, exc)
        except BaseException:
            self.close()
            raise
        self.close()
        self.op.report({"INFO"}, message)
        return {"FINISHED"}


class AIR_OT_render_splats(bpy.types.Operator):
    """Render every splat object from the active camera at the scene's resolution into the image "AIR Render"
    (optionally at 1/2, 1/3 or 1/4 resolution, upscaled with the gradient-aware upscaler). From the UI
    it renders in bands with a progress bar; Esc cancels"""

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
        if context.window is None:  # background mode, no event loop: render at once
            return self.execute(context)
        return _run(self, lambda: self._start_modal(context))

    def _start_modal(self, context):
        self._modal = ModalRender(self, context, RenderJob(context, int(self.scale)))
        try:
            context.window_manager.modal_handler_add(self)
        except BaseException:
            self._modal.close()
            raise
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        return self._modal.handle(context, event.type, event.value)

    def cancel(self, context):  # called by Blender when the modal operator is stopped from outside
        modal = getattr(self, "_modal", None)
        if modal is not None:
            modal.close()

    def execute(self, context):
        return _run(self, lambda: self._render(context))

    def _render(self, context):
        """Synchronous render (scripts, background mode): the same bands, the progress bar when there
        is a window, no cancelling."""
        job = RenderJob(context, int(self.scale))
        wm = context.window_manager if context.window is not None else None
        if wm is not None:
            wm.progress_begin(0, job.total)
        try:
            while not job.step():
                if wm is not None:
                    wm.progress_update(job.done)
            message = job.store(context)
        finally:
            if wm is not None:
                wm.progress_end()
        self.report({"INFO"}, message)
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
