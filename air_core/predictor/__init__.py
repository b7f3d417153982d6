"""The AIR predictor: per-patch Gaussian parameterisation, stage control and the staged network.

* :func:`patch_centres`, :func:`patch_grid`, :func:`decode_candidates`: AIR's raw 8-vector -> Gaussian
  parameterisation (``parameterization``).
* :func:`stage_control`, :func:`patch_errors`: per-patch MSE / SSIM tests deciding which candidates are
  kept (``stage_control``).
* :class:`AIRPredictor`, :class:`PredictorOutput`: stage-wise residual prediction (``model``). Untrained
  as constructed; the shipped weights are at :data:`PRETRAINED_PATH`; :func:`load_encoder_jbu` reads
  the JBU stack trained with ``fit_jbu`` for its first-stage encoder features.
* :func:`reconstruct`, :class:`ReconstructResult`, :class:`ReconstructCancelled`, :func:`load_predictor`:
  image -> Gaussians with the (shipped) predictor, timed per stage, optionally refined per image (``api``).
"""

from .api import ReconstructCancelled, ReconstructResult, load_predictor, reconstruct
from .model import ENCODER_JBU_PATH, ENCODER_STRIDE, PRETRAINED_PATH, AIRPredictor, PredictorOutput, load_encoder_jbu
from .parameterization import RAW_CHANNELS, decode_candidates, patch_centres, patch_grid
from .stage_control import MSE_THRESHOLD, SSIM_THRESHOLD, patch_errors, stage_control

__all__ = [
    "AIRPredictor", "PredictorOutput", "ENCODER_STRIDE", "PRETRAINED_PATH", "ENCODER_JBU_PATH", "load_encoder_jbu",
    "reconstruct", "ReconstructResult", "ReconstructCancelled", "load_predictor",
    "RAW_CHANNELS", "decode_candidates", "patch_centres", "patch_grid",
    "stage_control", "patch_errors", "MSE_THRESHOLD", "SSIM_THRESHOLD",
]
