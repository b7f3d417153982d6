"""User images <-> the core's float tensors: conversion and validation at the API edge.

Inside the core an image is a float32 torch tensor of shape [3, H, W] (or [B, 3, H, W]) with values
in [0, 1], sRGB, no linearisation (DESIGN.md). This module is the one place where user images are
turned into that form and back:

* :func:`to_tensor` / :func:`to_tensor_with_info` accept numpy arrays, torch tensors, PIL images
  and file paths, in these layouts:

  ======================  ==========================================================================
  layout                  meaning
  ======================  ==========================================================================
  [H, W]                  gray, replicated to 3 channels
  [H, W, 1]               gray, replicated to 3 channels
  [H, W, 3]               RGB
  [H, W, 4]               RGBA: **the alpha channel is dropped** (no compositing onto a background)
  [1, H, W] / [3, H, W]   channel-first, torch tensors only: a tensor whose first dimension is 1 or 3
                          and whose last dimension is *not* 1, 3 or 4 (numpy arrays are always
                          channel-last, as in napari and scikit-image)
  ======================  ==========================================================================

  and these dtypes: uint8 (divided by 255), uint16 (divided by 65535), bool (False -> 0, True -> 1),
  other integers (values must be >= 0; divided by 255 when the maximum is <= 255, by 65535 when it is
  <= 65535, rejected above), float16/32/64 (must lie in [0, 1]; values outside by at most 1e-6 are
  clipped). NaN / Inf, empty images, other layouts and dtypes are rejected with a ``ValueError`` /
  ``TypeError`` that names the argument.
* :func:`from_tensor` converts back to a channel-last numpy array (uint8, uint16 or float).
* :func:`load_image` / :func:`save_image` read images (imageio; PNG files through imagecodecs) and
  write PNG files atomically (8- or 16-bit).
* :func:`error_map` / :func:`save_error_map` show where a reconstruction differs from its target.
* :func:`sample_image` returns real photographs shipped with scikit-image.
* :func:`check_memory` refuses work that cannot fit in the available RAM (:class:`ImageTooLargeError`).

16-bit PNG: Pillow (imageio's PNG backend) reads and writes 16-bit *gray* PNGs but silently reduces
16-bit RGB / RGBA PNGs to 8 bits and cannot write them. PNG files are therefore encoded and decoded
with :mod:`imagecodecs` (libpng), which keeps 16-bit values exactly.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import imageio.v3 as iio
import numpy as np
import torch

from ._device import resolve_device
from ._io import as_path, atomic_write

__all__ = [
    "ImageInfo",
    "ImageTooLargeError",
    "SAMPLE_IMAGES",
    "to_tensor",
    "to_tensor_with_info",
    "from_tensor",
    "load_image",
    "save_image",
    "error_map",
    "save_error_map",
    "sample_image",
    "check_memory",
    "available_memory",
]

#: Float images may lie outside [0, 1] by this much (rounding); such values are clipped.
FLOAT_TOLERANCE = 1e-6
#: :func:`to_tensor` needs the float32 copy (3 * H * W * 4 bytes) this many times over for the
#: working copies made downstream (renders, residuals, gradients).
WORKING_COPIES = 8
#: The environment variable that overrides the available memory (bytes), e.g. for tests.
MEMORY_LIMIT_ENV = "AIR_MEMORY_LIMIT_BYTES"
#: Absolute error that maps to the top of the colour map in :func:`save_error_map`.
ERROR_MAP_MAX = 0.1

#: Names accepted by :func:`sample_image` (functions of :mod:`skimage.data`).
SAMPLE_IMAGES: tuple[str, ...] = (
    "astronaut", "camera", "coffee", "chelsea", "rocket", "cat", "coins", "brick", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "page", "moon", "horse", "clock",
    "text", "logo",
)

_LAYOUTS = "[H, W] (gray), [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA)"
_TORCH_LAYOUTS = "; torch tensors may also be channel-first [1, H, W] or [3, H, W]"


class ImageTooLargeError(ValueError):
    """An image (or the work on it) needs more memory than is available."""


@dataclass(frozen=True)
class ImageInfo:
    """What a user image looked like before :func:`to_tensor_with_info` converted it.

    Attributes:
        channels: 1 (gray), 3 (RGB) or 4 (RGBA; the alpha channel was dropped).
        dtype: dtype name of the original values, numpy style (``"uint8"``, ``"uint16"``,
            ``"float32"``, ``"bool"``, ...), also for torch tensors.
        shape: shape of the original array (for a PIL image or a file: of its pixel array).
    """

    channels: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def is_gray(self) -> bool:
        return self.channels == 1


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes of RAM available to this process, or ``None`` when it cannot be determined.

    Order: the environment variable ``AIR_MEMORY_LIMIT_BYTES`` (an int, for tests and for users
    who want a lower ceiling), ``MemAvailable`` in ``/proc/meminfo`` (Linux), then
    ``os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")``.

    Raises:
        ValueError: ``AIR_MEMORY_LIMIT_BYTES`` is set but is not a non-negative integer.
    """
    override = os.environ.get(MEMORY_LIMIT_ENV)
    if override is not None and override.strip():
        try:
            value = int(override.strip())
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"{MEMORY_LIMIT_ENV} must be a non-negative integer (bytes), got {override!r}")
        return value
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _format_bytes(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.0f} bytes" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def check_memory(num_bytes: int, what: str) -> None:
    """Raise :class:`ImageTooLargeError` if ``num_bytes`` exceed the available RAM.

    Args:
        num_bytes: estimated bytes the work needs.
        what: description for the message, including the size, e.g. ``"image (40000 x 30000 pixels)"``.

    Raises:
        ImageTooLargeError: (a ``ValueError``) the estimate exceeds :func:`available_memory`.
            Nothing is raised when the available memory cannot be determined.
        ValueError: ``AIR_MEMORY_LIMIT_BYTES`` is malformed.
    """
    available = available_memory()
    if available is None or num_bytes <= available:
        return
    source = f" (limit set by {MEMORY_LIMIT_ENV})" if os.environ.get(MEMORY_LIMIT_ENV, "").strip() else ""
    raise ImageTooLargeError(
        f"{what} is too large: it needs an estimated {_format_bytes(num_bytes)} of memory, but only "
        f"{_format_bytes(available)} is available{source}; downscale or crop it first")


