"""3D Gaussian Splatting: INRIA .ply scenes, OpenCV cameras (and Blender's), SH colour, rendering.

* :class:`GaussianScene`, :func:`load_ply`, :func:`save_ply` -- the scene container (raw INRIA
  parameters; activations in one place) and its file I/O.
* :class:`Camera`, :func:`look_at`, :func:`orbit_cameras`, :func:`orbit_cameras_for_scene`,
  :func:`camera_from_blender`, :func:`blender_view_to_camera` -- pinhole cameras in the OpenCV
  convention (x right, y down, z forward; world-to-camera ``viewmat``; intrinsics ``K`` in pixels).
* :func:`eval_sh`, :func:`sh_colours` -- real spherical harmonics up to degree 3.
* :func:`project`, :func:`render` -- EWA projection and the tile rasterizer with image derivatives.

:func:`air_core.upscale.render_upscaled` renders a scene at low resolution and upscales it.
"""

from .camera import (Camera, blender_view_to_camera, camera_from_blender, intrinsic_matrix, look_at, orbit_cameras,
                     orbit_cameras_for_scene)
from .render import ProjectedGaussians, SplatRenderOutput, project, render
from .scene import GaussianScene, load_ply, save_ply
from .sh import SH_C0, eval_sh, sh_colours

__all__ = [
    "GaussianScene", "load_ply", "save_ply",
    "Camera", "intrinsic_matrix", "look_at", "orbit_cameras", "orbit_cameras_for_scene", "camera_from_blender",
    "blender_view_to_camera",
    "SH_C0", "eval_sh", "sh_colours",
    "ProjectedGaussians", "SplatRenderOutput", "project", "render",
]
