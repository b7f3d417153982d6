"""The 3D Gaussian scene container and its INRIA .ply reader / writer.

A :class:`GaussianScene` holds the *raw* (pre-activation) parameters exactly as the INRIA 3D Gaussian
Splatting reference (graphdeco-inria/gaussian-splatting, ``scene/gaussian_model.py``) stores them in its
``.ply`` files. The activations live in one place, on the container:

* scale:    ``scales = exp(log_scales)`` (scene units, > 0)
* opacity:  ``opacities = sigmoid(opacity_logits)`` (in (0, 1))
* rotation: ``rotations = quats / |quats|`` (unit quaternions, w x y z), ``rotation_matrices()``
* covariance: ``Sigma = R S S^T R^T`` with ``S = diag(scales)`` (``covariances()``)
* colour: spherical-harmonics coefficients, degree 0 to 3; the colour of degree 0 alone is
  ``0.5 + C0 * sh_coeffs[:, 0]`` with ``C0 = 0.28209479177387814``.

File layout (one ``vertex`` element; binary little endian float32 in practice; property names fixed,
their order free on reading):

==========================  ============================  ====================================================
property                    scene field                   notes
==========================  ============================  ====================================================
``x y z``                   ``means[:, 0:3]``             required
``nx ny nz``                ``normals[:, 0:3]``           optional (all three or none); unused by rendering
``f_dc_0 f_dc_1 f_dc_2``    ``sh_coeffs[:, 0, 0:3]``      required
``f_rest_0 .. f_rest_M-1``  ``sh_coeffs[:, 1:, :]``       M = 3 (K - 1) = 0, 9, 24 or 45 for degree 0..3;
                                                          channel-major: ``f_rest_{c (K-1) + k}`` is
                                                          ``sh_coeffs[:, 1 + k, c]``
``opacity``                 ``opacity_logits``            required, pre-sigmoid
``scale_0 .. scale_2``      ``log_scales``                required, natural log of the standard deviations
``rot_0 .. rot_3``          ``quats``                     required, w x y z (``rot_0`` = w), not normalised
anything else               ``extra[name]``               kept as numpy arrays so a save round-trips them
==========================  ============================  ====================================================

Reading and writing use the MIT-licensed ``meshio`` PLY code; :func:`load_ply` parses the header itself
as well, to give clear messages and to catch truncated files that ``meshio`` would read short.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import IO, Any, Sequence

import meshio
import numpy as np
import torch

from .._device import resolve_device
from .._io import as_path, atomic_write
from .sh import SH_C0

__all__ = ["GaussianScene", "load_ply", "save_ply"]

_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")
_NORMALS = ("nx", "ny", "nz")
_F_REST = re.compile(r"f_rest_(\d+)\Z")
_SH_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest_* -> SH degree
_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
              "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "int64": 8, "uint64": 8,
              "double": 8, "float64": 8}
# dtypes meshio's PLY writer can store (its type table)
_WRITABLE_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                                np.uint32, np.uint64, np.float32, np.float64))
_MAX_HEADER_BYTES = 1 << 20
_PROPERTY_NAME = re.compile(r"[!-~]+\Z")  # printable ASCII, no whitespace


# ----------------------------------------------------------------------------------------------
# The container
# ----------------------------------------------------------------------------------------------


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    return value if value.is_floating_point() else value.to(torch.float32)


def _check_shape(name: str, value: torch.Tensor, tail: tuple[int, ...], n: int | None) -> None:
    expected = "[N" + "".join(f", {d}" for d in tail) + "]"
    if value.dim() != 1 + len(tail) or tuple(value.shape[1:]) != tail:
        raise ValueError(f"{name} must have shape {expected}, got {list(value.shape)}")
    if n is not None and value.shape[0] != n:
        raise ValueError(f"{name} must have N = {n} rows like means, got {value.shape[0]}")


def _sorted_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Column-wise linear-interpolation quantile of [N, D] values (no size limit, unlike torch.quantile)."""
    srt = values.sort(dim=0).values
    pos = q * (values.shape[0] - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, values.shape[0] - 1)
    return srt[lo] + (pos - lo) * (srt[hi] - srt[lo])


