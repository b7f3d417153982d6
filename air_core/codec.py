"""AIR's image-adaptive quantizer and the entropy-coded, versioned ``.air`` file.

Source: AIR's per-image uniform quantizer (github.com/whoiszzj/AIR; /work/shared/reference/
air_and_2d_gaussian_images.md, "Image-adaptive quantizer") and ANS entropy coding with the
``constriction`` package (``constriction.stream.stack.AnsCoder`` with a
``constriction.stream.model.Categorical`` built from the image's own histogram, which is written into
the file as side information and counted in its size).

Quantizer
---------
Every attribute channel x (N values) is quantized with b bits as

    q = clamp(round((x - beta) / Delta), 0, 2^b - 1),        x_hat = beta + q Delta

where beta and Delta adapt to the image: beta = min(x) (rounded *down* to float32) and
Delta = (max(x) - beta) / (2^b - 1) (rounded *up* to float32), so the clamp never bites and the error is
|x - x_hat| <= Delta / 2 for every value (plus float32 rounding of x_hat). A constant channel gets
Delta = 1 (all symbols 0, x_hat = beta). AIR learns (beta, Delta) per image from its CLS token; here they
are the channel's exact range, which is what the learned ones approximate.

Channels and default bits (AIR's 53-bit budget, "patch" layout; :data:`DEFAULT_PATCH_BITS`):

==================  ======  =====================================================================
channel             bits    value quantized
==================  ======  =====================================================================
offset_x, offset_y  8, 8    mu - c, pixels (c = the centre of the Gaussian's patch)
scale_1, scale_2    7, 7    standard deviations, pixels (linear)
angle               7       theta mod pi, radians in [0, pi)
colour_y/cb/cr      8/4/4   BT.601 full-range YCbCr of the (signed) colours, C = 3
colour_0 ..         8 each  the colours themselves when C != 3 (no YCbCr)
opacity             8       only when the Gaussians have opacities (alpha mode)
==================  ======  =====================================================================

The angle is reduced modulo pi first: theta and theta + pi describe the same ellipse (R(theta + pi) =
-R(theta), and Sigma = R diag(s)^2 R^T is unchanged), so AIR's [0, 2 pi) range halves and the same bits
give twice the angular resolution. Colours: Y = 0.299 R + 0.587 G + 0.114 B, Cb = (B - Y) / 1.772,
Cr = (R - Y) / 1.402 (no +128 offsets: beta absorbs them); the decoder applies the exact inverse matrix,
so the colour error is bounded by :func:`colour_error_bound` (|M^-1| times the per-channel Delta / 2).

The "free" layout (Gaussians without patch structure, e.g. from :func:`air_core.fit`;
:data:`DEFAULT_FREE_BITS`) stores absolute positions ``pos_x``, ``pos_y`` with
min(16, ceil(log2(16 max(H, W)))) bits each (1/16 px steps over the image when the means lie inside it),
scales in log space (``scale_1``, ``scale_2``: log s, 8 bits each, because fitted scales span orders of
magnitude), and the same angle / colour / opacity channels, except that the chroma channels get 6 bits
(8/6/6): fitted colours are unconstrained and carry the whole image, and on a 1500-Gaussian fit of a
128 x 128 photo 4-bit chroma cost 1 dB (sum mode) to 10 dB (alpha mode) of PSNR against the original.

Bits are changed with a ``bits`` mapping of channel name (or the group names ``"position"``, ``"scale"``,
``"colour"``) to an int in 1..16. Known names that the set does not have (e.g. ``"opacity"`` for a set
without opacities, ``"offset_x"`` in the free layout) are ignored, so one mapping serves every set.

Entropy coding
--------------
Each channel is one ANS stream. A symbol q is split as q = (hi << k) | lo: hi is coded with a
categorical model from the image's histogram of hi (stored as its used range [hi_min, hi_max] and the
counts as LEB128 varints), lo (k raw bits) with a uniform model. The encoder chooses the shift k per
channel that minimises the estimated size including the histogram, so small sets or wide alphabets do not
pay more side information than they save (k = 0, the plain histogram, is the usual choice for AIR sets).
The patch layout's keep masks are coded per stage as Bernoulli symbols with the stage's own frequency
(side information: the kept count per stage).

File layout (version 1, little-endian; "varint" = unsigned LEB128)
------------------------------------------------------------------
::

    b"AIRG"                      4 bytes magic
    version                      u8 = 1
    flags                        u8: bit 0 alpha mode (else sum), bit 1 opacities present,
                                     bit 2 patch layout (else free), bit 3 YCbCr colours
    H, W, C, N                   varints (image size, colour channels, number of Gaussians)
    [patch layout] ps, S         varints (patch size, number of stages)
    per channel (fixed order:    u8 bits, f32 beta, f32 Delta
      position, scales, angle,
      colours, [opacity])
    [patch layout] mask stream   varint length L, then L bytes: S varints (kept per stage), ANS words
    per channel                  varint length L, then L bytes: u8 k, varint hi_min, varint n_hi,
                                 n_hi varint counts, ANS words (u32)

Everything the decoder needs is in the file; ``EncodeStats.num_bytes`` is the file's real size, and
``bits_per_pixel`` is computed from it. ``metadata`` keys other than ``mode`` are not stored.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ._device import resolve_device
from ._io import as_path, atomic_write
from .gaussians import Gaussians2D

__all__ = [
    "MAGIC", "FORMAT_VERSION", "DEFAULT_PATCH_BITS", "DEFAULT_FREE_BITS", "YCBCR_MATRIX",
    "QuantizedChannel", "QuantizedGaussians", "EncodeStats",
    "quantize", "dequantize", "channel_names", "colour_error_bound",
    "encode", "decode", "encode_bytes", "decode_bytes",
]

#: The first four bytes of every ``.air`` file.
MAGIC = b"AIRG"
#: The format version this module writes (and the only one it reads).
FORMAT_VERSION = 1

#: Default bits per channel, patch layout (AIR: 8+8 offset, 7+7 scale, 7 angle, 8/4/4 YCbCr = 53).
DEFAULT_PATCH_BITS: dict[str, int] = {
    "offset_x": 8, "offset_y": 8, "scale_1": 7, "scale_2": 7, "angle": 7,
    "colour_y": 8, "colour_cb": 4, "colour_cr": 4, "colour": 8, "opacity": 8,
}
#: Default bits per channel, free layout ("position" bits depend on the image size, see the module doc).
DEFAULT_FREE_BITS: dict[str, int] = {
    "scale_1": 8, "scale_2": 8, "angle": 7,
    "colour_y": 8, "colour_cb": 6, "colour_cr": 6, "colour": 8, "opacity": 8,
}

#: BT.601 full-range RGB -> YCbCr matrix (rows Y, Cb, Cr), applied to signed colours without offsets.
YCBCR_MATRIX = np.array([[0.299, 0.587, 0.114],
                         [-0.299 / 1.772, -0.587 / 1.772, 0.886 / 1.772],
                         [0.701 / 1.402, -0.587 / 1.402, -0.114 / 1.402]], dtype=np.float64)
_YCBCR_INVERSE = np.linalg.inv(YCBCR_MATRIX)

_MAX_BITS = 16
_FLAG_ALPHA, _FLAG_OPACITY, _FLAG_PATCH, _FLAG_YCBCR = 1, 2, 4, 8
_GROUPS = {"position": ("offset_x", "offset_y", "pos_x", "pos_y"), "scale": ("scale_1", "scale_2")}
_KNOWN_NAMES = frozenset(DEFAULT_PATCH_BITS) | {"pos_x", "pos_y", "position", "scale"}


# ----------------------------------------------------------------------------------------------
# Quantized representation
# ----------------------------------------------------------------------------------------------


@dataclass
class QuantizedChannel:
    """One quantized attribute channel.

    Attributes:
        name: channel name (see the module docstring).
        bits: b, 1..16; symbols lie in [0, 2^b - 1].
        beta: offset (float, exactly representable in float32).
        delta: step Delta > 0 (float, exactly representable in float32).
        symbols: [N] int64 numpy array of the integer symbols q.
        log: True when the channel stores log values (free-layout scales); :meth:`values` returns exp.
    """

    name: str
    bits: int
    beta: float
    delta: float
    symbols: np.ndarray
    log: bool = False

    def values(self) -> np.ndarray:
        """[N] float64 reconstructed values beta + q Delta (exp of it for a log channel)."""
        v = self.beta + self.symbols.astype(np.float64) * self.delta
        return np.exp(v) if self.log else v


@dataclass
class QuantizedGaussians:
    """A quantized Gaussian set: what an ``.air`` file holds, before entropy coding.

    Attributes:
        image_size: (H, W) pixels.
        mode: "sum" or "alpha".
        num_channels: C, colour channels.
        layout: "patch" or "free".
        patch_size: ps (patch layout) or None.
        keep: [S, ph, pw] bool numpy array (patch layout) or None.
        ycbcr: True when the colours are stored as YCbCr (C = 3).
        channels: the quantized channels, in file order (:func:`channel_names`).
    """

    image_size: tuple[int, int]
    mode: str
    num_channels: int
    layout: str
    patch_size: int | None
    keep: np.ndarray | None
    ycbcr: bool
    channels: list[QuantizedChannel] = field(default_factory=list)

    @property
    def num_gaussians(self) -> int:
        return int(self.channels[0].symbols.shape[0]) if self.channels else 0

    @property
    def has_opacities(self) -> bool:
        return any(c.name == "opacity" for c in self.channels)

    @property
    def raw_bits_per_gaussian(self) -> int:
        """Sum of the channel bits (53 for AIR's default patch layout), before entropy coding."""
        return int(sum(c.bits for c in self.channels))

    def channel(self, name: str) -> QuantizedChannel:
        """The channel called ``name`` (KeyError if absent)."""
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)


