"""The `air` command line: fit -> files, render at any scale, info, exit codes and messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from skimage.transform import resize

from air_core import load_gaussians
from air_core.cli import main
from air_core.images import sample_image


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    img = resize(sample_image("coffee"), (40, 60), anti_aliasing=True)
    iio.imwrite(folder / "coffee.png", (img * 255).round().astype(np.uint8))
    code = main(["fit", str(folder / "coffee.png"), "-n", "300", "--steps", "40", "-o", str(folder / "out"),
                 "--quiet", "--device", "cpu"])
    assert code == 0
    return folder


def test_fit_writes_all_outputs(fitted, capsys):
    out = fitted / "out"
    assert sorted(p.name for p in out.iterdir()) == ["error.png", "gaussians.npz", "metrics.json", "render.png"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_gaussians"] == 300 and metrics["steps"] == 40
    assert 18 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1
    g = load_gaussians(out / "gaussians.npz")
    assert len(g) == 300 and g.image_size == (40, 60) and g.metadata["source"].endswith("coffee.png")
    assert iio.imread(out / "render.png").shape == (40, 60, 3)
    assert iio.imread(out / "error.png").shape[:2] == (40, 60)


@pytest.mark.parametrize("scale,shape", [("2", (80, 120, 3)), ("0.5", (20, 30, 3)), ("1.5", (60, 90, 3))])
def test_render_any_scale(fitted, tmp_path, scale, shape):
    dest = tmp_path / "r.png"
    assert main(["render", str(fitted / "out" / "gaussians.npz"), "--scale", scale, "-o", str(dest)]) == 0
    assert iio.imread(dest).shape == shape


def test_render_size_and_16bit(fitted, tmp_path):
    dest = tmp_path / "r16.png"
    assert main(["render", str(fitted / "out" / "gaussians.npz"), "--size", "33", "77", "--bit-depth", "16",
                 "-o", str(dest)]) == 0
    img = iio.imread(dest)
    assert img.shape[:2] == (33, 77)


def test_info_json(fitted, capsys):
    assert main(["info", str(fitted / "out" / "gaussians.npz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_gaussians"] == 300 and info["image_size"] == [40, 60] and info["mode"] == "sum"
    assert info["bits_per_pixel"] > 0


def test_errors_have_exit_codes_and_messages(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err
    bogus = tmp_path / "bogus.png"
    bogus.write_text("this is not an image")
    assert main(["fit", str(bogus), "-n", "10", "--steps", "1", "-o", str(tmp_path / "o")]) == 2
    assert "bogus.png" in capsys.readouterr().err
    assert main(["render", str(bogus), "-o", str(tmp_path / "x.png")]) == 2
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--sample", "astronaut", "-n", "0", "-o", str(tmp_path / "o")])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["render", "f.npz", "--scale", "-1", "-o", "x.png"])
    assert main(["fit", "--sample", "nosuchphoto", "-o", str(tmp_path / "o")]) == 2
    assert "astronaut" in capsys.readouterr().err  # lists the allowed names


def test_console_script_is_installed(fitted):
    exe = shutil.which("air", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.fail("the 'air' console script is not installed beside the interpreter (pip install -e .)")
    res = subprocess.run([exe, "info", str(fitted / "out" / "gaussians.npz")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "num_gaussians" in res.stdout
