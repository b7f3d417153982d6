"""Layer helpers of the napari plugin: the 2D slice a job works on, the geometry its outputs copy, and
the conversion of Gaussian results into layer data. No computation happens here beyond array
reshaping: everything numeric is a call into :mod:`air_core`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    """Where a layer's planes sit in the world: the last two (plane) axes of the layer's transform, and
    its leading axes (e.g. z, t) with their scale, translate, units and labels.

    For the output of one plane of a stack, the leading axes are kept with length 1 and their translate
    moved to that plane's world position (:meth:`at`), so the output is drawn on that plane only.
    """

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[Any, Any] | None
    axis_labels: tuple[str, str] | None
    lead_scale: tuple[float, ...] = ()
    lead_translate: tuple[float, ...] = ()
    lead_units: tuple[Any, ...] | None = None
    lead_labels: tuple[str, ...] | None = None

    @property
    def nlead(self) -> int:
        return len(self.lead_scale)

    def kwargs(self, lead: int = 0, lead_labels: tuple[str, ...] = ()) -> dict:
        """Layer keyword arguments for a layer of axes: ``lead`` extra axes (scale 1, e.g. the stage axis),
        then the layer's leading axes, then the two plane axes.

        (Extra axes come first: napari aligns layers on their last axes, so the layer's leading axes stay
        aligned with those of the input.)
        """
        n = self.nlead
        out: dict[str, Any] = {"scale": (1.0,) * lead + tuple(self.lead_scale) + tuple(self.scale),
                               "translate": (0.0,) * lead + tuple(self.lead_translate) + tuple(self.translate)}
        if self.units is not None:
            lead_units = tuple(self.lead_units) if self.lead_units is not None else ("pixel",) * n
            out["units"] = ("pixel",) * lead + lead_units + tuple(self.units)
        if self.axis_labels is not None:
            labels = tuple(lead_labels) + ("",) * (lead - len(lead_labels))
            own = tuple(self.lead_labels) if self.lead_labels is not None else ("",) * n
            out["axis_labels"] = _unique(labels + own + tuple(self.axis_labels))
        return out

    def at(self, index: tuple[int, ...]) -> "Geometry":
        """The geometry of plane ``index`` (leading indices) kept as a stack of one plane at its world position."""
        if not index:
            return self
        translate = tuple(t + s * i for t, s, i in zip(self.lead_translate, self.lead_scale, index))
        return replace(self, lead_translate=translate)

    def zoomed(self, k: float) -> "Geometry":
        """The geometry of a render at k times the resolution: pixel (i, j) of the render has its centre at
        pixel ((i + 0.5) / k - 0.5, ...) of this plane, so scale / k and translate + scale (0.5 / k - 0.5)."""
        scale = tuple(s / k for s in self.scale)
        translate = tuple(t + s * (0.5 / k - 0.5) for t, s in zip(self.translate, self.scale))
        return replace(self, scale=scale, translate=translate)

    def unzoomed(self, k: float) -> "Geometry":
        """The inverse of :meth:`zoomed`: the plane's geometry from that of its render at k."""
        scale = tuple(s * k for s in self.scale)
        translate = tuple(t - s * (0.5 / k - 0.5) for t, s in zip(self.translate, scale))
        return replace(self, scale=scale, translate=translate)

    def patches(self, patch_size: int) -> "Geometry":
        """The geometry of a patch grid (patch p covers pixels p ps .. p ps + ps - 1 of this plane)."""
        scale = tuple(s * patch_size for s in self.scale)
        translate = tuple(t + s * (patch_size - 1) / 2 for t, s in zip(self.translate, self.scale))
        return replace(self, scale=scale, translate=translate)


