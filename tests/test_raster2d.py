"""Tests of air_core.raster2d: the numba CPU tile rasterizer against the dense PyTorch reference,
gradients, image-space derivatives, the scale convention, memory and input validation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
import torch

import air_core
from air_core.gaussians import Gaussians2D, conics_from_scales_rotations
from air_core.raster2d import output_size, rasterize_to_pixels, render, render_with_derivatives

F64 = torch.float64
MIN_WEIGHT = 1.0 / 255.0


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def random_scene(n, height, width, mode, seed, channels=3, dtype=F64, scale_range=(0.5, 4.0),
                 opacity_range=(0.05, 0.95)):
    """Random projected Gaussians: means uniform in the image, scales in ``scale_range`` px, random
    rotations, signed colours (sum) or colours in [0, 1] with opacities (alpha)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([width, height], dtype=dtype)
    lo, hi = scale_range
    scales = lo + (hi - lo) * torch.rand(n, 2, generator=gen, dtype=dtype)
    rotations = torch.rand(n, generator=gen, dtype=dtype) * math.pi
    conics = conics_from_scales_rotations(scales, rotations)
    if mode == "sum":
        colours = torch.randn(n, channels, generator=gen, dtype=dtype)
        opacities = None
    else:
        colours = torch.rand(n, channels, generator=gen, dtype=dtype)
        olo, ohi = opacity_range
        opacities = olo + (ohi - olo) * torch.rand(n, generator=gen, dtype=dtype)
    return means, conics, colours, opacities


def render_and_grads(means, conics, colours, opacities, background, *, width, height, mode, backend, upstream):
    """Render with fresh leaf copies and backpropagate ``upstream``; returns (out, grads dict)."""
    leaves = {"means2d": means.detach().clone().requires_grad_(True),
              "conics": conics.detach().clone().requires_grad_(True),
              "colours": colours.detach().clone().requires_grad_(True)}
    if opacities is not None:
        leaves["opacities"] = opacities.detach().clone().requires_grad_(True)
    if background is not None:
        leaves["background"] = background.detach().clone().requires_grad_(True)
    out = rasterize_to_pixels(leaves["means2d"], leaves["conics"], leaves["colours"], leaves.get("opacities"),
                              width=width, height=height, mode=mode, background=leaves.get("background"),
                              backend=backend)
    (out.image * upstream).sum().backward()
    return out, {k: v.grad for k, v in leaves.items()}


def weights_by_hand(means, conics, opacities, height, width, cap):
    """[H, W, N] clamped weights (0 where skipped), float64 numpy, for checks written independently."""
    m = means.detach().numpy()
    a, b, c = (conics.detach().numpy()[:, k] for k in range(3))
    o = np.ones(len(m)) if opacities is None else opacities.detach().numpy()
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    dx = xs[..., None] - m[:, 0]
    dy = ys[..., None] - m[:, 1]
    q = a * dx * dx + 2 * b * dx * dy + c * dy * dy
    v = o * np.exp(-0.5 * q)
    return np.where(v >= MIN_WEIGHT, np.minimum(v, cap), 0.0)


def assert_rel_close(actual, expected, rel, name=""):
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert err <= rel * max(scale, 1e-300), f"{name}: max error {err:.3e} vs max |expected| {scale:.3e}"


