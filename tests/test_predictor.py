"""AIR predictor groundwork: parameterisation, stage control and the staged model (untrained)."""

from __future__ import annotations

import math

import pytest
import torch

from air_core.gaussians import Gaussians2D
from air_core.predictor import (AIRPredictor, PredictorOutput, decode_candidates, patch_centres, patch_errors,
                                patch_grid, stage_control)

H, W, PS = 28, 35, 7


# -- parameterisation ------------------------------------------------------------------------------


def test_patch_centres_multiple_and_non_multiple_sizes():
    c = patch_centres((H, W), PS)
    assert c.shape == (4 * 5, 2) and c.dtype == torch.float32
    assert c[0].tolist() == [3.5, 3.5] and c[1].tolist() == [10.5, 3.5] and c[5].tolist() == [3.5, 10.5]
    # 10 x 16 with ps 7: a 2 x 3 grid; the partial last column / row get the centre of their valid part
    assert patch_grid((10, 16), 7) == (2, 3)
    c = patch_centres((10, 16), 7)
    assert c[:, 0].reshape(2, 3)[0].tolist() == [3.5, 10.5, 15.0]
    assert c[:, 1].reshape(2, 3)[:, 0].tolist() == [3.5, 8.5]
    # even patch size: the centres fall on pixel corners
    assert patch_centres((4, 4), 2).tolist() == [[1.0, 1.0], [3.0, 1.0], [1.0, 3.0], [3.0, 3.0]]


def test_decode_raw_zero_exact_values():
    g = decode_candidates(torch.zeros(20, 8), (H, W), PS)
    assert isinstance(g, Gaussians2D) and len(g) == 20 and g.opacities is None and g.mode == "sum"
    torch.testing.assert_close(g.means, patch_centres((H, W), PS))
    torch.testing.assert_close(g.scales, torch.full((20, 2), PS * 0.5 + 0.5))
    torch.testing.assert_close(g.rotations, torch.full((20,), math.pi))
    torch.testing.assert_close(g.colours, torch.zeros(20, 3))
    assert g.image_size == (H, W)


def test_decode_ranges_and_batch_layout():
    raw = 3 * torch.randn(2, 8, 4, 5, generator=torch.Generator().manual_seed(0))
    gs = decode_candidates(raw, (H, W), PS)
    assert isinstance(gs, list) and len(gs) == 2
    c = patch_centres((H, W), PS)
    for b, g in enumerate(gs):
        assert len(g) == 20
        assert bool(((g.means - c).abs() < PS).all())
        assert bool((g.scales > 0.5).all()) and bool((g.scales < PS + 0.5).all())
        assert bool((g.rotations > 0).all()) and bool((g.rotations < 2 * math.pi).all())
        assert bool((g.colours > -1).all()) and bool((g.colours < 1).all())
        # row-major patch order: patch (i=1, j=2) is candidate 7
        torch.testing.assert_close(g.colours[7], torch.tanh(raw[b, 5:8, 1, 2]))
        torch.testing.assert_close(g.means[7], c[7] + PS * torch.tanh(raw[b, 0:2, 1, 2]))


def test_decode_is_differentiable():
    raw = torch.zeros(1, 8, 4, 5, requires_grad=True)
    g = decode_candidates(raw, (H, W), PS)[0]
    (g.means.sum() + g.scales.sum() + g.rotations.sum() + g.colours.sum()).backward()
    assert bool((raw.grad != 0).all())


def test_decode_bad_input():
    with pytest.raises(TypeError, match="raw"):
        decode_candidates(torch.zeros(20, 8, dtype=torch.int64), (H, W), PS)
    with pytest.raises(ValueError, match="raw"):
        decode_candidates(torch.zeros(21, 8), (H, W), PS)
    with pytest.raises(ValueError, match="raw"):
        decode_candidates(torch.zeros(1, 8, 4), (H, W), PS)
    with pytest.raises(ValueError, match="raw"):
        decode_candidates(torch.full((20, 8), float("nan")), (H, W), PS)
    with pytest.raises(ValueError, match="patch_size"):
        decode_candidates(torch.zeros(20, 8), (H, W), 0)
    with pytest.raises(ValueError, match="patch_size"):
        patch_centres((H, W), 0)
    with pytest.raises(TypeError, match="patch_size"):
        patch_centres((H, W), 7.0)
    with pytest.raises(ValueError, match="image_size"):
        patch_centres((0, W), PS)


# -- stage control ---------------------------------------------------------------------------------


