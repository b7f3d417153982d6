"""The staged AIR predictor: a compact CNN per stage proposes one Gaussian per patch on the residual.

Data flow (DESIGN.md; AIR, github.com/whoiszzj/AIR, "stage-wise residual prediction"): for stage
s = 0 .. S-1,

    residual_s = image - R_{s-1}                      (R_{-1} = 0, G_{<0} empty)
    raw_s      = head_s(JBU_s(encoder_s([residual_s, image]), guidance = image))   [B, 8, ph, pw]
    keep_s     = stage_control(R_{s-1}, image)                                      [B, ph, pw]
    G_{<s+1}   = G_{<s} + decode(raw_s)[keep_s]
    R_s        = render(G_{<s+1}, mode="sum")

The residual is not detached, so gradients cross stages as in AIR's finetuning; stage control is
computed without gradient. Because "sum" rendering is linear in the Gaussians (each adds
c min(1, v) independently), R_s is computed as R_{s-1} + render(kept candidates of stage s), which
equals a full re-render of G_{<s+1}.

Per-stage network (this project's design; AIR's reference uses a DINOv3 ViT-B/16 per stage, which
cannot be downloaded here):

* encoder: three Conv3x3 stride-2 blocks (Conv -> GroupNorm -> GELU) from the 6 input channels
  [residual, image] to ``width`` channels at stride 8, then two pre-activation residual blocks
  (GroupNorm -> GELU -> Conv3x3, twice). Features of size (ceil(H / 8), ceil(W / 8)).
* lift to patch resolution: a learned FeatUp-style :class:`~air_core.jbu.JBUStack` (feat_dim=width,
  guidance = the image, average-pooled by the stack to each of its stages' sizes), trained with the
  predictor. With ps <= 8 the patch grid is at least as large as the stride-8 feature map; for
  ps > 8 the features are first average-pooled down to the patch grid (JBU only upsamples).
* head: Conv1x1(width -> width) -> GELU -> Conv1x1(width -> 8); the last layer starts at zero bias
  and N(0, 1e-3^2) weights so the initial raw outputs are near 0 (Gaussians at the patch centres,
  scale ps/2 + 0.5, colour ~0).

The stages have separate weights (as in AIR). The model is untrained as constructed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..gaussians import Gaussians2D
from ..jbu import JBUStack
from ..raster2d import render
from .parameterization import RAW_CHANNELS, check_patch_size, decode_candidates, patch_grid
from .stage_control import stage_control

__all__ = ["AIRPredictor", "PredictorOutput", "ENCODER_STRIDE", "PRETRAINED_PATH", "ENCODER_JBU_PATH",
           "load_encoder_jbu"]

#: The shipped weights (safetensors; config and training record in the file's metadata).
PRETRAINED_PATH = Path(__file__).resolve().parent / "weights" / "air_ps7_s4.safetensors"
#: The shipped JBU stack for the shipped predictor's first-stage encoder features
#: (:meth:`AIRPredictor.encoder_features`), trained with :func:`air_core.jbu.fit_jbu` by
#: ``scripts/train_encoder_jbu.py``; read it with :func:`load_encoder_jbu`.
ENCODER_JBU_PATH = Path(__file__).resolve().parent / "weights" / "encoder_jbu.pt"
_FORMAT = "air-predictor"
_FORMAT_VERSION = "1"

#: Downsampling factor of each stage's encoder.
ENCODER_STRIDE = 8
_HEAD_INIT_STD = 1e-3


@dataclass
class PredictorOutput:
    """Result of :meth:`AIRPredictor.forward` for a batch of B images of size (H, W) over S stages.

    Attributes:
        gaussians: list of B :class:`Gaussians2D` ("sum" mode, no opacities), the kept candidates of
            all stages in stage order (stage s's block has ``counts[b, s]`` Gaussians, in row-major
            patch order). Differentiable with respect to ``raw``.
        renders: [B, S, 3, H, W] float, R_s = "sum" render of the Gaussians of stages 0..s (not clamped).
        keep: [B, S, ph, pw] bool stage-control masks (True = that patch's candidate was kept).
        raw: [B, S, 8, ph, pw] float raw head outputs of every stage, kept or not (for distillation).
        counts: [B, S] int64, candidates kept per image and stage (``keep`` summed over the patches).
    """

    gaussians: list[Gaussians2D]
    renders: torch.Tensor
    keep: torch.Tensor
    raw: torch.Tensor
    counts: torch.Tensor

    @property
    def render(self) -> torch.Tensor:
        """[B, 3, H, W] final render R_{S-1}."""
        return self.renders[:, -1]

    @property
    def num_candidates(self) -> int:
        """Candidates proposed per image and stage, ph * pw."""
        return int(self.keep.shape[-2] * self.keep.shape[-1])


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    """x + Conv3x3(GELU(GN(Conv3x3(GELU(GN(x))))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_norm(channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  _norm(channels), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), _norm(cout), nn.GELU())


class _StageNet(nn.Module):
    """One stage: encoder at stride 8 -> learned JBU to the patch grid (+ patchify skip) -> head."""

    def __init__(self, width: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.encoder = nn.Sequential(_down(6, width), _down(width, width), _down(width, width),
                                     _ResBlock(width), _ResBlock(width))
        # enough 2x JBU steps for the stride-8 -> patch-grid factor (one for ps = 5..8)
        jbu_stages = max(1, math.ceil(math.log2(ENCODER_STRIDE / patch_size)))
        self.jbu = JBUStack(feat_dim=width, num_stages=jbu_stages, guidance_dim=3)
        # patchify skip: the patch's own pixels, linearly (no normalisation keeps the residual's amplitude)
        self.patchify = nn.Conv2d(6, width, patch_size, stride=patch_size)
        self.mix = nn.Sequential(_ResBlock(width), _ResBlock(width))
        self.head = nn.Sequential(nn.Conv2d(width, width, 1), nn.GELU(), nn.Conv2d(width, RAW_CHANNELS, 1))
        nn.init.normal_(self.head[-1].weight, std=_HEAD_INIT_STD)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, residual: torch.Tensor, image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = torch.cat([residual, image], 1)
        features = self.encoder(x)
        fh, fw = features.shape[-2:]
        if fh > grid[0] or fw > grid[1]:
            features = F.adaptive_avg_pool2d(features, (min(fh, grid[0]), min(fw, grid[1])))
        lifted = self.jbu(features, image, size=grid)
        ps = self.patch_size
        h, w = x.shape[-2:]
        # replicate-pad partial border patches to whole ones
        padded = F.pad(x, (0, grid[1] * ps - w, 0, grid[0] * ps - h), mode="replicate")
        return self.head(self.mix(lifted + self.patchify(padded)))


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value


class AIRPredictor(nn.Module):
    """Feed-forward AIR predictor: image -> 2D Gaussians in S residual stages (module docstring).

    Args:
        num_stages: number of stages S_max (AIR: 4), int >= 1; each has its own network.
        patch_size: ps, int >= 1 (AIR: 7); one candidate per ps x ps patch per stage.
        width: encoder / JBU / head channels, int >= 1 (default 64: 408,161 parameters per stage,
            1,632,644 for 4 stages).
        mse_threshold, ssim_threshold: stage control thresholds (see
            :func:`~air_core.predictor.stage_control.stage_control`).

    Raises:
        TypeError: a size argument is not an int, a threshold not a real number.
        ValueError: a size argument is < 1, a threshold is not finite.
    """

    def __init__(self, num_stages: int = 4, patch_size: int = 7, width: int = 64,
                 mse_threshold: float = 10 ** -3.5, ssim_threshold: float = 0.05) -> None:
        super().__init__()
        self.num_stages = _check_int(num_stages, "num_stages", 1)
        self.patch_size = check_patch_size(patch_size)
        self.width = _check_int(width, "width", 1)
        for name, v in (("mse_threshold", mse_threshold), ("ssim_threshold", ssim_threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
        self.mse_threshold, self.ssim_threshold = float(mse_threshold), float(ssim_threshold)
        self.stages = nn.ModuleList(_StageNet(width, patch_size) for _ in range(num_stages))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"num_stages": self.num_stages, "patch_size": self.patch_size, "width": self.width,
                "mse_threshold": self.mse_threshold, "ssim_threshold": self.ssim_threshold}

    def save_pretrained(self, path: str | os.PathLike, training: dict[str, Any] | None = None) -> None:
        """Write the weights as a safetensors file (atomically: a temporary file, then a rename).

        The file's metadata holds ``format`` ("air-predictor"), ``version``, ``config`` (the constructor
        arguments, JSON) and ``training`` (a free JSON record: command, data, hardware, steps, ...).
        """
        from safetensors.torch import save

        from .._io import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        meta = {"format": _FORMAT, "version": _FORMAT_VERSION, "config": json.dumps(self.config),
                "training": json.dumps(training or {})}
        with atomic_write(path) as handle:
            handle.write(save(tensors, metadata=meta))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                        ) -> "AIRPredictor":
        """Load a predictor written by :meth:`save_pretrained`; no network access.

        Args:
            path: a ``.safetensors`` file; default: the weights shipped in the package
                (:data:`PRETRAINED_PATH`).
            device: where to put the model. It is returned in eval mode.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not an AIR predictor file, or its tensors do not match its config.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(PRETRAINED_PATH if path is None else path)
        if not path.is_file():
            raise FileNotFoundError(f"predictor weights not found: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an AIR predictor file (metadata format {meta.get('format')!r})")
        if meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path} has predictor file version {meta.get('version')!r}; this air_core reads "
                             f"version {_FORMAT_VERSION}")
        try:
            model = cls(**json.loads(meta["config"]))
            model.training_record = json.loads(meta.get("training", "{}"))
        except (KeyError, TypeError, ValueError) as exc:  # no / bad JSON / unknown keys / bad values
            raise ValueError(f"{path}: bad predictor config in the file's metadata: {exc!r}") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights do not match the stored config: {exc}") from None
        return model.to(device).eval()

    def _check_image(self, image: Any) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor [B, 3, H, W], got {type(image).__name__}")
        if not image.is_floating_point():
            raise TypeError(f"image must be a floating-point tensor, got {image.dtype}")
        if image.dim() != 4 or image.shape[1] != 3 or image.numel() == 0:
            raise ValueError(f"image must have shape [B, 3, H, W] with B, H, W >= 1, got {list(image.shape)}")
        with torch.no_grad():
            if not bool(torch.isfinite(image).all()):
                raise ValueError("image contains NaN or Inf values")
            if bool((image < 0).any()) or bool((image > 1).any()):
                raise ValueError(f"image values must be in [0, 1], got [{float(image.min()):g}, "
                                 f"{float(image.max()):g}]")
        return image

    def encoder_features(self, image: torch.Tensor) -> torch.Tensor:
        """The first stage's encoder features of ``image``: the map the predictor's JBU lifts.

        The first stage sees residual = image (nothing rendered yet), so its input is [image, image].

        Args:
            image: [B, 3, H, W] float tensor in [0, 1] on the model's device.

        Returns:
            [B, width, ceil(H / 8), ceil(W / 8)] float features (stride :data:`ENCODER_STRIDE`).

        Raises:
            TypeError / ValueError: as :meth:`forward` for a bad image.
        """
        image = self._check_image(image)
        return self.stages[0].encoder(torch.cat([image, image], 1))

    def forward(self, image: torch.Tensor, stages: int | None = None) -> PredictorOutput:
        """Predict Gaussians for a batch of images of one size, stage by stage.

        Args:
            image: [B, 3, H, W] float tensor in [0, 1] on the model's device.
            stages: how many stages to run, 1 .. ``num_stages`` (default all); AIR switches stages on one
                after another during training.

        Returns:
            :class:`PredictorOutput`; everything except ``keep`` and ``counts`` is differentiable with
            respect to the network parameters.

        Raises:
            TypeError: ``image`` not a floating-point tensor; ``stages`` not an int.
            ValueError: wrong image shape, NaN / Inf, values outside [0, 1]; ``stages`` outside
                1 .. num_stages.
        """
        image = self._check_image(image)
        num = self.num_stages if stages is None else _check_int(stages, "stages", 1)
        if num > self.num_stages:
            raise ValueError(f"stages must be at most num_stages = {self.num_stages}, got {num}")
        b, _, h, w = image.shape
        grid = patch_grid((h, w), self.patch_size)
        previous = torch.zeros_like(image)
        kept: list[list[Gaussians2D]] = [[] for _ in range(b)]
        renders, keeps, raws = [], [], []
        for net in self.stages[:num]:
            raw = net(image - previous, image, grid)
            keep = stage_control(previous, image, self.patch_size, self.mse_threshold, self.ssim_threshold)
            candidates = decode_candidates(raw, (h, w), self.patch_size)
            current = []
            for i, (cand, mask) in enumerate(zip(candidates, keep.flatten(1))):
                new = cand[mask]
                kept[i].append(new)
                current.append(previous[i] + render(new, mode="sum") if len(new) else previous[i])
            previous = torch.stack(current)
            renders.append(previous)
            keeps.append(keep)
            raws.append(raw)
        keep_all = torch.stack(keeps, 1)
        return PredictorOutput(gaussians=[Gaussians2D.cat(g) for g in kept], renders=torch.stack(renders, 1),
                               keep=keep_all, raw=torch.stack(raws, 1), counts=keep_all.flatten(2).sum(-1))


def load_encoder_jbu(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> JBUStack:
    """The JBU stack trained (FeatUp's multi-view objective, :func:`air_core.jbu.fit_jbu`) for the shipped
    predictor's first-stage encoder features (:meth:`AIRPredictor.encoder_features`): upsamples them
    from stride 8 to any size up to the image's, guided by the image, e.g.
    ``jbu_upsample(features, image, method="learned", model=load_encoder_jbu())``. Eval mode.

    Args:
        path: a file written by :meth:`JBUStack.save`; default the shipped one (:data:`ENCODER_JBU_PATH`).
        device: "cpu", "cuda" or "auto".

    Raises:
        FileNotFoundError / ValueError: as :meth:`JBUStack.load`.
    """
    return JBUStack.load(ENCODER_JBU_PATH if path is None else path, device=device)