def channel_names(layout: str, num_channels: int, has_opacities: bool) -> list[str]:
    """The channel names, in file order, for a layout ("patch" / "free"), C colours and opacities."""
    pos = ["offset_x", "offset_y"] if layout == "patch" else ["pos_x", "pos_y"]
    colours = (["colour_y", "colour_cb", "colour_cr"] if num_channels == 3
               else [f"colour_{i}" for i in range(num_channels)])
    return pos + ["scale_1", "scale_2", "angle"] + colours + (["opacity"] if has_opacities else [])


def _free_position_bits(image_size: tuple[int, int]) -> int:
    return min(_MAX_BITS, max(1, math.ceil(math.log2(max(image_size) * 16))))


def _resolve_bits(bits: Mapping[str, int] | None, names: list[str], layout: str,
                  image_size: tuple[int, int]) -> dict[str, int]:
    defaults = DEFAULT_PATCH_BITS if layout == "patch" else DEFAULT_FREE_BITS
    out: dict[str, int] = {}
    for n in names:
        if n in defaults:
            out[n] = defaults[n]
        elif n.startswith("colour_"):
            out[n] = defaults["colour"]
        else:  # pos_x / pos_y
            out[n] = _free_position_bits(image_size)
    if bits is None:
        return out
    if not isinstance(bits, Mapping):
        raise TypeError(f"bits must be a dict of channel name -> int, got {type(bits).__name__}")
    for key, value in bits.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"bits[{key!r}] must be an int in 1..{_MAX_BITS}, got {type(value).__name__} {value!r}")
        if not 1 <= int(value) <= _MAX_BITS:
            raise ValueError(f"bits[{key!r}] must be an int in 1..{_MAX_BITS}, got {value}")
        if key == "colour":
            targets = [n for n in names if n.startswith("colour_")]
        elif key in _GROUPS:
            targets = [n for n in _GROUPS[key] if n in names]
        elif key in names:
            targets = [key]
        elif key in _KNOWN_NAMES or key.startswith("colour_") and key[7:].isdigit():
            targets = []  # a channel this set does not have (e.g. "opacity" without opacities): ignored
        else:
            raise ValueError(f"bits has an unknown channel name {key!r}; valid names: {sorted(_KNOWN_NAMES)} "
                             f"or colour_0, colour_1, ...")
        for n in targets:
            out[n] = int(value)
    return out


