"""Dock widgets of the napari plugin: Reconstruct with AIR, Render at scale, Upsample with JBU, Fit Gaussians.

Each widget is a magicgui :class:`~magicgui.widgets.Container`. A run:

1. on the GUI thread, takes a copy of the plane(s) of the chosen layer(s) and their geometry (scale,
   translate, units, axis labels of every axis), so the result belongs to the layer the run started from
   whatever is selected meanwhile, and the input layer is never modified. Planes are those of the layer's
   last two axes: "current plane" is the one the viewer shows (refused in 3D display or when the dims are
   rolled / transposed), "all planes" (Reconstruct, Fit) every plane of an nD layer. Layers with a rotation,
   shear or affine transform are refused (outputs copy scale and translate only);
2. computes in a napari ``thread_worker`` generator: the ``air_core`` call runs in a helper thread with a
   ``progress`` callback, whose reports the generator yields (progress bar in the activity dock, one step
   per stage / refinement chunk, (i + f) / N over N planes). Cancel makes the callback return False, which
   stops the ``air_core`` call at its next report; the worker stays alive ("cancelling...", Run disabled)
   until the helper thread has exited. Closing the dock widget cancels the running job. After every job
   the garbage collector runs and, with CUDA, ``torch.cuda.empty_cache()``;
3. back on the GUI thread, adds the output layers or updates those of the same name. An output of one
   plane of an nD layer keeps the leading axes with length 1, placed at that plane's world position, so
   it is drawn on that plane only; an output of all planes has the layer's leading shape.

Errors (bad input, missing weights, unexpected exceptions) are caught and shown as napari notifications
(unexpected ones also print their traceback to the console); none reaches napari's traceback dialog.
"""

from __future__ import annotations

import copy
import gc
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton,
                              SpinBox)

from ._layers import (META_GAUSSIANS, META_KEEP, META_METRICS, META_PATCH_SIZE, META_SOURCE, Plane, Planes,
                      centres_points, check_transform, check_view, core_image, data_point, image_from_render, is_gray,
                      layer_geometry, layer_plane, layer_planes, stage_labels, upsert_layer)

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: A predictor (``air_core.predictor.model.AIRPredictor``) used by "Reconstruct with AIR" instead of the
#: shipped weights when no weights file is chosen. For tests and scripts (e.g. a small untrained model);
#: None (default) loads the shipped weights.
DEFAULT_MODEL: Any = None

DEVICES = ("auto", "cpu", "cuda")
_HEARTBEAT_S = 0.1


class _Failed:
    """What a worker returns when the air_core call raised (shown as a notification)."""

    def __init__(self, exc: BaseException) -> None:
        self.trace = traceback.format_exc()
        self.exc = exc.with_traceback(None)  # (the frames would keep the job's tensors alive)


#: Names of the exceptions that mean "cancelled" (air_core.ReconstructCancelled, this module's _Cancelled).
_CANCELLED = ("ReconstructCancelled", "_Cancelled")
#: Exceptions that are the user's input's fault: a notification, no traceback on the console.
_EXPECTED = (ValueError, TypeError, FileNotFoundError, MemoryError)


