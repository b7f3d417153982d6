"""Device selection shared by every public entry point."""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "frees_gpu_memory"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Map ``"auto" | "cpu" | "cuda" | "cuda:N" | torch.device`` to a :class:`torch.device`.

    ``"auto"`` (or None) means CUDA when ``torch.cuda.is_available()``, else CPU.

    Raises:
        ValueError: an unknown device string, or CUDA requested on a machine without it.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available on this machine; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return dev


def frees_gpu_memory(func):
    """Decorator: after ``func`` returns or raises, hand PyTorch's cached CUDA blocks back to the driver.

    The results a function returns stay allocated; only the intermediates' cache is released, so a
    long-lived process (napari, Blender) does not keep the peak memory of its last job. No-op without
    an initialised CUDA context.
    """
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    return wrapper
