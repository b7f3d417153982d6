"""Preferences, per-scene settings and the 3D-view sidebar panel (tab "AIR")."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from . import deps, operators, store


class AIR_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    source: EnumProperty(
        name="Python Packages",
        items=[("ENVIRONMENT", "Current Environment", "Use the torch and air_core that Blender's Python can "
                "already import (e.g. Blender as the bpy module inside the toolkit's virtual environment)"),
               ("FOLDER", "Site-Packages Folder", "Add a folder (the site-packages of a Python 3.11 environment "
                "with the AIR toolkit installed) to sys.path")],
        default="ENVIRONMENT")
    site_packages: StringProperty(name="Site-Packages Folder", subtype="DIR_PATH",
                                  description="e.g. /home/me/air-venv/lib/python3.11/site-packages")
    device: EnumProperty(name="Device",
                         items=[("AUTO", "Auto", "CUDA when available, else CPU"),
                                ("CPU", "CPU", "Always render on the CPU"),
                                ("CUDA", "CUDA", "Render on the GPU (fails with a message when CUDA is missing)")],
                         default="AUTO")
    last_check: StringProperty(name="Last Check", default="")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "source", expand=True)
        if self.source == "FOLDER":
            layout.prop(self, "site_packages")
        layout.prop(self, "device")
        layout.operator(operators.AIR_OT_check_dependencies.bl_idname, icon="CHECKMARK")
        if self.last_check:
            layout.label(text=self.last_check)


class AIR_SplatSettings(bpy.types.PropertyGroup):
    render_scale: EnumProperty(name="Render Resolution", items=operators.SCALE_ITEMS, default="1",
                               description="Full resolution, or a fraction upscaled with the gradient-aware "
                                           "upscaler")
    preview_scale: EnumProperty(name="Preview Resolution", items=operators.SCALE_ITEMS[1:], default="4",
                                description="Fraction of the viewport's resolution the preview renders at")


class VIEW3D_PT_air_splats(bpy.types.Panel):
    bl_label = "Gaussian Splats"
    bl_idname = "VIEW3D_PT_air_splats"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "AIR"

    def draw(self, context):
        from . import preview

        layout = self.layout
        if not deps.available():
            box = layout.box()
            box.label(text="PyTorch / air_core not found", icon="ERROR")
            box.label(text="Set them up in the add-on preferences")
            box.operator(operators.AIR_OT_check_dependencies.bl_idname, icon="CHECKMARK")
        layout.operator(operators.AIR_OT_import_splat.bl_idname, text="Import .ply", icon="IMPORT")
        objects = [o for o in context.view_layer.objects if store.is_splat(o)]
        count = sum(int(o.get(store.COUNT_KEY, 0)) for o in objects)
        layout.label(text=f"{len(objects)} splat object(s), {count:,} Gaussians")
        settings = context.scene.air_splat
        col = layout.column(align=True)
        col.label(text="Render Resolution")
        col.row(align=True).prop(settings, "render_scale", expand=True)
        layout.operator(operators.AIR_OT_render_splats.bl_idname, icon="RENDER_STILL")
        layout.separator()
        col = layout.column(align=True)
        col.label(text="Viewport Preview")
        col.row(align=True).prop(settings, "preview_scale", expand=True)
        on = preview.is_enabled()
        layout.operator(operators.AIR_OT_toggle_preview.bl_idname, text="Hide Preview" if on else "Show Preview",
                        icon="HIDE_OFF" if on else "HIDE_ON", depress=on)
        if preview.message():
            layout.label(text=preview.message(), icon="ERROR")


classes = (AIR_AddonPreferences, AIR_SplatSettings, VIEW3D_PT_air_splats)