def _as_keep(keep: Any, image_size: tuple[int, int], patch_size: int) -> np.ndarray:
    from .predictor import patch_grid  # local import: the predictor imports this package's modules

    grid = patch_grid(image_size, patch_size)
    items = keep if isinstance(keep, (list, tuple)) else [keep]
    arrays = []
    for i, m in enumerate(items):
        if isinstance(m, torch.Tensor):
            m = m.detach().cpu().numpy()
        if not isinstance(m, np.ndarray):
            raise TypeError(f"keep must be a [S, ph, pw] bool tensor/array or a list of [ph, pw] masks, "
                            f"got {type(m).__name__}" + (f" at index {i}" if len(items) > 1 else ""))
        if m.dtype != np.bool_:
            if np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all():
                m = m.astype(bool)
            else:
                raise TypeError(f"keep must be boolean (or 0/1 integers), got dtype {m.dtype}")
        arrays.append(m)
    if isinstance(keep, (list, tuple)):
        if not arrays:
            raise ValueError("keep must hold at least one stage mask, got an empty list")
        for i, m in enumerate(arrays):
            if m.shape != grid:
                raise ValueError(f"keep[{i}] must have shape [ph, pw] = {list(grid)} for image_size {image_size} "
                                 f"and patch_size {patch_size}, got {list(m.shape)}")
        out = np.stack(arrays, 0)
    else:
        out = arrays[0]
        if out.ndim == 2:
            out = out[None]
        if out.ndim != 3 or out.shape[1:] != grid or out.shape[0] < 1:
            raise ValueError(f"keep must have shape [S, ph, pw] = [S, {grid[0]}, {grid[1]}] for image_size "
                             f"{image_size} and patch_size {patch_size}, got {list(out.shape)}")
    return np.ascontiguousarray(out, dtype=bool)


def _round_down32(x: float) -> float:
    y = np.float32(x)
    if float(y) > x:
        y = np.nextafter(y, np.float32(-np.inf))
    return float(y)


def _round_up32(x: float) -> float:
    y = np.float32(x)
    if float(y) < x:
        y = np.nextafter(y, np.float32(np.inf))
    return float(y)


