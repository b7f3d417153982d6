"""Finding ``air_core`` and PyTorch from inside Blender (no ``bpy`` needed).

Blender ships its own Python. The add-on uses the packages that Python can already import ("current
environment", e.g. when Blender runs as the ``bpy`` module of a virtual environment that has the toolkit
installed), or a site-packages folder the user picks in the preferences (a Python 3.11 virtual
environment with ``pip install napari-air``), which is added to ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import site
import sys

__all__ = ["DependencyError", "add_search_path", "check", "require"]

HINT = ("Install the AIR toolkit (pip install napari-air, which brings PyTorch) into a Python 3.11 environment "
        "and set its site-packages folder in Edit > Preferences > Add-ons > AIR Gaussian Splatting")


class DependencyError(RuntimeError):
    """air_core or PyTorch cannot be imported; the message says what is missing and how to fix it."""


def add_search_path(folder: str) -> str | None:
    """Add ``folder`` (a site-packages folder) to the front of ``sys.path`` as Python's ``site`` module
    adds one: its ``.pth`` files are processed too, so packages installed in development mode
    (``pip install -e``) and other path hooks are found.

    Returns an error message when the folder does not exist, else None. An empty ``folder`` does nothing.
    """
    if not folder:
        return None
    folder = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(folder):
        return f"the site-packages folder {folder!r} does not exist"
    if folder not in sys.path:
        before = list(sys.path)
        site.addsitedir(folder)  # appends the folder and what its .pth files name
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + before  # ... which go first, ahead of Blender's own packages
        importlib.invalidate_caches()
    return None


def check(folder: str = "") -> dict:
    """What can be imported: {"ok", "torch", "air_core", "cuda", "messages"} (versions / paths or None)."""
    info = {"ok": False, "torch": None, "air_core": None, "cuda": None, "messages": []}
    problem = add_search_path(folder)
    if problem:
        info["messages"].append(problem)
    try:
        torch = importlib.import_module("torch")
        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # ImportError, or a broken binary (OSError, ...)
        info["messages"].append(f"PyTorch cannot be imported ({type(exc).__name__}: {exc})")
    try:
        core = importlib.import_module("air_core")
        importlib.import_module("air_core.splat3d")
        importlib.import_module("air_core.upscale")
        info["air_core"] = os.path.dirname(core.__file__)
    except Exception as exc:
        info["messages"].append(f"air_core cannot be imported ({type(exc).__name__}: {exc})")
    info["ok"] = info["torch"] is not None and info["air_core"] is not None and not problem
    return info


def require(folder: str = "") -> None:
    """Make sure ``torch`` and ``air_core`` import (after adding ``folder``); raise :class:`DependencyError`."""
    if sys.modules.get("air_core.upscale") is not None and sys.modules.get("air_core.splat3d") is not None:
        return
    info = check(folder)
    if not info["ok"]:
        raise DependencyError("AIR: " + "; ".join(info["messages"]) + ". " + HINT)


def available() -> bool:
    """Cheap test (no import) whether air_core and torch can be found, for drawing the UI."""
    if sys.modules.get("air_core") is not None:
        return True
    try:
        return importlib.util.find_spec("air_core") is not None and importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken package
        return False