def layer_geometry(layer: Any) -> Geometry:
    """The geometry of a layer: its last two axes are the plane, the others leading axes."""
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    units = tuple(layer.units) if hasattr(layer, "units") else None
    labels = tuple(str(a) for a in layer.axis_labels) if hasattr(layer, "axis_labels") else None
    return Geometry(scale[-2:], translate[-2:], units[-2:] if units else None,  # type: ignore[arg-type]
                    labels[-2:] if labels else None, scale[:-2], translate[:-2],  # type: ignore[arg-type]
                    units[:-2] if units else None, labels[:-2] if labels else None)


def check_transform(layer: Any) -> None:
    """Refuse (ValueError) a layer with a rotation, shear or affine transform: outputs copy only scale and
    translate, so they would not line up with such a layer."""
    n = int(layer.ndim)
    eye = np.eye(n)
    rotate = np.asarray(getattr(layer, "rotate", eye), dtype=float)
    shear = np.asarray(getattr(layer, "shear", np.zeros(0)), dtype=float)
    affine = getattr(layer, "affine", None)
    matrix = np.asarray(getattr(affine, "affine_matrix", np.eye(n + 1)), dtype=float)
    if not (np.allclose(rotate, eye) and np.allclose(shear, 0)
            and np.allclose(matrix, np.eye(matrix.shape[0]))):
        raise ValueError(f"layer {layer.name!r} has a rotation, shear or affine transform; the plugin supports "
                         "only scale and translate (reset the transform, or resample the layer first)")


def check_view(viewer: Any, layer: Any = None) -> None:
    """Refuse (ValueError) a view in which the plane shown is not that of the last two axes (3D display,
    rolled dims) when ``layer`` is nD: "the current plane" would then not be what the user sees. (A 2D
    layer is its own plane, whatever the view.)"""
    if viewer is None or (layer is not None and int(layer.ndim) <= 2):
        return
    dims = viewer.dims
    if int(dims.ndisplay) != 2:
        raise ValueError("the viewer is in 3D display; switch to 2D (the plane shown is the one processed), "
                         "or choose 'all planes'")
    n = int(dims.ndim)
    if n > 2 and set(int(a) for a in dims.displayed) != {n - 2, n - 1}:
        raise ValueError("the viewer does not show the last two axes (dims were rolled or transposed); the "
                         "plugin processes planes of the last two axes: reset the dims order, or choose 'all planes'")


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
    geometry: Geometry  # the layer's geometry, leading axes at this plane (see Geometry.at)
    index: tuple[int, ...]  # indices of the leading (non-displayed) axes; () for a 2D layer
    contrast_limits: tuple[float, float] | None
    name: str

    def expand(self, array: np.ndarray, extra: int = 0) -> np.ndarray:
        """An output of this plane with the layer's leading axes (length 1) inserted after ``extra`` axes."""
        n = self.geometry.nlead
        return array.reshape(array.shape[:extra] + (1,) * n + array.shape[extra:]) if n else array