def _quantize_channel(name: str, values: np.ndarray, bits: int, log: bool = False) -> QuantizedChannel:
    levels = (1 << bits) - 1
    if values.size == 0:
        return QuantizedChannel(name, bits, 0.0, 1.0, np.zeros(0, np.int64), log)
    lo, hi = float(values.min()), float(values.max())
    beta = _round_down32(lo)
    span = hi - beta
    if hi == lo or span <= 0:  # a constant channel: every symbol 0, x_hat = beta (within float32 rounding)
        delta = 1.0
    else:
        delta = max(_round_up32(span / levels), float(np.finfo(np.float32).tiny))
    if not (math.isfinite(beta) and math.isfinite(delta)):
        raise ValueError(f"channel {name!r} has values too large to quantize (range [{lo}, {hi}])")
    q = np.clip(np.rint((values - beta) / delta), 0, levels).astype(np.int64)
    return QuantizedChannel(name, bits, beta, delta, q, log)


def quantize(gaussians: Gaussians2D, *, keep: Any = None, patch_size: int | None = None,
             bits: Mapping[str, int] | None = None) -> QuantizedGaussians:
    """AIR's image-adaptive uniform quantizer: Gaussians -> integer symbols and per-channel (beta, Delta).

    Args:
        gaussians: N Gaussians (any device / dtype), mode ``gaussians.mode`` "sum" or "alpha"; finite values,
            scales > 0, opacities (if any) in [0, 1].
        keep: patch layout: the AIR stage-control masks, a [S, ph, pw] bool tensor / array or a list of S
            [ph, pw] masks, (ph, pw) = ``air_core.predictor.patch_grid(image_size, patch_size)``. The
            Gaussians must be the kept candidates in stage order, row-major patch order within a stage,
            so ``len(gaussians) == keep.sum()``; positions are then stored as offsets to the patch centres.
            None (default): free layout (absolute positions, log scales).
        patch_size: ps, required with ``keep`` (int >= 1), not allowed without it.
        bits: optional {channel or group name: bits in 1..16} overriding the defaults (module docstring);
            known names of channels the set lacks are ignored.

    Returns:
        A :class:`QuantizedGaussians` (symbols and (beta, Delta) per channel; reconstruct with
        :func:`dequantize`). Error per channel <= Delta / 2 (in the stored domain: offset, log scale,
        angle mod pi, YCbCr colour).

    Raises:
        TypeError: ``gaussians`` is not a Gaussians2D; ``keep`` / ``bits`` / ``patch_size`` of a wrong type.
        ValueError: NaN / Inf values, scales <= 0, opacities outside [0, 1], a mode other than "sum" /
            "alpha"; ``keep`` of the wrong shape or whose kept count differs from ``len(gaussians)``;
            ``patch_size`` missing with ``keep`` (or given without it); bits out of 1..16 or an unknown
            channel name.
    """
    if not isinstance(gaussians, Gaussians2D):
        raise TypeError(f"gaussians must be a Gaussians2D, got {type(gaussians).__name__}")
    mode = gaussians.mode
    if mode not in ("sum", "alpha"):
        raise ValueError(f"gaussians.metadata['mode'] must be 'sum' or 'alpha', got {mode!r}")
    g = gaussians.detach().to("cpu", torch.float64)
    for name in ("means", "scales", "rotations", "colours", "opacities"):
        t = getattr(g, name)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"gaussians.{name} contains NaN or Inf values")
    if len(g) and not bool((g.scales > 0).all()):
        raise ValueError("gaussians.scales must be > 0")
    if g.opacities is not None and len(g) and not bool(((g.opacities >= 0) & (g.opacities <= 1)).all()):
        raise ValueError("gaussians.opacities must lie in [0, 1]")
    h, w = g.image_size
    if keep is None:
        if patch_size is not None:
            raise ValueError("patch_size was given without keep; pass both (patch layout) or neither (free layout)")
        layout, keep_arr = "free", None
    else:
        if patch_size is None:
            raise ValueError("patch_size is required when keep is given (patch layout)")
        from .predictor.parameterization import check_patch_size, patch_centres

        check_patch_size(patch_size)
        layout = "patch"
        keep_arr = _as_keep(keep, (h, w), patch_size)
        if int(keep_arr.sum()) != len(g):
            raise ValueError(f"keep marks {int(keep_arr.sum())} kept candidates but gaussians has {len(g)}; "
                             f"they must be equal (the kept Gaussians in stage order)")
    names = channel_names(layout, g.num_channels, g.opacities is not None)
    nbits = _resolve_bits(bits, names, layout, (h, w))
    means = g.means.numpy()
    if layout == "patch":
        centres = patch_centres((h, w), patch_size, dtype=torch.float64).numpy()
        stage_centres = np.concatenate([centres[m.reshape(-1)] for m in keep_arr], 0)
        pos = means - stage_centres
    else:
        pos = means
    scales = g.scales.numpy()
    angle = np.mod(g.rotations.numpy(), math.pi)
    colours = g.colours.numpy()
    ycbcr = g.num_channels == 3
    if ycbcr:
        colours = colours @ YCBCR_MATRIX.T
    log = layout == "free"
    columns = [pos[:, 0], pos[:, 1], np.log(scales[:, 0]) if log else scales[:, 0],
               np.log(scales[:, 1]) if log else scales[:, 1], angle] + [colours[:, i] for i in range(colours.shape[1])]
    if g.opacities is not None:
        columns.append(g.opacities.numpy())
    channels = [_quantize_channel(n, np.ascontiguousarray(col), nbits[n], log=log and n.startswith("scale"))
                for n, col in zip(names, columns)]
    return QuantizedGaussians((h, w), mode, g.num_channels, layout, patch_size if layout == "patch" else None,
                              keep_arr, ycbcr, channels)