@dataclass(eq=False)
class GaussianScene:
    """N 3D Gaussians with the raw (pre-activation) parameters of an INRIA 3DGS .ply file.

    Attributes:
        means: [N, 3] centres, scene units.
        log_scales: [N, 3] natural log of the standard deviations along the Gaussian's axes
            (the file's ``scale_0..2``).
        quats: [N, 4] rotation quaternions w x y z, not necessarily normalised (``rot_0..3``).
        opacity_logits: [N] opacity before the sigmoid (the file's ``opacity``).
        sh_coeffs: [N, K, 3] spherical-harmonics coefficients, K = (degree + 1)^2 in {1, 4, 9, 16};
            ``sh_coeffs[:, 0]`` is ``f_dc_0..2``, ``sh_coeffs[:, 1:]`` the ``f_rest_*`` values.
        normals: optional [N, 3] (``nx ny nz``); carried through, not used by rendering.
        extra: unknown per-Gaussian properties, name -> numpy array [N] (int or float), kept so a
            save round-trips them. Names must be printable ASCII without spaces and must not be one of
            the standard property names.
        metadata: free dict (``load_ply`` sets ``{"source": path}``); not written to files.

    All tensors share one device and one floating dtype (float32 by default; any float dtype is
    allowed; integer inputs become float32, numpy arrays become tensors). Construction checks shapes,
    types, dtype and device (``ValueError`` / ``TypeError`` naming the field); values are scanned for
    NaN/Inf only by :meth:`validate` (the file reader and writer call it).
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh_coeffs: torch.Tensor
    normals: torch.Tensor | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    _TENSOR_FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh_coeffs", "normals")

    def __post_init__(self) -> None:
        self._check_structure()

    def _check_structure(self) -> None:
        for name in self._TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None or name != "normals":
                setattr(self, name, _as_tensor(name, value))
        _check_shape("means", self.means, (3,), None)
        n = self.means.shape[0]
        _check_shape("log_scales", self.log_scales, (3,), n)
        _check_shape("quats", self.quats, (4,), n)
        _check_shape("opacity_logits", self.opacity_logits, (), n)
        if self.sh_coeffs.dim() != 3 or self.sh_coeffs.shape[2] != 3 or self.sh_coeffs.shape[1] not in (1, 4, 9, 16):
            raise ValueError("sh_coeffs must have shape [N, K, 3] with K = (degree + 1)^2 in {1, 4, 9, 16}, "
                             f"got {list(self.sh_coeffs.shape)}")
        if self.sh_coeffs.shape[0] != n:
            raise ValueError(f"sh_coeffs must have N = {n} rows like means, got {self.sh_coeffs.shape[0]}")
        if self.normals is not None:
            _check_shape("normals", self.normals, (3,), n)
        for name, t in self._named_tensors():
            if t.device != self.means.device:
                raise ValueError(f"all tensors must be on one device: {name} is on {t.device}, "
                                 f"means on {self.means.device}")
            if t.dtype != self.means.dtype:
                raise ValueError(f"all tensors must share one dtype: {name} is {t.dtype}, means is {self.means.dtype}")
        if not isinstance(self.extra, dict):
            raise TypeError(f"extra must be a dict of name -> numpy array, got {type(self.extra).__name__}")
        reserved = set(_REQUIRED) | set(_NORMALS)
        extra = {}
        for name, arr in self.extra.items():
            if not isinstance(name, str) or not _PROPERTY_NAME.match(name):
                raise ValueError(f"extra property names must be printable ASCII without spaces, got {name!r}")
            if name in reserved or _F_REST.match(name):
                raise ValueError(f"extra property {name!r} clashes with a standard 3DGS property name")
            arr = np.asarray(arr.detach().cpu() if isinstance(arr, torch.Tensor) else arr)
            if arr.shape != (n,):
                raise ValueError(f"extra[{name!r}] must have shape [N] = [{n}], got {list(arr.shape)}")
            extra[name] = arr
        self.extra = extra
        if not isinstance(self.metadata, dict):
            raise TypeError(f"metadata must be a dict, got {type(self.metadata).__name__}")

    def _named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, getattr(self, name)) for name in self._TENSOR_FIELDS if getattr(self, name) is not None]

    # -- basic properties ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonics degree, 0..3 (K = (degree + 1)^2 coefficients per channel)."""
        return math.isqrt(self.sh_coeffs.shape[1]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __repr__(self) -> str:
        return (f"GaussianScene(N={len(self)}, sh_degree={self.sh_degree}, "
                f"normals={'yes' if self.normals is not None else 'no'}, extra={sorted(self.extra)}, "
                f"dtype={self.dtype}, device={self.device})")

    # -- activations (the single place where raw parameters become physical ones) --------------
    @property
    def scales(self) -> torch.Tensor:
        """[N, 3] standard deviations, ``exp(log_scales)``, scene units. Differentiable."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        """[N] opacities in (0, 1), ``sigmoid(opacity_logits)``. Differentiable."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> torch.Tensor:
        """[N, 4] unit quaternions w x y z, ``quats / |quats|`` (a zero quaternion stays zero). Differentiable."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    def rotation_matrices(self) -> torch.Tensor:
        """[N, 3, 3] rotation matrices of :attr:`rotations` (INRIA ``build_rotation``). Differentiable."""
        w, x, y, z = self.rotations.unbind(-1)
        return torch.stack([
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ], -2)

    def covariances(self) -> torch.Tensor:
        """[N, 3, 3] covariances ``R S S^T R^T``, S = diag(scales), scene units^2. Differentiable."""
        m = self.rotation_matrices() * self.scales[:, None, :]
        return m @ m.transpose(-1, -2)

    @classmethod
    def from_activated(cls, means, scales, rotations, opacities, sh_coeffs=None, colours=None, normals=None,
                       extra: dict | None = None, metadata: dict | None = None) -> "GaussianScene":
        """Build a scene from physical (activated) parameters.

        Args:
            means: [N, 3] centres.
            scales: [N, 3] standard deviations, > 0.
            rotations: [N, 4] quaternions w x y z (any non-zero norm; stored normalised).
            opacities: [N] in [0, 1]; stored as ``logit(clamp(o, 1e-6, 1 - 1e-6))``, so 0 and 1 become
                finite logits.
            sh_coeffs: [N, K, 3] spherical-harmonics coefficients; or
            colours: [N, 3] RGB in [0, 1] (degree 0): ``sh_coeffs[:, 0] = (rgb - 0.5) / C0``.
                Give exactly one of ``sh_coeffs`` and ``colours``.
            normals, extra, metadata: as in :class:`GaussianScene`.

        Raises:
            ValueError: both or neither of ``sh_coeffs`` / ``colours``, scales <= 0, a zero quaternion,
                or the shape errors of the constructor.
        """
        if (sh_coeffs is None) == (colours is None):
            raise ValueError("give exactly one of sh_coeffs and colours")
        scales = _as_tensor("scales", scales)
        rotations = _as_tensor("rotations", rotations)
        opacities = _as_tensor("opacities", opacities)
        if scales.numel() and not bool((scales > 0).all()):
            raise ValueError("scales must be > 0")
        if rotations.dim() == 2 and rotations.numel() and not bool((rotations.norm(dim=-1) > 0).all()):
            raise ValueError("rotations must be non-zero quaternions")
        if colours is not None:
            colours = _as_tensor("colours", colours)
            _check_shape("colours", colours, (3,), None)
            sh_coeffs = ((colours - 0.5) / SH_C0)[:, None, :]
        return cls(means, torch.log(scales), torch.nn.functional.normalize(rotations, dim=-1),
                   torch.logit(opacities, eps=1e-6), sh_coeffs, normals, dict(extra or {}), dict(metadata or {}))

    # -- moves and selection -------------------------------------------------------------------
    def _map(self, fn, extra_fn=lambda a: a) -> "GaussianScene":
        return GaussianScene(fn(self.means), fn(self.log_scales), fn(self.quats), fn(self.opacity_logits),
                             fn(self.sh_coeffs), None if self.normals is None else fn(self.normals),
                             {k: extra_fn(v) for k, v in self.extra.items()}, dict(self.metadata))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "GaussianScene":
        """Copy the tensors to another device and/or floating dtype (``extra`` stays numpy).

        Raises:
            ValueError: ``dtype`` is not a floating dtype.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "GaussianScene":
        return self._map(lambda t: t.detach())

    def clone(self) -> "GaussianScene":
        """Deep copy (detached tensors, copied ``extra`` arrays, shallow-copied metadata)."""
        return self._map(lambda t: t.detach().clone(), np.copy)

    def __getitem__(self, index) -> "GaussianScene":
        """Select Gaussians by an int, slice, index list/tuple/tensor/array or boolean mask of length N.

        ``extra`` arrays are selected alike; an int keeps the Gaussian axis (a scene of one).

        Raises:
            ValueError: a boolean mask of the wrong length.
            IndexError: an int out of range.
            TypeError: a bool or float index.
        """
        if isinstance(index, (bool, np.bool_)):
            raise TypeError("index must be an int, slice, index array or boolean mask, got a bool")
        if isinstance(index, (list, tuple, np.ndarray)):
            arr = np.asarray(index)
            index = torch.as_tensor(arr if arr.size else arr.astype(np.int64))
        if isinstance(index, torch.Tensor):
            if index.dtype.is_floating_point:
                raise TypeError(f"index tensors must be integer or boolean, got {index.dtype}")
            if index.dtype == torch.bool and index.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape [{len(self)}], got {list(index.shape)}")
            if index.dim() == 0:
                index = int(index)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for {len(self)} Gaussians")
            i %= len(self)
            index = slice(i, i + 1)
        if isinstance(index, slice):
            return self._map(lambda t: t[index], lambda a: a[index])
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"index must be an int, slice, index array or boolean mask, got {type(index).__name__}")
        np_index = index.cpu().numpy()
        dev_index = index.to(self.device)
        return self._map(lambda t: t[dev_index], lambda a: a[np_index])

    # -- checks and geometry --------------------------------------------------------------------
    def validate(self) -> "GaussianScene":
        """Check shapes (again: fields may have been reassigned), finite values and non-zero quaternions.

        Returns:
            self.

        Raises:
            ValueError: naming the first offending field.
        """
        self._check_structure()
        for name, t in self._named_tensors():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ValueError(f"{name} contains {bad} NaN or Inf values")
        if len(self) and not bool((self.quats.norm(dim=-1) > 0).all()):
            raise ValueError("quats contains zero quaternions (no rotation can be derived)")
        return self

    def bounds(self, quantile: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Axis-aligned bounds of the means, optionally ignoring a fraction of outliers per axis.

        Args:
            quantile: in [0, 0.5); per axis, ``lo`` is the ``quantile`` and ``hi`` the ``1 - quantile``
                quantile of the means (linear interpolation), so e.g. 0.01 ignores the 1 % most extreme
                values on each side (floaters). 0 gives the exact min / max.

        Returns:
            (lo [3], hi [3]) tensors, scene units, dtype/device of ``means``, detached.

        Raises:
            ValueError: the scene is empty or ``quantile`` is outside [0, 0.5).
        """
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile!r}")
        if len(self) == 0:
            raise ValueError("bounds of an empty scene are undefined")
        means = self.means.detach()
        return _sorted_quantile(means, quantile), _sorted_quantile(means, 1.0 - quantile)

    def center_and_radius(self, quantile: float = 0.01) -> tuple[torch.Tensor, float]:
        """Centre and radius of the sphere around the (quantile-trimmed) bounding box of the means.

        Args:
            quantile: outlier fraction ignored per side and axis, see :meth:`bounds`.

        Returns:
            (centre [3] tensor = box centre, radius = half the box diagonal as a float), scene units.
            The radius is 0 when all (trimmed) means coincide.

        Raises:
            ValueError: as :meth:`bounds`.
        """
        lo, hi = self.bounds(quantile)
        return 0.5 * (lo + hi), float(0.5 * torch.linalg.vector_norm(hi - lo))


# ----------------------------------------------------------------------------------------------
# PLY reading and writing
# ----------------------------------------------------------------------------------------------


@dataclass
class _PlyHeader:
    format: str
    elements: list[tuple[str, int, list[tuple[str, str]]]]  # (name, count, [(property, type or "list")])
    size: int  # bytes up to and including "end_header\n"


def _read_header(fh: IO[bytes], where: str) -> _PlyHeader:
    """Parse a PLY header (the same grammar meshio accepts: comment / obj_info lines skipped)."""
    if fh.read(4) not in (b"ply\n", b"ply\r"):
        raise ValueError(f"{where} is not a PLY file (it does not start with the line 'ply')")
    fh.seek(0)
    fh.readline()
    fmt = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    while True:
        raw = fh.readline(4096)
        if not raw.endswith(b"\n") or fh.tell() > _MAX_HEADER_BYTES:
            raise ValueError(f"{where} has an unterminated PLY header (no 'end_header' line; truncated file?)")
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            raise ValueError(f"{where} has a corrupted PLY header (non-ASCII bytes before 'end_header')") from None
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format" and len(words) == 3:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            elements[-1][2].append((words[-1], "list" if words[1] == "list" else words[1]))
        else:
            raise ValueError(f"{where} has an invalid PLY header line: {raw.decode('ascii').strip()!r}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{where} has an unknown PLY format {fmt!r} "
                         "(expected ascii, binary_little_endian or binary_big_endian)")
    return _PlyHeader(fmt, elements, fh.tell())


def _check_vertex_properties(names: list[str], where: str) -> tuple[int, bool]:
    """Return (SH degree, has normals) from the vertex property names, or raise a clear ValueError."""
    missing = [p for p in _REQUIRED if p not in names]
    if missing:
        raise ValueError(f"{where} is not a 3D Gaussian splat file: missing vertex properties {missing}")
    duplicated = sorted({p for p in names if names.count(p) > 1})
    if duplicated:
        raise ValueError(f"{where} lists the vertex properties {duplicated} more than once")
    normals = [p for p in _NORMALS if p in names]
    if normals and len(normals) != 3:
        raise ValueError(f"{where} has the normal properties {normals} but not all of nx, ny, nz")
    rest = sorted(int(m.group(1)) for m in map(_F_REST.match, names) if m)
    if len(rest) not in _SH_REST_COUNTS:
        raise ValueError(f"{where} has {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 "
                         "(SH degree 0, 1, 2 or 3)")
    if rest != list(range(len(rest))):
        raise ValueError(f"{where} has f_rest_* properties that are not numbered 0..{len(rest) - 1}: "
                         f"missing {sorted(set(range(len(rest))) - set(rest))}")
    return _SH_REST_COUNTS[len(rest)], bool(normals)


def load_ply(path: str | os.PathLike, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> GaussianScene:
    """Read an INRIA-layout 3D Gaussian Splatting ``.ply`` file (layout: this module's docstring).

    Accepts binary (either endianness) and ASCII files, any property order (ASCII files must list
    ``x y z`` first: a limit of meshio's ASCII reader), with or without normals and ``f_rest_*``; the SH
    degree (0..3) comes from the number of ``f_rest_*`` properties. Unknown vertex properties are kept
    in ``scene.extra`` with their file dtype (native byte order; meshio reads ``uchar`` as int8).

    Args:
        path: the ``.ply`` file.
        device: where to put the tensors (``"auto"``, ``"cpu"``, ``"cuda"``, a torch.device).
        dtype: floating dtype of the tensors (values are read, then cast).

    Returns:
        A validated :class:`GaussianScene` with ``metadata == {"source": str(path)}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file: not a PLY file, a corrupted header, no or zero vertices, a missing
            required property (named), a bad number of ``f_rest_*``, a truncated file, values meshio
            cannot parse, or NaN/Inf values (naming each property and how many); also a bad ``device`` /
            ``dtype``.
    """
    p = as_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"PLY file not found: {str(p)!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    dev = resolve_device(device)
    where = repr(str(p))
    with open(p, "rb") as fh:
        header = _read_header(fh, where)
        vertex = [e for e in header.elements if e[0] == "vertex"]
        if not vertex or vertex[0][1] == 0:
            raise ValueError(f"{where} has no vertices (a splat file stores one Gaussian per vertex)")
        _, n, props = vertex[0]
        names = [name for name, _ in props]
        sh_degree, has_normals = _check_vertex_properties(names, where)
        lists = [name for name, kind in props if kind == "list"]
        unknown_types = sorted({kind for _, kind in props if kind not in _PLY_SIZES and kind != "list"})
        if lists or unknown_types:
            raise ValueError(f"{where} has vertex properties a splat file cannot hold: "
                             f"list properties {lists}, unknown types {unknown_types}")
        if header.format == "ascii" and names[:3] != ["x", "y", "z"]:
            raise ValueError(f"{where} is an ASCII PLY whose vertex properties do not start with x y z "
                             f"(got {names[:3]}); save it as binary or reorder the properties")
        if header.format != "ascii":
            if header.elements[0][0] != "vertex":
                raise ValueError(f"{where}: the vertex element must be the first element of a binary PLY")
            need = n * sum(_PLY_SIZES[kind] for _, kind in props)
            have = p.stat().st_size - header.size
            if have < need:
                raise ValueError(f"{where} is truncated: {n} vertices need {need} bytes of data, "
                                 f"the file has {have}")
        fh.seek(0)
        try:
            mesh = meshio.read(fh, file_format="ply")
        except Exception as exc:  # meshio raises ReadError, KeyError, ValueError, ... on broken files
            raise ValueError(f"{where} could not be parsed as a PLY file: {type(exc).__name__}: {exc}") from None
    if mesh.points.shape != (n, 3):
        raise ValueError(f"{where} is truncated or corrupted: the header declares {n} vertices, "
                         f"{mesh.points.shape[0]} could be read")
    columns = dict(mesh.point_data)
    columns.update(x=mesh.points[:, 0], y=mesh.points[:, 1], z=mesh.points[:, 2])
    num_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    known = list(_REQUIRED) + (list(_NORMALS) if has_normals else []) + [f"f_rest_{i}" for i in range(num_rest)]
    bad = {name: int((~np.isfinite(columns[name])).sum()) for name in known
           if np.issubdtype(columns[name].dtype, np.floating)}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        listing = ", ".join(f"{name} ({count})" for name, count in bad.items())
        raise ValueError(f"{where} holds NaN/Inf values in {len(bad)} properties of {n} vertices: {listing}")

    def stack(cols: Sequence[str]) -> torch.Tensor:
        arr = np.stack([np.asarray(columns[c], dtype=np.float64) for c in cols], axis=-1)
        return torch.from_numpy(arr).to(device=dev, dtype=dtype)

    k = (sh_degree + 1) ** 2
    dc = stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :]
    if k > 1:
        rest = stack([f"f_rest_{i}" for i in range(num_rest)]).reshape(n, 3, k - 1).transpose(1, 2)
        sh = torch.cat([dc, rest], dim=1)
    else:
        sh = dc
    extra = {name: np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
             for name, arr in columns.items() if name not in known}
    scene = GaussianScene(
        means=stack(["x", "y", "z"]),
        log_scales=stack(["scale_0", "scale_1", "scale_2"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=stack(["opacity"])[:, 0],
        sh_coeffs=sh.contiguous(),
        normals=stack(list(_NORMALS)) if has_normals else None,
        extra=extra,
        metadata={"source": str(p)},
    )
    try:
        return scene.validate()
    except ValueError as exc:
        raise ValueError(f"{where} holds an invalid scene: {exc}") from None


def save_ply(scene: GaussianScene, path: str | os.PathLike) -> None:
    """Write ``scene`` as a binary INRIA-layout ``.ply`` file, atomically.

    The data is in the machine's byte order (meshio's choice; little endian on x86 and ARM), and the
    header says which.

    Vertex properties, all float32 in this order: ``x y z``, ``nx ny nz`` (only when ``scene.normals``
    is set), ``f_dc_0..2``, ``f_rest_0..`` (channel-major, none for degree 0), ``opacity``,
    ``scale_0..2``, ``rot_0..3``; then the ``extra`` properties in dict order with their own dtype.
    The header carries meshio's ``comment Created by meshio ...`` line. ``metadata`` is not written.

    Args:
        scene: the scene (any device/dtype; values are cast to float32).
        path: destination file; its folder must exist.

    Raises:
        TypeError: ``scene`` is not a :class:`GaussianScene`.
        ValueError: an empty scene, NaN/Inf values, zero quaternions or an ``extra`` array whose dtype
            PLY cannot store (bool, complex, object, ...): nothing is written.
        FileNotFoundError: the destination folder does not exist.
    """
    if not isinstance(scene, GaussianScene):
        raise TypeError(f"scene must be a GaussianScene, got {type(scene).__name__}")
    scene.validate()
    if len(scene) == 0:
        raise ValueError("scene has no Gaussians; a splat .ply needs at least one vertex")
    for name, arr in scene.extra.items():
        if arr.dtype.newbyteorder("=") not in _WRITABLE_DTYPES:
            raise ValueError(f"extra[{name!r}] has dtype {arr.dtype}, which PLY cannot store "
                             "(use an int or float dtype)")
    s = scene.detach().to(device="cpu", dtype=torch.float32)
    n, k = len(s), s.sh_coeffs.shape[1]
    columns: dict[str, np.ndarray] = {}

    def put(names: Sequence[str], values: torch.Tensor) -> None:
        arr = values.reshape(n, len(names)).numpy()
        for i, name in enumerate(names):
            columns[name] = np.ascontiguousarray(arr[:, i])

    if s.normals is not None:
        put(_NORMALS, s.normals)
    put(["f_dc_0", "f_dc_1", "f_dc_2"], s.sh_coeffs[:, 0])
    if k > 1:
        put([f"f_rest_{i}" for i in range(3 * (k - 1))], s.sh_coeffs[:, 1:].transpose(1, 2))
    put(["opacity"], s.opacity_logits)
    put(["scale_0", "scale_1", "scale_2"], s.log_scales)
    put(["rot_0", "rot_1", "rot_2", "rot_3"], s.quats)
    for name, arr in s.extra.items():
        columns[name] = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    with atomic_write(path, "wb", suffix=".ply") as fh:
        meshio.write_points_cells(fh, np.ascontiguousarray(s.means.numpy()), [], point_data=columns,
                                  binary=True, file_format="ply")