def _release_memory() -> None:
    """Free what a finished job left: Python garbage, then (with CUDA) PyTorch's cached GPU blocks."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - never let the cleanup fail a job
        pass


def _progress_steps(call: Callable[[Callable[[float, str], bool]], Any], cancel: threading.Event,
                    job: dict | None = None):
    """Generator (runs in the worker thread): run ``call(progress)`` and yield its (fraction, message) reports.

    The call runs in a helper thread (``job["thread"]``) so that the generator can yield while it works; a
    heartbeat (None) is yielded every 0.1 s. ``progress`` returns False once ``cancel`` is set, which makes
    the air_core call raise its cancellation at the next report; the generator keeps yielding heartbeats
    until the helper has exited, so the job is only over when the computation is. ``job["outcome"]`` is
    then "ok" or the name of the exception the call raised.
    """
    job = {} if job is None else job
    reports: queue.SimpleQueue = queue.SimpleQueue()

    def progress(fraction: float, message: str) -> bool:
        reports.put((float(fraction), str(message)))
        return not cancel.is_set()

    def target() -> None:
        try:
            job["result"] = call(progress)
            failed = job["result"]
            job["outcome"] = type(failed.exc).__name__ if isinstance(failed, _Failed) else "ok"
        except BaseException as exc:  # noqa: BLE001 - handed to the GUI thread
            job["result"] = _Failed(exc)
            job["outcome"] = type(exc).__name__
        finally:
            _release_memory()
            reports.put(StopIteration)

    helper = threading.Thread(target=target, name="napari-air-job", daemon=True)
    job["thread"] = helper
    helper.start()
    while True:
        try:
            item = reports.get(timeout=_HEARTBEAT_S)
        except queue.Empty:
            yield None
            continue
        if item is StopIteration:
            break
        yield item
    helper.join()
    return job.pop("result", None)


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[kind](message)


def _layer_choices(viewer: Any, kinds: tuple[str, ...], predicate: Callable[[Any], bool] | None = None):
    def choices(_widget: Any = None) -> list[tuple[str, Any]]:
        from napari import layers as nl

        types = tuple(getattr(nl, k) for k in kinds)
        return [(layer.name, layer) for layer in viewer.layers
                if isinstance(layer, types) and (predicate is None or predicate(layer))]

    return choices


def _has_gaussians(layer: Any) -> bool:
    return META_GAUSSIANS in (layer.metadata or {})


class _JobWidget(Container):
    """A dock widget that runs one air_core job at a time in a worker, with progress and Cancel."""

    title = "AIR job"

    def __init__(self, viewer: napari.viewer.Viewer, widgets: list) -> None:
        self._viewer = viewer
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.results = Label(value="")
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        super().__init__(widgets=[*widgets, buttons, self.status, self.results])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.worker: Any = None
        #: the last job: "thread" (the helper thread running the air_core call), "outcome" once it ended
        self.job: dict = {}
        self._cancel = threading.Event()
        self._pbar: Any = None
        self.last_error: str | None = None
        self._close_watch = _watch_close(self.native, self._closed)
        self.reset_choices()

    # -- to implement --------------------------------------------------------------------------------
    def _prepare(self) -> tuple[Callable[[Callable[[float, str], bool]], Any], Callable[[Any], None]]:
        """On the GUI thread: read the inputs; return (work(progress) for the worker, done(result) for the GUI)."""
        raise NotImplementedError

    # -- machinery ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _error(self, message: str) -> None:
        self.last_error = message
        self.status.value = _short(message)
        _notify("error", message)

    def _unexpected(self, message: str, trace: str | None = None) -> None:
        print(trace if trace is not None else traceback.format_exc())  # the console / log, not a dialog
        self._error(message)

    def run(self) -> Any:
        """Start a run (the Run button). Returns the worker, or None when the input was refused."""
        try:
            return self._run()
        except Exception as exc:  # noqa: BLE001 - nothing reaches napari's traceback dialog
            self._unexpected(f"{self.title}: unexpected error: {exc!r}")
            return None

    def _run(self) -> Any:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self.running:
            _notify("info", f"{self.title} is already running; cancel it first")
            return None
        self.last_error = None
        try:
            work, done = self._prepare()
        except _EXPECTED as exc:
            self._error(f"{self.title}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001
            self._unexpected(f"{self.title}: unexpected error: {exc!r}")
            return None
        cancel = self._cancel = threading.Event()
        job = self.job = {}
        worker = create_worker(_progress_steps, work, cancel, job, _start_thread=False)
        pbar = self._pbar = progress(total=100, desc=self.title)
        state = {"open": True}
        started = time.perf_counter()

        def on_yield(report: Any) -> None:
            if report is None or not state["open"] or cancel.is_set():
                return
            fraction, message = report
            target = int(round(100 * min(1.0, max(0.0, fraction))))
            self.status.value = _short(message)
            if target > pbar.n:
                pbar.update(target - pbar.n)
            pbar.set_description(f"{self.title}: {_short(message, 60)}")

        def on_return(result: Any) -> None:
            try:
                if cancel.is_set():
                    self.status.value = "cancelled"
                    return
                if isinstance(result, _Failed):
                    exc = result.exc
                    if type(exc).__name__ in _CANCELLED:
                        self.status.value = "cancelled"
                    elif isinstance(exc, _EXPECTED):
                        self._error(f"{self.title} failed: {exc}")
                    else:
                        self._unexpected(f"{self.title} failed: {exc!r}", result.trace)
                    return
                try:
                    done(result)
                except _EXPECTED as exc:
                    self._error(f"{self.title}: could not show the result: {exc}")
                    return
                self.status.value = f"done in {time.perf_counter() - started:.2f} s"
            except Exception as exc:  # noqa: BLE001 - nothing reaches napari's traceback dialog
                self._unexpected(f"{self.title}: could not show the result: {exc!r}")

        def on_error(exc: BaseException) -> None:  # the generator itself failed (should not happen)
            self._error(f"{self.title} failed: {exc!r}")

        def on_finish() -> None:
            if state["open"]:
                state["open"] = False
                pbar.close()
            self._pbar = None
            self.worker = None
            self.run_button.enabled = True
            self.cancel_button.enabled = False

        worker.yielded.connect(on_yield)
        worker.returned.connect(on_return)
        worker.errored.connect(on_error)
        worker.finished.connect(on_finish)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running..."
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job (the Cancel button); no layer is added or changed.

        The air_core call stops at its next progress report; until it has, the job shows
        "cancelling..." and Run stays disabled (the worker ends when the computation has).
        """
        if self.worker is None or self._cancel.is_set():
            return
        self._cancel.set()
        self.cancel_button.enabled = False
        self.status.value = "cancelling..."

    def _closed(self) -> None:
        """The dock widget was closed or destroyed: cancel the running job."""
        self._cancel.set()