def dequantize(quantized: QuantizedGaussians, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> Gaussians2D:
    """Reconstruct Gaussians from a :class:`QuantizedGaussians` (x_hat = beta + q Delta per channel).

    Returns:
        A :class:`Gaussians2D` on ``device`` ("auto" / "cpu" / "cuda"), ``dtype``; rotations in [0, pi);
        metadata ``{"mode": mode}`` plus, for the patch layout, ``"keep"`` ([S, ph, pw] bool tensor, on the
        CPU) and ``"patch_size"`` (int). Note: the ``keep`` tensor is not JSON-serialisable; remove it
        before :func:`air_core.save_gaussians`.

    Raises:
        ValueError: a bad ``device``.
    """
    dev = resolve_device(device)
    q = quantized
    vals = {c.name: c.values() for c in q.channels}
    n = q.num_gaussians
    pos = np.stack([vals[q.channels[0].name], vals[q.channels[1].name]], 1) if n else np.zeros((0, 2))
    meta: dict[str, Any] = {"mode": q.mode}
    if q.layout == "patch":
        from .predictor.parameterization import patch_centres

        centres = patch_centres(q.image_size, q.patch_size, dtype=torch.float64).numpy()
        stage_centres = np.concatenate([centres[m.reshape(-1)] for m in q.keep], 0)
        pos = pos + stage_centres
        meta["keep"] = torch.from_numpy(q.keep.copy())
        meta["patch_size"] = int(q.patch_size)
    scales = np.stack([vals["scale_1"], vals["scale_2"]], 1).reshape(n, 2)
    rotations = vals["angle"]
    if q.ycbcr:
        colours = np.stack([vals["colour_y"], vals["colour_cb"], vals["colour_cr"]], 1).reshape(n, 3)
        colours = colours @ _YCBCR_INVERSE.T
    else:
        colours = np.stack([vals[f"colour_{i}"] for i in range(q.num_channels)], 1).reshape(n, q.num_channels)
    opac = vals.get("opacity")
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)  # noqa: E731
    return Gaussians2D(t(pos.reshape(n, 2)), t(scales), t(rotations), t(colours),
                       None if opac is None else t(opac), q.image_size, meta)


def colour_error_bound(quantized: QuantizedGaussians) -> np.ndarray:
    """[C] guaranteed max |colour - decoded colour| per colour channel (before float32 rounding).

    Delta / 2 per stored channel, mapped through |M^-1| for YCbCr (R gets Delta_Y/2 + 1.402 Delta_Cr/2, ...).
    """
    if quantized.ycbcr:
        half = np.array([quantized.channel(n).delta / 2 for n in ("colour_y", "colour_cb", "colour_cr")])
        return np.abs(_YCBCR_INVERSE) @ half
    return np.array([quantized.channel(f"colour_{i}").delta / 2 for i in range(quantized.num_channels)])


# ----------------------------------------------------------------------------------------------
# Byte-level helpers
# ----------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint_len(values: np.ndarray) -> int:
    """Total LEB128 length of non-negative ints (vectorised)."""
    v = np.asarray(values, dtype=np.int64)
    n = np.ones(v.shape, np.int64)
    for k in range(1, 10):
        n += v >= (1 << (7 * k))
    return int(n.sum())


class _Reader:
    def __init__(self, data: bytes | memoryview, name: str, what: str = "file") -> None:
        self.data, self.pos, self.name, self.what = memoryview(data), 0, name, what

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.name}: truncated .air file ({self.what} needs {n} bytes at offset {self.pos}, "
                             f"only {len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def f32(self) -> float:
        return float(struct.unpack("<f", self.take(4))[0])

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.u8()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError(f"{self.name}: corrupt .air file (varint too long at offset {self.pos})")

    def rest(self) -> memoryview:
        return self.take(len(self.data) - self.pos)


def _corrupt(name: str, why: str) -> ValueError:
    return ValueError(f"{name}: corrupt .air file ({why})")


def _categorical(counts: np.ndarray):
    import constriction

    probs = counts.astype(np.float64)
    return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)