# ----------------------------------------------------------------------------------------------
# Conversion to the core's tensors
# ----------------------------------------------------------------------------------------------


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without its failure modes (byte order, negative strides, read-only warning)."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _pil_to_array(image: Any) -> np.ndarray:
    """A PIL image as a numpy array in one of the accepted layouts and dtypes."""
    mode = image.mode
    if mode in ("LA", "La"):
        image = image.convert("L")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode not in ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in mode else "RGB")  # CMYK, YCbCr, LAB, HSV, RGBa, RGBX
    return np.asarray(image)


def _is_pil_image(obj: Any) -> bool:
    pil = sys.modules.get("PIL.Image")  # a PIL image implies PIL is imported: no import needed
    return pil is not None and isinstance(obj, pil.Image)


def _check_float(t: torch.Tensor, argument: str, strict: bool) -> torch.Tensor:
    """Validate a float tensor (finite; in [0, 1] if ``strict``) and return a new float32 clamped copy."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{argument} contains NaN or infinite values")
    if strict:
        lo, hi = float(t.min()), float(t.max())
        if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
            raise ValueError(
                f"{argument} is a float image with values in [{lo:.6g}, {hi:.6g}], but float images must lie in "
                f"[0, 1]; normalise it first (e.g. (x - x.min()) / (x.max() - x.min()), or x / 255 for 8-bit "
                f"values) or pass an integer array (uint8 / uint16)")
    return t.to(torch.float32).clamp(0.0, 1.0)


def _to_float32(chw: np.ndarray | torch.Tensor, argument: str, strict: bool) -> torch.Tensor:
    """[C, H, W] array of any accepted dtype -> new float32 tensor in [0, 1] (device of a tensor input)."""
    if isinstance(chw, torch.Tensor):
        chw = chw.detach()
        if chw.is_floating_point():
            return _check_float(chw, argument, strict)
        if chw.dtype == torch.bool:
            return chw.to(torch.float32)
        if chw.is_complex():
            raise TypeError(f"{argument} has dtype {chw.dtype}, which is not an image dtype "
                            "(expected uint8, uint16, bool, another integer type or a float type)")
        chw = chw.cpu().numpy()
    kind = chw.dtype.kind
    if kind == "b":
        return torch.from_numpy(chw.astype(np.float32))
    if kind in "ui":
        if kind == "u" and chw.dtype.itemsize == 1:
            scale = 255.0
        elif kind == "u" and chw.dtype.itemsize == 2:
            scale = 65535.0
        else:
            lo, hi = int(chw.min()), int(chw.max())
            if lo < 0:
                raise ValueError(f"{argument} has integer dtype {chw.dtype} with negative values (minimum {lo}); "
                                 "integer images must be >= 0 (8-bit 0..255 or 16-bit 0..65535)")
            if hi > 65535:
                raise ValueError(f"{argument} has integer dtype {chw.dtype} with values up to {hi}, beyond the "
                                 "16-bit range 0..65535; rescale it or pass floats in [0, 1]")
            scale = 255.0 if hi <= 255 else 65535.0
        out = torch.from_numpy(chw.astype(np.float32))
        return out.div_(scale)
    if kind == "f":
        if chw.dtype.itemsize > 8:  # long double: torch has no such dtype
            chw = chw.astype(np.float64)
        return _check_float(_from_numpy(chw), argument, strict)
    raise TypeError(f"{argument} has dtype {chw.dtype}, which is not an image dtype "
                    "(expected uint8, uint16, bool, another integer type or a float type)")


def _convert_array(x: np.ndarray | torch.Tensor, argument: str, device: torch.device,
                   strict: bool) -> tuple[torch.Tensor, ImageInfo]:
    is_torch = isinstance(x, torch.Tensor)
    shape = tuple(int(s) for s in x.shape)
    dtype_name = str(x.dtype).removeprefix("torch.") if is_torch else str(x.dtype)
    expected = _LAYOUTS + (_TORCH_LAYOUTS if is_torch else "")
    if x.ndim == 2:
        chw = x[None]
        channels = 1
    elif x.ndim == 3 and shape[-1] in (1, 3, 4):
        chw = x.permute(2, 0, 1) if is_torch else np.transpose(x, (2, 0, 1))
        channels = shape[-1]
    elif x.ndim == 3 and is_torch and shape[0] in (1, 3):
        chw = x
        channels = shape[0]
    else:
        hint = ""
        if not is_torch and x.ndim == 3 and shape[0] in (1, 3, 4):
            hint = " (numpy arrays are channel-last; move the channel axis with np.moveaxis(image, 0, -1))"
        elif x.ndim == 4:
            hint = " (batches are not accepted here; pass one image at a time)"
        raise ValueError(f"{argument} must have shape {expected}; got shape {shape}{hint}")
    if 0 in shape:
        raise ValueError(f"{argument} is empty (shape {shape}); an image needs H >= 1 and W >= 1")
    _, h, w = chw.shape
    check_memory(3 * h * w * 4 * WORKING_COPIES, f"{argument} ({h} x {w} pixels)")
    if channels == 4:
        chw = chw[:3]  # alpha dropped
    t = _to_float32(chw, argument, strict).to(device)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous(), ImageInfo(channels=channels, dtype=dtype_name, shape=shape)


def _convert(image: Any, argument: str, device: str | torch.device,
             strict: bool) -> tuple[torch.Tensor, ImageInfo]:
    """Shared by :func:`to_tensor_with_info` (strict range) and the metrics (clamping)."""
    dev = resolve_device(device)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _convert_array(image, argument, dev, strict)
    if isinstance(image, (str, os.PathLike)):
        array = load_image(image)
        if array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha file: drop the alpha channel
            array = array[..., 0]
        return _convert_array(array, argument, dev, strict)
    if _is_pil_image(image):
        return _convert_array(_pil_to_array(image), argument, dev, strict)
    raise TypeError(f"{argument} must be a numpy array, torch tensor, PIL image or file path (str / os.PathLike), "
                    f"got {type(image).__name__}")


def to_tensor_with_info(image: Any, *, argument: str = "image",
                        device: str | torch.device = "cpu") -> tuple[torch.Tensor, ImageInfo]:
    """Like :func:`to_tensor`, also returning an :class:`ImageInfo` for :func:`from_tensor`."""
    return _convert(image, argument, device, strict=True)


def to_tensor(image: Any, *, argument: str = "image", device: str | torch.device = "cpu") -> torch.Tensor:
    """Convert a user image to the core's form: float32 [3, H, W] in [0, 1].

    Args:
        image: numpy array, torch tensor, PIL image, or a path (str / os.PathLike) read with
            :func:`load_image`. Layouts and dtypes: see the module docstring. In short: [H, W],
            [H, W, 1], [H, W, 3], [H, W, 4] (alpha dropped), and for torch tensors also [1, H, W] /
            [3, H, W]; uint8 / 255, uint16 / 65535, bool, other ints (>= 0, scaled by 255 or 65535
            from their maximum), floats in [0, 1]. Gray is replicated to 3 channels.
        argument: the name used for ``image`` in error messages.
        device: "cpu", "cuda", "auto" (CUDA when available) or a torch.device.

    Returns:
        A new float32 tensor [3, H, W] in [0, 1] on ``device`` (never a view of ``image``; detached
        from any autograd graph).

    Raises:
        TypeError: ``image`` is not one of the accepted types, or has a non-image dtype (complex,
            object, strings).
        ValueError: wrong number of dimensions or channels, empty image, NaN / Inf, floats outside
            [0, 1] (beyond a 1e-6 tolerance), negative integers or integers beyond 16 bits, a file
            that is not a readable image, or a bad ``device`` (unknown, or CUDA when unavailable).
        ImageTooLargeError: (a ``ValueError``) 8 float32 copies of the image (3 * H * W * 4 * 8
            bytes) would not fit in the available memory.
        FileNotFoundError: ``image`` is a path that does not exist.
    """
    return _convert(image, argument, device, strict=True)[0]


def _as_batch(x: Any, argument: str, device: str | torch.device | None = None) -> tuple[torch.Tensor, bool]:
    """Image(s) for comparisons (metrics, error maps): float [B, C, H, W] clamped to [0, 1], detached.

    Float torch tensors are taken as they are, [C, H, W] or [B, C, H, W], with values *clamped*
    (renders may overshoot [0, 1]); anything else goes through the :func:`to_tensor` conversion with
    floats clamped rather than rejected. Returns the batch and whether the input was batched.

    Raises:
        ValueError: wrong shape, empty, NaN / Inf (and whatever :func:`to_tensor` raises).
    """
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        if x.ndim not in (3, 4):
            raise ValueError(f"{argument} must have shape [C, H, W] or [B, C, H, W]; got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{argument} is empty (shape {tuple(x.shape)})")
        t = x.detach()
        if device is not None:
            t = t.to(device)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{argument} contains NaN or infinite values")
        t = t.clamp(0.0, 1.0)
        return (t, True) if x.ndim == 4 else (t[None], False)
    if device is None:
        device = x.device if isinstance(x, torch.Tensor) else "cpu"
    t, _ = _convert(x, argument, device, strict=False)
    return t[None], False


def _as_pair(x: Any, y: Any, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Two comparable image batches on ``x``'s device; ValueError naming both shapes if they differ."""
    a, batched = _as_batch(x, names[0])
    b, _ = _as_batch(y, names[1], device=a.device)
    if a.shape != b.shape:
        sx, sy = (tuple(getattr(v, "shape", ())) or type(v).__name__ for v in (x, y))
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape; got {names[0]} {sx} and "
                         f"{names[1]} {sy} (as [B, C, H, W]: {tuple(a.shape)} and {tuple(b.shape)})")
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    return a, b, batched