def _image(seed=0, shape=(3, H, W)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_stage_control_perfect_render_is_inactive():
    target = _image()
    keep = stage_control(target.clone(), target)
    assert keep.shape == (1, 4, 5) and keep.dtype == torch.bool and not bool(keep.any())


def test_stage_control_large_error_activates_only_that_patch():
    target = _image(shape=(2, 3, H, W))
    previous = target.clone()
    previous[1, :, 7:14, 14:21] += 0.3
    keep = stage_control(previous, target)
    expected = torch.zeros(2, 4, 5, dtype=torch.bool)
    expected[1, 1, 2] = True
    assert torch.equal(keep, expected)


def test_stage_control_ssim_alone_activates():
    target = torch.full((3, H, W), 0.5)
    previous = target.clone()
    checker = (torch.arange(7)[:, None] + torch.arange(7)[None, :]) % 2 * 2 - 1  # +-1 checkerboard
    previous[:, 0:7, 0:7] += 0.01 * checker
    mse, ssim = patch_errors(previous, target)
    assert mse[0, 0, 0] < 10 ** -3.5 and 1 - ssim[0, 0, 0] > 0.05
    keep = stage_control(previous, target)
    assert bool(keep[0, 0, 0]) and int(keep.sum()) == 1
    # with the SSIM test switched off the patch stays inactive
    assert not bool(stage_control(previous, target, ssim_threshold=1.0).any())


def test_stage_control_partial_patches_use_valid_pixels():
    target = _image(1, (3, 10, 16))
    previous = _image(2, (3, 10, 16))
    mse, ssim = patch_errors(previous, target, 7)
    assert mse.shape == (1, 2, 3)
    crop_p, crop_t = previous[:, 7:, 14:].double(), target[:, 7:, 14:].double()
    torch.testing.assert_close(mse[0, 1, 2], (crop_p - crop_t).square().mean())
    mx, my = crop_p.mean((1, 2)), crop_t.mean((1, 2))
    vx, vy = crop_p.var((1, 2), unbiased=False), crop_t.var((1, 2), unbiased=False)
    cov = ((crop_p - mx[:, None, None]) * (crop_t - my[:, None, None])).mean((1, 2))
    s = ((2 * mx * my + 1e-4) * (2 * cov + 9e-4)) / ((mx ** 2 + my ** 2 + 1e-4) * (vx + vy + 9e-4))
    torch.testing.assert_close(ssim[0, 1, 2], s.mean())


def test_stage_control_bad_input():
    x = _image()
    with pytest.raises(TypeError, match="previous_render"):
        stage_control(x.to(torch.uint8), x)
    with pytest.raises(ValueError, match="target"):
        stage_control(x, x[0])
    with pytest.raises(ValueError, match="one shape"):
        stage_control(x, x[:, :14])
    with pytest.raises(ValueError, match="NaN"):
        stage_control(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="patch_size"):
        stage_control(x, x, patch_size=0)
    with pytest.raises(TypeError, match="mse_threshold"):
        stage_control(x, x, mse_threshold="0.1")


# -- model -----------------------------------------------------------------------------------------


def _model(**kw):
    torch.manual_seed(0)
    return AIRPredictor(**{"num_stages": 2, "width": 16, **kw})


def test_two_stage_forward_shapes_and_counts():
    model = _model()
    image = _image(shape=(2, 3, H, W))
    out = model(image)
    assert isinstance(out, PredictorOutput)
    assert out.renders.shape == (2, 2, 3, H, W) and out.render.shape == (2, 3, H, W)
    assert out.keep.shape == (2, 2, 4, 5) and out.keep.dtype == torch.bool
    assert out.raw.shape == (2, 2, 8, 4, 5) and out.num_candidates == 20
    assert out.counts.shape == (2, 2) and torch.equal(out.counts, out.keep.flatten(2).sum(-1))
    assert bool((out.counts[:, 0] == 20).all())  # a zero render of a random image: every patch active
    for b, g in enumerate(out.gaussians):
        assert len(g) == int(out.counts[b].sum()) and g.image_size == (H, W) and g.mode == "sum"
    # the initial head outputs are small
    assert float(out.raw.detach().abs().max()) < 0.1
    # stage 0's block of the final Gaussians is the decoded stage-0 raw output
    first = decode_candidates(out.raw[:, 0], (H, W), 7)[0]
    torch.testing.assert_close(out.gaussians[0].means[:20], first.means)
    assert out.renders.shape[1] == 2 and model(image, stages=1).renders.shape == (2, 1, 3, H, W)


def test_black_image_adds_no_gaussians():
    out = _model()(torch.zeros(1, 3, H, W))
    assert not bool(out.keep.any()) and out.counts.sum() == 0
    assert len(out.gaussians[0]) == 0
    assert torch.equal(out.renders, torch.zeros(1, 2, 3, H, W))


def test_gradients_reach_every_stage_encoder():
    model = _model()
    out = model(_image(shape=(1, 3, H, W)))
    assert bool((out.counts > 0).all())
    ((out.render - 0.5) ** 2).mean().backward()
    for net in model.stages:
        grad = net.encoder[0][0].weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0


def test_default_parameter_count_is_under_ten_million():
    model = AIRPredictor()
    assert model.config["num_stages"] == 4 and model.config["width"] == 64 and model.config["patch_size"] == 7
    count = sum(p.numel() for p in model.parameters())
    assert count <= 10_000_000
    assert count == 1_632_644


def test_model_bad_input():
    with pytest.raises(ValueError, match="num_stages"):
        AIRPredictor(num_stages=0)
    with pytest.raises(ValueError, match="patch_size"):
        AIRPredictor(patch_size=0)
    with pytest.raises(TypeError, match="width"):
        AIRPredictor(width=16.0)
    model = _model()
    with pytest.raises(ValueError, match="image"):
        model(torch.rand(3, H, W))
    with pytest.raises(ValueError, match="image"):
        model(torch.rand(1, 1, H, W))
    with pytest.raises(TypeError, match="image"):
        model(torch.zeros(1, 3, H, W, dtype=torch.uint8))
    with pytest.raises(TypeError, match="image"):
        model([[0.0]])
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 3, H, W), float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.full((1, 3, H, W), 2.0))
    with pytest.raises(ValueError, match="stages"):
        model(torch.rand(1, 3, H, W), stages=3)