def _words_to_bytes(words: np.ndarray) -> bytes:
    return np.asarray(words, dtype="<u4").tobytes()


def _bytes_to_words(data: memoryview, name: str) -> np.ndarray:
    if len(data) % 4:
        raise _corrupt(name, "ANS data is not a whole number of 32-bit words")
    return np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)


def _estimate_bits(symbols: np.ndarray, bits: int, k: int) -> float:
    hi = symbols >> k
    lo_, hi_ = int(hi.min()), int(hi.max())
    counts = np.bincount(hi - lo_, minlength=hi_ - lo_ + 1)
    nz = counts[counts > 0].astype(np.float64)
    n = float(symbols.size)
    entropy = float(-(nz * np.log2(nz / n)).sum()) if nz.size > 1 else 0.0
    side = 1 + len(_varint(lo_)) + len(_varint(counts.size)) + _varint_len(counts)
    return entropy + n * k + 8 * side


def _encode_channel(ch: QuantizedChannel) -> bytes:
    import constriction

    sym = ch.symbols
    if sym.size == 0:
        return bytes([0]) + _varint(0) + _varint(0)
    k = min(range(ch.bits), key=lambda kk: _estimate_bits(sym, ch.bits, kk))
    hi = sym >> k
    hmin = int(hi.min())
    counts = np.bincount(hi - hmin)
    out = bytearray([k]) + _varint(hmin) + _varint(counts.size) + b"".join(_varint(int(c)) for c in counts)
    coder = constriction.stream.stack.AnsCoder()
    if k:
        coder.encode_reverse((sym & ((1 << k) - 1)).astype(np.int32), constriction.stream.model.Uniform(1 << k))
    if counts.size > 1:
        coder.encode_reverse((hi - hmin).astype(np.int32), _categorical(counts))
    out += _words_to_bytes(coder.get_compressed())
    return bytes(out)


def _decode_channel(payload: memoryview, n: int, bits: int, name: str, channel: str) -> np.ndarray:
    import constriction

    r = _Reader(payload, name, f"channel {channel!r}")
    k, hmin, nsym = r.u8(), r.varint(), r.varint()
    if n == 0:
        if nsym:
            raise _corrupt(name, f"channel {channel!r} has a histogram but N = 0")
        return np.zeros(0, np.int64)
    if k >= bits or nsym < 1 or hmin + nsym > (1 << (bits - k)):
        raise _corrupt(name, f"channel {channel!r} has an invalid histogram header")
    counts = np.array([r.varint() for _ in range(nsym)], dtype=np.int64)
    if int(counts.sum()) != n:
        raise _corrupt(name, f"channel {channel!r} histogram sums to {int(counts.sum())}, expected N = {n}")
    words = _bytes_to_words(r.rest(), name)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        hi = (np.asarray(coder.decode(_categorical(counts), n), dtype=np.int64) if nsym > 1
              else np.zeros(n, np.int64))
        lo = (np.asarray(coder.decode(constriction.stream.model.Uniform(1 << k), n), dtype=np.int64) if k
              else np.zeros(n, np.int64))
        empty = coder.is_empty()
    except Exception as exc:  # constriction raises on invalid data
        raise _corrupt(name, f"channel {channel!r}: {exc}") from None
    if not empty:
        raise _corrupt(name, f"channel {channel!r} has unread ANS data")
    return ((hi + hmin) << k) | lo


def _encode_masks(keep: np.ndarray) -> bytes:
    import constriction

    flat = keep.reshape(keep.shape[0], -1)
    counts = flat.sum(1)
    out = bytearray(b"".join(_varint(int(c)) for c in counts))
    coder = constriction.stream.stack.AnsCoder()
    p = flat.shape[1]
    for s in range(flat.shape[0] - 1, -1, -1):  # a stack: encode the last stage first
        if 0 < counts[s] < p:
            coder.encode_reverse(flat[s].astype(np.int32), _categorical(np.array([p - counts[s], counts[s]])))
    out += _words_to_bytes(coder.get_compressed())
    return bytes(out)


def _decode_masks(payload: memoryview, stages: int, grid: tuple[int, int], n: int, name: str) -> np.ndarray:
    import constriction

    r = _Reader(payload, name, "keep-mask stream")
    p = grid[0] * grid[1]
    counts = [r.varint() for _ in range(stages)]
    if any(c > p for c in counts) or sum(counts) != n:
        raise _corrupt(name, f"keep-mask counts {counts} do not match {p} patches per stage and N = {n}")
    words = _bytes_to_words(r.rest(), name)
    keep = np.zeros((stages, p), dtype=bool)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        for s, c in enumerate(counts):
            if c == p:
                keep[s] = True
            elif c:
                keep[s] = np.asarray(coder.decode(_categorical(np.array([p - c, c])), p)) != 0
        empty = coder.is_empty()
    except Exception as exc:
        raise _corrupt(name, f"keep masks: {exc}") from None
    if not empty or [int(m.sum()) for m in keep] != counts:
        raise _corrupt(name, "keep masks do not decode consistently")
    return keep.reshape(stages, *grid)


