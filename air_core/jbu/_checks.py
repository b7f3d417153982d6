"""Input checks shared by the JBU modules (messages name the argument, what was expected and what came)."""

from __future__ import annotations

import numbers

import torch


def describe(x: object) -> str:
    """Short description of a value for error messages: type, and dtype / shape for arrays."""
    if isinstance(x, torch.Tensor):
        return f"torch.Tensor {x.dtype} of shape {list(x.shape)}"
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(x).__name__} {dtype} of shape {list(shape)}"
    return type(x).__name__


def check_float_tensor(x: object, name: str, dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` must be a floating-point tensor with one of ``dims`` dimensions and finite values.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong number of dimensions, an empty dimension, or NaN / Inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(x)}")
    if x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {list(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {list(x.shape)}")
    check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ValueError when ``x`` holds NaN or Inf values."""
    with torch.no_grad():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf values")


def check_positive_number(value: object, name: str) -> float:
    """``value`` must be a real number > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_size(size: object, name: str = "size") -> tuple[int, int]:
    """``size`` must be a pair of ints (H, W) >= 1."""
    try:
        h, w = size  # type: ignore[misc]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of ints (H, W), got {size!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be a pair of ints (H, W), got {size!r}")
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive (H, W), got {size!r}")
    return h, w


def check_chunk_bytes(value: object) -> int | None:
    """``max_chunk_bytes`` must be None or an int >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_chunk_bytes must be None or an int >= 1 (bytes), got {value!r}")
    return value
