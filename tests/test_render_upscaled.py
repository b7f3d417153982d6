"""render_upscaled on 3DGS scenes and 2D Gaussian images, the numba fast path of the Hermite upscaler,
and the `air splat render` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from air_core.cli import main
from air_core.gaussians import Gaussians2D
from air_core.metrics import psnr
from air_core.raster2d import render_with_derivatives
from air_core.splat3d import load_ply, orbit_cameras_for_scene, render
from air_core.upscale import hermite_upscale, low_resolution_size, render_upscaled

SPLATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "splats"
DONUT = SPLATS / "v3dg_donut_iter30000_fused.ply"
needs_splats = pytest.mark.skipif(not DONUT.is_file(), reason=f"real scenes not found at {SPLATS}")


def test_numba_fast_path_matches_the_autograd_path():
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 3, 9, 13, generator=gen, dtype=torch.float64) for _ in range(4)]
    fast = hermite_upscale(*inputs, size=(31, 40))
    with_grad = [t.clone().requires_grad_(True) for t in inputs]
    slow = hermite_upscale(*with_grad, size=(31, 40))
    assert slow.requires_grad and not fast.requires_grad
    assert torch.allclose(fast, slow.detach(), atol=1e-12)
    # float32 too
    f32 = hermite_upscale(*(t.float() for t in inputs), scale=2.5)
    assert f32.dtype == torch.float32 and torch.allclose(f32.double(), hermite_upscale(*inputs, scale=2.5), atol=1e-5)


def test_low_resolution_size():
    assert low_resolution_size(1080, 1920, 4) == (270, 480)
    assert low_resolution_size(1000, 1000, 3) == (333, 333)
    assert low_resolution_size(3, 3, 10) == (1, 1)
    with pytest.raises(ValueError, match="scale"):
        low_resolution_size(10, 10, 0.5)


def smooth_gaussian_image() -> Gaussians2D:
    gen = torch.Generator().manual_seed(1)
    n = 60
    return Gaussians2D(means=torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([64.0, 48.0]),
                       scales=2.5 + 3 * torch.rand(n, 2, generator=gen, dtype=torch.float64),
                       rotations=torch.rand(n, generator=gen, dtype=torch.float64) * 3.14,
                       colours=torch.rand(n, 3, generator=gen, dtype=torch.float64) * 0.3,
                       image_size=(48, 64))


def test_2d_gaussian_image_hermite_beats_bicubic_and_matches_full_render():
    g = smooth_gaussian_image()
    full = render_with_derivatives(g, return_derivatives=False).image
    out = render_upscaled(g, scale=4, method=["hermite", "bicubic", "bilinear"])
    assert set(out) == {"hermite", "bicubic", "bilinear"}
    assert all(v.shape == (3, 48, 64) for v in out.values())
    p = {m: float(psnr(v, full, data_range=1.0)) for m, v in out.items()}
    assert p["hermite"] > p["bicubic"] + 3 and p["hermite"] > p["bilinear"] + 3
    single = render_upscaled(g, scale=4)
    assert torch.equal(single, out["hermite"])
    # scale 1 is the full-resolution render itself
    assert torch.allclose(render_upscaled(g, scale=1), full)
    # explicit full-resolution size (x2 of the image) from a x0.5 render
    big = render_upscaled(g, scale=4, size=(96, 128), method="bicubic")
    assert big.shape == (3, 96, 128)


def test_render_upscaled_is_differentiable_through_the_low_resolution_values():
    g = smooth_gaussian_image()
    colours = g.colours.clone().requires_grad_(True)
    g2 = Gaussians2D(means=g.means, scales=g.scales, rotations=g.rotations, colours=colours, image_size=g.image_size)
    out = render_upscaled(g2, scale=2.5, method="hermite")
    out.sum().backward()
    assert colours.grad is not None and float(colours.grad.abs().sum()) > 0


def test_render_upscaled_bad_arguments():
    g = smooth_gaussian_image()
    with pytest.raises(TypeError, match="source"):
        render_upscaled(torch.zeros(3, 4, 4), scale=2)
    with pytest.raises(ValueError, match="method"):
        render_upscaled(g, scale=2, method="lanczos")
    with pytest.raises(ValueError, match="scale"):
        render_upscaled(g, scale=0.5)
    with pytest.raises(TypeError, match="camera"):
        render_upscaled(g, object(), scale=2)


@needs_splats
def test_3dgs_hermite_beats_bicubic_against_the_full_resolution_render():
    scene = load_ply(DONUT)
    cam = orbit_cameras_for_scene(scene, 3, width=160, height=128)[1]
    with torch.no_grad():
        full = render(scene, cam).image.clamp(0, 1)
        out = render_upscaled(scene, cam, 2, method=["hermite", "hermite-fd", "bicubic"])
    p = {m: float(psnr(v.clamp(0, 1), full)) for m, v in out.items()}
    assert p["hermite"] > p["bicubic"] + 1.0 and p["hermite"] > p["hermite-fd"] + 1.0
    with pytest.raises(TypeError, match="camera"):
        render_upscaled(scene, scale=2)


@needs_splats
def test_cli_splat_render_writes_frames_and_metrics(tmp_path, capsys):
    out = tmp_path / "orbit"
    code = main(["splat", "render", str(DONUT), "--orbit", "2", "--size", "96", "80", "--scale", "2",
                 "-o", str(out), "--quiet"])
    assert code == 0
    assert sorted(p.name for p in (out / "upscaled").iterdir()) == ["view_000.png", "view_001.png"]
    assert sorted(p.name for p in (out / "reference").iterdir()) == ["view_000.png", "view_001.png"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_gaussians"] == 45624 and report["width"] == 96 and report["height"] == 80
    assert len(report["views"]) == 2 and len(report["cameras"]) == 2
    assert report["mean"]["hermite_psnr"] > report["mean"]["bicubic_psnr"]
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("view,") and csv[-1].startswith("mean,") and len(csv) == 4
    assert "hermite" in capsys.readouterr().out


def test_cli_splat_render_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all")
    assert main(["splat", "render", str(bad), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "bad.ply" in capsys.readouterr().err
    assert main(["splat", "render", str(tmp_path / "missing.ply"), "-o", str(tmp_path / "o")]) == 2
    assert main(["splat", "render", str(bad), "--size", "1", "2", "3", "-o", str(tmp_path / "o")]) == 2