# ----------------------------------------------------------------------------------------------
# Conversion back
# ----------------------------------------------------------------------------------------------


_OUTPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.float64))


def from_tensor(tensor: torch.Tensor, info: ImageInfo | None = None, dtype: Any = np.uint8) -> np.ndarray:
    """Convert a core image back to a channel-last numpy array.

    Args:
        tensor: float tensor [3, H, W] (or [1, H, W] / [H, W] gray), any device; values are clamped
            to [0, 1] first.
        info: the :class:`ImageInfo` of the original; when it says gray (``channels == 1``) the
            result is [H, W], the mean of the three channels. RGBA originals come back as RGB (the
            alpha channel is not restored). Without ``info`` a 1-channel tensor gives [H, W] and a
            3-channel one [H, W, 3]. H and W may differ from ``info.shape`` (e.g. upscaled renders).
        dtype: np.uint8 (x 255, rounded), np.uint16 (x 65535, rounded), np.float32 or np.float64.

    Returns:
        A new numpy array [H, W, 3] or [H, W] of ``dtype``.

    Raises:
        TypeError: ``tensor`` is not a float torch tensor, or ``info`` is not an ImageInfo.
        ValueError: wrong shape, NaN / Inf values, or an unsupported ``dtype``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"tensor must be a float tensor with values in [0, 1], got dtype {tensor.dtype}")
    if info is not None and not isinstance(info, ImageInfo):
        raise TypeError(f"info must be an ImageInfo or None, got {type(info).__name__}")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if out_dtype not in _OUTPUT_DTYPES:
        raise ValueError(f"dtype must be np.uint8, np.uint16, np.float32 or np.float64, got {dtype!r}")
    t = tensor.detach()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3) or 0 in t.shape:
        raise ValueError(f"tensor must have shape [3, H, W], [1, H, W] or [H, W]; got shape {tuple(tensor.shape)}")
    t = t.to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError("tensor contains NaN or infinite values")
    t = t.clamp(0.0, 1.0)
    gray = info.channels == 1 if info is not None else t.shape[0] == 1
    if gray:
        array = t.mean(0).numpy()  # float64 mean: exact for replicated gray
    else:
        array = t.expand(3, -1, -1).permute(1, 2, 0).numpy()
    if out_dtype == np.uint8:
        return np.rint(array * 255.0).astype(np.uint8)
    if out_dtype == np.uint16:
        return np.rint(array * 65535.0).astype(np.uint16)
    return np.ascontiguousarray(array, dtype=out_dtype)


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _read_png(p: Path, props: Any) -> np.ndarray | None:
    """Decode a PNG file with imagecodecs (libpng); None where imageio should read it instead.

    libpng keeps 16-bit colour PNGs exact (Pillow cuts them to 8 bits), so a uint16 result is always
    taken. An 8-bit result is taken when it matches what imageio reports for the file (``props``);
    the files where it does not (1-bit, palette with transparency, animated) are left to imageio so
    that they read as they always have (bool, RGB, all frames).

    Raises:
        ValueError: the file is not a decodable PNG (truncated or corrupted).
    """
    try:
        array = imagecodecs.png_decode(p.read_bytes())
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - imagecodecs.PngError (a RuntimeError), ValueError
        detail = str(exc).strip() or type(exc).__name__
        raise ValueError(f"{str(p)!r} is not a readable image file (truncated or corrupted PNG): {detail}") from None
    if array.dtype == np.uint16:
        return array
    if props is not None and tuple(props.shape) == array.shape and np.dtype(props.dtype) == array.dtype:
        return array
    return None


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file, keeping its dtype: PNG with imagecodecs, other formats with imageio.

    Any format imageio reads (PNG, JPEG, TIFF, BMP, GIF, WebP, ...). 16-bit PNGs (gray or colour)
    are returned as uint16 with their exact values.

    Args:
        path: the file.

    Returns:
        The pixel array as stored: e.g. uint8 [H, W, 3] for an RGB PNG/JPEG, uint16 [H, W] for a
        16-bit gray PNG, [H, W, 2] for gray + alpha, [H, W, 4] for RGBA, bool [H, W] for 1-bit
        images; multi-frame files come back with a leading frame axis.

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, or not a readable image (unknown format, truncated or
            corrupted); the message names the path.
        ImageTooLargeError: (a ``ValueError``) the decoded image would not fit in the available memory.
    """
    p = as_path(path, "path")
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"{str(p)!r} is a folder, not an image file")
    try:
        with open(p, "rb") as fh:
            is_png = bool(imagecodecs.png_check(fh.read(8)))
    except OSError:  # unreadable: imageio reports it below
        is_png = False
    try:
        props = iio.improps(p)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the decoders below report the real problem
        if type(exc).__name__ == "DecompressionBombError":
            raise ImageTooLargeError(f"image file {str(p)!r} is too large: {exc}") from None
        props = None
    if props is not None and props.shape:
        # Pillow reports 16-bit colour PNGs as uint8: count 2 bytes per sample for any PNG.
        itemsize = max(np.dtype(props.dtype).itemsize, 2 if is_png else 1)
        num_bytes = math.prod(int(s) for s in props.shape) * itemsize * 2
        check_memory(num_bytes, f"image file {str(p)!r} (shape {tuple(props.shape)})")
    if is_png:
        array = _read_png(p, props)
        if array is not None:
            return array
    try:
        return np.asarray(iio.imread(p))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - imageio raises many types (OSError, ValueError, plugin errors)
        if type(exc).__name__ == "DecompressionBombError":
            raise ImageTooLargeError(f"image file {str(p)!r} is too large: {exc}") from None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{str(p)!r} is not a readable image file (unknown format, truncated or corrupted): "
                         f"{detail}") from None


