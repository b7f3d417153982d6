"""FeatUp's learned joint bilateral upsampler: one stage (:class:`JBUStage`) and a stack to any size.

Fu, Hamilton, Brandt, Feldman, Zhang and Freeman, "FeatUp: A Model-Agnostic Framework for Features
at Any Resolution", ICLR 2024, Sec. 3.2, Eq. 3-5, as their public code builds it:

* range kernel: a small MLP on the guidance, q = Conv1x1(G -> 32) -> GELU -> Dropout(0.1) ->
  Conv1x1(32 -> 32); k_range(p, p') = softmax over the window of exp(tau) <q(p), q(p')>, tau learned
  (initialised at 0), exp(tau) clamped to [1e-4, 1e4] (Eq. 5);
* spatial kernel: exp(-(dx^2 + dy^2) / (2 sigma^2)) on a linspace(-1, 1, 2r + 1) grid, sigma learned
  (initialised at 1) (Eq. 4);
* K = k_range * k_spatial normalised to sum 1 over the window; then the kernel-refinement MLP adds
  0.1 * MLP([K, guidance]) (Conv1x1(k^2 + G -> k^2) -> GELU -> Dropout(0.1) -> Conv1x1(k^2 -> k^2)),
  not renormalised;
* the low-res map is upsampled bicubically to the stage's output size, reflect-padded by r and
  filtered with K by the adaptive convolution (:func:`~air_core.jbu.adaptive_conv.adaptive_conv`);
  the guidance of a stage is the image average-pooled to the stage's output size. FeatUp's guidance is
  the ImageNet-normalised image; :class:`JBUStack` normalises its [0, 1] guidance the same way
  (``guidance_mean`` / ``guidance_std``), which sets the range kernel's initial sharpness.

FeatUp's ``JBUStack`` is always four 2x stages (16x). :class:`JBUStack` here reaches any output size:
it uses m = ceil(log2(factor)) stages (at most ``num_stages``, at least 1) with geometrically spaced
intermediate sizes, the last stage producing exactly the requested size; a 4-stage stack asked for
16x does exactly FeatUp's four 2x steps. FeatUp's final ``out + 0.1 * Conv1x1(Dropout(0.2)(out))``
refinement is kept when ``feat_dim`` is given.

A stage's kernel depends on the guidance alone, so the stages are channel-agnostic: kernels are
computed once (:meth:`JBUStack.kernels`) and can be applied to any number of channels
(:meth:`JBUStack.apply` with ``channel_agnostic=True``: probability and label maps). Only the optional
input channel normalisation and the final 1x1 refinement belong to the feature space it was trained on.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._device import resolve_device
from .._io import as_path, atomic_write
from ._checks import check_float_tensor, check_size
from .adaptive_conv import adaptive_conv, local_correlation
from .classical import resize_guidance

__all__ = ["JBUStage", "JBUStack", "stage_sizes", "channel_norm", "convex_kernel", "STACK_FORMAT"]

#: The ``format`` tag of files written by :meth:`JBUStack.save`.
STACK_FORMAT = "air_core.jbu.JBUStack"
_STACK_VERSION = 1


def channel_norm(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-pixel normalisation over channels (a LayerNorm over C without affine parameters), as FeatUp
    applies to backbone features (its ``ChannelNorm``). [B, C, H, W] -> same shape."""
    mean = features.mean(1, keepdim=True)
    var = features.var(1, keepdim=True, unbiased=False)
    return (features - mean) / torch.sqrt(var + eps)