def _watch_close(widget: Any, callback: Callable[[], None]) -> Any:
    """Call ``callback`` when the Qt ``widget`` is destroyed or taken out of its dock (parent set to None)."""
    from qtpy.QtCore import QEvent, QObject

    class _Watch(QObject):
        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt's name
            try:
                if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
                    callback()
            except Exception:  # noqa: BLE001 - a filter must never raise
                pass
            return False

    watch = _Watch(widget)
    widget.installEventFilter(watch)
    widget.destroyed.connect(lambda *_: callback())
    return watch


def _short(message: str, limit: int = 160) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _metrics_text(metrics: dict, extra: str = "") -> str:
    parts = [f"PSNR {metrics['psnr']:.2f} dB"]
    if metrics.get("ssim") is not None:
        parts.append(f"SSIM {metrics['ssim']:.4f}")
    if metrics.get("ms_ssim") is not None:
        parts.append(f"MS-SSIM {metrics['ms_ssim']:.4f}")
    return ", ".join(parts) + (f"\n{extra}" if extra else "")


PLANES = ("current plane", "all planes")
_PLANES_TIP = ("nD layers: the plane the viewer shows (2D display of the last two axes), or every plane of the "
               "last two axes, one after the other (outputs stacked along the layer's leading axes)")


def _planes(widget: Any, layer: Any) -> Planes:
    """The planes of ``layer`` a run works on (GUI thread), after the view and transform checks."""
    check_transform(layer)
    all_planes = widget.planes.value == PLANES[1]
    if not all_planes:
        check_view(widget._viewer, layer)
    return layer_planes(layer, widget._viewer, all_planes)


def _plane_progress(progress: Callable[[float, str], bool], i: int, n: int) -> Callable[[float, str], bool]:
    """The progress callback of plane i of n: fraction (i + f) / n, message "plane i+1/n: ..."."""
    if n == 1:
        return progress
    return lambda f, message: progress((i + f) / n, f"plane {i + 1}/{n}: {message}")


def _check_plane_size(plane: Plane, minimum: int = 2) -> None:
    h, w = plane.data.shape[:2]
    if h < minimum or w < minimum:
        raise ValueError(f"layer {plane.name!r} is {w} x {h} pixels; it must be at least {minimum} x {minimum}")


# ---------------------------------------------------------------------------------------------------------
# Reconstruct with AIR
# ---------------------------------------------------------------------------------------------------------


