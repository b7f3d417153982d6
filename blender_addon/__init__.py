"""Blender add-on of the AIR toolkit: 3D Gaussian Splatting import / export, render and gradient-aware upscaling.

* File > Import / Export > 3D Gaussian Splatting (.ply): ``import_scene.air_splat_ply``,
  ``export_scene.air_splat_ply``. A splat object is a mesh whose vertices are the Gaussians' means (see
  :mod:`.store`); its transform (rotation, translation, uniform scale) moves the splats in renders.
* 3D view sidebar, tab "AIR": render every splat object from the active camera (``air.render_splats``, into
  the image "AIR Render"; full resolution or 1/2, 1/3, 1/4 upscaled from exact derivatives) and a viewport
  preview (``air.toggle_preview``).
* Preferences: where torch and air_core come from, the device, and a check button
  (``air.check_dependencies``).

Works as a Blender 4.2+ extension (``blender_manifest.toml``) and as a legacy add-on (``bl_info``). The
rendering needs PyTorch and ``air_core``, imported only when an operator runs: the add-on loads without
them and says what is missing. Build the installable zip with ``python scripts/build_blender_addon.py``.
"""

bl_info = {
    "name": "AIR Gaussian Splatting",
    "author": "AIR toolkit developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "File > Import/Export > 3D Gaussian Splatting (.ply); 3D View > Sidebar > AIR",
    "description": "Import, render and upscale 3D Gaussian Splatting scenes with the AIR toolkit",
    "category": "Import-Export",
}

import bpy  # noqa: E402

from . import operators, preview, store, ui  # noqa: E402

_CLASSES = operators.classes + ui.classes


def register() -> None:
    for cls in _CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.air_splat = bpy.props.PointerProperty(type=ui.AIR_SplatSettings)
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)
    bpy.types.TOPBAR_MT_file_export.append(operators.menu_export)


def unregister() -> None:
    preview.disable()
    bpy.types.TOPBAR_MT_file_export.remove(operators.menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    del bpy.types.Scene.air_splat
    for cls in reversed(_CLASSES):
        bpy.utils.unregister_class(cls)
    store.clear_caches()
