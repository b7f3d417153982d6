"""Package-level guarantees: the core imports no GUI / host modules, the napari manifest is valid."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_gui_or_host_modules():
    code = ("import sys, air_core, air_core.cli, air_core.fitting, air_core.raster2d.cpu\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('napari', 'PyQt5', 'PyQt6', 'PySide6', 'qtpy', 'bpy', 'gsplat', 'vispy'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_napari_manifest_is_discovered_and_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-air")
    assert manifest.name == "napari-air"
    manifest.validate_imports()
    keys = [s.key for s in manifest.contributions.sample_data or []]
    assert "astronaut" in keys
    from napari_air._sample_data import astronaut

    (data, meta), = astronaut()
    assert data.shape == (512, 512, 3) and meta["rgb"] is True


def test_wheel_ships_manifest_weights_and_entry_point(tmp_path):
    """A wheel (not only the editable install) carries the napari manifest as a real file, the napari
    entry point, the predictor weights and the Blender manifest."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        manifest = z.read("napari_air/napari.yaml").decode()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        weights = z.getinfo("air_core/predictor/weights/air_ps7_s4.safetensors")
    assert "name: napari-air" in manifest and "napari/layers/filter" in manifest
    assert "napari-air = napari_air:napari.yaml" in entry_points
    assert weights.file_size > 1_000_000
    assert "air_core/predictor/weights/encoder_jbu.pt" in names  # the JBU stack for the encoder's features
    assert "blender_addon/blender_manifest.toml" in names
