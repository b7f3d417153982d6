"""Screenshot of napari's "Reconstruct with AIR" widget with its outputs (docs/napari_reconstruct.png).

Usage (needs a display; on a headless machine run it under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_screenshot.py
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_screenshot.py --tiny --crop 128

The shipped predictor weights (air_core/predictor/weights/air_ps7_s4.safetensors) are used unless ``--tiny``
is given (a small untrained model, for a layout check only) or ``--weights PATH`` names another file. The
viewer shows the input, the reconstruction, the per-stage renders, the error map, the stage masks and the
Gaussian centres side by side (napari's grid mode, one cell each; the stage slider at ``--show-stage``) and
the widget with PSNR / SSIM.

Every cell is checked before the screenshot is written: an (almost) black cell is an error. (The first
docs/napari_reconstruct.png had a blank "[AIR stages]" cell: it was taken with a predictor whose
feed-forward stage-1 render was almost black, the refinement hiding it in "[AIR]"; napari itself drew the
hidden-then-shown 4D RGB layer correctly.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "napari_reconstruct.png"))
    parser.add_argument("--crop", type=int, default=0, help="an N x N crop around the face (0: whole image)")
    parser.add_argument("--tiny", action="store_true", help="a small untrained predictor (no shipped weights needed)")
    parser.add_argument("--weights", default="", help="predictor weights (.safetensors)")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--refine-steps", type=int, default=0)
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    parser.add_argument("--show-stage", type=int, default=0,
                        help="the stage shown by the per-stage renders and masks, 1-based (0: the last)")
    args = parser.parse_args()

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    import air_core
    import napari_air._widgets as widgets

    image = air_core.sample_image("astronaut")
    if args.crop:
        h, w = image.shape[:2]
        y0, x0 = (h - args.crop) // 2 - h // 4, (w - args.crop) // 2
        image = image[max(0, y0):max(0, y0) + args.crop, x0:x0 + args.crop]
    if not args.tiny and not args.weights:
        from air_core.predictor.model import PRETRAINED_PATH

        if not PRETRAINED_PATH.is_file():
            raise SystemExit(f"the shipped predictor weights are missing ({PRETRAINED_PATH}); "
                             "pass --weights PATH or --tiny")
        print(f"weights: {PRETRAINED_PATH}")
    if args.tiny:
        import torch
        from air_core.predictor.model import AIRPredictor

        torch.manual_seed(0)
        widgets.DEFAULT_MODEL = AIRPredictor(width=8).eval()

    viewer = napari.Viewer(show=True, title="AIR Gaussian splats")
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewer.window._qt_window.resize(width, height)
    viewer.add_image(np.ascontiguousarray(image), name="astronaut", rgb=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-air", "Reconstruct with AIR")
    widget.reset_choices()
    widget.image.value = viewer.layers["astronaut"]
    widget.stages.value = args.stages
    widget.refine_steps.value = args.refine_steps
    if args.weights:
        widget.weights.value = args.weights
    widget.run()
    while widget.running:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.last_error:
        raise SystemExit(widget.last_error)
    for layer in viewer.layers:
        layer.visible = True
        layer.refresh()
    viewer.layers["astronaut [AIR stage masks]"].opacity = 1.0
    stages = viewer.layers["astronaut [AIR stages]"].data.shape[0]
    shown = (args.show_stage or stages) - 1
    viewer.dims.set_current_step(0, min(max(shown, 0), stages - 1))  # the stage of the per-stage renders, masks
    viewer.layers.selection.active = viewer.layers["astronaut [AIR]"]
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 3)
    _settle(QApplication)
    viewer.reset_view()
    _settle(QApplication)
    blank = _blank_cells(viewer, np.asarray(viewer.screenshot(canvas_only=True)), (2, 3))
    if blank and not args.tiny:
        raise SystemExit(f"blank grid cell(s) {blank}: not writing {args.out} (untrained weights? try --show-stage)")
    if blank:  # the untrained --tiny model renders almost black: a layout check only
        print(f"note: blank grid cell(s) {blank} (the untrained --tiny model)")
    try:  # close the notification toasts (e.g. napari's PyQt5 deprecation notice) that would cover the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
        _settle(QApplication)
    except ImportError:
        pass
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(args.out, canvas_only=False)
    print(f"wrote {args.out}: {widget.results.value.splitlines()[0]}")
    viewer.close()


def _blank_cells(viewer, shot, shape) -> list[tuple[int, int]]:
    """(row, column) of the grid cells of the canvas screenshot that are (almost) uniformly black."""
    import numpy as np

    rows, cols = shape
    h, w = shot.shape[:2]
    out = []
    for k in range(min(len(viewer.layers), rows * cols)):
        r, c = divmod(k, cols)
        cell = shot[r * h // rows:(r + 1) * h // rows, c * w // cols:(c + 1) * w // cols, :3].astype(np.float32)
        if cell.max() < 24 or cell.std() < 2:
            out.append((r, c))
    return out


def _settle(app, seconds: float = 1.0) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)


if __name__ == "__main__":
    main()