class ReconstructWidget(_JobWidget):
    """Image -> 2D Gaussians with the AIR predictor (``air_core.reconstruct``), optionally refined."""

    title = "Reconstruct with AIR"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.image = ComboBox(label="image", choices=_layer_choices(viewer, ("Image",)), nullable=False,
                              tooltip="2D gray or RGB image layer (nD layers: see 'planes')")
        self.planes = ComboBox(label="planes", choices=PLANES, value=PLANES[0], tooltip=_PLANES_TIP)
        self.weights = FileEdit(label="weights", mode="r", filter="*.safetensors", value="",
                                tooltip="predictor weights (.safetensors); empty: the shipped model")
        self.stages = SpinBox(label="stages", value=4, min=1, max=64,
                              tooltip="predictor stages to run (at most the model's)")
        self.patch_size = Label(label="patch size", value="set by the model (7 for the shipped one)")
        self.custom_control = CheckBox(label="custom stage control", value=False,
                                       tooltip="override the model's stage-control thresholds for this run")
        self.log_mse = FloatSpinBox(label="log10 MSE threshold", value=-3.5, min=-8.0, max=0.0, step=0.1,
                                    enabled=False, tooltip="a patch gets a new Gaussian while its MSE is above this")
        self.ssim_threshold = FloatSpinBox(label="SSIM threshold", value=0.05, min=0.0, max=2.0, step=0.01,
                                           enabled=False,
                                           tooltip="... or while its (1 - SSIM) / 2 is above this")
        self.refine_steps = SpinBox(label="refinement steps", value=0, min=0, max=100000, step=50,
                                    tooltip="per-image optimisation steps after the predictor (0: none)")
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.out_stages = CheckBox(label="per-stage renders", value=True)
        self.out_error = CheckBox(label="error map", value=True)
        self.out_masks = CheckBox(label="stage masks", value=True)
        self.out_points = CheckBox(label="Gaussian centres", value=True)
        super().__init__(viewer, [self.image, self.planes, self.weights, self.stages, self.patch_size,
                                  self.custom_control, self.log_mse, self.ssim_threshold, self.refine_steps,
                                  self.device, self.out_stages, self.out_error, self.out_masks, self.out_points])
        self.custom_control.changed.connect(self._toggle_control)

    def _toggle_control(self, value: bool) -> None:
        self.log_mse.enabled = bool(value)
        self.ssim_threshold.enabled = bool(value)

    def _weights_path(self) -> str:
        path = str(self.weights.value or "").strip()
        return "" if path in ("", ".") else path

    @staticmethod
    def _model(path: str, device: str) -> Any:
        """The predictor for this run (worker thread): the weights file ``path``, DEFAULT_MODEL or the shipped ones."""
        import torch
        from air_core.predictor import load_predictor
        from air_core.predictor.model import PRETRAINED_PATH

        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was chosen but CUDA is not available here; choose 'auto' or 'cpu'")
        if path:
            return load_predictor(path, device)
        if DEFAULT_MODEL is not None:
            model = DEFAULT_MODEL
            want = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                                else "cpu")
            current = next(model.parameters()).device
            return model if current.type == want.type else copy.deepcopy(model).to(want)
        if not PRETRAINED_PATH.is_file():
            raise FileNotFoundError(
                f"the AIR predictor weights are not installed ({PRETRAINED_PATH.name} is missing from "
                f"{PRETRAINED_PATH.parent}); choose a weights file (.safetensors) in 'weights'")
        return load_predictor(None, device)

    def _prepare(self):
        import air_core

        layer = self.image.value
        if layer is None:
            raise ValueError("no image layer: open an image first (e.g. File > Open Sample > AIR Gaussian splats)")
        planes = _planes(self, layer)
        plane = planes.plane
        if plane.data.ndim == 3 and plane.data.shape[-1] not in (1, 3, 4):
            raise ValueError(f"layer {plane.name!r} has {plane.data.shape[-1]} channels; expected gray or RGB")
        _check_plane_size(plane, 2)
        stages, refine, device = int(self.stages.value), int(self.refine_steps.value), str(self.device.value)
        control = (10 ** float(self.log_mse.value), float(self.ssim_threshold.value)) \
            if self.custom_control.value else None
        want = {"stages": self.out_stages.value, "error": self.out_error.value, "masks": self.out_masks.value,
                "points": self.out_points.value}
        notes: list[str] = []
        weights = self._weights_path()  # read on the GUI thread

        def work(progress):
            model = self._model(weights, device)
            n = stages
            if n > model.num_stages:
                notes.append(f"stages reduced to the model's {model.num_stages}")
                n = model.num_stages
            thresholds = control if control is not None else (model.mse_threshold, model.ssim_threshold)
            per: list[dict] = []
            for i, data in enumerate(planes.data):
                image, note = core_image(Plane(data, plane.rgb, plane.geometry, plane.index, plane.contrast_limits,
                                               plane.name))
                if note and note not in notes:
                    notes.append(note)
                result = air_core.reconstruct(image, stages=n, refine_steps=refine, device="auto",
                                              progress=_plane_progress(progress, i, len(planes)), model=model,
                                              mse_threshold=thresholds[0], ssim_threshold=thresholds[1])
                item = {"result": result, "render": image_from_render(result.render, result.gray)}
                if want["stages"]:
                    item["stages"] = np.stack([image_from_render(r, result.gray) for r in result.renders])
                if want["error"]:
                    item["error"] = air_core.error_map(result.render, image).numpy()
                if want["masks"]:
                    item["masks"] = stage_labels(result.keep)
                if want["points"]:
                    item["points"] = centres_points(result.gaussians)
                if len(planes) > 1:  # keep what is shown, not every plane's per-stage tensors
                    result.renders = result.renders[:0]
                    result.final_render = None
                per.append(item)
            out: dict[str, Any] = {"per": per, "thresholds": thresholds,
                                   "render": planes.stack([p["render"] for p in per])}
            if want["stages"]:
                out["stages"] = planes.stack([p["stages"] for p in per], extra=1)
            if want["error"]:
                out["error"] = planes.stack([p["error"] for p in per])
            if want["masks"]:
                out["masks"] = planes.stack([p["masks"] for p in per], extra=1)
            if want["points"]:
                out["points"] = planes.points([p["points"] for p in per])
            return out

        def done(out):
            self._show(planes, out, notes)

        return work, done

    OPTIONAL = {"stages": "[AIR stages]", "error": "[AIR error]", "masks": "[AIR stage masks]",
                "points": "[AIR centres]"}

    def _show(self, planes: Planes, out: dict, notes: list[str]) -> None:
        """Add / update the output layers (GUI thread).

        All planes: the reconstruction, error map, per-stage renders and stage masks are stacked along the
        input's leading axes (stage axis first), the centres carry the plane's leading indices. The
        Gaussians in the reconstruction's metadata (``air_gaussians``, ``air_keep``, ``air_metrics``; what
        Render at scale and Save use) are those of the plane shown when the run started; every plane's are
        in ``air_gaussians_planes`` / ``air_metrics_planes`` (leading indices in ``air_plane_indices``).
        An optional output switched off removes that output's layer of an earlier run.
        """
        per = out["per"]
        result = per[planes.current]["result"]
        geo, src = planes.geometry, planes.plane.name
        gray = result.gray

        def metrics_of(r):
            return {k: v for k, v in r.metrics.items() if k in ("psnr", "ssim", "ms_ssim", "mse", "stage_psnr")}

        metrics = metrics_of(result)
        meta = {META_GAUSSIANS: result.gaussians, META_KEEP: result.keep.numpy().astype(bool),
                META_PATCH_SIZE: int(result.patch_size), META_SOURCE: src, META_METRICS: metrics}
        if planes.plane.index:
            meta["air_plane_index"] = planes.plane.index
        if planes.all:
            meta["air_gaussians_planes"] = [p["result"].gaussians for p in per]
            meta["air_metrics_planes"] = [metrics_of(p["result"]) for p in per]
            meta["air_plane_indices"] = list(planes.indices)
        upsert_layer(self._viewer, out["render"], {"name": f"{src} [AIR]", "rgb": not gray, "metadata": meta,
                                                   "contrast_limits": (0.0, 1.0), **geo.kwargs()}, "image")
        for key, suffix in self.OPTIONAL.items():  # outputs switched off: no stale layer of an earlier run
            name = f"{src} {suffix}"
            if key not in out and name in self._viewer.layers \
                    and (self._viewer.layers[name].metadata or {}).get(META_SOURCE) == src:
                self._viewer.layers.remove(name)
        if "stages" in out:
            upsert_layer(self._viewer, out["stages"],
                         {"name": f"{src} [AIR stages]", "rgb": not gray, "contrast_limits": (0.0, 1.0),
                          "metadata": {META_SOURCE: src}, "visible": False,
                          **geo.kwargs(1, ("stage",))}, "image")
        if "error" in out:
            err = out["error"]
            upsert_layer(self._viewer, err, {"name": f"{src} [AIR error]", "colormap": "magma",
                                             "contrast_limits": (0.0, max(float(err.max()), 1e-6)),
                                             "metadata": {META_SOURCE: src}, "visible": False, **geo.kwargs()},
                         "image")
        if "masks" in out:
            upsert_layer(self._viewer, out["masks"],
                         {"name": f"{src} [AIR stage masks]", "metadata": {META_SOURCE: src}, "opacity": 0.4,
                          "visible": False, **geo.patches(result.patch_size).kwargs(1, ("stage",))}, "labels")
        if "points" in out:
            data, props = out["points"]
            upsert_layer(self._viewer, data, {"name": f"{src} [AIR centres]", "metadata": {META_SOURCE: src},
                                              "visible": False, **props, **geo.kwargs()}, "points")
        mse_t, ssim_t = out["thresholds"]
        extra = [f"{result.num_gaussians} Gaussians, per stage {result.counts}; patch size {result.patch_size}",
                 f"stage control: MSE > {mse_t:.3g} or SSIM term > {ssim_t:.3g}",
                 f"time {result.timings['total']:.2f} s"]
        if result.refine_steps:
            extra.append("refined" if result.refined else "refinement discarded (below the feed-forward PSNR)")
        if planes.all:
            psnrs = [p["result"].metrics["psnr"] for p in per]
            extra.insert(0, f"plane {planes.current + 1} of {len(per)} shown; mean PSNR over the planes "
                            f"{float(np.mean(psnrs)):.2f} dB, total time "
                            f"{sum(p['result'].timings['total'] for p in per):.2f} s")
        extra += notes
        self.patch_size.value = f"{result.patch_size} (from the model)"
        self.results.value = _metrics_text(result.metrics, "\n".join(extra))