# ----------------------------------------------------------------------------------------------
# Encode / decode
# ----------------------------------------------------------------------------------------------


@dataclass
class EncodeStats:
    """Sizes of an encoded ``.air`` file.

    Attributes:
        num_bytes: the real file size in bytes (header + masks + channel streams).
        bits_per_pixel: 8 num_bytes / (H W).
        bits_per_gaussian: 8 num_bytes / N (NaN when N = 0).
        raw_bits_per_gaussian: sum of the channel bits before entropy coding (53 for AIR's defaults).
        num_gaussians: N.
        image_size: (H, W).
        layout: "patch" or "free".
        header_bytes: magic, version, flags, sizes and the per-channel (bits, beta, Delta).
        mask_bytes: the keep-mask stream with its length prefix (0 for the free layout).
        channel_bytes: {channel name: bytes of its stream incl. length prefix and histogram}.
        path: the file written (None for :func:`encode_bytes`).
    """

    num_bytes: int
    bits_per_pixel: float
    bits_per_gaussian: float
    raw_bits_per_gaussian: int
    num_gaussians: int
    image_size: tuple[int, int]
    layout: str
    header_bytes: int
    mask_bytes: int
    channel_bytes: dict[str, int]
    path: str | None = None


def _serialise(q: QuantizedGaussians) -> tuple[bytes, EncodeStats]:
    h, w = q.image_size
    n = q.num_gaussians
    flags = ((_FLAG_ALPHA if q.mode == "alpha" else 0) | (_FLAG_OPACITY if q.has_opacities else 0)
             | (_FLAG_PATCH if q.layout == "patch" else 0) | (_FLAG_YCBCR if q.ycbcr else 0))
    head = bytearray(MAGIC) + bytes([FORMAT_VERSION, flags])
    head += _varint(h) + _varint(w) + _varint(q.num_channels) + _varint(n)
    if q.layout == "patch":
        head += _varint(q.patch_size) + _varint(q.keep.shape[0])
    for c in q.channels:
        head += bytes([c.bits]) + struct.pack("<ff", c.beta, c.delta)
    out = bytearray(head)
    mask_bytes = 0
    if q.layout == "patch":
        m = _encode_masks(q.keep)
        m = _varint(len(m)) + m
        mask_bytes = len(m)
        out += m
    channel_bytes = {}
    for c in q.channels:
        s = _encode_channel(c)
        s = _varint(len(s)) + s
        channel_bytes[c.name] = len(s)
        out += s
    data = bytes(out)
    stats = EncodeStats(num_bytes=len(data), bits_per_pixel=8 * len(data) / (h * w),
                        bits_per_gaussian=8 * len(data) / n if n else float("nan"),
                        raw_bits_per_gaussian=q.raw_bits_per_gaussian, num_gaussians=n, image_size=(h, w),
                        layout=q.layout, header_bytes=len(head), mask_bytes=mask_bytes, channel_bytes=channel_bytes)
    return data, stats


def encode_bytes(gaussians: Gaussians2D, *, keep: Any = None, patch_size: int | None = None,
                 bits: Mapping[str, int] | None = None) -> tuple[bytes, EncodeStats]:
    """Quantize and entropy-code ``gaussians`` into the bytes of an ``.air`` file (module docstring).

    Arguments and errors as :func:`quantize`. Returns ``(data, stats)`` with ``stats.num_bytes == len(data)``.
    """
    return _serialise(quantize(gaussians, keep=keep, patch_size=patch_size, bits=bits))


def encode(gaussians: Gaussians2D, path: str | os.PathLike, *, keep: Any = None, patch_size: int | None = None,
           bits: Mapping[str, int] | None = None) -> EncodeStats:
    """Write ``gaussians`` as an ``.air`` file (AIR's quantizer + constriction ANS), atomically.

    Args:
        gaussians: the Gaussian set (see :func:`quantize`; "sum" or "alpha" mode).
        path: destination file (``.air`` suggested); its folder must exist. Written to a temporary file in
            the same folder and renamed, so a failure never leaves a half-written file.
        keep: [S, ph, pw] bool masks (or a list of [ph, pw]) for AIR's patch layout; None: free layout.
        patch_size: ps, required with ``keep``.
        bits: optional {channel or group: bits in 1..16} overrides.

    Returns:
        :class:`EncodeStats` (``num_bytes`` = the file's size, ``bits_per_pixel`` from it).

    Raises:
        TypeError / ValueError: see :func:`quantize`; TypeError for a bad ``path`` type.
        FileNotFoundError: the destination folder does not exist.
    """
    dest = as_path(path)
    data, stats = encode_bytes(gaussians, keep=keep, patch_size=patch_size, bits=bits)
    with atomic_write(dest, "wb") as fh:
        fh.write(data)
    stats.path = str(dest)
    return stats