def _check_png_path(path: str | os.PathLike) -> Path:
    p = as_path(path, "path")
    if p.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (PNG is the format written), got {str(p)!r}")
    return p


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 / uint16 [H, W] or [H, W, 3] array as PNG (imagecodecs), atomically."""
    data = imagecodecs.png_encode(np.ascontiguousarray(array))
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def save_image(path: str | os.PathLike, image: Any, *, bit_depth: int = 8) -> None:
    """Write an image as a PNG file, atomically (a failure leaves no partial file behind).

    Args:
        path: destination, must end in ``.png``; its folder must exist. An existing file is replaced
            only once the new one is completely written.
        image: a core image, i.e. a float torch tensor [3, H, W], [1, H, W] or [H, W] (always read
            channel-first; values clamped to [0, 1] like any render), or anything else
            :func:`to_tensor` accepts (e.g. numpy [H, W] or [H, W, 3]; values validated as there).
            Gray images are written as gray PNGs, RGB as RGB; the alpha channel of RGBA inputs is
            dropped.
        bit_depth: 8 (default) or 16 bits per channel.

    Raises:
        TypeError / ValueError: as :func:`to_tensor` and :func:`from_tensor`; ``bit_depth`` not 8 or
            16; ``path`` not ending in ``.png``.
        FileNotFoundError: the destination folder does not exist.
    """
    p = _check_png_path(path)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if isinstance(image, torch.Tensor) and image.is_floating_point() and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[0] in (1, 3))):
        array = from_tensor(image, dtype=dtype)  # a core image: clamped like any render
    else:
        tensor, info = to_tensor_with_info(image)
        array = from_tensor(tensor, info, dtype=dtype)
    _write_png(p, array)


# ----------------------------------------------------------------------------------------------
# Error maps and sample images
# ----------------------------------------------------------------------------------------------


def error_map(reconstruction: Any, target: Any) -> torch.Tensor:
    """Per-pixel mean absolute error over the colour channels.

    Args:
        reconstruction: float tensor [C, H, W] or [B, C, H, W], or any image :func:`to_tensor`
            accepts. Values are clamped to [0, 1] (what would be displayed).
        target: same shape (after conversion) as ``reconstruction``.

    Returns:
        float32 tensor [H, W] ([B, H, W] for batched inputs) on ``reconstruction``'s device,
        values in [0, 1].

    Raises:
        ValueError: shapes differ (the message names both), NaN / Inf, or invalid images.
        TypeError: an input of an unsupported type.
    """
    a, b, batched = _as_pair(reconstruction, target, ("reconstruction", "target"))
    err = (a - b).abs().mean(dim=1).to(torch.float32)
    return err if batched else err[0]


def save_error_map(path: str | os.PathLike, reconstruction: Any, target: Any, *,
                   max_error: float = ERROR_MAP_MAX) -> None:
    """Write :func:`error_map` as a colour-mapped 8-bit PNG, atomically.

    An absolute error of ``max_error`` (default 0.1, i.e. 10 % of the value range, about 25.5
    levels of an 8-bit image) or more maps to the top of the colour map, 0 to the bottom. The colour
    map is matplotlib's ``magma`` when matplotlib is importable, otherwise the map is written as a
    gray PNG (black = no error, white = ``max_error``).

    Args:
        path: destination, must end in ``.png``.
        reconstruction, target: one image each, as for :func:`error_map` (no batches).
        max_error: the error shown at the top of the colour map, > 0.

    Raises:
        ValueError: bad ``max_error``, batched inputs, and what :func:`error_map` raises.
        FileNotFoundError: the destination folder does not exist.
    """
    p = _check_png_path(path)
    try:
        limit = float(max_error)
    except (TypeError, ValueError):
        limit = math.nan
    if not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"max_error must be a positive number, got {max_error!r}")
    err = error_map(reconstruction, target)
    if err.ndim != 2:
        raise ValueError(f"save_error_map takes one image, not a batch; got an error map of shape {tuple(err.shape)}")
    scaled = (err.cpu().double() / limit).clamp(0.0, 1.0).numpy()
    try:
        from matplotlib import colormaps
    except ImportError:
        rgb = scaled
    else:
        rgb = colormaps["magma"](scaled)[..., :3]
    _write_png(p, np.rint(rgb * 255.0).astype(np.uint8))


def sample_image(name: str = "astronaut") -> np.ndarray:
    """A real photograph (or test image) shipped with scikit-image, from :mod:`skimage.data`.

    Args:
        name: one of :data:`SAMPLE_IMAGES` (e.g. "astronaut": uint8 [512, 512, 3]; "camera": uint8
            [512, 512] gray; "logo": uint8 [500, 500, 4] RGBA; "horse": bool [328, 400]).

    Returns:
        The array as scikit-image ships it (a new array each call); feed it to :func:`to_tensor`.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: unknown ``name`` (the message lists the allowed names).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"name must be one of {', '.join(SAMPLE_IMAGES)}; got {name!r}")
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())