# ---------------------------------------------------------------------------------------------------------
# Render at scale
# ---------------------------------------------------------------------------------------------------------


class RenderWidget(_JobWidget):
    """Render a layer's Gaussians at any scale: exact (``air_core.render``) or the gradient-aware preview
    (``air_core.render_upscaled``, Hermite upscaling of a render at 1 / preview factor)."""

    title = "Render at scale"
    METHODS = ("exact", "gradient-aware preview (Hermite)")

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.source = ComboBox(label="Gaussians", choices=_layer_choices(viewer, ("Image",), _has_gaussians),
                               tooltip="a layer carrying Gaussians (a reconstruction, a fit, an .npz / .air file)")
        self.scale = FloatSpinBox(label="scale", value=2.0, min=0.5, max=8.0, step=0.5)
        self.method = ComboBox(label="method", choices=self.METHODS, value=self.METHODS[0])
        self.preview_factor = SpinBox(label="preview factor", value=2, min=2, max=8,
                                      tooltip="preview: render at 1 / factor of the output size, then upscale")
        super().__init__(viewer, [self.source, self.scale, self.method, self.preview_factor])

    def _prepare(self):
        import air_core

        layer = self.source.value
        if layer is None:
            raise ValueError("no layer with Gaussians: run 'Reconstruct with AIR' or 'Fit Gaussians', or open an "
                             ".npz / .air file")
        meta = dict(layer.metadata)
        check_transform(layer)
        gaussians = meta[META_GAUSSIANS]
        k = float(self.scale.value)
        if not 0.5 <= k <= 8:
            raise ValueError(f"scale must be in 0.5 .. 8, got {k}")
        preview = self.method.value != self.METHODS[0]
        factor = int(self.preview_factor.value)
        geometry = layer_geometry(layer)
        nlead = geometry.nlead
        other_plane = False
        if nlead:  # an nD layer: the plane shown (its own Gaussians for an all-planes result), drawn there
            check_view(self._viewer, layer)
            index = layer_plane(layer, self._viewer).index
            geometry = geometry.at(index)
            stack, indices = meta.get("air_gaussians_planes"), meta.get("air_plane_indices")
            own = tuple(meta.get("air_plane_index", ()))  # the plane of air_gaussians (and air_keep)
            if stack and indices and index != own and index in [tuple(i) for i in indices]:
                gaussians = stack[[tuple(i) for i in indices].index(index)]
                other_plane = True
        h, w = gaussians.image_size
        size = (max(1, round(h * k)), max(1, round(w * k)))
        # a render at k of the Gaussians' own image has scale / k; a source that is itself a render at k0
        # (Render at scale's output) is first taken back to the image's geometry
        k0 = float(meta.get("air_render_scale", 1.0))
        geometry = geometry.unzoomed(k0).zoomed(k)
        gray = is_gray(gaussians)
        src = str(layer.name)

        def work(progress):
            progress(0.0, f"rendering {size[1]} x {size[0]}")
            if preview:
                img = air_core.render_upscaled(gaussians, scale=factor, size=size, method="hermite")
            else:
                img = air_core.render(gaussians, size=size, scale=None)
            progress(1.0, "rendered")
            out = image_from_render(img.detach(), gray)
            return out.reshape((1,) * nlead + out.shape)

        def done(image):
            out_meta = {key: meta[key] for key in (META_GAUSSIANS, META_KEEP, META_PATCH_SIZE) if key in meta}
            if other_plane:  # another plane's Gaussians: not those of air_keep
                out_meta = {META_GAUSSIANS: gaussians}
            out_meta.update({META_SOURCE: src, "air_render_scale": k,
                             "air_render_method": "hermite" if preview else "exact"})
            upsert_layer(self._viewer, image, {"name": f"{src} [render]", "rgb": not gray, "metadata": out_meta,
                                               "contrast_limits": (0.0, 1.0), **geometry.kwargs()}, "image")
            how = f"Hermite preview from 1/{factor}" if preview else "exact"
            self.results.value = f"{size[1]} x {size[0]} pixels (x{k:g}, {how})"

        return work, done


