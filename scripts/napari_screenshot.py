"""Screenshot of napari's "Reconstruct with AIR" widget with its outputs (docs/napari_reconstruct.png).

Usage (needs a display; on a headless machine run it under Xvfb):

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_screenshot.py
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_screenshot.py --tiny --crop 128

The shipped predictor weights are used unless ``--tiny`` is given (a small untrained model, for a layout
check only) or ``--weights PATH`` names another file. The viewer shows the input, the reconstruction, the
error map and the stage masks side by side (napari's grid mode) and the widget with PSNR / SSIM.
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
    viewer.layers["astronaut [AIR stage masks]"].opacity = 1.0
    viewer.dims.set_current_step(0, 0)  # stage 1 of the per-stage renders and masks
    viewer.layers.selection.active = viewer.layers["astronaut [AIR]"]
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 3)
    _settle(QApplication)
    viewer.reset_view()
    _settle(QApplication)
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


def _settle(app, seconds: float = 1.0) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)


if __name__ == "__main__":
    main()
