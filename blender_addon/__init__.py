"""Blender add-on of the AIR toolkit (3D Gaussian Splatting import, render and gradient-aware upscaling).

Not implemented yet: this package only reserves the add-on's place in the layout. It registers
nothing. The add-on itself is the subject of its own issue (it needs the 3DGS renderer first).
"""

bl_info = {
    "name": "AIR Gaussian Splatting",
    "author": "AIR toolkit developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "category": "Import-Export",
    "description": "Placeholder: registers nothing yet",
}


def register() -> None:
    """Nothing to register yet."""


def unregister() -> None:
    """Nothing to unregister yet."""
