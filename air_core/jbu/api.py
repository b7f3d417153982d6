"""``jbu_upsample``: one entry point for upsampling feature, probability and label maps guided by an image."""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._device import resolve_device
from ..images import to_tensor
from ._checks import check_chunk_bytes, check_finite, check_positive_number, check_size, describe
from .adaptive_conv import default_chunk_bytes
from .classical import apply_classical_kernel, check_guidance_blur, classical_kernel
from .learned import JBUStack, convex_kernel

__all__ = ["jbu_upsample", "METHODS", "MAP_TYPES"]

METHODS = ("classical", "learned", "bilinear", "bicubic", "nearest")
MAP_TYPES = ("features", "probabilities", "labels")

_Operator = Callable[[torch.Tensor], torch.Tensor]


def _as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """A torch view of a tensor or numpy array, and whether it came as numpy."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        arr = x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(arr)), True
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {describe(x)}")


def _guidance_tensor(guidance: Any, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Guidance as [B, G, H, W] on ``dev``."""
    if isinstance(guidance, torch.Tensor):
        if not guidance.is_floating_point():
            raise TypeError(f"guidance as a torch.Tensor must be floating point ([G, H, W] or [B, G, H, W], values "
                            f"in [0, 1] for the default sigma_range), got {describe(guidance)}")
        if guidance.dim() not in (2, 3, 4) or guidance.numel() == 0:
            raise ValueError(f"guidance must be [H, W], [G, H, W] or [B, G, H, W], got shape {list(guidance.shape)}")
        check_finite(guidance, "guidance")
        g = {2: guidance[None, None], 3: guidance[None], 4: guidance}[guidance.dim()]
        return g.to(dev, dtype)
    # numpy arrays, PIL images and paths: the package's image conversion (channel-last, gray -> RGB)
    return to_tensor(guidance, argument="guidance", device=dev).to(dtype)[None]


def _output_size(feature_size: tuple[int, int], guidance_size: tuple[int, int], size: Any,
                 scale: Any) -> tuple[int, int]:
    h, w = feature_size
    if size is not None and scale is not None:
        raise ValueError("give size or scale, not both")
    if size is not None:
        out = check_size(size)
    elif scale is not None:
        sy, sx = scale if isinstance(scale, (tuple, list)) and len(scale) == 2 else (scale, scale)
        sy = check_positive_number(sy, "scale")
        sx = check_positive_number(sx, "scale")
        out = (max(1, int(round(h * sy))), max(1, int(round(w * sx))))
    else:
        out = guidance_size
    if out[0] < h or out[1] < w:
        raise ValueError(f"the output size {out} must not be smaller than the features ({h}, {w})")
    return out


def _operator(method: str, guidance: torch.Tensor, feature_size: tuple[int, int], size: tuple[int, int],
              model: JBUStack | None, channel_agnostic: bool, sigma_spatial: float, sigma_range: float,
              radius: int | None, guidance_blur: float, budget: int) -> _Operator:
    """A function [B, c, h, w] -> [B, c, H, W] for the method; kernels depend on the guidance alone and
    are computed here, once, for every channel chunk the function is later applied to."""
    if method in ("bilinear", "bicubic"):
        return lambda x: F.interpolate(x, size=size, mode=method, align_corners=False)
    if method == "nearest":
        return lambda x: F.interpolate(x, size=size, mode="nearest-exact")
    if method == "classical":
        kernel = classical_kernel(guidance, feature_size, size, sigma_spatial=sigma_spatial,
                                  sigma_range=sigma_range, radius=radius, guidance_blur=guidance_blur)
        return lambda x: apply_classical_kernel(x, kernel, max_chunk_bytes=budget)
    kernels = model.kernels(guidance, feature_size, size)
    if channel_agnostic:
        kernels = [convex_kernel(k) for k in kernels]
    return lambda x: model.apply(x.to(kernels[0].dtype), kernels, channel_agnostic=channel_agnostic,
                                 max_chunk_bytes=budget).to(x.dtype)


