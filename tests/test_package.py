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
