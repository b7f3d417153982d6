"""Benchmark: the Blender add-on's render operator at 1920x1080 on the donut, full vs 1/2, 1/3, 1/4.

    .venv/bin/python bench/blender_render.py [--repeats 9] [--scene ../shared/data/splats/...ply]

Blender as a Python module (bpy 5.0.1, no display): the add-on is registered, the scene imported with
File > Import > 3D Gaussian Splatting, a 35 mm perspective camera placed in front of it (Blender
convention, looking at the scene's trimmed centre from -Y, a little above), scene resolution
1920x1080 at 100%, world colour black. ``bpy.ops.air.render_splats(scale=k)`` is timed (median of
``--repeats`` runs after a warm-up, the scales interleaved round by round; the time includes
everything the operator does: the world-space merge of the splat objects, the render, the upscale
and writing the Image datablock) and the "AIR Render" image's pixels are compared with the
full-resolution one (PSNR over the frame, colours in [0, 1]). Results:
bench/results/blender_render.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402
import mathutils  # noqa: E402

import blender_addon  # noqa: E402
from blender_addon import store  # noqa: E402

DONUT = ROOT.parent / "shared" / "data" / "splats" / "v3dg_donut_iter30000_fused.ply"


def image_pixels() -> np.ndarray:
    image = bpy.data.images["AIR Render"]
    w, h = image.size
    pixels = np.empty(w * h * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(h, w, 4)[::-1, :, :3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--scene", default=str(DONUT))
    args = parser.parse_args()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    assert bpy.ops.import_scene.air_splat_ply(filepath=args.scene) == {"FINISHED"}
    obj = bpy.context.view_layer.objects.active
    centre, radius = store.scene_of(obj).center_and_radius()
    centre = mathutils.Vector(centre.tolist())
    data = bpy.data.cameras.new("Cam")
    data.lens = 35.0
    cam = bpy.data.objects.new("Cam", data)
    bpy.context.scene.collection.objects.link(cam)
    eye = centre + mathutils.Vector((0.0, -2.2 * radius, 0.8 * radius))
    cam.location = eye
    cam.rotation_euler = (centre - eye).to_track_quat("-Z", "Y").to_euler()
    scene = bpy.context.scene
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1920, 1080, 100
    bpy.context.view_layer.update()

    scales = ("1", "2", "3", "4")
    times = {scale: [] for scale in scales}
    for scale in scales:
        bpy.ops.air.render_splats(scale=scale)  # warm-up
    for _ in range(args.repeats):  # interleaved: round r renders every scale once
        for scale in scales:
            t0 = time.perf_counter()
            assert bpy.ops.air.render_splats(scale=scale) == {"FINISHED"}
            times[scale].append(time.perf_counter() - t0)
    rows, full = [], None
    for scale in scales:
        assert bpy.ops.air.render_splats(scale=scale) == {"FINISHED"}
        pixels = image_pixels()
        if full is None:
            full = pixels
        mse = float(np.mean((pixels.astype(np.float64) - full) ** 2))
        row = {"scale": f"1/{scale}" if scale != "1" else "full", "time_s": statistics.median(times[scale]),
               "psnr_db": math.inf if mse == 0 else 10 * math.log10(1.0 / mse)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "blender": bpy.app.version_string, "scene": Path(args.scene).name, "resolution": [1920, 1080],
            "command": "bench/blender_render.py " + " ".join(sys.argv[1:])}
    out = ROOT / "bench" / "results" / "blender_render.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    base = rows[0]["time_s"]
    print("\n| resolution | time s | speed-up | PSNR vs full dB |\n|---|---|---|---|")
    for r in rows:
        psnr = "reference" if r["scale"] == "full" else f"{r['psnr_db']:.2f}"
        print(f"| {r['scale']} | {r['time_s']:.3f} | {base / r['time_s']:.2f}x | {psnr} |")
    blender_addon.unregister()


if __name__ == "__main__":
    main()
