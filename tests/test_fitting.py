"""Per-image fitting: it must actually fit real photos, be reproducible, honour freeze/init/budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import resize

from air_core import Gaussians2D, fit, initialize, psnr, render, to_tensor
from air_core.images import sample_image


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A 64x96 crop-and-resize of scikit-image's astronaut (a real photo, kept small for speed)."""
    img = sample_image("astronaut")[30:330, 100:550]
    return to_tensor(resize(img, (64, 96), anti_aliasing=True).astype(np.float32))


@pytest.mark.parametrize("mode", ["sum", "alpha"])
def test_fit_improves_quality_far_beyond_initialisation(photo, mode):
    init = initialize(photo, 600, mode=mode, seed=1)
    before = psnr(render(init).clamp(0, 1), photo)
    result = fit(photo, 600, 150, mode=mode, init="gradient", seed=1, progressive=False)
    assert result.gaussians.num_gaussians == 600
    assert result.metrics["psnr"] > before + 5
    assert result.metrics["psnr"] > (24.0 if mode == "sum" else 22.0)
    assert result.stopped == "steps" and result.steps == 150
    assert result.render.shape == photo.shape and float(result.render.min()) >= 0 and float(result.render.max()) <= 1


def test_gradient_init_places_gaussians_on_edges(photo):
    g = initialize(photo, 4000, init="gradient", seed=0)
    r = initialize(photo, 4000, init="random", seed=0)
    energy = np.zeros(photo.shape[1:])
    for ch in photo.numpy():
        gy, gx = np.gradient(ch)
        energy += gx ** 2 + gy ** 2

    def mean_energy(gs):
        cols = gs.means[:, 0].long().clamp(0, photo.shape[2] - 1)
        rows = gs.means[:, 1].long().clamp(0, photo.shape[1] - 1)
        return energy[rows.numpy(), cols.numpy()].mean()

    assert mean_energy(g) > 2 * mean_energy(r)
    # denser sampling -> smaller Gaussians where the gradient energy is high
    assert float(g.scales.min()) < float(r.scales.min())


def test_same_seed_same_result_other_seed_differs(photo):
    a = fit(photo, 200, 20, seed=3)
    b = fit(photo, 200, 20, seed=3)
    c = fit(photo, 200, 20, seed=4)
    assert torch.equal(a.gaussians.means, b.gaussians.means)
    assert torch.equal(a.gaussians.colours, b.gaussians.colours)
    assert not torch.equal(a.gaussians.means, c.gaussians.means)


def test_progressive_addition_reaches_budget_and_beats_its_start(photo):
    result = fit(photo, 800, 100, seed=0, progressive=True, log_every=5)
    counts = [h["num_gaussians"] for h in result.history]
    assert counts[0] == 400 and counts[-1] == 800
    assert counts == sorted(counts)
    assert result.gaussians.num_gaussians == 800


def test_refine_from_initial_set_with_frozen_subset(photo):
    start = fit(photo, 300, 30, seed=0, progressive=False).gaussians
    freeze = torch.zeros(len(start), dtype=torch.bool)
    freeze[:100] = True
    refined = fit(photo, 500, 60, init=start, freeze=freeze, seed=0)
    assert refined.gaussians.num_gaussians == 500
    for name in ("means", "scales", "rotations", "colours"):
        before, after = getattr(start, name), getattr(refined.gaussians, name)
        assert torch.allclose(after[:100], before[:100], atol=1e-6), name
        assert not torch.allclose(after[100:300], before[100:300]), name
    assert refined.metrics["psnr"] > psnr(render(start).clamp(0, 1), photo)


def test_target_psnr_and_patience_stop_early(photo):
    r = fit(photo, 400, 400, seed=0, target_psnr=20.0, log_every=5)
    assert r.stopped == "target_psnr" and r.steps < 400 and r.metrics["psnr"] >= 19.5
    r2 = fit(photo, 50, 400, seed=0, patience=3, lr_scale=1e-6)
    assert r2.stopped == "converged" and r2.steps < 20


def test_progress_callback_and_cancel(photo):
    seen = []

    def cb(fraction, message):
        seen.append((fraction, message))
        return False if len(seen) == 2 else None

    r = fit(photo, 100, 100, seed=0, log_every=10, progress=cb)
    assert r.stopped == "cancelled" and r.steps == 20
    assert [f for f, _ in seen] == [0.1, 0.2] and "PSNR" in seen[0][1]


@pytest.mark.parametrize("loss", ["l1", "l1+ssim"])
def test_other_losses_fit(photo, loss):
    r = fit(photo, 300, 60, loss=loss, seed=0)
    assert r.metrics["psnr"] > 20


def test_fit_accepts_user_formats(photo):
    u8 = (photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    gray16 = (photo.mean(0).numpy() * 65535).astype(np.uint16)
    for img in (u8, gray16, u8[:, :, :1], np.dstack([u8, np.full(u8.shape[:2], 255, np.uint8)])):
        r = fit(img, 50, 5, seed=0)
        assert r.render.shape == (3, 64, 96)


def test_tiny_images_fit():
    for shape in ((1, 1, 3), (3, 5, 3)):
        img = np.random.default_rng(0).random(shape).astype(np.float32)
        r = fit(img, 4, 10, seed=0)
        assert r.render.shape == (3, shape[0], shape[1])
        assert np.isfinite(r.metrics["psnr"])


def test_bad_arguments(photo):
    with pytest.raises(ValueError, match="num_gaussians must be > 0"):
        fit(photo, 0, 10)
    with pytest.raises(ValueError, match="num_gaussians must be > 0"):
        fit(photo, -5, 10)
    with pytest.raises(TypeError, match="num_gaussians must be an int"):
        fit(photo, 2.5, 10)
    with pytest.raises(ValueError, match="steps"):
        fit(photo, 10, -1)
    with pytest.raises(ValueError, match="mode"):
        fit(photo, 10, 1, mode="max")
    with pytest.raises(ValueError, match="init"):
        fit(photo, 10, 1, init="kmeans")
    with pytest.raises(ValueError, match="loss"):
        fit(photo, 10, 1, loss="l3")
    with pytest.raises(ValueError, match="freeze needs init"):
        fit(photo, 10, 1, freeze=np.ones(10, bool))
    start = Gaussians2D.empty((64, 96))
    other = Gaussians2D.empty((10, 10))
    with pytest.raises(ValueError, match="image_size"):
        fit(photo, 10, 1, init=other)
    with pytest.raises(ValueError, match=r"freeze must be a bool mask of shape \[0\]"):
        fit(photo, 10, 1, init=start, freeze=np.ones(3, bool))
    with pytest.raises(ValueError, match="NaN"):
        fit(np.full((8, 8, 3), np.nan, np.float32), 10, 1)
    with pytest.raises(ValueError, match="image"):
        fit(np.zeros((8, 8, 2), np.float32), 10, 1)


def test_too_large_image_is_refused_cleanly(monkeypatch):
    from air_core.images import ImageTooLargeError

    monkeypatch.setenv("AIR_MEMORY_LIMIT_BYTES", str(50_000_000))
    big = np.zeros((2000, 3000, 3), np.uint8)  # 18 MB as uint8; fitting needs far more than 50 MB
    with pytest.raises(ImageTooLargeError, match="memory"):
        fit(big, 1000, 10)
