"""Joint bilateral upsampling of feature, probability and label maps guided by a high-resolution image.

* :func:`jbu_upsample`: the entry point (classical, learned or plain interpolation; feature,
  probability or label maps; any output size).
* :func:`adaptive_conv`: per-pixel-kernel convolution in bounded-memory chunks (forward and backward),
  with :func:`adaptive_conv_reference` (unfold + einsum) as the naive oracle; :func:`local_correlation`
  (per-pixel window dot products: the learned range kernel's logits) in the same chunks.
* :func:`joint_bilateral_upsample`, :func:`classical_kernel`, :func:`apply_classical_kernel`: classical
  JBU (Kopf et al. 2007).
* :class:`JBUStage`, :class:`JBUStack`: FeatUp's learned JBU (Fu et al. 2024), a stack reaching any size;
  :meth:`JBUStack.save` / :meth:`JBUStack.load`.
* :func:`fit_jbu`: train a stack for any backbone with FeatUp's multi-view consistency objective.
"""

from .adaptive_conv import adaptive_conv, adaptive_conv_reference, chunk_plan, local_correlation
from .api import MAP_TYPES, METHODS, jbu_upsample
from .classical import ClassicalKernel, apply_classical_kernel, classical_kernel, joint_bilateral_upsample
from .learned import JBUStack, JBUStage, channel_norm, stage_sizes
from .training import AttentionDownsampler, BlurDownsampler, FitJBUResult, fit_jbu

__all__ = [
    "jbu_upsample", "METHODS", "MAP_TYPES",
    "adaptive_conv", "adaptive_conv_reference", "chunk_plan", "local_correlation",
    "ClassicalKernel", "classical_kernel", "apply_classical_kernel", "joint_bilateral_upsample",
    "JBUStage", "JBUStack", "channel_norm", "stage_sizes",
    "fit_jbu", "FitJBUResult", "BlurDownsampler", "AttentionDownsampler",
]
