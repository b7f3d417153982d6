"""Tests of air_core.metrics: PSNR, SSIM, MS-SSIM, the SSIM loss and compute_metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from air_core.images import sample_image, to_tensor
from air_core.metrics import (
    compute_metrics,
    ms_ssim,
    ms_ssim_win_size,
    psnr,
    ssim,
    ssim_loss,
    ssim_win_size,
)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_of_known_mse():
    x = torch.full((3, 16, 16), 0.5)
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert psnr(x, x - 0.01) == pytest.approx(40.0, abs=1e-3)
    a = np.full((8, 8, 3), 100, np.uint8)  # uint8 user images are scaled: offset 51 -> 0.2
    assert psnr(a, a + 51) == pytest.approx(-10 * math.log10(0.04), abs=1e-4)
    assert psnr(x, x + 0.1, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2.0), abs=1e-4)


def test_psnr_identical_and_clamped():
    x = _rand(3, 8, 8)
    assert psnr(x, x.clone()) == math.inf
    assert psnr(torch.full((3, 4, 4), 1.5), torch.ones(3, 4, 4)) == math.inf  # overshoot is clamped
    batch = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 0.5)])
    assert psnr(batch, batch + 0.1) == pytest.approx(20.0, abs=1e-4)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"x and y must have the same shape; got x \(3, 8, 8\) and y \(3, 8, 9\)"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match=r"reconstruction and target .*\(3, 40, 40\).*\(2, 3, 40, 40\)"):
        compute_metrics(torch.zeros(3, 40, 40), torch.zeros(2, 3, 40, 40))
    with pytest.raises(ValueError, match=r"x and y must have the same shape"):
        ssim_loss(torch.zeros(3, 8, 8), torch.zeros(3, 9, 8))


def test_nan_rejected():
    with pytest.raises(ValueError, match="y contains NaN"):
        ssim(torch.zeros(3, 8, 8), torch.full((3, 8, 8), float("nan")))


def test_ssim_identical_is_one_and_matches_skimage():
    x = _rand(3, 32, 40)
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-6)
    photo = sample_image("astronaut")[100:228, 150:278]
    noisy = np.clip(photo / 255 + np.random.default_rng(0).normal(0, 0.05, photo.shape), 0, 1)
    ours = ssim(photo, noisy)
    reference = structural_similarity(photo / 255, noisy, channel_axis=-1, data_range=1.0, gaussian_weights=True,
                                      sigma=1.5, use_sample_covariance=False)
    assert 0.2 < ours < 0.95
    assert ours == pytest.approx(reference, abs=1e-4)


def test_window_sizes_for_small_images():
    assert ssim_win_size(512, 512) == 11
    assert ssim_win_size(10, 64) == 9
    assert ssim_win_size(3, 5) == 3
    with pytest.raises(ValueError, match="at least 3 x 3"):
        ssim_win_size(2, 5)
    assert ms_ssim_win_size(161, 200) == 11
    assert ms_ssim_win_size(160, 200) == 9
    assert ms_ssim_win_size(33, 33) == 3
    with pytest.raises(ValueError, match="at least 33 x 33"):
        ms_ssim_win_size(32, 100)


def test_ssim_and_ms_ssim_on_small_images():
    x, y = _rand(3, 5, 7, seed=1), _rand(3, 5, 7, seed=2)
    assert -1.0 <= ssim(x, y) < 1.0
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="SSIM needs images of at least 3 x 3 pixels; got 2 x 2"):
        ssim(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2))
    a, b = _rand(3, 40, 48, seed=3), _rand(3, 40, 48, seed=4)
    assert 0.0 <= ms_ssim(a, b) < 1.0  # window 3 fits: no pytorch_msssim assertion
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= ms_ssim(_rand(3, 160, 160), _rand(3, 160, 160, seed=9)) < 1.0  # window 9
    with pytest.raises(ValueError, match="MS-SSIM needs images of at least 33 x 33 pixels"):
        ms_ssim(torch.zeros(3, 32, 64), torch.zeros(3, 32, 64))


def test_ms_ssim_on_real_photo():
    photo = to_tensor(sample_image("astronaut")[::3, ::3])  # 171 x 171: still window 11, and quick
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    value = ms_ssim(photo, noisy)
    assert 0.5 < value < 1.0
    slightly = (photo + 0.02 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert ms_ssim(photo, slightly) > value


def test_ssim_loss_gradients():
    target = to_tensor(sample_image("camera")[200:264, 200:264])
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    far = (target + 0.3 * noise).requires_grad_(True)  # not clamped: values outside [0, 1] are fine
    loss = ssim_loss(far, target)
    assert loss.ndim == 0 and loss.requires_grad
    loss.backward()
    assert far.grad is not None and torch.isfinite(far.grad).all() and far.grad.abs().sum() > 0
    near = target + 0.05 * noise
    assert ssim_loss(near, target).item() < loss.item()
    assert ssim_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    batch = torch.stack([near, near]).requires_grad_(True)
    ssim_loss(batch, torch.stack([target, target])).backward()
    assert torch.isfinite(batch.grad).all()
    # one gradient step towards the target lowers the loss
    x = far.detach().clone().requires_grad_(True)
    before = ssim_loss(x, target)
    before.backward()
    with torch.no_grad():
        x -= 0.5 * x.grad / x.grad.abs().max()
    assert ssim_loss(x, target).item() < before.item()
    with pytest.raises(TypeError, match="x must be a float torch tensor"):
        ssim_loss(np.zeros((3, 8, 8)), target)


def test_compute_metrics():
    target = _rand(3, 48, 40)
    recon = (target + 0.05).clamp(0, 1)
    m = compute_metrics(recon, target)
    assert set(m) == {"psnr", "ssim", "ms_ssim", "mse"}
    expected_mse = float(((recon.double() - target.double()) ** 2).mean())
    assert m["mse"] == pytest.approx(expected_mse, rel=1e-6)
    assert m["psnr"] == pytest.approx(-10 * math.log10(expected_mse), abs=1e-4)
    assert 0 < m["ssim"] < 1 and 0 < m["ms_ssim"] < 1
    small = compute_metrics(_rand(3, 20, 20), _rand(3, 20, 20, seed=1))
    assert small["ms_ssim"] is None and small["ssim"] is not None
    tiny = compute_metrics(np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 255, np.uint8))
    assert tiny["ssim"] is None and tiny["ms_ssim"] is None
    assert tiny["mse"] == pytest.approx(1.0) and tiny["psnr"] == pytest.approx(0.0)