def _prepare_model(model: Any, dev: torch.device, guidance: torch.Tensor) -> tuple[JBUStack, torch.Tensor]:
    if model is None:
        raise ValueError("method='learned' needs model=a trained JBUStack (see fit_jbu and JBUStack.load)")
    if not isinstance(model, JBUStack):
        raise TypeError(f"model must be a JBUStack, got {describe(model)}")
    p = next(model.parameters())
    if model.training or p.device != dev:
        model = copy.deepcopy(model).to(dev).eval()  # never change the caller's module
    g = guidance
    if g.shape[1] != model.guidance_dim:
        if g.shape[1] != 1:
            raise ValueError(f"guidance has {g.shape[1]} channels, the model expects {model.guidance_dim}")
        g = g.expand(-1, model.guidance_dim, -1, -1)
    return model, g.to(p.dtype)


def _nearest_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Exact nearest-neighbour resampling of an integer map [B, h, w] (pixel centres aligned)."""
    h, w = labels.shape[-2:]
    rows = ((torch.arange(size[0], device=labels.device) + 0.5) * (h / size[0])).long().clamp_(max=h - 1)
    cols = ((torch.arange(size[1], device=labels.device) + 0.5) * (w / size[1])).long().clamp_(max=w - 1)
    return labels.index_select(1, rows).index_select(2, cols)


def _upsample_labels(labels: torch.Tensor, op: _Operator, size: tuple[int, int], dtype: torch.dtype,
                     background: int | None, budget: int) -> torch.Tensor:
    """One-hot over the classes present, upsampled a chunk of classes at a time, then argmax.

    Only a running best score and class index ([B, H, W] each) are kept between chunks, so memory does
    not grow with the number of classes. With ``background``: background pixels vote for no class; an
    output pixel is background where the upsampled background mask outweighs all classes together."""
    b = labels.shape[0]
    classes = torch.unique(labels)
    if background is not None:
        classes = classes[classes != background]
        if len(classes) == 0:
            return torch.full((b, *size), background, dtype=labels.dtype, device=labels.device)
    best = torch.full((b, *size), -math.inf, dtype=dtype, device=labels.device)
    arg = torch.zeros((b, *size), dtype=torch.long, device=labels.device)
    total = torch.zeros((b, *size), dtype=dtype, device=labels.device) if background is not None else None
    per_class = b * size[0] * size[1] * torch.finfo(dtype).bits // 8
    step = max(1, budget // per_class)
    for c0 in range(0, len(classes), step):
        chunk = classes[c0: c0 + step]
        scores = op((labels[:, None] == chunk[None, :, None, None]).to(dtype))
        value, index = scores.max(1)
        better = value > best
        best = torch.where(better, value, best)
        arg = torch.where(better, index + c0, arg)
        if total is not None:
            total += scores.sum(1)
        del scores
    out = classes[arg]
    if background is not None:
        bg = op((labels == background).to(dtype)[:, None])[:, 0]
        out = torch.where(bg > total, torch.as_tensor(background, dtype=labels.dtype, device=labels.device), out)
    return out


def _compute(x: torch.Tensor, g: torch.Tensor, dev: torch.device, dtype: torch.dtype, map_type: str, method: str,
             feature_size: tuple[int, int], out_size: tuple[int, int], model: JBUStack | None, sigma_spatial: float,
             sigma_range: float, radius: int | None, guidance_blur: float, background: int | None,
             budget: int) -> torch.Tensor:
    """The upsampling itself, on batched inputs ([B, C, h, w] maps or [B, h, w] labels)."""
    if map_type == "labels":
        labels = x.to(dev)
        if method == "nearest":
            return _nearest_labels(labels, out_size)
        op = _operator(method, g, feature_size, out_size, model, True, sigma_spatial, sigma_range, radius,
                       guidance_blur, budget)
        return _upsample_labels(labels, op, out_size, dtype, background, budget)
    op = _operator(method, g, feature_size, out_size, model, map_type != "features", sigma_spatial, sigma_range,
                   radius, guidance_blur, budget)
    out = op(x.to(dev, dtype))
    if map_type == "probabilities":
        out = out.clamp_min(0)
        total = out.sum(1, keepdim=True)
        out = torch.where(total > 0, out / total.clamp_min(torch.finfo(dtype).tiny),
                          torch.full_like(out, 1.0 / out.shape[1]))
    return out.to(x.dtype)


def jbu_upsample(features: Any, guidance: Any, size: tuple[int, int] | None = None,
                 scale: float | tuple[float, float] | None = None, method: str = "classical",
                 map_type: str = "features", *, model: JBUStack | None = None, sigma_spatial: float = 1.0,
                 sigma_range: float = 0.1, radius: int | None = None, guidance_blur: float = 0.0,
                 background: int | None = None, max_chunk_bytes: int | None = None, device: str | torch.device = "auto") -> Any:
    """Upsample a low-resolution feature, probability or label map guided by a high-resolution image.

    Methods:

    * ``"classical"``: joint bilateral upsampling (Kopf et al., ACM TOG 2007, Eq. 2), training-free;
      Gaussian spatial (``sigma_spatial``, low-res pixels) and range (``sigma_range``, guidance units)
      kernels over a (2 radius + 1)^2 low-res window (:mod:`air_core.jbu.classical`).
    * ``"learned"``: a trained :class:`~air_core.jbu.learned.JBUStack` (FeatUp, Fu et al., ICLR 2024,
      Sec. 3.2), passed as ``model`` (train one with :func:`~air_core.jbu.training.fit_jbu`).
    * ``"bilinear"``, ``"bicubic"``, ``"nearest"``: guidance-free interpolation (for comparison; the
      guidance still fixes the default output size).

    Map types:

    * ``"features"``: [C, h, w] or [B, C, h, w] float, any C. With ``method="learned"`` and a stack
      built for ``feat_dim`` channels, C must equal it and the stack's full pipeline (channel
      normalisation if it was trained with it, JBU stages, 1x1 refinement) runs, so the output is in the
      stack's (possibly normalised) feature space; a stack without ``feat_dim`` runs its stages only.
    * ``"probabilities"``: [C, h, w] or [B, C, h, w] float, >= 0 (each pixel's C values are class
      probabilities). Upsampled channel by channel (a learned stack runs its channel-agnostic stages
      only, each stage's kernel made a convex combination: clamped at 0, renormalised to sum 1; the
      same for label maps; a stack trained with ``convex_kernels=True``, as for label maps, already
      has such kernels), clipped at 0 and renormalised to sum 1 over C at every pixel (uniform
      where all C values vanish).
    * ``"labels"``: [h, w] or [B, h, w] integer (or bool) label map. One-hot over the labels present,
      upsampled a chunk of classes at a time (memory stays near two [B, H, W] maps plus one chunk,
      whatever the number of classes; the kernels are computed once), argmax. The output holds only
      labels present in the input, in the input's dtype. ``method="nearest"`` copies labels directly.
      ``background``: a label (e.g. 0 or an ignore value) that does not vote for any class; an output
      pixel is ``background`` where the upsampled background mask outweighs all other labels together,
      so background regions are kept and objects compete only among themselves.

    Args:
        features: the low-res map (torch tensor or numpy array, channel-first as above).
        guidance: the high-res image: a float torch tensor [H, W], [G, H, W] or [B, G, H, W] (any G;
            values in [0, 1] for the default ``sigma_range``), or anything
            :func:`~air_core.images.to_tensor` accepts (numpy [H, W(, C)] uint8 / uint16 / float in
            [0, 1], PIL image, file path: RGB, gray replicated). It must not be smaller than the
            features. It is resampled to the output size when that differs (area average when
            shrinking, bilinear otherwise). A learned stack built for 3 guidance channels accepts
            1-channel guidance (replicated).
        size: output (H, W); default the guidance's size. Must not be smaller than the features.
        scale: instead of ``size``: a factor (or (factor_y, factor_x)); size = round(h * factor).
        method: one of ``METHODS``.
        map_type: one of ``MAP_TYPES``.
        model: the :class:`~air_core.jbu.learned.JBUStack` for ``method="learned"`` (not modified: a
            copy is made when it must move device or leave training mode).
        sigma_spatial, sigma_range, radius, guidance_blur: classical JBU parameters (see
            :func:`~air_core.jbu.classical.classical_kernel`).
        background: see ``"labels"`` above.
        max_chunk_bytes: block size for the adaptive convolution and the class chunks of label maps
            (None: 4 MiB on the CPU, 256 MiB on CUDA).
        device: "auto", "cpu" or "cuda": where the work runs.

    Returns:
        The upsampled map, [C, H, W] / [B, C, H, W] (float, the input's dtype) or [H, W] / [B, H, W]
        (labels), with the batch dimension only if the input had one; a numpy array when ``features``
        was one, else a tensor on ``features``' device. Differentiable with respect to tensor
        ``features`` and ``guidance`` that require grad (features / probabilities; not through the
        learned stack's parameters: train those with :func:`~air_core.jbu.training.fit_jbu`).

    Raises:
        TypeError: features / guidance of the wrong type or dtype (e.g. float labels, integer features),
            a model that is not a JBUStack.
        ValueError: unknown method / map type, wrong dimensions, mismatched batch sizes, guidance or
            output smaller than the features, NaN / Inf, negative probabilities, size and scale both
            given, ``method="learned"`` without a model, bad sigmas / radius / chunk size.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if map_type not in MAP_TYPES:
        raise ValueError(f"map_type must be one of {MAP_TYPES}, got {map_type!r}")
    budget = check_chunk_bytes(max_chunk_bytes)
    dev = resolve_device(device)
    budget = default_chunk_bytes(dev) if budget is None else budget
    x, as_numpy = _as_tensor(features, "features")
    source_device = x.device
    if map_type == "labels":
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"features must be an integer (or bool) label map for map_type='labels', got "
                            f"{describe(features)}")
        if x.dim() not in (2, 3) or x.numel() == 0:
            raise ValueError(f"a label map must be [h, w] or [B, h, w], got shape {list(x.shape)}")
        if background is not None and (isinstance(background, bool) or not isinstance(background, (int, np.integer))):
            raise ValueError(f"background must be None or an int label, got {background!r}")
        batched = x.dim() == 3
        x = x if batched else x[None]
        dtype = torch.float32
    else:
        if not x.is_floating_point():
            raise TypeError(f"features must be a floating-point map for map_type={map_type!r} (integer label maps "
                            f"need map_type='labels'), got {describe(features)}")
        if x.dim() not in (3, 4) or x.numel() == 0:
            raise ValueError(f"features must be [C, h, w] or [B, C, h, w], got shape {list(x.shape)}")
        check_finite(x, "features")
        if map_type == "probabilities" and bool((x < 0).any()):
            raise ValueError("probabilities must be >= 0")
        batched = x.dim() == 4
        x = x if batched else x[None]
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = _guidance_tensor(guidance, dev, dtype)
    if g.shape[0] != x.shape[0]:
        raise ValueError(f"guidance batch size {g.shape[0]} does not match features batch size {x.shape[0]}")
    feature_size = tuple(x.shape[-2:])
    if g.shape[-2] < feature_size[0] or g.shape[-1] < feature_size[1]:
        raise ValueError(f"guidance ({g.shape[-2]} x {g.shape[-1]}) must not be smaller than the features "
                         f"({feature_size[0]} x {feature_size[1]})")
    out_size = _output_size(feature_size, tuple(g.shape[-2:]), size, scale)
    check_positive_number(sigma_spatial, "sigma_spatial")
    check_positive_number(sigma_range, "sigma_range")
    check_guidance_blur(guidance_blur)
    if method == "learned":
        model, g = _prepare_model(model, dev, g)
    elif model is not None:
        raise ValueError(f"model is used only with method='learned', got method={method!r}")
    needs_grad = map_type != "labels" and (x.requires_grad or (isinstance(guidance, torch.Tensor)
                                                                and guidance.requires_grad))
    try:
        with torch.set_grad_enabled(needs_grad):
            out = _compute(x, g, dev, dtype, map_type, method, feature_size, out_size, model, sigma_spatial,
                           sigma_range, radius, guidance_blur, background, budget).to(source_device)
    finally:
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the kernels and intermediates are gone once _compute returns
    out = out if batched else out[0]
    return out.detach().numpy() if as_numpy else out
