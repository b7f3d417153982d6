"""Layer helpers of the napari plugin: the 2D slice a job works on, the geometry its outputs copy, and
the conversion of Gaussian results into layer data. No computation happens here beyond array
reshaping: everything numeric is a call into :mod:`air_core`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Keys of the reconstruction layers' metadata (the Gaussians travel with the layer).
META_GAUSSIANS = "air_gaussians"  # an air_core.Gaussians2D (CPU)
META_KEEP = "air_keep"  # [S, ph, pw] bool numpy array (AIR patch layout) or absent
META_PATCH_SIZE = "air_patch_size"  # int, with META_KEEP
META_SOURCE = "air_source"  # name of the layer the result was computed from
META_METRICS = "air_metrics"  # dict of the metrics shown in the widget


@dataclass
class Geometry:
    """Where a 2D plane of a layer sits in the world: the last two axes of the layer's transform."""

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[Any, Any] | None
    axis_labels: tuple[str, str] | None

    def kwargs(self, lead: int = 0, lead_labels: tuple[str, ...] = ()) -> dict:
        """Layer keyword arguments for a layer of ``lead`` extra leading axes (scale 1) + these two."""
        out: dict[str, Any] = {"scale": (1.0,) * lead + tuple(self.scale),
                               "translate": (0.0,) * lead + tuple(self.translate)}
        if self.units is not None:
            out["units"] = ("pixel",) * lead + tuple(self.units)
        if self.axis_labels is not None:
            labels = tuple(lead_labels) + ("",) * (lead - len(lead_labels))
            out["axis_labels"] = _unique(labels + tuple(self.axis_labels))
        return out

    def zoomed(self, k: float) -> "Geometry":
        """The geometry of a render at k times the resolution: pixel (i, j) of the render has its centre at
        pixel ((i + 0.5) / k - 0.5, ...) of this plane, so scale / k and translate + scale (0.5 / k - 0.5)."""
        scale = tuple(s / k for s in self.scale)
        translate = tuple(t + s * (0.5 / k - 0.5) for t, s in zip(self.translate, self.scale))
        return Geometry(scale, translate, self.units, self.axis_labels)  # type: ignore[arg-type]

    def unzoomed(self, k: float) -> "Geometry":
        """The inverse of :meth:`zoomed`: the plane's geometry from that of its render at k."""
        scale = tuple(s * k for s in self.scale)
        translate = tuple(t - s * (0.5 / k - 0.5) for t, s in zip(self.translate, scale))
        return Geometry(scale, translate, self.units, self.axis_labels)  # type: ignore[arg-type]

    def patches(self, patch_size: int) -> "Geometry":
        """The geometry of a patch grid (patch p covers pixels p ps .. p ps + ps - 1 of this plane)."""
        scale = tuple(s * patch_size for s in self.scale)
        translate = tuple(t + s * (patch_size - 1) / 2 for t, s in zip(self.translate, self.scale))
        return Geometry(scale, translate, self.units, self.axis_labels)  # type: ignore[arg-type]


def _unique(labels: tuple[str, ...]) -> tuple[str, ...]:
    out, seen = [], set()
    for i, lab in enumerate(labels):
        lab = lab or f"axis {i}"
        while lab in seen:
            lab = lab + "'"
        seen.add(lab)
        out.append(lab)
    return tuple(out)


@dataclass
class Plane:
    """A 2D plane taken from a layer when a job starts (a copy: the job never touches the layer)."""

    data: np.ndarray  # [H, W] or [H, W, C] (RGB / RGBA layers)
    rgb: bool
    geometry: Geometry
    index: tuple[int, ...]  # indices of the leading (non-displayed) axes; () for a 2D layer
    contrast_limits: tuple[float, float] | None
    name: str


def layer_plane(layer: Any, viewer: Any = None) -> Plane:
    """The current 2D plane of an image or labels layer (for nD layers, the slice the viewer shows).

    Raises:
        ValueError: the layer has no data or fewer than two spatial axes.
    """
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    rgb = bool(getattr(layer, "rgb", False))
    spatial = np.ndim(data) - (1 if rgb else 0)
    shape = np.shape(data)
    if spatial < 2:
        raise ValueError(f"layer {layer.name!r} must have at least two spatial axes, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"layer {layer.name!r} is empty (shape {shape})")
    lead = spatial - 2
    index: tuple[int, ...] = ()
    if lead:
        position = None
        if viewer is not None:
            try:
                position = layer.world_to_data(viewer.dims.point)
            except Exception:  # noqa: BLE001 - fall back to the first plane
                position = None
        if position is None or len(position) < lead:
            position = (0,) * lead
        index = tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(position[:lead], shape[:lead]))
    plane = np.array(data[index] if index else data)  # a copy, never a view of the layer's data
    scale = tuple(float(s) for s in layer.scale[-2:])
    translate = tuple(float(t) for t in layer.translate[-2:])
    units = tuple(layer.units[-2:]) if hasattr(layer, "units") else None
    labels = tuple(str(a) for a in layer.axis_labels[-2:]) if hasattr(layer, "axis_labels") else None
    limits = getattr(layer, "contrast_limits", None)
    return Plane(plane, rgb, Geometry(scale, translate, units, labels), index,  # type: ignore[arg-type]
                 tuple(float(v) for v in limits) if limits is not None else None, str(layer.name))