# ---------------------------------------------------------------------------------------------------------
# Upsample with JBU
# ---------------------------------------------------------------------------------------------------------


class JBUWidget(_JobWidget):
    """Upsample a low-resolution layer to a guidance image's resolution (``air_core.jbu_upsample``)."""

    title = "Upsample with JBU"
    MAP_TYPES = ("auto", "features", "probabilities", "labels")
    METHODS = ("classical", "bilinear", "bicubic", "nearest")

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.low = ComboBox(label="low-res layer", choices=_layer_choices(viewer, ("Image", "Labels")),
                            tooltip="gray or RGB image, image with channels ([C, h, w]: tick 'channels axis'), "
                                    "probability map or labels (nD layers: the plane shown)")
        self.guidance = ComboBox(label="guidance", choices=_layer_choices(viewer, ("Image",)),
                                 tooltip="the high-resolution image layer (gray or RGB) that guides the upsampling "
                                         "(nD layers: the plane shown)")
        self.channels = CheckBox(label="channels axis", value=False,
                                 tooltip="on: a non-RGB low-res image layer [..., C, h, w] has its channels on the "
                                         "third axis from the end (features, probabilities). Off (default): a "
                                         "3D+ non-RGB layer (e.g. a gray volume [Z, h, w]) is an nD layer, and "
                                         "the plane shown is upsampled as one channel")
        self.map_type = ComboBox(label="map type", choices=self.MAP_TYPES, value="auto",
                                 tooltip="auto: labels for a Labels layer, features otherwise")
        self.method = ComboBox(label="method", choices=self.METHODS, value="classical")
        self.sigma_spatial = FloatSpinBox(label="sigma spatial", value=1.0, min=0.1, max=10.0, step=0.1)
        self.sigma_range = FloatSpinBox(label="sigma range", value=0.1, min=0.005, max=2.0, step=0.005)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        super().__init__(viewer, [self.low, self.guidance, self.channels, self.map_type, self.method,
                                  self.sigma_spatial, self.sigma_range, self.device])

    def _prepare(self):
        import air_core
        from napari.layers import Labels

        low, guide = self.low.value, self.guidance.value
        if low is None or guide is None:
            raise ValueError("choose a low-resolution layer and a guidance image layer")
        if isinstance(guide, Labels):
            raise ValueError(f"the guidance must be an image layer, got the labels layer {guide.name!r}")
        map_type = self.map_type.value
        if map_type == "auto":
            map_type = "labels" if isinstance(low, Labels) else "features"
        if map_type == "labels" and not isinstance(low, Labels) and np.asarray(low.data[:0]).dtype.kind not in "iub":
            raise ValueError(f"map type 'labels' needs a Labels layer or an integer image, {low.name!r} is "
                             f"{np.asarray(low.data[:0]).dtype}")
        check_transform(low)
        check_transform(guide)
        check_view(self._viewer, guide)
        check_view(self._viewer, low)
        gplane = layer_plane(guide, self._viewer)
        _check_plane_size(gplane, 1)
        guidance, _note = core_image(gplane)
        rgb = bool(getattr(low, "rgb", False))
        data = low.data[0] if getattr(low, "multiscale", False) else low.data
        lead_scale: tuple[float, ...] = ()
        if map_type == "labels":
            plane = layer_plane(low, self._viewer)
            features = np.asarray(plane.data)
            if features.dtype == bool:
                features = features.astype(np.uint8)
        elif rgb:
            plane = layer_plane(low, self._viewer)
            features = np.ascontiguousarray(np.moveaxis(plane.data, -1, 0))
        elif np.ndim(data) <= 2 or not self.channels.value:
            plane = layer_plane(low, self._viewer)
            features = plane.data[None]
        else:  # [..., C, h, w]: the channel axis is the third from the end; other leading axes are sliced
            features, plane = self._channel_stack(low, data)
            lead_scale = (float(low.scale[-3]),)
        if 0 in features.shape:
            raise ValueError(f"layer {low.name!r} is empty")
        in_dtype = features.dtype
        if map_type != "labels":
            features = features.astype(np.float32)
        method, ss, sr, device = (self.method.value, float(self.sigma_spatial.value), float(self.sigma_range.value),
                                  str(self.device.value))
        src = str(low.name)

        def work(progress):
            progress(0.0, f"upsampling {src!r}")
            out = air_core.jbu_upsample(features, guidance, method=method, map_type=map_type,
                                        sigma_spatial=ss, sigma_range=sr, device=device)
            progress(1.0, "upsampled")
            return np.asarray(out)

        def done(out):
            geo = gplane.geometry
            name = f"{src} [JBU]"
            meta = {META_SOURCE: src, "air_jbu": {"method": method, "map_type": map_type, "guidance": gplane.name}}
            if map_type == "labels":
                upsert_layer(self._viewer, gplane.expand(out), {"name": name, "metadata": meta, **geo.kwargs()},
                             "labels")
            else:
                arr = out
                if in_dtype.kind in "iu":
                    info = np.iinfo(in_dtype)
                    arr = np.clip(np.rint(arr), info.min, info.max).astype(in_dtype)
                if rgb:
                    kwargs = {"rgb": True, **geo.kwargs()}
                    arr = gplane.expand(np.moveaxis(arr, 0, -1))
                elif arr.shape[0] == 1 and not lead_scale:
                    kwargs = {"rgb": False, **geo.kwargs()}
                    arr = gplane.expand(arr[0])
                else:
                    arr = gplane.expand(arr, extra=1)
                    kwargs = {"rgb": False, **geo.kwargs(1, ("channel",))}
                    kwargs["scale"] = (lead_scale or (1.0,)) + tuple(kwargs["scale"][1:])
                upsert_layer(self._viewer, arr, {"name": name, "metadata": meta, **kwargs}, "image")
            shape = out.shape[-2:]
            self.results.value = f"{src!r} {tuple(features.shape[-2:])} -> {tuple(shape)} ({map_type}, {method})"

        return work, done

    def _channel_stack(self, layer: Any, data: Any) -> tuple[np.ndarray, Plane]:
        lead = np.ndim(data) - 3
        index: tuple[int, ...] = ()
        if lead:
            pos = data_point(layer, self._viewer) or (0,) * lead
            index = tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(pos[:lead], np.shape(data)[:lead]))
        stack = np.array(data[index] if index else data)
        plane = layer_plane(layer, self._viewer)
        return stack, plane


