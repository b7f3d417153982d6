"""air_core: the engine of the AIR Gaussian-splat image toolkit.

Public API (import from here):

* images: :func:`to_tensor`, :func:`from_tensor`, :func:`load_image`, :func:`save_image`,
  :func:`sample_image`, :func:`error_map`
* 2D Gaussians: :class:`Gaussians2D`, :func:`load_gaussians`, :func:`save_gaussians`
* rendering: :func:`render`, :func:`render_with_derivatives`, :func:`rasterize_to_pixels`,
  :class:`RenderOutput`
* reconstruction (the AIR predictor, :mod:`air_core.predictor`): :func:`reconstruct`,
  :class:`ReconstructResult`, :class:`ReconstructCancelled`
* fitting: :func:`fit`, :class:`FitResult`, :func:`initialize`
* metrics: :func:`psnr`, :func:`ssim`, :func:`ms_ssim`, :func:`ssim_loss`, :func:`compute_metrics`
* 3D Gaussian Splatting (:mod:`air_core.splat3d`): :class:`GaussianScene`, :func:`load_ply`,
  :func:`save_ply`, :class:`Camera`, :func:`orbit_cameras_for_scene`, :func:`camera_from_blender`,
  :func:`render_splats` (= :func:`air_core.splat3d.render`)
* upscaling (:mod:`air_core.upscale`): :func:`hermite_upscale`, :func:`upscale`,
  :func:`render_upscaled`
* joint bilateral upsampling (:mod:`air_core.jbu`): :func:`jbu_upsample`, :func:`fit_jbu`
* compression (:mod:`air_core.codec`, AIR's image-adaptive quantizer + ANS-coded ``.air`` files):
  :func:`encode_gaussians` (= :func:`air_core.codec.encode`), :func:`decode_gaussians`
  (= :func:`air_core.codec.decode`), :class:`EncodeStats`

The package never imports napari, Qt or bpy, and imports no GPU-only module at import time.
"""

from . import codec
from .codec import EncodeStats
from .codec import decode as decode_gaussians
from .codec import encode as encode_gaussians
from .fitting import FitResult, fit, initialize
from .gaussians import Gaussians2D, load_gaussians, save_gaussians
from .jbu import fit_jbu, jbu_upsample
from .images import (ImageTooLargeError, error_map, from_tensor, load_image, sample_image, save_error_map,
                     save_image, to_tensor)
from .metrics import compute_metrics, ms_ssim, psnr, ssim, ssim_loss
from .predictor import ReconstructCancelled, ReconstructResult, reconstruct
from .raster2d import RenderOutput, rasterize_to_pixels, render, render_with_derivatives
from .splat3d import Camera, GaussianScene, camera_from_blender, load_ply, orbit_cameras_for_scene, save_ply
from .splat3d import render as render_splats
from .upscale import hermite_upscale, render_upscaled, upscale

__version__ = "0.1.0"

__all__ = [
    "reconstruct", "ReconstructResult", "ReconstructCancelled",
    "FitResult", "fit", "initialize",
    "Gaussians2D", "load_gaussians", "save_gaussians",
    "ImageTooLargeError", "error_map", "from_tensor", "load_image", "sample_image", "save_error_map",
    "save_image", "to_tensor",
    "compute_metrics", "ms_ssim", "psnr", "ssim", "ssim_loss",
    "RenderOutput", "rasterize_to_pixels", "render", "render_with_derivatives",
    "Camera", "GaussianScene", "camera_from_blender", "load_ply", "orbit_cameras_for_scene", "save_ply",
    "render_splats", "hermite_upscale", "render_upscaled", "upscale",
    "fit_jbu", "jbu_upsample",
    "codec", "EncodeStats", "encode_gaussians", "decode_gaussians",
]