def core_image(plane: Plane) -> tuple[np.ndarray, str]:
    """The plane as an image :func:`air_core.to_tensor` accepts, and a note on any rescaling.

    Integer and boolean images pass unchanged (air_core scales uint8 / uint16 itself). Float images in
    [0, 1] pass too; other float images (e.g. microscopy intensities) are mapped to [0, 1] through the
    layer's contrast limits (clipped), the way napari displays them.
    """
    data = plane.data
    if data.dtype.kind == "f":
        finite = data[np.isfinite(data)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            lo, hi = plane.contrast_limits or (float(finite.min()), float(finite.max()))
            if hi <= lo:
                hi = lo + 1.0
            scaled = np.clip((data.astype(np.float32) - lo) / (hi - lo), 0, 1)
            return scaled, f"float values mapped to [0, 1] through the contrast limits ({lo:g}, {hi:g})"
    return data, ""


def image_from_render(render: Any, gray: bool) -> np.ndarray:
    """A [3, H, W] render (torch tensor) as napari image data: [H, W] gray or [H, W, 3] RGB, float32 in [0, 1]."""
    arr = render.detach().to("cpu").clamp(0, 1).numpy().astype(np.float32)
    return arr.mean(0) if gray else np.ascontiguousarray(arr.transpose(1, 2, 0))


def is_gray(gaussians: Any) -> bool:
    """True when every Gaussian's colour channels are equal (a gray image)."""
    c = gaussians.colours
    if c.shape[1] == 1:
        return True
    return bool(len(c) == 0 or (c.max(1).values - c.min(1).values).abs().max() <= 1e-6)


def centres_points(gaussians: Any) -> tuple[np.ndarray, dict]:
    """Points layer data and properties for the Gaussian centres.

    Means (x, y) are in pixels with pixel (i, j) centred at (j + 0.5, i + 0.5); napari puts the centre
    of pixel (i, j) at data coordinate (i, j), hence (y - 0.5, x - 0.5). Size: the 1-sigma diameter
    2 sqrt(s1 s2); face colour: the colour clipped to [0, 1] (sum-mode colours may be signed).
    """
    g = gaussians.detach().to("cpu")
    if len(g) == 0:  # napari cannot take per-point arrays of length 0
        return np.zeros((0, 2), np.float32), {"size": 1.0, "border_width": 0}
    means = g.means.numpy().astype(np.float32)
    data = np.stack([means[:, 1] - 0.5, means[:, 0] - 0.5], 1)
    size = 2 * np.sqrt(np.prod(g.scales.numpy().astype(np.float64), 1))
    colours = np.clip(g.colours.numpy().astype(np.float32), 0, 1)
    if colours.shape[1] == 1:
        colours = np.repeat(colours, 3, 1)
    rgba = np.concatenate([colours[:, :3], np.ones((len(colours), 1), np.float32)], 1)
    return data, {"size": np.maximum(size, 0.5).astype(np.float32), "face_color": rgba, "border_width": 0}


def stage_labels(keep: Any) -> np.ndarray:
    """[S, ph, pw] keep masks as labels: stage s's kept patches get label s + 1, the others 0."""
    k = np.asarray(keep.cpu().numpy() if hasattr(keep, "cpu") else keep, dtype=bool)
    stages = np.arange(1, k.shape[0] + 1, dtype=np.uint16 if k.shape[0] > 254 else np.uint8)
    return (k * stages[:, None, None]).astype(stages.dtype)


def upsert_layer(viewer: Any, data: Any, kwargs: dict, layer_type: str) -> Any:
    """Add a layer, or update the layer of the same name (re-runs update their previous output).

    An existing layer of the same type and dimensionality is updated in place (the user's display
    settings stay); otherwise it is replaced at the same position in the layer list.
    """
    from napari.layers import Layer

    name = kwargs["name"]
    old = viewer.layers[name] if name in viewer.layers else None
    new = Layer.create(data, dict(kwargs), layer_type)
    if old is None:
        viewer.add_layer(new)
        return new
    # (old.__class__, not type(old): the viewer napari hands a plugin widget wraps layers in a proxy)
    same = (old.__class__ is new.__class__ and old.ndim == new.ndim
            and getattr(old, "rgb", None) == getattr(new, "rgb", None) and layer_type != "points")
    if same:
        old.data = data
        old.scale = new.scale
        old.translate = new.translate
        if hasattr(new, "units"):
            old.units = new.units
        if hasattr(new, "axis_labels"):
            old.axis_labels = new.axis_labels
        old.metadata = dict(new.metadata)
        if layer_type == "image":
            if "contrast_limits" in kwargs:
                old.contrast_limits = kwargs["contrast_limits"]
            else:
                old.reset_contrast_limits()
        old.refresh()
        return old
    index = viewer.layers.index(old)
    viewer.layers.remove(old)
    viewer.layers.insert(index, new)
    return new

