"""The 2D Gaussian container, its covariance / conic / Cholesky conversions and its file format.

Conventions (DESIGN.md): image coordinates with x to the right and y down, the image covering
[0, W] x [0, H] and pixel (row i, column j) centred at (j + 0.5, i + 0.5). Means and scales are in
pixels of the image the Gaussians belong to (``image_size``), so a Gaussian image renders at any
output size.

A Gaussian i has mean mu_i (x, y), standard deviations s_i = (s_1, s_2) along its rotated axes and
rotation theta_i (radians, counter-clockwise from +x in the x-right / y-down frame). Its covariance
is Sigma = R(theta) diag(s)^2 R(theta)^T with R = [[cos, -sin], [sin, cos]] (GaussianImage, Zhang
et al. 2024, Eq. 2; AIR's parameterisation). The *conic* is the inverse covariance written as the
three numbers (a, b, c) of [[a, b], [b, c]] (3DGS / gsplat naming); the *Cholesky* form is the lower
triangular L = [[l11, 0], [l21, l22]] with Sigma = L L^T (GaussianImage's parameterisation).
All conversions live in this module.

File format (version 1), an ``.npz`` archive (numpy's zip of ``.npy`` arrays, compressed):

========================  ==============  ==========================================================
key                       dtype / shape   meaning
========================  ==============  ==========================================================
``format``                str             always ``"air-gaussians-2d"``
``version``               int64 scalar    1
``means``                 float32 [N, 2]  x, y in pixels of ``image_size``
``scales``                float32 [N, 2]  standard deviations along the rotated axes, pixels, > 0
``rotations``             float32 [N]     radians
``colours``               float32 [N, C]  C = 3 (RGB, signed in sum mode)
``opacities`` (optional)  float32 [N]     in [0, 1], alpha mode only
``image_size``            int64 [2]       (H, W) of the image the Gaussians were fitted to
``metadata``              str             JSON object (e.g. ``{"mode": "sum"}``)
========================  ==============  ==========================================================
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ._io import as_path, atomic_write

__all__ = [
    "Gaussians2D",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "covariances_from_scales_rotations",
    "conics_from_scales_rotations",
    "conics_from_covariances",
    "cholesky_from_covariances",
    "covariances_from_cholesky",
    "scales_rotations_from_covariances",
    "save_gaussians",
    "load_gaussians",
]

FORMAT_NAME = "air-gaussians-2d"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Conversions (the single place where scale / rotation / covariance / conic / Cholesky meet)
# ----------------------------------------------------------------------------------------------


def covariances_from_scales_rotations(scales: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Sigma = R(theta) diag(s)^2 R(theta)^T.

    Args:
        scales: [N, 2] standard deviations (pixels, > 0).
        rotations: [N] angles (radians).

    Returns:
        [N, 2, 2] covariances (pixels^2), same dtype/device as ``scales``. Differentiable.
    """
    cos, sin = torch.cos(rotations), torch.sin(rotations)
    v1, v2 = scales[:, 0] ** 2, scales[:, 1] ** 2
    sxx = cos * cos * v1 + sin * sin * v2
    sxy = cos * sin * (v1 - v2)
    syy = sin * sin * v1 + cos * cos * v2
    return torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)