@pytest.fixture
def one_numba_thread():
    """Tests that call the kernels hundreds of times run them on one thread: on a busy shared machine
    every parallel region otherwise waits for a descheduled worker (results do not depend on it)."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# 1. CPU tile backend == dense reference (images, transmittance, gradients)
# ----------------------------------------------------------------------------------------------

SCENES = [  # (n, height, width, channels, seed)
    (400, 40, 50, 3, 0),
    (300, 41, 37, 3, 1),
    (500, 40, 50, 1, 2),
    (350, 33, 50, 5, 3),
]


@pytest.mark.parametrize("mode", ["sum", "alpha"])
@pytest.mark.parametrize("n, height, width, channels, seed", SCENES)
def test_cpu_matches_dense(mode, n, height, width, channels, seed):
    means, conics, colours, opacities = random_scene(n, height, width, mode, seed, channels)
    gen = torch.Generator().manual_seed(1000 + seed)
    background = torch.rand(channels, generator=gen, dtype=F64) if mode == "alpha" else None
    upstream = torch.randn(channels, height, width, generator=gen, dtype=F64)
    kw = dict(width=width, height=height, mode=mode, upstream=upstream)
    cpu, g_cpu = render_and_grads(means, conics, colours, opacities, background, backend="cpu", **kw)
    dense, g_dense = render_and_grads(means, conics, colours, opacities, background, backend="dense", **kw)
    assert cpu.image.shape == (channels, height, width) and cpu.image.dtype == F64
    assert float(cpu.image.detach().abs().max()) > 0.1  # the scene is not trivially empty
    torch.testing.assert_close(cpu.image, dense.image.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(cpu.transmittance, dense.transmittance.detach(), rtol=0, atol=1e-10)
    if mode == "sum":
        assert bool((cpu.transmittance == 1).all())
    else:
        assert float(cpu.transmittance.min()) < 0.5
    assert set(g_cpu) == set(g_dense)
    for name in g_cpu:
        assert g_cpu[name].shape == g_dense[name].shape
        assert float(g_dense[name].abs().max()) > 0
        assert_rel_close(g_cpu[name], g_dense[name], 1e-9, name)


@pytest.mark.parametrize("mode", ["sum", "alpha"])
def test_cpu_matches_dense_subpixel_gaussians(mode):
    """Sub-pixel Gaussians, many of which reach 1/255 at one or two pixel centres or at none: the
    tile kernel visits only the pixel centres inside the analytic bounding boxes and row spans, so
    a bound that is too tight would drop a term that the dense reference keeps."""
    means, conics, colours, opacities = random_scene(3000, 40, 50, mode, 7, scale_range=(0.05, 0.6))
    background = torch.full((3,), 0.25, dtype=F64) if mode == "alpha" else None
    cpu = rasterize_to_pixels(means, conics, colours, opacities, width=50, height=40, mode=mode,
                              background=background, backend="cpu")
    dense = rasterize_to_pixels(means, conics, colours, opacities, width=50, height=40, mode=mode,
                                background=background, backend="dense")
    torch.testing.assert_close(cpu.image, dense.image, rtol=0, atol=1e-10)
    weights = weights_by_hand(means, conics, opacities, 40, 50, 1.0)
    touched = (weights > 0).sum(axis=(0, 1))
    assert (touched == 0).sum() > 100 and (touched == 1).sum() > 100  # the cases the bounds decide


@pytest.mark.parametrize("sigma, touched", [(0.2, 0), (0.23, 4)])
def test_cut_off_at_the_pixel_centres_around_a_corner(sigma, touched):
    """A Gaussian on a pixel corner reaches the 4 nearest centres (at 0.7071 px) only when its
    cut-off radius sqrt(2 ln(255 o)) sigma exceeds that distance (0.659 px for sigma 0.2, 0.758 for
    0.23, with o = 0.9)."""
    means = torch.tensor([[20.0, 12.0]], dtype=F64)
    conics = torch.tensor([[1 / sigma**2, 0.0, 1 / sigma**2]], dtype=F64)
    colours = torch.ones(1, 1, dtype=F64)
    opacities = torch.tensor([0.9], dtype=F64)
    image = rasterize_to_pixels(means, conics, colours, opacities, width=40, height=24, mode="alpha",
                                backend="cpu").image[0]
    assert int((image > 0).sum()) == touched
    if touched:
        expected = 0.9 * math.exp(-0.5 * 0.5 / sigma**2)
        torch.testing.assert_close(image[11:13, 19:21], torch.full((2, 2), expected, dtype=F64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["sum", "alpha"])
def test_kernel_writes_every_output_pixel(mode):
    """The outputs are allocated without zero-fill: NaN-filled arrays must come back identical to
    zero-filled ones, including empty tiles and pixels that stopped early."""
    from air_core.raster2d import _kernels
    from air_core.raster2d.cpu import _bin

    means, conics, colours, opacities = random_scene(60, 70, 90, mode, 11)
    means[:, 0] *= 0.5  # the right half of the image stays empty
    opacities = opacities if opacities is not None else torch.ones(60, dtype=F64)
    arrays = [t.numpy().copy() for t in (means, conics, colours, opacities)]
    binning = _bin(arrays[0], arrays[1], arrays[3], 70, 90, (16, 64))
    outs = []
    for fill in (0.0, np.nan):
        image = np.full((3, 70, 90), fill)
        derivs = np.full((3, 3, 70, 90), fill)
        _kernels.forward(*arrays, np.full(3, 0.2), *binning, 70, 90, 16, 64, mode == "alpha", True, image, derivs)
        outs.append((image, derivs))
    assert np.isfinite(outs[1][0]).all() and np.isfinite(outs[1][1]).all()
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_cpu_matches_dense_float32_and_tile_sizes():
    means, conics, colours, opacities = random_scene(300, 40, 50, "alpha", 5)
    ref = rasterize_to_pixels(means, conics, colours, opacities, width=50, height=40, mode="alpha",
                              backend="dense").image
    for tile in (1, 7, 16, 64, (16, 128), (3, 11)):
        img = rasterize_to_pixels(means, conics, colours, opacities, width=50, height=40, mode="alpha",
                                  backend="cpu", tile_size=tile).image
        torch.testing.assert_close(img, ref, rtol=0, atol=1e-10)
    img32 = rasterize_to_pixels(means.float(), conics.float(), colours.float(), opacities.float(), width=50,
                                height=40, mode="alpha", backend="cpu").image
    assert img32.dtype == torch.float32
    torch.testing.assert_close(img32.double(), ref, rtol=0, atol=1e-5)


def test_result_independent_of_thread_count():
    means, conics, colours, opacities = random_scene(400, 40, 50, "alpha", 4)
    upstream = torch.randn(3, 40, 50, generator=torch.Generator().manual_seed(4), dtype=F64)
    background = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    kw = dict(width=50, height=40, mode="alpha", backend="cpu", upstream=upstream)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            results.append(render_and_grads(means, conics, colours, opacities, background, **kw))
    finally:
        numba.set_num_threads(before)
    (out_a, g_a), (out_b, g_b) = results[0], results[-1]
    assert torch.equal(out_a.image, out_b.image)
    for name in g_a:  # the fixed-order reduction makes gradients bitwise identical
        assert torch.equal(g_a[name], g_b[name]), name


def test_auto_backend_is_cpu_and_deterministic():
    means, conics, colours, _ = random_scene(200, 30, 30, "sum", 6)
    a = rasterize_to_pixels(means, conics, colours, width=30, height=30).image
    b = rasterize_to_pixels(means, conics, colours, width=30, height=30, backend="cpu").image
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# 2. early stop in alpha mode
# ----------------------------------------------------------------------------------------------


def test_alpha_early_stop_matches_dense():
    height, width, n = 24, 24, 60
    gen = torch.Generator().manual_seed(7)
    means = 8.0 + 8.0 * torch.rand(n, 2, generator=gen, dtype=F64)  # all overlapping around the centre
    scales = 2.0 + 2.0 * torch.rand(n, 2, generator=gen, dtype=F64)
    conics = conics_from_scales_rotations(scales, torch.rand(n, generator=gen, dtype=F64) * math.pi)
    colours = torch.rand(n, 3, generator=gen, dtype=F64)
    opacities = torch.full((n,), 0.95, dtype=F64)
    background = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    upstream = torch.randn(3, height, width, generator=gen, dtype=F64)
    kw = dict(width=width, height=height, mode="alpha", upstream=upstream)
    cpu, g_cpu = render_and_grads(means, conics, colours, opacities, background, backend="cpu", **kw)
    dense, g_dense = render_and_grads(means, conics, colours, opacities, background, backend="dense", **kw)

    w = weights_by_hand(means, conics, opacities, height, width, 0.99)
    naive = torch.from_numpy(np.prod(1.0 - w, axis=-1))
    trans = cpu.transmittance
    stopped = (trans > 0) & (naive < trans * 0.5)
    assert int(stopped.sum()) > 20, "the scene must trigger the early stop on many pixels"
    assert float(naive.min()) < 1e-8
    assert float(trans.min()) > 1e-4  # T never falls to the stop threshold
    # pixels without a stop keep the plain product
    torch.testing.assert_close(trans[naive > 1e-3], naive[naive > 1e-3], rtol=1e-12, atol=0)

    torch.testing.assert_close(cpu.image, dense.image.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(trans, dense.transmittance.detach(), rtol=0, atol=1e-10)
    for name in g_cpu:
        assert_rel_close(g_cpu[name], g_dense[name], 1e-9, name)


def test_alpha_blending_by_hand():
    """Front-to-back blending in list order with the documented clamp and background."""
    height, width = 14, 16
    means, conics, colours, opacities = random_scene(12, height, width, "alpha", 8, opacity_range=(0.3, 0.9))
    background = torch.tensor([0.3, 0.1, 0.7], dtype=F64)
    out = rasterize_to_pixels(means, conics, colours, opacities, width=width, height=height, mode="alpha",
                              background=background, backend="cpu")
    w = weights_by_hand(means, conics, opacities, height, width, 0.99)
    t = np.ones((height, width))
    img = np.zeros((height, width, 3))
    for k in range(w.shape[-1]):
        img += (w[..., k] * t)[..., None] * colours[k].numpy()
        t = t * (1 - w[..., k])
    assert t.min() > 1e-4
    img += t[..., None] * background.numpy()
    np.testing.assert_allclose(out.image.permute(1, 2, 0).numpy(), img, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.transmittance.numpy(), t, rtol=0, atol=1e-12)
    # order matters in alpha mode: reversing the list changes the image
    rev = rasterize_to_pixels(means.flip(0), conics.flip(0), colours.flip(0), opacities.flip(0), width=width,
                              height=height, mode="alpha", background=background, backend="cpu")
    assert float((rev.image - out.image).abs().max()) > 1e-3
    torch.testing.assert_close(rev.transmittance, out.transmittance, rtol=1e-12, atol=1e-12)


def test_sum_mode_by_hand():
    height, width = 14, 16
    means, conics, colours, _ = random_scene(20, height, width, "sum", 9)
    out = rasterize_to_pixels(means, conics, colours, width=width, height=height, mode="sum", backend="cpu")
    w = weights_by_hand(means, conics, None, height, width, 1.0)
    np.testing.assert_allclose(out.image.permute(1, 2, 0).numpy(), w @ colours.numpy(), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# 3. gradcheck
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, seed", [("sum", 10), ("alpha", 11)])
def test_gradcheck_rasterize(mode, seed, one_numba_thread):
    height, width = 10, 12
    means, conics, colours, opacities = random_scene(7, height, width, mode, seed, scale_range=(1.0, 3.0),
                                                     opacity_range=(0.2, 0.9))
    if mode == "sum":
        opacities = torch.full((7,), 0.8, dtype=F64)  # exercise the opacity gradient in sum mode too
        inputs = [means, conics, colours, opacities]

        def fn(m, c, col, o):
            return rasterize_to_pixels(m, c, col, o, width=width, height=height, mode="sum", backend="cpu").image
    else:
        background = torch.tensor([0.4, 0.2, 0.8], dtype=F64)
        inputs = [means, conics, colours, opacities, background]

        def fn(m, c, col, o, bg):
            return rasterize_to_pixels(m, c, col, o, width=width, height=height, mode="alpha", background=bg,
                                       backend="cpu").image
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_render_gaussians2d(one_numba_thread):
    gen = torch.Generator().manual_seed(12)
    n, h0, w0 = 6, 8, 10
    means = torch.rand(n, 2, generator=gen, dtype=F64) * torch.tensor([w0, h0], dtype=F64)
    scales = 0.8 + 1.5 * torch.rand(n, 2, generator=gen, dtype=F64)
    rotations = torch.rand(n, generator=gen, dtype=F64) * math.pi
    colours = torch.randn(n, 3, generator=gen, dtype=F64)
    inputs = [t.requires_grad_(True) for t in (means, scales, rotations, colours)]

    def fn(m, s, r, c):
        return render(Gaussians2D(m, s, r, c, None, (h0, w0)), scale=1.5, backend="cpu")

    assert fn(*inputs).shape == (3, 12, 15)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# 4. no cap on the number of Gaussians per tile
# ----------------------------------------------------------------------------------------------


def test_no_cap_per_tile_sum():
    n, height, width = 1000, 32, 32
    means = torch.full((n, 2), 8.5, dtype=F64)  # pixel (8, 8) of tile 0
    conics = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64).repeat(n, 1)
    colours = torch.full((n, 3), 1e-3, dtype=F64)
    single = rasterize_to_pixels(means[:1], conics[:1], colours[:1], width=width, height=height, backend="cpu")
    full = rasterize_to_pixels(means, conics, colours, width=width, height=height, backend="cpu")
    assert float(single.image[0, 8, 8]) == pytest.approx(1e-3, rel=1e-12)
    torch.testing.assert_close(full.image, 1000 * single.image, rtol=1e-10, atol=1e-15)
    assert float(full.image[0, 8, 8]) == pytest.approx(1.0, rel=1e-10)
    # all inside one tile, jittered: equal to the dense reference
    gen = torch.Generator().manual_seed(13)
    jm = 8.0 + torch.rand(n, 2, generator=gen, dtype=F64)
    jc = conics_from_scales_rotations(1.0 + torch.rand(n, 2, generator=gen, dtype=F64),
                                      torch.rand(n, generator=gen, dtype=F64) * math.pi)
    jcol = torch.full((n, 3), 1e-3, dtype=F64)
    cpu = rasterize_to_pixels(jm, jc, jcol, width=width, height=height, backend="cpu").image
    dense = rasterize_to_pixels(jm, jc, jcol, width=width, height=height, backend="dense").image
    torch.testing.assert_close(cpu, dense, rtol=0, atol=1e-12)
    assert float(cpu[:, 16:, :].abs().max()) == 0 and float(cpu[:, :, 16:].abs().max()) == 0  # one tile only
    # each Gaussian adds at most 1e-3: more than 500 of them reach the centre (a 256 cap gives <= 0.256)
    assert float(cpu[0, 8, 8]) > 0.5


def test_no_cap_per_tile_alpha():
    n, height, width = 1000, 32, 32
    gen = torch.Generator().manual_seed(14)
    means = 7.5 + 2.0 * torch.rand(n, 2, generator=gen, dtype=F64)
    conics = conics_from_scales_rotations(1.0 + torch.rand(n, 2, generator=gen, dtype=F64),
                                          torch.rand(n, generator=gen, dtype=F64) * math.pi)
    colours = torch.rand(n, 3, generator=gen, dtype=F64)
    opacities = torch.full((n,), 0.01, dtype=F64)
    background = torch.tensor([0.5, 0.5, 0.5], dtype=F64)
    kw = dict(width=width, height=height, mode="alpha", background=background)
    full = rasterize_to_pixels(means, conics, colours, opacities, backend="cpu", **kw)
    dense = rasterize_to_pixels(means, conics, colours, opacities, backend="dense", **kw)
    torch.testing.assert_close(full.image, dense.image, rtol=0, atol=1e-12)
    torch.testing.assert_close(full.transmittance, dense.transmittance, rtol=0, atol=1e-12)
    first = rasterize_to_pixels(means[:500], conics[:500], colours[:500], opacities[:500], backend="cpu", **kw)
    first256 = rasterize_to_pixels(means[:256], conics[:256], colours[:256], opacities[:256], backend="cpu", **kw)
    # the last 500 Gaussians still contribute (a cap of 256 per tile would leave the image unchanged)
    assert float((full.image - first.image).abs().max()) > 1e-3
    assert float((first.image - first256.image).abs().max()) > 1e-3
    assert float(full.transmittance[8, 8]) < float(first.transmittance[8, 8]) - 1e-3


# ----------------------------------------------------------------------------------------------
# 5. image-space derivatives
# ----------------------------------------------------------------------------------------------


def _fd_derivatives(render_fn, h):
    """Central finite differences of I w.r.t. the sampling point; render_fn(shift) renders with all
    means moved by ``shift`` = (sx, sy) (output pixels), i.e. the sampling point moved by -shift."""
    i_xm = render_fn((h, 0.0))    # sample at p - h ex
    i_xp = render_fn((-h, 0.0))   # sample at p + h ex
    i_ym = render_fn((0.0, h))
    i_yp = render_fn((0.0, -h))
    i_pp = render_fn((-h, -h))
    i_mm = render_fn((h, h))
    i_pm = render_fn((-h, h))
    i_mp = render_fn((h, -h))
    return ((i_xp - i_xm) / (2 * h), (i_yp - i_ym) / (2 * h), (i_pp - i_pm - i_mp + i_mm) / (4 * h * h))


# Finite differences jump where a pixel centre lies within ~h of a Gaussian's 1/255 cut-off ellipse
# (the skipped term is c/255, divided by 2h or 4h^2); these seeds have no pixel that close to a
# cut-off, so the comparison holds on every pixel (errors ~1e-7 relative).
@pytest.mark.parametrize("mode, seed", [("sum", 17), ("alpha", 15)])
def test_derivatives_match_finite_differences(mode, seed, one_numba_thread):
    height, width, n = 20, 24, 60
    means, conics, colours, opacities = random_scene(n, height, width, mode, seed, scale_range=(1.0, 4.0),
                                                     opacity_range=(0.1, 0.9))
    background = torch.tensor([0.3, 0.6, 0.1], dtype=F64) if mode == "alpha" else None
    kw = dict(width=width, height=height, mode=mode, background=background, backend="cpu")
    out = rasterize_to_pixels(means, conics, colours, opacities, return_derivatives=True, **kw)
    plain = rasterize_to_pixels(means, conics, colours, opacities, **kw)
    torch.testing.assert_close(out.image, plain.image, rtol=0, atol=0)
    assert plain.image_dx is None and plain.image_dy is None and plain.image_dxy is None
    assert out.image_dx.shape == out.image_dy.shape == out.image_dxy.shape == (3, height, width)
    assert not out.image_dx.requires_grad
    if mode == "alpha":
        assert float(out.transmittance.min()) > 1e-3  # far from the early stop

    def shifted(shift):
        m = means + torch.tensor(shift, dtype=F64)
        return rasterize_to_pixels(m, conics, colours, opacities, **kw).image

    fd = _fd_derivatives(shifted, 1e-4)
    for name, analytic, numeric in zip(("I_x", "I_y", "I_xy"), (out.image_dx, out.image_dy, out.image_dxy), fd):
        assert float(analytic.abs().max()) > 1e-2, name
        assert_rel_close(analytic, numeric, 1e-3, name)


def test_derivatives_in_output_pixel_units(one_numba_thread):
    gen = torch.Generator().manual_seed(18)  # a seed clear of cut-off discontinuities
    n, h0, w0 = 25, 12, 14
    means = torch.rand(n, 2, generator=gen, dtype=F64) * torch.tensor([w0, h0], dtype=F64)
    scales = 0.8 + 2.0 * torch.rand(n, 2, generator=gen, dtype=F64)
    rotations = torch.rand(n, generator=gen, dtype=F64) * math.pi
    colours = torch.randn(n, 3, generator=gen, dtype=F64)
    g = Gaussians2D(means, scales, rotations, colours, None, (h0, w0))
    out = render_with_derivatives(g, scale=2.0, backend="cpu")
    assert out.image.shape == (3, 24, 28)
    h = 1e-4  # output pixels = h / 2 image pixels

    def shifted(shift):
        m = means + torch.tensor(shift, dtype=F64) / 2.0
        return render(Gaussians2D(m, scales, rotations, colours, None, (h0, w0)), scale=2.0, backend="cpu")

    fd = _fd_derivatives(shifted, h)
    for name, analytic, numeric in zip(("I_x", "I_y", "I_xy"), (out.image_dx, out.image_dy, out.image_dxy), fd):
        assert_rel_close(analytic, numeric, 1e-3, name)
    # the same derivatives in image pixel units would be twice as large: check they are not
    base = render_with_derivatives(g, scale=1.0, backend="cpu")
    assert float(base.image_dx.abs().max()) > 1.5 * float(out.image_dx.abs().max())


# ----------------------------------------------------------------------------------------------
# 6. scale convention
# ----------------------------------------------------------------------------------------------


def _hand_render(mean, scales, rotation, colour, out_h, out_w, kx, ky):
    """exp(-q/2) (skipped below 1/255) at ((j + .5) / kx, (i + .5) / ky) in image coordinates."""
    c, s = math.cos(rotation), math.sin(rotation)
    r = np.array([[c, -s], [s, c]])
    conic = r @ np.diag(1.0 / np.asarray(scales, dtype=float) ** 2) @ r.T
    ys, xs = np.meshgrid((np.arange(out_h) + 0.5) / ky, (np.arange(out_w) + 0.5) / kx, indexing="ij")
    d = np.stack([xs - mean[0], ys - mean[1]], -1)
    q = np.einsum("hwi,ij,hwj->hw", d, conic, d)
    v = np.exp(-0.5 * q)
    v = np.where(v >= MIN_WEIGHT, v, 0.0)
    return np.asarray(colour, dtype=float)[:, None, None] * v[None]


def _one(mean, scales, rotation, colour, image_size):
    return Gaussians2D(torch.tensor([mean], dtype=F64), torch.tensor([scales], dtype=F64),
                       torch.tensor([rotation], dtype=F64), torch.tensor([colour], dtype=F64), None, image_size)


def test_scale_convention():
    colour = [1.0, 0.5, -2.0]
    g = _one((10.5, 6.5), (1.0, 1.0), 0.0, colour, (16, 20))
    img1 = render(g, backend="cpu")
    assert img1.shape == (3, 16, 20)
    assert divmod(int(img1[0].argmax()), 20) == (6, 10)
    assert float(img1[0, 6, 10]) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(img1.numpy(), _hand_render((10.5, 6.5), (1, 1), 0, colour, 16, 20, 1, 1),
                               rtol=0, atol=1e-6)
    img2 = render(g, scale=2.0, backend="cpu")
    assert img2.shape == (3, 32, 40)
    np.testing.assert_allclose(img2.numpy(), _hand_render((10.5, 6.5), (1, 1), 0, colour, 32, 40, 2, 2),
                               rtol=0, atol=1e-6)
    # the centre (10.5, 6.5) lies between output pixels 20/21 and 12/13
    assert float(img2[0, 12, 20]) == pytest.approx(float(img2[0, 13, 21]), abs=1e-12)
    img15 = render(g, scale=1.5, backend="cpu")
    assert img15.shape == (3, 24, 30) and output_size((16, 20), 1.5) == (24, 30)
    np.testing.assert_allclose(img15.numpy(), _hand_render((10.5, 6.5), (1, 1), 0, colour, 24, 30, 1.5, 1.5),
                               rtol=0, atol=1e-6)


def test_explicit_size_with_different_x_y_scales():
    # a rotated, anisotropic Gaussian checks the off-diagonal conic term under kx != ky
    for mean, scales, rot in (((10.5, 6.5), (1.0, 1.0), 0.0), ((9.3, 7.1), (2.5, 1.2), 0.6)):
        g = _one(mean, scales, rot, [1.0, -0.5, 0.25], (16, 20))
        img = render(g, size=(24, 50), backend="cpu")
        assert img.shape == (3, 24, 50)
        expected = _hand_render(mean, scales, rot, [1.0, -0.5, 0.25], 24, 50, 50 / 20, 24 / 16)
        np.testing.assert_allclose(img.numpy(), expected, rtol=0, atol=1e-6)
        # scale=1.0 (the default) together with size is accepted
        torch.testing.assert_close(render(g, size=(24, 50), scale=1.0, backend="cpu"), img)


# ----------------------------------------------------------------------------------------------
# 7. memory
# ----------------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import math, resource, torch
    from air_core.gaussians import conics_from_scales_rotations
    from air_core.raster2d import rasterize_to_pixels
    gen = torch.Generator().manual_seed(0)
    n, H, W = 100_000, 512, 768
    means = torch.rand(n, 2, generator=gen) * torch.tensor([float(W), float(H)])
    scales = 0.5 + 7.0 * torch.rand(n, 2, generator=gen)
    conics = conics_from_scales_rotations(scales, torch.rand(n, generator=gen) * math.pi)
    colours = 0.1 * torch.randn(n, 3, generator=gen)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=gen)
    for mode in ("sum", "alpha"):
        xs = [t.clone().requires_grad_(True) for t in (means, conics, colours, opacities)]
        out = rasterize_to_pixels(*xs, width=W, height=H, mode=mode, backend="cpu")
        assert out.image.shape == (3, H, W) and out.image.dtype == torch.float32
        assert bool(torch.isfinite(out.image).all()) and float(out.image.abs().max()) > 0.1
        out.image.square().sum().backward()
        assert all(bool(torch.isfinite(x.grad).all()) for x in xs)
        assert float(xs[0].grad.abs().max()) > 0
    print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_memory_large_render_subprocess():
    root = os.path.dirname(os.path.dirname(os.path.abspath(air_core.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_kb = int(proc.stdout.split("PEAK_KB")[-1].split()[0])
    assert 0 < peak_kb < 4 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# 8. bad input
# ----------------------------------------------------------------------------------------------


def _valid(n=3, channels=3):
    means, conics, colours, opacities = random_scene(n, 8, 8, "alpha", 18, channels)
    return dict(means2d=means, conics=conics, colours=colours, opacities=opacities,
                background=torch.zeros(channels, dtype=F64), width=8, height=8, mode="alpha", backend="cpu")


def _call(**kw):
    args = _valid()
    args.update(kw)
    return rasterize_to_pixels(args.pop("means2d"), args.pop("conics"), args.pop("colours"), args.pop("opacities"),
                               **args)


_BAD_CONIC = torch.tensor([[1.0, 0.0, 1.0], [1.0, 2.0, 1.0], [1.0, 0.0, 1.0]], dtype=F64)

BAD_INPUTS = [
    (dict(means2d=torch.zeros(3, 3, dtype=F64)), ValueError, r"means2d must have shape \[N, 2\]"),
    (dict(means2d=torch.zeros(3, dtype=F64)), ValueError, r"means2d must have shape"),
    (dict(conics=torch.ones(3, 2, dtype=F64)), ValueError, r"conics must have shape \[3, 3\]"),
    (dict(conics=torch.ones(4, 3, dtype=F64)), ValueError, r"conics must have shape"),
    (dict(colours=torch.ones(3, dtype=F64)), ValueError, r"colours must have shape \[3, C\]"),
    (dict(colours=torch.ones(2, 3, dtype=F64)), ValueError, r"colours must have shape"),
    (dict(colours=torch.ones(3, 0, dtype=F64)), ValueError, r"colours must have shape .* C >= 1"),
    (dict(opacities=torch.ones(3, 1, dtype=F64)), ValueError, r"opacities must have shape \[3\]"),
    (dict(background=torch.zeros(4, dtype=F64)), ValueError, r"background must have shape \[3\]"),
    (dict(means2d=torch.zeros(3, 2, dtype=torch.int64)), TypeError, r"means2d must be a floating-point"),
    (dict(conics=torch.ones(3, 3, dtype=torch.int32)), TypeError, r"conics must be a floating-point"),
    (dict(colours=np.ones((3, 3))), TypeError, r"colours must be a floating-point torch.Tensor"),
    (dict(opacities=[0.5, 0.5, 0.5]), TypeError, r"opacities must be a floating-point torch.Tensor, got list"),
    (dict(opacities=torch.tensor([1, 1, 1])), TypeError, r"opacities must be a floating-point"),
    (dict(background=[0.1, 0.2, 0.3]), TypeError, r"background must be a floating-point torch.Tensor, got list"),
    (dict(colours=torch.ones(3, 3, dtype=torch.float32)), ValueError, r"colours must be torch.float64"),
    (dict(means2d=torch.tensor([[1.0, float("nan")], [1, 1], [2, 2]], dtype=F64)), ValueError,
     r"means2d contains NaN"),
    (dict(colours=torch.full((3, 3), float("inf"), dtype=F64)), ValueError, r"colours contains NaN or Inf"),
    (dict(conics=_BAD_CONIC), ValueError, r"conics must be positive definite"),
    (dict(conics=-torch.ones(3, 3, dtype=F64)), ValueError, r"conics must be positive definite"),
    (dict(opacities=torch.tensor([0.5, -0.1, 0.5], dtype=F64)), ValueError, r"opacities must be >= 0"),
    (dict(mode="max"), ValueError, r"mode must be one of"),
    (dict(backend="gpu"), ValueError, r"backend must be one of"),
    (dict(width=0), ValueError, r"width and height must be positive"),
    (dict(height=-2), ValueError, r"width and height must be positive"),
    (dict(width=8.0), ValueError, r"width and height must be positive ints"),
    (dict(tile_size=0), ValueError, r"tile_size must be a positive int"),
    (dict(tile_size=(16, 0)), ValueError, r"tile_size must be a positive int or a pair"),
    (dict(return_derivatives=True, backend="dense"), ValueError, r"return_derivatives=True is not available"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", BAD_INPUTS)
def test_rasterize_bad_input(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _call(**kwargs)


def test_rasterize_valid_baseline_runs():
    # the baseline used by the bad-input cases is itself valid
    out = _call()
    assert out.image.shape == (3, 8, 8)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(scale=0), ValueError, r"scale must be a positive finite number"),
        (dict(scale=-1), ValueError, r"scale must be a positive finite number"),
        (dict(scale=float("inf")), ValueError, r"scale must be a positive finite number"),
        (dict(scale=float("nan")), ValueError, r"scale must be a positive finite number"),
        (dict(scale="2"), ValueError, r"scale must be a positive finite number"),
        (dict(scale=2.0, size=(10, 10)), ValueError, r"either scale or size"),
        (dict(size=(0, 10)), ValueError, r"size must be positive"),
        (dict(size=10), TypeError, r"size must be a pair"),
        (dict(mode="max"), ValueError, r"mode must be one of"),
        (dict(backend="gpu"), ValueError, r"backend must be one of"),
        (dict(device="tpu"), ValueError, r"device must be"),
        (dict(background=torch.zeros(2)), ValueError, r"background must have shape \[3\]"),
    ],
)
def test_render_bad_input(kwargs, exc, pattern):
    g = _one((2.0, 2.0), (1.0, 1.0), 0.0, [1.0, 1.0, 1.0], (4, 4))
    with pytest.raises(exc, match=pattern):
        render(g, **kwargs)


def test_render_with_derivatives_bad_input():
    g = _one((2.0, 2.0), (1.0, 1.0), 0.0, [1.0, 1.0, 1.0], (4, 4))
    with pytest.raises(ValueError, match=r"return_derivatives=True is not available with backend='dense'"):
        render_with_derivatives(g, backend="dense")
    with pytest.raises(TypeError, match=r"gaussians must be a Gaussians2D, got dict"):
        render({"means": torch.zeros(1, 2)})
    with pytest.raises(TypeError, match=r"gaussians must be a Gaussians2D, got Tensor"):
        render_with_derivatives(torch.zeros(1, 2))


# ----------------------------------------------------------------------------------------------
# 9. empty scene
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "dense"])
def test_empty_scene(backend):
    leaves = [torch.zeros(0, 2, dtype=F64), torch.zeros(0, 3, dtype=F64), torch.zeros(0, 3, dtype=F64),
              torch.zeros(0, dtype=F64)]
    leaves = [t.requires_grad_(True) for t in leaves]
    out = rasterize_to_pixels(*leaves, width=7, height=5, mode="sum", backend=backend)
    assert out.image.shape == (3, 5, 7) and float(out.image.detach().abs().max()) == 0
    out.image.sum().backward()
    assert [tuple(t.grad.shape) for t in leaves] == [(0, 2), (0, 3), (0, 3), (0,)]

    bg = torch.tensor([0.1, 0.2, 0.3], dtype=F64, requires_grad=True)
    out = rasterize_to_pixels(*leaves, width=7, height=5, mode="alpha", background=bg, backend=backend)
    torch.testing.assert_close(out.image.detach(), bg.detach()[:, None, None].expand(3, 5, 7))
    assert bool((out.transmittance == 1).all())
    out.image.sum().backward()
    torch.testing.assert_close(bg.grad, torch.full((3,), 35.0, dtype=F64))

    e = Gaussians2D.empty((5, 7), with_opacities=True)
    img = render(e, background=torch.tensor([0.1, 0.2, 0.3]), backend=backend)
    torch.testing.assert_close(img, torch.tensor([0.1, 0.2, 0.3])[:, None, None].expand(3, 5, 7))
    assert float(render(Gaussians2D.empty((5, 7)), backend=backend, scale=2).abs().max()) == 0


def test_dense_backend_refuses_renders_that_cannot_fit(monkeypatch):
    from air_core.images import ImageTooLargeError

    means, conics, colours, opacities = random_scene(2000, 64, 64, "sum", 3)
    monkeypatch.setenv("AIR_MEMORY_LIMIT_BYTES", str(50_000_000))
    means.requires_grad_(True)
    # autograd would keep 64*64*2000 pair intermediates (~800 MB): refused up front
    with pytest.raises(ImageTooLargeError, match="dense 64x64 render of 2000 Gaussians"):
        rasterize_to_pixels(means, conics, colours, opacities, width=64, height=64, backend="dense")
    # the tile backend needs no pair intermediates and renders it
    out = rasterize_to_pixels(means, conics, colours, opacities, width=64, height=64, backend="cpu")
    assert out.image.shape == (3, 64, 64)


def test_derivative_channels_subset_matches_the_full_derivatives():
    gen = torch.Generator().manual_seed(7)
    n = 40
    means = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([30.0, 20.0])
    conics = torch.stack([0.3 + torch.rand(n, generator=gen, dtype=torch.float64), torch.zeros(n, dtype=torch.float64),
                          0.3 + torch.rand(n, generator=gen, dtype=torch.float64)], 1)
    colours = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    opac = torch.rand(n, generator=gen, dtype=torch.float64)
    kw = dict(width=30, height=20, mode="alpha", return_derivatives=True)
    full = rasterize_to_pixels(means, conics, colours, opac, **kw)
    part = rasterize_to_pixels(means, conics, colours, opac, derivative_channels=2, **kw)
    assert part.image_dx.shape == (2, 20, 30) and full.image_dx.shape == (4, 20, 30)
    assert torch.equal(part.image, full.image)
    for name in ("image_dx", "image_dy", "image_dxy"):
        assert torch.equal(getattr(part, name), getattr(full, name)[:2])
    for bad in (0, 5, 1.5, True):
        with pytest.raises(ValueError, match="derivative_channels"):
            rasterize_to_pixels(means, conics, colours, opac, derivative_channels=bad, **kw)
