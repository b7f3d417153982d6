#!/usr/bin/env python
"""Build the installable zip of the Blender add-on (a Blender 4.2+ extension that is also a legacy add-on).

    python scripts/build_blender_addon.py [-o dist/]

writes ``air_splat-<version>.zip`` holding one folder ``air_splat/`` with the add-on's ``.py`` files and
``blender_manifest.toml``. Install it in Blender with Edit > Preferences > Get Extensions > Install from
Disk (4.2+), or Preferences > Add-ons > Install (legacy). The add-on needs PyTorch and air_core at run
time: see its preferences. The version in the manifest must match ``bl_info`` (checked here).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "blender_addon"


def read_metadata(source: Path = SOURCE) -> dict:
    """The manifest as a dict, after checking it agrees with ``bl_info`` (read without importing bpy)."""
    manifest = tomllib.loads((source / "blender_manifest.toml").read_text(encoding="utf-8"))
    tree = ast.parse((source / "__init__.py").read_text(encoding="utf-8"))
    bl_info = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "bl_info" for t in node.targets))
    version = ".".join(str(v) for v in bl_info["version"])
    if manifest["version"] != version:
        raise ValueError(f"blender_manifest.toml has version {manifest['version']}, bl_info has {version}")
    minimum = ".".join(str(v) for v in bl_info["blender"])
    if manifest["blender_version_min"] != minimum:
        raise ValueError(f"blender_manifest.toml needs Blender {manifest['blender_version_min']}, "
                         f"bl_info says {minimum}")
    return manifest


def build(out_dir: Path, source: Path = SOURCE) -> Path:
    """Write the zip into ``out_dir`` (created if needed) and return its path."""
    manifest = read_metadata(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in (".py", ".toml"))
    tmp = dest.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, f"{manifest['id']}/{path.name}")
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        dest = build(args.output)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