def conics_from_scales_rotations(scales: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Conic (a, b, c) of Sigma^-1 = R diag(1/s^2) R^T, computed without a matrix inverse.

    Args:
        scales: [N, 2] standard deviations (pixels, > 0).
        rotations: [N] angles (radians).

    Returns:
        [N, 3] (a, b, c) with Sigma^-1 = [[a, b], [b, c]] (1 / pixels^2). Differentiable.
    """
    cos, sin = torch.cos(rotations), torch.sin(rotations)
    p1, p2 = scales[:, 0].pow(-2), scales[:, 1].pow(-2)
    a = cos * cos * p1 + sin * sin * p2
    b = cos * sin * (p1 - p2)
    c = sin * sin * p1 + cos * cos * p2
    return torch.stack([a, b, c], -1)


def conics_from_covariances(covariances: torch.Tensor) -> torch.Tensor:
    """Conic (a, b, c) of the inverse of [N, 2, 2] symmetric positive-definite covariances.

    Raises:
        ValueError: a covariance is not positive definite (determinant <= 0).
    """
    sxx, sxy, syy = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
    det = sxx * syy - sxy * sxy
    if bool((det <= 0).any()):
        raise ValueError("covariances must be positive definite; found a determinant <= 0")
    return torch.stack([syy / det, -sxy / det, sxx / det], -1)


def cholesky_from_covariances(covariances: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor (l11, l21, l22) of [N, 2, 2] covariances, Sigma = L L^T.

    Returns:
        [N, 3] with l11 > 0, l22 > 0 (pixels).
    """
    sxx, sxy, syy = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
    l11 = torch.sqrt(sxx)
    l21 = sxy / l11
    l22 = torch.sqrt(torch.clamp(syy - l21 * l21, min=torch.finfo(covariances.dtype).tiny))
    return torch.stack([l11, l21, l22], -1)


def covariances_from_cholesky(cholesky: torch.Tensor) -> torch.Tensor:
    """Sigma = L L^T from [N, 3] Cholesky entries (l11, l21, l22) (GaussianImage's parameters)."""
    l11, l21, l22 = cholesky.unbind(-1)
    sxx = l11 * l11
    sxy = l11 * l21
    syy = l21 * l21 + l22 * l22
    return torch.stack([torch.stack([sxx, sxy], -1), torch.stack([sxy, syy], -1)], -2)


def scales_rotations_from_covariances(covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decompose [N, 2, 2] covariances into scales [N, 2] (descending) and rotations [N].

    The rotation is the angle of the first eigenvector, wrapped to [0, pi).
    """
    sxx, sxy, syy = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
    mean = 0.5 * (sxx + syy)
    radius = torch.sqrt(0.25 * (sxx - syy) ** 2 + sxy * sxy)
    lam1 = mean + radius
    lam2 = torch.clamp(mean - radius, min=torch.finfo(covariances.dtype).tiny)
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    theta = torch.remainder(theta, math.pi)
    return torch.stack([torch.sqrt(lam1), torch.sqrt(lam2)], -1), theta


# ----------------------------------------------------------------------------------------------
# The container
# ----------------------------------------------------------------------------------------------


def _check_tensor(name: str, value: Any, shape_tail: tuple[int | None, ...], n: int | None) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    if not value.is_floating_point():
        value = value.to(torch.float32)
    expected = "[N" + "".join(f", {d if d is not None else 'C'}" for d in shape_tail) + "]"
    if value.dim() != 1 + len(shape_tail) or any(
        d is not None and value.shape[1 + k] != d for k, d in enumerate(shape_tail)
    ):
        raise ValueError(f"{name} must have shape {expected}, got {list(value.shape)}")
    if n is not None and value.shape[0] != n:
        raise ValueError(f"{name} must have N = {n} rows like means, got {value.shape[0]}")
    return value


@dataclass
class Gaussians2D:
    """A set of N 2D Gaussians describing an image of ``image_size`` = (H, W) pixels.

    Attributes:
        means: [N, 2] float tensor, centres (x, y) in pixels, image covering [0, W] x [0, H].
        scales: [N, 2] float tensor, standard deviations along the rotated axes, pixels, > 0.
        rotations: [N] float tensor, radians.
        colours: [N, C] float tensor (C = 3 for RGB). Signed values are allowed ("sum" mode adds
            residual colours); in "alpha" mode colours are usually in [0, 1].
        opacities: optional [N] float tensor in [0, 1]; present for "alpha"-mode Gaussians.
        image_size: (H, W) of the image, positive ints.
        metadata: free JSON-serialisable dict saved with the file (e.g. ``{"mode": "sum"}``).

    All tensors share one device and dtype. Construction validates shapes and types
    (``ValueError`` / ``TypeError`` naming the field); values are not scanned for NaN unless
    :meth:`validate` is called (the file loader does).
    """

    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    colours: torch.Tensor
    opacities: torch.Tensor | None = None
    image_size: tuple[int, int] = (0, 0)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.means = _check_tensor("means", self.means, (2,), None)
        n = self.means.shape[0]
        self.scales = _check_tensor("scales", self.scales, (2,), n)
        self.rotations = _check_tensor("rotations", self.rotations, (), n)
        self.colours = _check_tensor("colours", self.colours, (None,), n)
        if self.colours.shape[1] < 1:
            raise ValueError("colours must have at least one channel")
        if self.opacities is not None:
            self.opacities = _check_tensor("opacities", self.opacities, (), n)
        try:
            h, w = (int(v) for v in self.image_size)
        except (TypeError, ValueError):
            raise TypeError(f"image_size must be a pair of ints (H, W), got {self.image_size!r}") from None
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive (H, W), got {self.image_size!r}")
        self.image_size = (h, w)
        names = ("means", "scales", "rotations", "colours", "opacities")
        for name, t in zip(names, self._tensors()):
            if t.device != self.means.device:
                raise ValueError(f"all tensors must be on one device: {name} is on {t.device}, "
                                 f"means on {self.means.device}")
            if t.dtype != self.means.dtype:
                raise ValueError(f"all tensors must share one dtype: {name} is {t.dtype}, means is {self.means.dtype}")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")

    # -- basic properties ---------------------------------------------------------------------
    def _tensors(self) -> list[torch.Tensor]:
        ts = [self.means, self.scales, self.rotations, self.colours]
        return ts + ([self.opacities] if self.opacities is not None else [])

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return len(self)

    @property
    def num_channels(self) -> int:
        return int(self.colours.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def mode(self) -> str:
        """Default render mode: ``metadata["mode"]`` if set, else "alpha" with opacities, "sum" without."""
        return str(self.metadata.get("mode", "alpha" if self.opacities is not None else "sum"))

    def __repr__(self) -> str:
        return (f"Gaussians2D(N={len(self)}, channels={self.num_channels}, image_size={self.image_size}, "
                f"opacities={'yes' if self.opacities is not None else 'no'}, dtype={self.dtype}, device={self.device})")

    # -- conversions ----------------------------------------------------------------------------
    def covariances(self) -> torch.Tensor:
        """[N, 2, 2] covariances in pixels^2 (see :func:`covariances_from_scales_rotations`)."""
        return covariances_from_scales_rotations(self.scales, self.rotations)

    def conics(self) -> torch.Tensor:
        """[N, 3] conics (a, b, c) of the inverse covariance, 1 / pixels^2."""
        return conics_from_scales_rotations(self.scales, self.rotations)

    def cholesky(self) -> torch.Tensor:
        """[N, 3] lower Cholesky factors (l11, l21, l22) of the covariances, pixels."""
        return cholesky_from_covariances(self.covariances())

    @classmethod
    def from_covariances(cls, means, covariances, colours, opacities=None, image_size=(0, 0),
                         metadata=None) -> "Gaussians2D":
        """Build from [N, 2, 2] covariances (eigen-decomposed into scales and rotations)."""
        cov = _check_tensor("covariances", covariances, (2, 2), None)
        scales, rotations = scales_rotations_from_covariances(cov)
        return cls(means, scales, rotations, colours, opacities, image_size, dict(metadata or {}))

    @classmethod
    def from_cholesky(cls, means, cholesky, colours, opacities=None, image_size=(0, 0),
                      metadata=None) -> "Gaussians2D":
        """Build from [N, 3] Cholesky entries (l11, l21, l22) as GaussianImage stores them."""
        chol = _check_tensor("cholesky", cholesky, (3,), None)
        return cls.from_covariances(means, covariances_from_cholesky(chol), colours, opacities, image_size,
                                    metadata)

    # -- moves, selection, concatenation -------------------------------------------------------
    def _map(self, fn) -> "Gaussians2D":
        return Gaussians2D(fn(self.means), fn(self.scales), fn(self.rotations), fn(self.colours),
                           None if self.opacities is None else fn(self.opacities), self.image_size,
                           dict(self.metadata))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Gaussians2D":
        """Copy to another device and/or floating dtype."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "Gaussians2D":
        return self._map(lambda t: t.detach())

    def clone(self) -> "Gaussians2D":
        return self._map(lambda t: t.detach().clone())

    def __getitem__(self, index) -> "Gaussians2D":
        """Select Gaussians by an int, slice, index tensor/array or boolean mask of length N."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, torch.Tensor):
            if index.dtype == torch.bool and index.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape [{len(self)}], got {list(index.shape)}")
            index = index.to(self.device)
        if isinstance(index, (bool, np.bool_)):
            raise TypeError("index must be an int, slice, index array or boolean mask, got a bool")
        if isinstance(index, torch.Tensor) and index.dim() == 0 and not index.dtype.is_floating_point:
            index = int(index)
        if isinstance(index, (int, np.integer)):
            index = int(index)
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    @classmethod
    def cat(cls, items: Sequence["Gaussians2D"]) -> "Gaussians2D":
        """Concatenate Gaussian sets of one image size (list order is kept, which matters in alpha mode).

        Raises:
            ValueError: empty list, different image sizes or channel counts, or a mix of sets with and
                without opacities.
        """
        items = list(items)
        if not items:
            raise ValueError("items must contain at least one Gaussians2D")
        first = items[0]
        for g in items[1:]:
            if g.image_size != first.image_size:
                raise ValueError(f"cannot concatenate image sizes {first.image_size} and {g.image_size}")
            if g.num_channels != first.num_channels:
                raise ValueError(f"cannot concatenate {first.num_channels} and {g.num_channels} colour channels")
            if (g.opacities is None) != (first.opacities is None):
                raise ValueError("cannot concatenate Gaussians with and without opacities")
        cat = lambda name: torch.cat([getattr(g, name) for g in items], 0)  # noqa: E731
        return cls(cat("means"), cat("scales"), cat("rotations"), cat("colours"),
                   None if first.opacities is None else cat("opacities"), first.image_size, dict(first.metadata))

    @classmethod
    def empty(cls, image_size: tuple[int, int], num_channels: int = 3, with_opacities: bool = False,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "Gaussians2D":
        """A set of zero Gaussians (renders to zeros, or the background in alpha mode)."""
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return cls(z(0, 2), z(0, 2), z(0), z(0, num_channels), z(0) if with_opacities else None, image_size)

    # -- validation and I/O -------------------------------------------------------------------------
    def validate(self) -> "Gaussians2D":
        """Check values: all finite, scales > 0, opacities in [0, 1]. Returns self.

        Raises:
            ValueError: naming the first offending field.
        """
        for name in ("means", "scales", "rotations", "colours", "opacities"):
            t = getattr(self, name)
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN or Inf values")
        if len(self) and not bool((self.scales > 0).all()):
            raise ValueError("scales must be > 0")
        if self.opacities is not None and len(self) and not bool(
                ((self.opacities >= 0) & (self.opacities <= 1)).all()):
            raise ValueError("opacities must lie in [0, 1]")
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the file format described in this module's docstring (see :func:`save_gaussians`)."""
        save_gaussians(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Gaussians2D":
        """Read a file written by :meth:`save` (see :func:`load_gaussians`)."""
        return load_gaussians(path, device=device)


def save_gaussians(gaussians: Gaussians2D, path: str | os.PathLike) -> None:
    """Save ``gaussians`` as a version-1 ``.npz`` file, atomically.

    Args:
        gaussians: the set to save (any device/dtype; stored as float32).
        path: destination; the ``.npz`` suffix is recommended (numpy would otherwise add it,
            so the file is written exactly at ``path`` instead).

    Raises:
        TypeError: ``gaussians`` is not a :class:`Gaussians2D`.
        ValueError: metadata is not JSON-serialisable, or values are invalid (NaN/Inf, scales <= 0,
            opacities outside [0, 1]; see :meth:`Gaussians2D.validate`): nothing is written.
        FileNotFoundError: the destination folder does not exist.
    """
    if not isinstance(gaussians, Gaussians2D):
        raise TypeError(f"gaussians must be a Gaussians2D, got {type(gaussians).__name__}")
    try:
        meta = json.dumps(gaussians.metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gaussians.metadata is not JSON-serialisable: {exc}") from None
    g = gaussians.detach().to("cpu", torch.float32).validate()
    arrays = {
        "format": np.array(FORMAT_NAME),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "means": g.means.numpy(),
        "scales": g.scales.numpy(),
        "rotations": g.rotations.numpy(),
        "colours": g.colours.numpy(),
        "image_size": np.array(g.image_size, dtype=np.int64),
        "metadata": np.array(meta),
    }
    if g.opacities is not None:
        arrays["opacities"] = g.opacities.numpy()
    with atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_gaussians(path: str | os.PathLike, device: str | torch.device = "cpu") -> Gaussians2D:
    """Load a file written by :func:`save_gaussians`.

    Args:
        path: an ``.npz`` file of format ``"air-gaussians-2d"``.
        device: where to put the tensors.

    Returns:
        Gaussians2D with float32 tensors, validated (finite, scales > 0).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a Gaussian file, is truncated or corrupted, has a newer or
            unknown version, or holds invalid values.
    """
    p = as_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Gaussian file not found: {str(p)!r}")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, Exception) as exc:  # noqa: B014
        raise ValueError(f"{str(p)!r} is not a readable AIR Gaussian file (truncated or corrupted?): "
                         f"{type(exc).__name__}: {exc}") from None
    fmt = str(arrays.get("format", ""))
    if fmt != FORMAT_NAME:
        raise ValueError(f"{str(p)!r} is not an AIR Gaussian file: format is {fmt!r}, expected {FORMAT_NAME!r}")
    try:
        version = int(arrays["version"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{str(p)!r} has no valid 'version' entry") from None
    if version != FORMAT_VERSION:
        raise ValueError(f"{str(p)!r} has format version {version}; this build reads version {FORMAT_VERSION} "
                         "(upgrade the package to read newer files)")
    missing = [k for k in ("means", "scales", "rotations", "colours", "image_size") if k not in arrays]
    if missing:
        raise ValueError(f"{str(p)!r} is missing the entries {missing}")
    try:
        meta = json.loads(str(arrays.get("metadata", "{}")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(p)!r} has corrupted metadata: {exc}") from None
    t = lambda k: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=np.float32)).to(device)  # noqa: E731
    try:
        g = Gaussians2D(t("means"), t("scales"), t("rotations"), t("colours"),
                        t("opacities") if "opacities" in arrays else None,
                        tuple(int(v) for v in np.asarray(arrays["image_size"]).reshape(-1)), meta)
        return g.validate()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{str(p)!r} holds invalid Gaussians: {exc}") from None