def _pad(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Reflect padding (FeatUp) where the map is large enough, replicate padding for tiny maps."""
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    return F.pad(x, [radius] * 4, mode=mode)


def convex_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """A learned stage's kernel [B, H, W, k, k] made a convex combination (clamped at 0, summing to 1).

    FeatUp adds its refinement MLP's output to the normalised kernel without renormalising, so a trained
    kernel may have negative taps and a sum far from 1 (even negative: seen on a stack trained for 16x).
    That is harmless in a learned feature space but wrong for probability and label maps, whose
    upsampled values must stay a weighted vote of the low-resolution ones (a negative sum would invert a
    label map's argmax). Pixels whose clamped kernel vanishes keep their centre tap. A stack built with
    ``convex_kernels=True`` applies this to every stage's kernel in training too (then it is a no-op
    at inference). Works on [..., k, k]; differentiable where a tap is positive.
    """
    k = kernel.clamp_min(0)
    total = k.sum((-2, -1), keepdim=True)
    centre = torch.zeros_like(k)
    r = k.shape[-1] // 2
    centre[..., r, r] = 1.0
    return torch.where(total > 1e-12, k / total.clamp_min(1e-12), centre)


class JBUStage(nn.Module):
    """One learned JBU stage (FeatUp, Sec. 3.2; see the module docstring).

    Args:
        guidance_dim: channels G of the guidance image (3 for RGB).
        key_dim: channels of the range MLP's embedding (FeatUp: 32).
        radius: window radius r at the stage's output resolution; the window is (2r + 1)^2 (FeatUp: 3).
        convex: make the final kernel a convex combination (:func:`convex_kernel`) after the
            refinement MLP (not in FeatUp; for stacks trained on label or probability maps).

    Raises:
        ValueError: a non-positive ``guidance_dim`` / ``key_dim`` or a negative ``radius``.
    """

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3, convex: bool = False) -> None:
        super().__init__()
        for name, v, low in (("guidance_dim", guidance_dim, 1), ("key_dim", key_dim, 1), ("radius", radius, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        self.guidance_dim, self.key_dim, self.radius, self.convex = guidance_dim, key_dim, radius, bool(convex)
        taps = (2 * radius + 1) ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(guidance_dim + taps, taps, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(taps, taps, 1))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    @property
    def diameter(self) -> int:
        return 2 * self.radius + 1

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """[B, (2r+1)^2, H, W] softmax over the window of exp(tau) <q(p), q(p')> (FeatUp Eq. 5)."""
        q = self.range_proj(guidance)
        b, _, h, w = q.shape
        corr = local_correlation(q, _pad(q, self.radius))  # [B, H, W, d, d], chunked
        logits = corr.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        temp = self.range_temp.exp().clamp(1e-4, 1e4)
        return torch.softmax(temp * logits, dim=1)

    def spatial_kernel(self) -> torch.Tensor:
        """[1, (2r+1)^2, 1, 1] exp(-(dx^2 + dy^2) / (2 sigma^2)) on a linspace(-1, 1) grid (FeatUp Eq. 4)."""
        t = torch.linspace(-1.0, 1.0, self.diameter, device=self.sigma_spatial.device,
                           dtype=self.sigma_spatial.dtype)
        d2 = t[:, None].square() + t[None, :].square()
        return torch.exp(-d2 / (2 * self.sigma_spatial.square())).reshape(1, -1, 1, 1)

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """Per-pixel kernel [B, H, W, 2r+1, 2r+1] for guidance [B, G, H, W] at the stage's output size."""
        if guidance.dim() != 4 or guidance.shape[1] != self.guidance_dim:
            raise ValueError(f"guidance must be [B, {self.guidance_dim}, H, W] for this stage, got "
                             f"{list(guidance.shape)}")
        k = self.range_kernel(guidance) * self.spatial_kernel()
        k = k / k.sum(1, keepdim=True).clamp_min(1e-7)
        k = k + 0.1 * self.fixup_proj(torch.cat([k, guidance], dim=1))
        b, _, h, w = k.shape
        k = k.permute(0, 2, 3, 1).reshape(b, h, w, self.diameter, self.diameter)
        return convex_kernel(k) if self.convex else k

    def apply(self, source: torch.Tensor, kernel: torch.Tensor, *,
              max_chunk_bytes: int | None = None) -> torch.Tensor:
        """Upsample ``source`` [B, C, h, w] bicubically to the kernel's size and filter it with ``kernel``
        [B, H, W, 2r+1, 2r+1] (adaptive convolution) -> [B, C, H, W]."""
        size = tuple(kernel.shape[1:3])
        hr = source if tuple(source.shape[-2:]) == size else F.interpolate(source, size=size, mode="bicubic",
                                                                           align_corners=False)
        return adaptive_conv(_pad(hr, self.radius), kernel.to(hr.dtype), max_chunk_bytes=max_chunk_bytes)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor, *,
                max_chunk_bytes: int | None = None) -> torch.Tensor:
        """[B, C, h, w] features and [B, G, H, W] guidance at this stage's output size -> [B, C, H, W]."""
        return self.apply(source, self.kernel(guidance), max_chunk_bytes=max_chunk_bytes)


def stage_sizes(feature_size: tuple[int, int], size: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """Output sizes of the stages a stack uses to go from ``feature_size`` to ``size``.

    m = clamp(ceil(log2(max(H / h, W / w))), 1, num_stages) stages; stage k (1..m) outputs
    (round(h (H/h)^(k/m)), round(w (W/w)^(k/m))), the last exactly ``size``. Powers of two give 2x steps.

    Raises:
        ValueError: ``size`` smaller than ``feature_size``, or ``num_stages`` < 1.
    """
    h, w = check_size(feature_size, "feature_size")
    big_h, big_w = check_size(size)
    if big_h < h or big_w < w:
        raise ValueError(f"size ({big_h}, {big_w}) must not be smaller than the features ({h}, {w})")
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
        raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
    ratio = max(big_h / h, big_w / w)
    m = min(num_stages, max(1, math.ceil(math.log2(ratio) - 1e-9))) if ratio > 1 else 1
    sizes = [(int(round(h * (big_h / h) ** (k / m))), int(round(w * (big_w / w) ** (k / m)))) for k in range(1, m)]
    return sizes + [(big_h, big_w)]


class JBUStack(nn.Module):
    """A stack of learned JBU stages that upsamples to any output size (see the module docstring).

    Args:
        feat_dim: channels of the features the stack is trained on; enables FeatUp's final
            ``out + 0.1 * Conv1x1(Dropout2d(0.2)(out))`` refinement. None: no refinement, the stack is
            channel-agnostic.
        num_stages: stages available (FeatUp: 4, i.e. up to 16x in 2x steps; larger factors make the
            last stage take a bigger step).
        guidance_dim, key_dim, radius: see :class:`JBUStage`.
        normalize_features: the features were channel-normalised (:func:`channel_norm`) in training,
            as FeatUp does; the stack then normalises its input itself (not in channel-agnostic mode)
            and its output lives in the normalised space.
        convex_kernels: every stage's kernel is a convex combination (see :class:`JBUStage`).
        guidance_mean, guidance_std: per-channel normalisation (g - mean) / std of the guidance
            (expected in [0, 1]) before the stages; default ImageNet's statistics for 3 channels
            (FeatUp's input normalisation), 0.45 / 0.225 per channel otherwise.

    Raises:
        ValueError: bad sizes.
    """

    def __init__(self, feat_dim: int | None = None, num_stages: int = 4, guidance_dim: int = 3, key_dim: int = 32,
                 radius: int = 3, normalize_features: bool = False, guidance_mean: Sequence[float] | None = None,
                 guidance_std: Sequence[float] | None = None, convex_kernels: bool = False) -> None:
        super().__init__()
        if feat_dim is not None and (isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1):
            raise ValueError(f"feat_dim must be None or an int >= 1, got {feat_dim!r}")
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"num_stages must be an int >= 1, got {num_stages!r}")
        self.feat_dim, self.num_stages, self.guidance_dim = feat_dim, num_stages, guidance_dim
        self.key_dim, self.radius, self.normalize_features = key_dim, radius, bool(normalize_features)
        self.convex_kernels = bool(convex_kernels)
        self.stages = nn.ModuleList(JBUStage(guidance_dim, key_dim, radius, self.convex_kernels)
                                    for _ in range(num_stages))
        imagenet = guidance_dim == 3
        mean = list(guidance_mean) if guidance_mean is not None else (
            [0.485, 0.456, 0.406] if imagenet else [0.45] * guidance_dim)
        std = list(guidance_std) if guidance_std is not None else (
            [0.229, 0.224, 0.225] if imagenet else [0.225] * guidance_dim)
        if len(mean) != guidance_dim or len(std) != guidance_dim or not all(v > 0 for v in std):
            raise ValueError(f"guidance_mean and guidance_std must hold {guidance_dim} values (std > 0), got "
                             f"{mean!r} and {std!r}")
        self.guidance_mean, self.guidance_std = [float(v) for v in mean], [float(v) for v in std]
        self.register_buffer("_g_mean", torch.tensor(self.guidance_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_g_std", torch.tensor(self.guidance_std).view(1, -1, 1, 1), persistent=False)
        self.refine = None if feat_dim is None else nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, 1))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (what :meth:`save` stores beside the weights)."""
        return {"feat_dim": self.feat_dim, "num_stages": self.num_stages, "guidance_dim": self.guidance_dim,
                "key_dim": self.key_dim, "radius": self.radius, "normalize_features": self.normalize_features,
                "guidance_mean": list(self.guidance_mean), "guidance_std": list(self.guidance_std),
                "convex_kernels": self.convex_kernels}

    def kernels(self, guidance: torch.Tensor, feature_size: tuple[int, int],
                size: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Per-stage kernels [B, H_k, W_k, 2r+1, 2r+1] for upsampling maps of ``feature_size`` to ``size``.

        Args:
            guidance: [B, guidance_dim, H', W'] float guidance in [0, 1]; normalised with
                ``guidance_mean`` / ``guidance_std``, then average-pooled (or, where it is smaller,
                bilinearly resampled) to each stage's size.
            feature_size: (h, w) of the low-res maps.
            size: output (H, W); default the guidance size.

        Raises:
            TypeError / ValueError: bad guidance (type, dims, channels, NaN / Inf) or sizes.
        """
        guidance = check_float_tensor(guidance, "guidance", (4,))
        if guidance.shape[1] != self.guidance_dim:
            raise ValueError(f"guidance must have {self.guidance_dim} channels for this stack, got "
                             f"{guidance.shape[1]} (shape {list(guidance.shape)})")
        h, w = check_size(feature_size, "feature_size")
        if guidance.shape[-2] < h or guidance.shape[-1] < w:
            raise ValueError(f"guidance ({guidance.shape[-2]} x {guidance.shape[-1]}) must not be smaller than the "
                             f"features ({h} x {w})")
        target = tuple(guidance.shape[-2:]) if size is None else check_size(size)
        sizes = stage_sizes((h, w), target, self.num_stages)
        guidance = (guidance - self._g_mean.to(guidance.dtype)) / self._g_std.to(guidance.dtype)
        return [stage.kernel(resize_guidance(guidance, s)) for stage, s in zip(self.stages, sizes)]

    def apply(self, features: torch.Tensor, kernels: list[torch.Tensor], *, channel_agnostic: bool = False,
              max_chunk_bytes: int | None = None) -> torch.Tensor:
        """Upsample ``features`` [B, C, h, w] with kernels from :meth:`kernels` -> [B, C, H, W].

        Args:
            features: low-res map of the size the kernels were made for.
            kernels: output of :meth:`kernels`.
            channel_agnostic: run the JBU stages only (any C; the output at every pixel is a weighted
                sum of low-res values); skip the channel normalisation and the 1x1 refinement, which
                belong to the trained feature space.
            max_chunk_bytes: see :func:`~air_core.jbu.adaptive_conv.adaptive_conv`.

        Raises:
            TypeError / ValueError: bad features, or C != feat_dim when the refinement applies.
        """
        features = check_float_tensor(features, "features", (4,))
        if not kernels or features.shape[0] != kernels[0].shape[0]:
            raise ValueError(f"features batch size {features.shape[0]} does not match the kernels' "
                             f"({kernels[0].shape[0] if kernels else 'no kernels'})")
        full = not channel_agnostic and self.refine is not None
        if full and features.shape[1] != self.feat_dim:
            raise ValueError(f"features have {features.shape[1]} channels, this stack was built for feat_dim="
                             f"{self.feat_dim}; pass channel_agnostic=True to run only its JBU stages")
        x = channel_norm(features) if full and self.normalize_features else features
        for stage, kernel in zip(self.stages, kernels):
            x = stage.apply(x, kernel, max_chunk_bytes=max_chunk_bytes)
        return x + 0.1 * self.refine(x) if full else x

    def forward(self, features: torch.Tensor, guidance: torch.Tensor, size: tuple[int, int] | None = None, *,
                channel_agnostic: bool = False, max_chunk_bytes: int | None = None) -> torch.Tensor:
        """Upsample features [B, C, h, w] guided by guidance [B, G, H', W'] to ``size`` (default the
        guidance size) -> [B, C, H, W]. See :meth:`kernels` and :meth:`apply`.

        Raises:
            TypeError / ValueError: bad inputs, mismatched batch sizes, guidance or size smaller than
                the features.
        """
        features = check_float_tensor(features, "features", (4,))
        guidance = check_float_tensor(guidance, "guidance", (4,))
        if guidance.shape[0] != features.shape[0]:
            raise ValueError(f"guidance batch size {guidance.shape[0]} does not match features batch size "
                             f"{features.shape[0]}")
        kernels = self.kernels(guidance.to(features.dtype), tuple(features.shape[-2:]), size)
        return self.apply(features, kernels, channel_agnostic=channel_agnostic, max_chunk_bytes=max_chunk_bytes)

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration and weights to ``path`` (``torch.save`` of plain tensors and numbers,
        written atomically; :meth:`load` reads it back with ``weights_only=True``)."""
        payload = {"format": STACK_FORMAT, "version": _STACK_VERSION, "config": self.config,
                   "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}
        with atomic_write(as_path(path)) as handle:
            torch.save(payload, handle)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "JBUStack":
        """Read a stack written by :meth:`save`, in eval mode, on ``device`` ("auto", "cpu", "cuda").

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a saved JBUStack (or is of a newer format version).
        """
        p = as_path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no JBU stack file at {str(p)!r}")
        try:
            payload = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt or foreign file: torch raises various types
            raise ValueError(f"{str(p)!r} is not a saved JBUStack: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != STACK_FORMAT:
            raise ValueError(f"{str(p)!r} is not a saved JBUStack (format tag missing)")
        if payload.get("version") != _STACK_VERSION:
            raise ValueError(f"{str(p)!r} has JBUStack format version {payload.get('version')!r}; this version "
                             f"reads {_STACK_VERSION}")
        stack = cls(**payload["config"])
        stack.load_state_dict(payload["state_dict"])
        return stack.to(resolve_device(device)).eval()
