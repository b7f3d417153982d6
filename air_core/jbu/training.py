"""Training a :class:`~air_core.jbu.learned.JBUStack` for any backbone: FeatUp's multi-view objective.

Fu et al., "FeatUp: A Model-Agnostic Framework for Features at Any Resolution", ICLR 2024, Sec. 3.1
(Eq. 1-2) and 3.3, with the settings of their public training script (``train_jbu_upsampler.py``,
``jbu_upsampler.yaml``):

* a frozen backbone f (any callable image -> feature map), its features optionally channel-normalised
  (FeatUp's ``ChannelNorm``, :func:`~air_core.jbu.learned.channel_norm`);
* per step a batch of image crops x and the upsampled features F_hr = JBU(f(x), x); then for each of
  ``n_jitters`` random transforms t (reflect pad by up to ``max_pad`` px, zoom in [1, max_zoom] with
  probability 0.5, crop back to the input size, horizontal flip with probability 0.5; one transform per
  jitter for the whole batch): the loss compares f(t(x)) with down(t(F_hr)), where down is a learned
  downsampler, either :class:`BlurDownsampler` (a learned k x k kernel, absolute values normalised to
  sum 1, strided per channel) or :class:`AttentionDownsampler` (5 x 5 Gaussian blur, a per-patch
  saliency Linear(C -> 1) with dropout 0.2 on its input and 20 % of the patches' logits dropped, logits
  * w + b with learned k x k w and b, softmax over the patch, weighted average);
* both sides are projected to ``random_projection`` dimensions by a fresh random matrix with unit
  columns (per image, per jitter);
* the outlier-aware loss mean(||.||^2 / (2 s^2) + log s) with s = exp(Conv1x1(f(t(x))) + 0.1) (clamped
  at 1e-4; the 1x1 conv initialised at 0.1 x its default), or the plain mean squared error;
* NAdam, learning rate 1e-3; the gradient norm clipped to 1e-4 during the first 10 steps.

Differences from FeatUp's script (kept deliberately small): F_hr is computed once per step and the
jitter losses are summed before one backward pass (FeatUp recomputes F_hr per jitter and backpropagates
each; the gradient is the same up to dropout draws); the jitter samples the zoomed crop directly with
``grid_sample`` (the same bilinear values as padding, zooming the whole map and cropping, without
materialising the zoomed map); a downsampler window of k = round(S / h) input pixels per feature, the
upsampled features being resampled to (k h, k w) first when S is not a multiple of the feature size;
crops are random (FeatUp: a centre crop of each image); the sampled-CRF term (weight 0.001 in FeatUp)
is not used.

Beyond FeatUp (options, off by default): the images may carry auxiliary channels after RGB (a label
embedding, chroma, ...) that the backbone reads and that are cropped and jittered with the image;
when the full-resolution version of the backbone's output is known (the backbone pools such a
channel), ``hr_target_fn`` replaces the multi-view objective by the direct mean squared error to it;
``convex_kernels`` trains a stack whose kernels are convex combinations (label and probability maps);
``clip_grad_norm`` clips every step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._device import resolve_device
from ..images import to_tensor
from ._checks import describe
from .learned import JBUStack, channel_norm

__all__ = ["fit_jbu", "FitJBUResult", "BlurDownsampler", "AttentionDownsampler", "DOWNSAMPLERS",
           "sample_jitter", "apply_jitter"]

DOWNSAMPLERS = ("attention", "blur")
_CLIP_STEPS = 10
_CLIP_NORM = 1e-4


def _to_grid(hr: torch.Tensor, out_size: tuple[int, int], k: int) -> torch.Tensor:
    """Resample [B, C, H, W] to (k h, k w) so that k x k windows tile it (identity when it already does)."""
    size = (k * out_size[0], k * out_size[1])
    if tuple(hr.shape[-2:]) == size:
        return hr
    return F.interpolate(hr, size=size, mode="bilinear", align_corners=False, antialias=True)


class BlurDownsampler(nn.Module):
    """FeatUp's simple downsampler: one learned k x k kernel (|.| normalised to sum 1) applied to every
    channel with stride k. Input [B, C, H, W] -> [B, C, h, w] (the input is first resampled to
    (k h, k w) when needed)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.kernel_params = nn.Parameter(torch.ones(self.kernel_size, self.kernel_size))

    def kernel(self) -> torch.Tensor:
        k = self.kernel_params.abs()
        return k / k.sum()

    def forward(self, hr: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        x = _to_grid(hr, out_size, self.kernel_size)
        b, c, h, w = x.shape
        k = self.kernel_size
        out = F.conv2d(x.reshape(b * c, 1, h, w), self.kernel()[None, None], stride=k)
        return out.reshape(b, c, *out_size)


class AttentionDownsampler(nn.Module):
    """FeatUp's attention downsampler (Sec. 3.1): per k x k patch of the (5 x 5, sigma 1) blurred input,
    softmax(w * Linear(Dropout(patch)) + b) weights average the patch. Input [B, C, H, W] ->
    [B, C, h, w]."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dim, self.kernel_size = int(dim), int(kernel_size)
        taps = self.kernel_size ** 2
        self.dropout = nn.Dropout(0.2)
        self.saliency = nn.Linear(self.dim, 1)
        self.w = nn.Parameter(torch.ones(taps) + 0.01 * torch.randn(taps))
        self.b = nn.Parameter(torch.zeros(taps) + 0.01 * torch.randn(taps))
        t = torch.arange(5, dtype=torch.float32) - 2
        g = torch.exp(-t.square() / 2)
        self.register_buffer("blur", (g[:, None] * g[None, :] / g.sum() ** 2)[None, None], persistent=False)

    def forward(self, hr: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        b, c = hr.shape[:2]
        mode = "reflect" if min(hr.shape[-2:]) > 2 else "replicate"
        x = F.conv2d(F.pad(hr, [2] * 4, mode=mode), self.blur.to(hr.dtype).expand(c, 1, 5, 5), groups=c)
        x = _to_grid(x, out_size, self.kernel_size)
        k = self.kernel_size
        patches = F.unfold(x, k, stride=k).view(b, c, k * k, -1).permute(0, 3, 2, 1)  # [B, hw, kk, C]
        logits = self.saliency(self.dropout(patches)).squeeze(-1)  # [B, hw, kk]
        if self.training:
            logits = logits * (torch.rand(logits.shape[0], logits.shape[1], 1, device=logits.device) > 0.2)
        attn = torch.softmax(logits * self.w + self.b, dim=-1)
        return torch.einsum("bpkc,bpk->bcp", patches, attn).reshape(b, c, *out_size)


class _ScaleNet(nn.Module):
    """s = exp(Conv1x1(features) + 0.1) clamped at 1e-4: the outlier-aware loss's learned scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Conv2d(dim, 1, 1)
        with torch.no_grad():
            self.net.weight.mul_(0.1)
            self.net.bias.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(x) + 0.1).clamp_min(1e-4)