def _parse(data: bytes | memoryview, name: str) -> QuantizedGaussians:
    r = _Reader(data, name)
    head = bytes(r.data[:4])
    if head != MAGIC:
        if len(head) < 4 and MAGIC.startswith(head) and head:
            raise ValueError(f"{name}: truncated .air file ({len(head)} bytes)")
        raise ValueError(f"{name} is not an .air file (expected magic bytes {MAGIC!r}, found {head!r})")
    r.take(4)
    version = r.u8()
    if version != FORMAT_VERSION:
        raise ValueError(f"{name}: unsupported .air format version {version} (this reader supports version "
                         f"{FORMAT_VERSION})")
    flags = r.u8()
    if flags & ~(_FLAG_ALPHA | _FLAG_OPACITY | _FLAG_PATCH | _FLAG_YCBCR):
        raise _corrupt(name, f"unknown flags {flags:#x}")
    h, w, c, n = r.varint(), r.varint(), r.varint(), r.varint()
    if not (1 <= h < 1 << 24 and 1 <= w < 1 << 24 and 1 <= c < 1 << 16 and n < 1 << 31):
        raise _corrupt(name, f"implausible sizes H={h}, W={w}, C={c}, N={n}")
    ycbcr = bool(flags & _FLAG_YCBCR)
    if ycbcr != (c == 3):
        raise _corrupt(name, "YCbCr flag does not match the channel count")
    layout = "patch" if flags & _FLAG_PATCH else "free"
    patch_size = stages = None
    grid = (0, 0)
    if layout == "patch":
        from .predictor.parameterization import patch_grid

        patch_size, stages = r.varint(), r.varint()
        if patch_size < 1 or stages < 1 or stages > 1 << 16:
            raise _corrupt(name, f"patch_size {patch_size}, stages {stages}")
        grid = patch_grid((h, w), patch_size)
    names = channel_names(layout, c, bool(flags & _FLAG_OPACITY))
    params = []
    for ch in names:
        b = r.u8()
        beta, delta = r.f32(), r.f32()
        if not 1 <= b <= _MAX_BITS or not (math.isfinite(beta) and math.isfinite(delta) and delta > 0):
            raise _corrupt(name, f"channel {ch!r} has bits {b}, beta {beta}, Delta {delta}")
        params.append((ch, b, beta, delta))
    keep = None
    if layout == "patch":
        keep = _decode_masks(r.take(r.varint()), stages, grid, n, name)
    channels = []
    for ch, b, beta, delta in params:
        sym = _decode_channel(r.take(r.varint()), n, b, name, ch)
        channels.append(QuantizedChannel(ch, b, beta, delta, sym, log=layout == "free" and ch.startswith("scale")))
    if r.pos != len(r.data):
        raise _corrupt(name, f"{len(r.data) - r.pos} unexpected trailing bytes")
    if n == 0:  # channels carry no symbols; keep the count explicit
        channels = [QuantizedChannel(ch.name, ch.bits, ch.beta, ch.delta, np.zeros(0, np.int64), ch.log)
                    for ch in channels]
    return QuantizedGaussians((h, w), "alpha" if flags & _FLAG_ALPHA else "sum", c, layout, patch_size, keep,
                              ycbcr, channels)


def decode_bytes(data: bytes | bytearray | memoryview, device: str | torch.device = "cpu", *,
                 name: str = "<bytes>") -> Gaussians2D:
    """Decode the bytes of an ``.air`` file; see :func:`decode`. ``name`` labels error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return dequantize(_parse(data, name), device=device)


def decode(path: str | os.PathLike, device: str | torch.device = "cpu") -> Gaussians2D:
    """Read an ``.air`` file written by :func:`encode`.

    Args:
        path: the file.
        device: "cpu" (default), "cuda" or "auto" for the returned tensors.

    Returns:
        A float32 :class:`Gaussians2D` (dequantized: rotations in [0, pi), ``metadata["mode"]`` "sum" or
        "alpha"); for the patch layout also ``metadata["keep"]`` ([S, ph, pw] bool CPU tensor, exact) and
        ``metadata["patch_size"]`` (int). The Gaussians are in the encoded order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: "<path> is not an .air file" (wrong magic), "unsupported .air format version V",
            "truncated .air file", "corrupt .air file (...)"; a bad ``device``.
    """
    p = as_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such .air file: {str(p)!r}")
    return decode_bytes(p.read_bytes(), device=device, name=str(p))