# ---------------------------------------------------------------------------------------------------------
# Fit Gaussians
# ---------------------------------------------------------------------------------------------------------


class FitWidget(_JobWidget):
    """Per-image optimisation of a Gaussian budget (``air_core.fit``)."""

    title = "Fit Gaussians"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.image = ComboBox(label="image", choices=_layer_choices(viewer, ("Image",)),
                              tooltip="2D gray or RGB image layer (nD layers: see 'planes')")
        self.planes = ComboBox(label="planes", choices=PLANES, value=PLANES[0], tooltip=_PLANES_TIP)
        self.num_gaussians = SpinBox(label="Gaussian budget", value=2000, min=1, max=1_000_000, step=100)
        self.steps = SpinBox(label="steps", value=1000, min=0, max=200_000, step=100)
        self.mode = ComboBox(label="mode", choices=("sum", "alpha"), value="sum")
        self.loss = ComboBox(label="loss", choices=("l2", "l1", "l1+ssim"), value="l2")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        super().__init__(viewer, [self.image, self.planes, self.num_gaussians, self.steps, self.mode, self.loss,
                                  self.seed, self.device])

    def _prepare(self):
        import air_core

        layer = self.image.value
        if layer is None:
            raise ValueError("no image layer: open an image first")
        planes = _planes(self, layer)
        plane = planes.plane
        _check_plane_size(plane, 2)
        n, steps = int(self.num_gaussians.value), int(self.steps.value)
        mode, loss, seed, device = self.mode.value, self.loss.value, int(self.seed.value), str(self.device.value)
        notes: list[str] = []

        def work(progress):
            per = []
            for i, data in enumerate(planes.data):
                image, note = core_image(Plane(data, plane.rgb, plane.geometry, plane.index, plane.contrast_limits,
                                               plane.name))
                if note and note not in notes:
                    notes.append(note)
                result = air_core.fit(image, n, steps, mode=mode, loss=loss, seed=seed, device=device,
                                      log_every=max(1, steps // 100),
                                      progress=_plane_progress(progress, i, len(planes)))
                if result.stopped == "cancelled":
                    return _Failed(_Cancelled())
                gray = image.ndim == 2 or image.shape[-1] == 1
                per.append({"result": result, "gaussians": result.gaussians.detach().to("cpu"),
                            "render": image_from_render(result.render, gray), "gray": gray})
            return {"per": per, "render": planes.stack([p["render"] for p in per])}

        def done(out):
            per = out["per"]
            cur, src = per[planes.current], plane.name
            result = cur["result"]
            meta = {META_GAUSSIANS: cur["gaussians"], META_SOURCE: src, META_METRICS: dict(result.metrics)}
            if plane.index:
                meta["air_plane_index"] = plane.index
            if planes.all:
                meta["air_gaussians_planes"] = [p["gaussians"] for p in per]
                meta["air_metrics_planes"] = [dict(p["result"].metrics) for p in per]
                meta["air_plane_indices"] = list(planes.indices)
            upsert_layer(self._viewer, out["render"], {"name": f"{src} [fit]", "rgb": not cur["gray"],
                                                       "metadata": meta, "contrast_limits": (0.0, 1.0),
                                                       **planes.geometry.kwargs()}, "image")
            extra = f"{len(cur['gaussians'])} Gaussians, {result.steps} steps, {result.time_s:.2f} s"
            if planes.all:
                mean = float(np.mean([p["result"].metrics["psnr"] for p in per]))
                extra = (f"plane {planes.current + 1} of {len(per)} shown; mean PSNR over the planes "
                         f"{mean:.2f} dB\n" + extra)
            self.results.value = _metrics_text(result.metrics, "\n".join([extra, *notes]))

        return work, done


class _Cancelled(Exception):
    pass