@dataclass
class Planes:
    """The planes a job works on: the current one, or every plane of the last two axes of an nD layer.

    Outputs computed per plane are stacked by :meth:`stack` into arrays of leading shape ``out_lead``:
    the layer's leading shape (all planes), or ones (one plane, drawn at its world position).
    """

    data: list[np.ndarray]  # copies, each [H, W] or [H, W, C]
    indices: list[tuple[int, ...]]  # leading indices of each plane in the layer
    current: int  # position in ``data`` of the plane the viewer showed when the run started
    out_lead: tuple[int, ...]
    geometry: Geometry
    plane: Plane  # the current plane
    all: bool  # every plane of the layer (else: the current one only)

    def __len__(self) -> int:
        return len(self.data)

    def stack(self, arrays: list[np.ndarray], extra: int = 0) -> np.ndarray:
        """Per-plane arrays [*E, ...] (``extra`` leading axes E, e.g. stages) -> [*E, *out_lead, ...]."""
        arr = np.stack(arrays)
        arr = np.moveaxis(arr, 0, extra) if extra else arr
        return arr.reshape(arr.shape[:extra] + tuple(self.out_lead) + arr.shape[extra + 1:])

    def points(self, per_plane: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
        """Per-plane points (data [n, 2], properties) -> one Points layer's data [N, nlead + 2] and properties."""
        n = self.geometry.nlead
        datas, sizes, colours = [], [], []
        for k, (data, props) in enumerate(per_plane):
            if not len(data):
                continue
            lead = np.asarray(self.indices[k] if self.all else (0,) * n, dtype=np.float32)
            datas.append(np.concatenate([np.broadcast_to(lead, (len(data), n)), data], 1))
            sizes.append(props["size"])
            colours.append(props["face_color"])
        if not datas:
            return np.zeros((0, n + 2), np.float32), {"size": 1.0, "border_width": 0}
        return (np.concatenate(datas).astype(np.float32),
                {"size": np.concatenate(sizes), "face_color": np.concatenate(colours), "border_width": 0})


def layer_planes(layer: Any, viewer: Any = None, all_planes: bool = False) -> Planes:
    """The plane shown (``all_planes`` False) or every plane of the last two axes of a layer, as copies.

    Raises:
        ValueError: as :func:`layer_plane`.
    """
    plane = layer_plane(layer, viewer)
    geometry = layer_geometry(layer)
    n = plane.geometry.nlead
    lead = _data_shape(layer)[:n] if n else ()
    if not all_planes or not lead:
        return Planes([plane.data], [plane.index], 0, (1,) * n, plane.geometry, plane, False)
    data = _plain(layer)
    indices = [tuple(int(i) for i in ix) for ix in np.ndindex(*lead)]
    arrays = [np.array(data[ix]) for ix in indices]  # copies, taken on the GUI thread
    return Planes(arrays, indices, indices.index(plane.index), lead, geometry, plane, True)


def data_point(layer: Any, viewer: Any) -> tuple[float, ...] | None:
    """The viewer's current point in ``layer``'s data coordinates (None if it cannot be had).

    napari 0.6+ expresses the world in common units (a z axis in mm with y, x in um is in um in
    ``viewer.dims.point``), which ``layer.world_to_data`` ignores; the conversion napari's slicing uses is
    applied here, falling back to ``world_to_data`` with older napari.
    """
    try:
        point = np.asarray(viewer.dims.point, dtype=float)[-int(layer.ndim):]
        from napari.layers.utils._slice_input import apply_units_to_transform

        world_to_data = apply_units_to_transform(layer._data_to_world.inverse, tuple(viewer.dims.units))
        return tuple(float(v) for v in world_to_data(point))
    except Exception:  # noqa: BLE001 - older napari, or a stand-in layer
        try:
            return tuple(float(v) for v in layer.world_to_data(viewer.dims.point))
        except Exception:  # noqa: BLE001 - fall back to the first plane
            return None


def _plain(layer: Any) -> Any:
    data = layer.data
    return data[0] if getattr(layer, "multiscale", False) else data


def _data_shape(layer: Any) -> tuple[int, ...]:
    return tuple(np.shape(_plain(layer)))


def layer_plane(layer: Any, viewer: Any = None) -> Plane:
    """The current 2D plane of an image or labels layer (for nD layers, the slice the viewer shows).

    Raises:
        ValueError: the layer has no data or fewer than two spatial axes.
    """
    data = _plain(layer)
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
            position = data_point(layer, viewer)
        if position is None or len(position) < lead:
            position = (0,) * lead
        index = tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(position[:lead], shape[:lead]))
    plane = np.array(data[index] if index else data)  # a copy, never a view of the layer's data
    limits = getattr(layer, "contrast_limits", None)
    geometry = layer_geometry(layer)
    if len(geometry.lead_scale) != lead:  # (a stand-in object with a 2D transform)
        geometry = replace(geometry, lead_scale=(1.0,) * lead, lead_translate=(0.0,) * lead)
    return Plane(plane, rgb, geometry.at(index), index,
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

