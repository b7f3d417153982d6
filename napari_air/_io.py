"""Reader and writers of the napari plugin: ``.npz`` Gaussian files and ``.air`` bitstreams.

Reading renders the Gaussians (``air_core.render``) into an image layer that keeps the Gaussians in
its metadata (``metadata["air_gaussians"]``), so they can be rendered at another scale or saved back.
Writing takes those Gaussians from the layer's metadata: ``.npz`` with ``air_core.save_gaussians``,
``.air`` with ``air_core.encode_gaussians`` (AIR's patch layout when the layer carries the stage-control
masks, the free layout otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ._layers import META_GAUSSIANS, META_KEEP, META_PATCH_SIZE, image_from_render, is_gray

_EXTENSIONS = (".npz", ".air")


class NotAGaussianLayerError(TypeError):
    """The layer to save carries no Gaussians. (Not a ValueError: napari's writer dispatch turns those into a
    misleading "no writer found" warning and drops the message.)"""


def _is_gaussian_npz(path: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as data:
            return "format" in data.files and str(data["format"]) == "air-gaussians-2d"
    except Exception:  # noqa: BLE001 - not ours: let another reader try
        return False


def get_reader(path: Any):
    """npe2 reader hook: a reader for one ``.npz`` AIR Gaussian file or ``.air`` bitstream, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS or not os.path.isfile(path):
        return None
    if suffix == ".npz" and not _is_gaussian_npz(path):
        return None
    return read_gaussians


def gaussians_layer_data(gaussians: Any, name: str, keep: Any = None, patch_size: int | None = None,
                         extra_meta: dict | None = None) -> tuple:
    """A LayerDataTuple of the rendered Gaussians (gray when every colour is gray), Gaussians in metadata."""
    import air_core

    gray = is_gray(gaussians)
    image = image_from_render(air_core.render(gaussians), gray)
    meta: dict[str, Any] = {META_GAUSSIANS: gaussians}
    if keep is not None:
        meta[META_KEEP] = np.asarray(keep.cpu().numpy() if hasattr(keep, "cpu") else keep, dtype=bool)
        meta[META_PATCH_SIZE] = int(patch_size)
    meta.update(extra_meta or {})
    return (image, {"name": name, "rgb": not gray, "metadata": meta, "contrast_limits": (0.0, 1.0)}, "image")


def read_gaussians(path: Any) -> list[tuple]:
    """Read an ``.npz`` Gaussian file or an ``.air`` bitstream as one rendered image layer."""
    import air_core

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    p = Path(path)
    if p.suffix.lower() == ".air":
        gaussians = air_core.decode_gaussians(path)
        meta = dict(gaussians.metadata)
        keep = meta.pop("keep", None)
        patch_size = meta.pop("patch_size", None) if keep is not None else None
        gaussians.metadata = meta  # JSON-serialisable again (the masks live in the layer's metadata)
    else:
        gaussians = air_core.load_gaussians(path)
        keep, patch_size = None, None
    return [gaussians_layer_data(gaussians, p.stem, keep, patch_size)]


def _layer_gaussians(meta: dict) -> tuple[Any, Any, Any]:
    layer_meta = meta.get("metadata") or {}
    gaussians = layer_meta.get(META_GAUSSIANS)
    if gaussians is None:
        raise NotAGaussianLayerError(f"layer {meta.get('name', '')!r} carries no AIR Gaussians "
                                     f"(metadata[{META_GAUSSIANS!r}]); "
                                     "save a layer made by 'Reconstruct with AIR', 'Fit Gaussians', "
                                     "'Render at scale' or read from an .npz / .air file")
    return gaussians, layer_meta.get(META_KEEP), layer_meta.get(META_PATCH_SIZE)


def _json_safe(gaussians: Any) -> Any:
    """A shallow copy of the Gaussians whose metadata holds only JSON-serialisable entries."""
    import json

    meta = {}
    for k, v in gaussians.metadata.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        meta[k] = v
    g = gaussians.detach()
    g.metadata = meta
    return g


def write_npz(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: the layer's Gaussians as an ``.npz`` file (``air_core.save_gaussians``)."""
    import air_core

    gaussians, _keep, _ps = _layer_gaussians(meta)
    if not path.lower().endswith(".npz"):
        path = path + ".npz"
    air_core.save_gaussians(_json_safe(gaussians), path)
    return [path]


def write_air(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: the layer's Gaussians as an ``.air`` bitstream (``air_core.encode_gaussians``).

    AIR's patch layout when the layer carries the stage-control masks (a reconstruction) and they match
    the Gaussians, the free layout otherwise (fits, files read from ``.npz``).
    """
    import air_core

    gaussians, keep, patch_size = _layer_gaussians(meta)
    if not path.lower().endswith(".air"):
        path = path + ".air"
    g = _json_safe(gaussians)
    if keep is not None and patch_size is not None and int(np.asarray(keep).sum()) == len(g):
        air_core.encode_gaussians(g, path, keep=np.asarray(keep, dtype=bool), patch_size=int(patch_size))
    else:
        air_core.encode_gaussians(g, path)
    return [path]