def sample_jitter(size: tuple[int, int], max_pad: int, max_zoom: float) -> dict[str, Any]:
    """Random FeatUp jitter for a map of ``size``: zoom (1 with probability 0.5, else uniform in
    [1, max_zoom]), crop offsets (top, left) in the padded and zoomed map, horizontal flip (p = 0.5).
    Uses torch's global random generator."""
    h, w = size
    flip = bool(torch.rand(()) > 0.5)
    zoom = 1.0 + float(torch.rand(())) * (max_zoom - 1.0) if bool(torch.rand(()) > 0.5) else 1.0
    top = int(torch.randint(0, int((h + 2 * max_pad) * zoom) - h + 1, ()))
    left = int(torch.randint(0, int((w + 2 * max_pad) * zoom) - w + 1, ()))
    return {"zoom": zoom, "top": top, "left": left, "flip": flip, "max_pad": max_pad}


def apply_jitter(x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Apply a jitter from :func:`sample_jitter` to [B, C, H, W]: reflect-pad by ``max_pad``, zoom
    bilinearly (align_corners=False), crop H x W at (top, left), flip. Same size out; differentiable."""
    h, w = x.shape[-2:]
    pad, zoom, top, left = params["max_pad"], params["zoom"], params["top"], params["left"]
    padded = F.pad(x, [pad] * 4, mode="reflect") if pad else x
    if zoom == 1.0:
        out = padded[:, :, top: top + h, left: left + w]
    else:
        hp, wp = padded.shape[-2:]
        ys = (torch.arange(h, device=x.device, dtype=x.dtype) + top + 0.5) / zoom - 0.5
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) + left + 0.5) / zoom - 0.5
        grid = torch.stack(torch.broadcast_tensors((2 * xs[None, :] + 1) / wp - 1, (2 * ys[:, None] + 1) / hp - 1),
                           dim=-1)
        out = F.grid_sample(padded, grid[None].expand(x.shape[0], h, w, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
    return torch.flip(out, [3]) if params["flip"] else out


@dataclass
class FitJBUResult:
    """Result of :func:`fit_jbu`.

    Attributes:
        stack: the trained :class:`~air_core.jbu.learned.JBUStack`, in eval mode, on the CPU.
        downsampler: the learned downsampler (CPU, eval mode), e.g. to inspect its kernel; None with
            the supervised objective (``hr_target_fn``).
        history: one dict per step: ``step``, ``loss`` (the objective, which can be negative with the
            outlier-aware loss) and ``time_s`` (seconds since the start).
        steps: steps completed.
        cancelled: the progress callback returned False.
        seconds: wall time.
        feature_size: (h, w) of the backbone's features on an S x S crop.
    """

    stack: JBUStack
    downsampler: nn.Module | None
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    feature_size: tuple[int, int] = (0, 0)


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _prepare_images(images: Any, image_size: int) -> list[torch.Tensor]:
    """[3 + A, H, W] float32 CPU tensors with the short side resized to ``image_size``.

    An item is anything :func:`~air_core.images.to_tensor` accepts (3 channels out), or a float
    tensor [3 + A, H, W] (A >= 1 auxiliary channels after an RGB image in [0, 1]); every item must have
    the same number of channels.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] < 3 or not images.is_floating_point():
            raise ValueError(f"images as a tensor must be float [N, 3 (+ A), H, W], got {describe(images)}")
        items: Sequence[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        raise TypeError(f"images must be a list of images or a float tensor [N, 3, H, W], got {describe(images)}")
    if len(items) == 0:
        raise ValueError("images must not be empty")
    out = []
    for n, item in enumerate(items):
        if isinstance(item, torch.Tensor) and item.dim() == 3 and item.shape[0] > 3:
            if not item.is_floating_point() or not bool(torch.isfinite(item).all()):
                raise ValueError(f"images[{n}] with auxiliary channels must be a finite float tensor "
                                 f"[3 + A, H, W], got {describe(item)}")
            rgb = to_tensor(item[:3], argument=f"images[{n}]", device="cpu")
            t = torch.cat([rgb, item[3:].detach().to("cpu", torch.float32)])
        else:
            t = to_tensor(item, argument=f"images[{n}]", device="cpu")
        if out and t.shape[0] != out[0].shape[0]:
            raise ValueError(f"images[{n}] has {t.shape[0]} channels, images[0] has {out[0].shape[0]}; all items "
                             f"must have the same channels")
        h, w = t.shape[-2:]
        s = image_size / min(h, w)
        size = (max(image_size, int(round(h * s))), max(image_size, int(round(w * s))))
        if size != (h, w):
            t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(torch.cat([t[:3].clamp(0, 1), t[3:]]))  # a new tensor: never the caller's
    return out


def _random_crops(data: list[torch.Tensor], indices: list[int], size: int) -> torch.Tensor:
    crops = []
    for i in indices:
        img = data[i]
        top = int(torch.randint(0, img.shape[1] - size + 1, ()))
        left = int(torch.randint(0, img.shape[2] - size + 1, ()))
        crops.append(img[:, top: top + size, left: left + size])
    return torch.stack(crops)


def _check_map(x: Any, name: str, batch: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[0] != batch:
        raise ValueError(f"{name} must return a float tensor [B, C, h, w] with B = {batch}, got {describe(x)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} returned NaN or Inf values")
    return x


def fit_jbu(backbone: Callable[[torch.Tensor], torch.Tensor], images: Any, *, steps: int = 1000, batch_size: int = 4,
            image_size: int = 224, crop_size: int | None = None, num_stages: int | None = None,
            n_jitters: int = 5, max_pad: int = 20,
            max_zoom: float = 2.0, lr: float = 1e-3, random_projection: int | None = 30,
            downsampler: str = "attention", outlier_loss: bool = True, normalize_features: bool = True,
            guidance_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, key_dim: int = 32, radius: int = 3,
            hr_target_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, convex_kernels: bool = False,
            clip_grad_norm: float | None = None, seed: int = 0, device: str | torch.device = "auto", log_every: int = 10,
            progress: Callable[[float, str], Any] | None = None) -> FitJBUResult:
    """Train a JBU stack for ``backbone`` with FeatUp's multi-view consistency (module docstring).

    Args:
        backbone: frozen feature extractor, any callable taking a float image batch [B, 3 (+ A), S, S]
            (RGB in [0, 1]) on ``device`` and returning features [B, C, h, w] (h, w <= S). It is called under
            ``torch.no_grad()``; an ``nn.Module`` is put in eval mode for the fit and restored after.
        images: training images: a list of anything :func:`~air_core.images.to_tensor` accepts, or a
            float tensor [N, 3, H, W] in [0, 1]. Each is resized so its short side is ``image_size``;
            each step draws ``batch_size`` random S x S crops (epochs of a random permutation).
            Auxiliary channels: an item may be a float tensor [3 + A, H, W], an RGB image in [0, 1]
            followed by A channels of anything (for example a label embedding whose pooled version
            is the "backbone"); they are resized, cropped and jittered with the image, the backbone
            and ``guidance_fn`` receive all 3 + A channels, and the default guidance is the RGB part.
        steps: optimiser steps (>= 1).
        batch_size: images per step (>= 1).
        image_size: short side of the resized images in pixels (>= 8; FeatUp: 224).
        crop_size: crop size S in pixels (8 <= S <= image_size); default ``image_size`` (FeatUp).
        num_stages: JBU stages; default ceil(log2(S / h)) (4 for a /16 backbone).
        n_jitters: random views per step (FeatUp: 5).
        max_pad: reflect padding of the jitter in pixels (0 <= max_pad < S; FeatUp: 20).
        max_zoom: largest zoom of the jitter (>= 1; FeatUp: 2).
        lr: NAdam learning rate.
        random_projection: dimensions of the random projection (None: compare all channels).
        downsampler: "attention" (FeatUp's default) or "blur".
        outlier_loss: use the outlier-aware loss with the learned scale (else plain MSE).
        normalize_features: channel-normalise the features (FeatUp); stored in the stack, which then
            normalises its input itself.
        guidance_fn: maps the image batch to the guidance the stack sees (e.g. luma only); default the
            image's RGB channels. The stack's ``guidance_dim`` is its number of channels.
        key_dim, radius: see :class:`~air_core.jbu.learned.JBUStage`.
        hr_target_fn: the supervised objective, for the case FeatUp's objective exists to avoid: when
            the full-resolution version of the features is known (the backbone pools a map the images
            carry as auxiliary channels, e.g. a label embedding or chroma), ``hr_target_fn(batch)``
            returns it as [B, C, S, S] and the loss is the mean squared error between the stack's
            upsampled features and it; no jitters, downsampler or outlier-aware loss are used then.
            None (default): FeatUp's multi-view objective.
        convex_kernels: train a stack whose kernels are convex combinations (for label and
            probability maps; see :class:`~air_core.jbu.learned.JBUStack`).
        clip_grad_norm: clip the gradient norm to this value at every step (None: only FeatUp's
            1e-4 clip during the first 10 steps).
        seed: seeds everything random in the fit (initialisation, crops, jitters, projections,
            dropout) without touching the global random state; same seed, same result on the same
            device.
        device: "auto", "cpu" or "cuda".
        log_every: progress interval in steps.
        progress: callback(fraction in [0, 1], message); returning ``False`` cancels the fit (the stack
            trained so far is returned with ``cancelled=True``).

    Returns:
        :class:`FitJBUResult`.

    Raises:
        TypeError: ``backbone`` is not callable; bad ``images``.
        ValueError: bad numbers or names; a backbone output that is not [B, C, h, w] with h, w <= S,
            or holds NaN / Inf; an ``nn.Module`` backbone on another device than ``device``.
    """
    if not callable(backbone):
        raise TypeError(f"backbone must be callable (image batch -> features), got {describe(backbone)}")
    steps = _check_int(steps, "steps", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    image_size = _check_int(image_size, "image_size", 8)
    n_jitters = _check_int(n_jitters, "n_jitters", 1)
    max_pad = _check_int(max_pad, "max_pad", 0)
    log_every = _check_int(log_every, "log_every", 1)
    crop_size = image_size if crop_size is None else _check_int(crop_size, "crop_size", 8)
    if crop_size > image_size:
        raise ValueError(f"crop_size must be <= image_size ({image_size}), got {crop_size}")
    if max_pad >= crop_size:
        raise ValueError(f"max_pad must be < the crop size ({crop_size}), got {max_pad}")
    if isinstance(max_zoom, bool) or not isinstance(max_zoom, (int, float)) or not 1.0 <= max_zoom < math.inf:
        raise ValueError(f"max_zoom must be a number >= 1, got {max_zoom!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if random_projection is not None:
        random_projection = _check_int(random_projection, "random_projection", 1)
    if downsampler not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {downsampler!r}")
    if guidance_fn is not None and not callable(guidance_fn):
        raise TypeError(f"guidance_fn must be None or callable, got {describe(guidance_fn)}")
    if hr_target_fn is not None and not callable(hr_target_fn):
        raise TypeError(f"hr_target_fn must be None or callable, got {describe(hr_target_fn)}")
    if clip_grad_norm is not None and (isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, (int, float))
                                       or not 0 < clip_grad_norm < math.inf):
        raise ValueError(f"clip_grad_norm must be None or a number > 0, got {clip_grad_norm!r}")
    dev = resolve_device(device)
    if isinstance(backbone, nn.Module):
        p = next(iter(backbone.parameters()), None)
        if p is not None and p.device.type != dev.type:
            raise ValueError(f"backbone's parameters are on {p.device}, but the fit runs on {dev}; move the "
                             f"backbone or pass device='{p.device.type}'")
    data = _prepare_images(images, image_size)
    was_training = isinstance(backbone, nn.Module) and backbone.training
    if was_training:
        backbone.eval()
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(int(seed))
            result = _fit(backbone, data, dev, steps, batch_size, crop_size, num_stages, n_jitters, max_pad,
                          float(max_zoom), float(lr), random_projection, downsampler, outlier_loss,
                          normalize_features, guidance_fn, key_dim, radius, hr_target_fn, bool(convex_kernels),
                          clip_grad_norm, log_every, progress, t0)
    finally:
        if was_training:
            backbone.train()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _fit(backbone, data, dev, steps, batch_size, size, num_stages, n_jitters, max_pad, max_zoom, lr,
         random_projection, downsampler, outlier_loss, normalize_features, guidance_fn, key_dim, radius,
         hr_target_fn, convex_kernels, clip_grad_norm, log_every, progress, t0) -> FitJBUResult:
    order: list[int] = []

    def next_batch() -> torch.Tensor:
        while len(order) < batch_size:
            order.extend(torch.randperm(len(data)).tolist())
        idx = [order.pop(0) for _ in range(batch_size)]
        return _random_crops(data, idx, size).to(dev)

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = _check_map(backbone(x), "backbone", x.shape[0])
        if out.shape[-2] > size or out.shape[-1] > size:
            raise ValueError(f"backbone features ({tuple(out.shape[-2:])}) must not be larger than the image "
                             f"({size} x {size})")
        return out.float()

    def guidance(x: torch.Tensor) -> torch.Tensor:
        if guidance_fn is None:
            return x[:, :3]
        with torch.no_grad():
            g = _check_map(guidance_fn(x), "guidance_fn", x.shape[0])
        if tuple(g.shape[-2:]) != (size, size):
            raise ValueError(f"guidance_fn must keep the image size ({size} x {size}), got {tuple(g.shape[-2:])}")
        return g.float()

    probe = next_batch()
    lr_probe = features(probe)
    dim, fh, fw = lr_probe.shape[1:]
    k = max(1, round(size / max(fh, fw)))
    if num_stages is None:
        num_stages = max(1, math.ceil(math.log2(size / max(fh, fw)) - 1e-9))
    stack = JBUStack(dim, num_stages, guidance(probe).shape[1], key_dim, radius, normalize_features,
                     convex_kernels=convex_kernels).to(dev).train()
    supervised = hr_target_fn is not None
    down = None if supervised else (
        AttentionDownsampler(dim, k) if downsampler == "attention" else BlurDownsampler(k)).to(dev).train()
    scale_net = _ScaleNet(dim).to(dev).train() if outlier_loss and not supervised else None
    params = list(stack.parameters()) + ([] if down is None else list(down.parameters()))
    if scale_net is not None:
        params += list(scale_net.parameters())
    opt = torch.optim.NAdam(params, lr=lr)

    def target(x: torch.Tensor) -> torch.Tensor:
        f = features(x)
        return channel_norm(f) if normalize_features else f

    def hr_target(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = _check_map(hr_target_fn(x), "hr_target_fn", x.shape[0]).float()
        if tuple(t.shape[1:]) != (dim, size, size):
            raise ValueError(f"hr_target_fn must return [B, {dim}, {size}, {size}] (the features' channels at the "
                             f"crop size), got {list(t.shape)}")
        return channel_norm(t) if normalize_features else t

    def multiview_loss(batch: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        loss = hr.new_zeros(())
        for _ in range(n_jitters):
            jit = sample_jitter((size, size), max_pad, max_zoom)
            lr_jit = target(apply_jitter(batch, jit))
            down_jit = down(apply_jitter(hr, jit), tuple(lr_jit.shape[-2:]))
            diff = down_jit - lr_jit
            if random_projection is not None:
                proj = torch.randn(diff.shape[0], dim, random_projection, device=dev)
                proj = proj / proj.square().sum(1, keepdim=True).sqrt()
                diff = torch.einsum("bchw,bcd->bdhw", diff, proj)
            if scale_net is not None:
                s = scale_net(lr_jit)
                term = (diff.square() / (2 * s.square()) + s.log()).mean()
            else:
                term = diff.square().mean()
            loss = loss + term / n_jitters
        return loss

    history: list[dict] = []
    cancelled = False
    step = 0
    batch = probe
    for step in range(1, steps + 1):
        if step > 1:
            batch = next_batch()
        lr_feats = lr_probe if step == 1 else features(batch)
        hr = stack(lr_feats, guidance(batch))
        loss = (hr - hr_target(batch)).square().mean() if supervised else multiview_loss(batch, hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step <= _CLIP_STEPS:
            torch.nn.utils.clip_grad_norm_(params, _CLIP_NORM)
        elif clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), "time_s": time.perf_counter() - t0})
        if progress is not None and (step % log_every == 0 or step == steps):
            recent = history[-log_every:]
            avg = sum(h["loss"] for h in recent) / len(recent)
            if progress(step / steps, f"step {step}/{steps}  loss {avg:.4f}") is False:
                cancelled = True
                break
    stack = stack.cpu().eval()
    return FitJBUResult(stack, None if down is None else down.cpu().eval(), history, step, cancelled, time.perf_counter() - t0, (fh, fw))
