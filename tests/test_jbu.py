"""JBU package: chunked adaptive convolution vs the unfold oracle, classical and learned JBU, label /
probability maps, input validation and FeatUp-style training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from air_core.jbu import (JBUStack, JBUStage, adaptive_conv, adaptive_conv_reference, apply_classical_kernel,
                          chunk_plan, classical_kernel, fit_jbu, jbu_upsample, joint_bilateral_upsample,
                          local_correlation, stage_sizes)


def _pair(b=2, c=3, h=6, w=7, k=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(b, c, h + k - 1, w + k - 1, dtype=dtype, generator=gen)
    kernel = torch.randn(b, h, w, k, k, dtype=dtype, generator=gen)
    return src, kernel


# ----------------------------------------------------------------------------------------------
# adaptive convolution
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 300, 10 ** 9])
def test_adaptive_conv_matches_unfold_reference_forward_and_gradients(budget):
    src, kernel = _pair(k=5, h=7, w=9, c=4)
    src.requires_grad_(True)
    kernel.requires_grad_(True)
    out = adaptive_conv(src, kernel, max_chunk_bytes=budget)
    ref = adaptive_conv_reference(src, kernel)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(out)
    g_ours = torch.autograd.grad(out, (src, kernel), grad_out)
    g_ref = torch.autograd.grad(ref, (src, kernel), grad_out)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_adaptive_conv_gradcheck_with_several_chunks():
    src, kernel = _pair(b=1, c=2, h=4, w=3, k=3)
    assert len(chunk_plan(1, 2, 4, 3, 8, 30)) > 2
    assert torch.autograd.gradcheck(lambda s, k: adaptive_conv(s, k, max_chunk_bytes=30),
                                    (src.requires_grad_(True), kernel.requires_grad_(True)))


def test_small_budget_really_chunks_and_gives_the_same_result():
    b, c, h, w = 2, 16, 12, 10
    budget = b * 4 * 3 * w * 8  # 4 channels x 3 rows of float64
    plan = chunk_plan(b, c, h, w, 8, budget)
    whole = chunk_plan(b, c, h, w, 8, 10 ** 9)
    assert len(whole) == 1 and len(plan) >= 8
    covered = torch.zeros(c, h, dtype=torch.int64)
    for y0, y1, c0, c1 in plan:
        assert b * (c1 - c0) * (y1 - y0) * w * 8 <= budget
        covered[c0:c1, y0:y1] += 1
    assert bool((covered == 1).all())
    # one row of all channels does not fit: rows are split into channel groups
    assert all(y1 - y0 == 1 and c1 - c0 == 4 for y0, y1, c0, c1 in chunk_plan(b, c, h, w, 8, b * 4 * w * 8))

    src, kernel = _pair(b=b, c=c, h=h, w=w, k=3, seed=3)
    outs, grads = [], []
    for bud in (budget, 10 ** 9):
        s, k = src.clone().requires_grad_(True), kernel.clone().requires_grad_(True)
        o = adaptive_conv(s, k, max_chunk_bytes=bud)
        o.square().sum().backward()
        outs.append(o.detach())
        grads.append((s.grad, k.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-13, atol=1e-13)
    for a, bb in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, bb, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("budget", [1, 10 ** 9])
def test_local_correlation_matches_unfold_and_gradcheck(budget):
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(2, 2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    src = torch.randn(2, 2, 5, 8, dtype=torch.float64, generator=gen, requires_grad=True)  # 3 x 5 window
    patches = F.unfold(src, (3, 5)).view(2, 2, 15, 3, 4)
    ref = torch.einsum("bckhw,bchw->bhwk", patches, a).reshape(2, 3, 4, 3, 5)
    torch.testing.assert_close(local_correlation(a, src, max_chunk_bytes=budget), ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: local_correlation(x, y, max_chunk_bytes=budget), (a, src))


def test_adaptive_conv_rejects_bad_input():
    src, kernel = _pair()
    with pytest.raises(ValueError, match="batch"):
        adaptive_conv(src[:1], kernel)
    with pytest.raises(ValueError, match="padded"):
        adaptive_conv(src[..., 1:], kernel)
    with pytest.raises(TypeError, match="floating"):
        adaptive_conv(src.long(), kernel)
    with pytest.raises(ValueError, match="dtype|float"):
        adaptive_conv(src, kernel.float())
    with pytest.raises(ValueError, match="NaN"):
        adaptive_conv(src.index_fill(3, torch.tensor([0]), float("nan")), kernel)
    with pytest.raises(ValueError, match="4-D"):
        adaptive_conv(src[0], kernel)
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        adaptive_conv(src, kernel, max_chunk_bytes=0)


# ----------------------------------------------------------------------------------------------
# classical JBU
# ----------------------------------------------------------------------------------------------


def _step_image(h=48, w=60, edge=27):
    g = torch.zeros(1, 3, h, w)
    g[..., edge:] = 1.0
    return g


@pytest.mark.parametrize("size", [(40, 56), (37, 53), (5, 7)])
def test_classical_constant_features_stay_constant_at_any_size(size):
    feats = torch.full((2, 4, 5, 7), 3.25)
    guide = torch.rand(2, 3, 41, 57, generator=torch.Generator().manual_seed(1))
    out = joint_bilateral_upsample(feats, guide, size)
    assert out.shape == (2, 4, *size)
    torch.testing.assert_close(out, torch.full_like(out, 3.25))
    k = classical_kernel(guide, (5, 7), size)
    torch.testing.assert_close(k.weights.sum((-1, -2)), torch.ones(2, *size))


def test_classical_preserves_a_guidance_edge_better_than_bilinear():
    guide = _step_image()
    truth = guide[:, :1]
    low = F.adaptive_avg_pool2d(truth, (6, 8))  # the edge falls inside a low-res pixel
    jbu = joint_bilateral_upsample(low, guide)
    bil = F.interpolate(low, size=truth.shape[-2:], mode="bilinear", align_corners=False)
    err_jbu = (jbu - truth).abs().mean()
    err_bil = (bil - truth).abs().mean()
    assert err_jbu < 0.05 * err_bil
    # and the same through the public API, as a label map
    labels = (low[0, 0] > 0.5).long()
    out = jbu_upsample(labels, guide, method="classical", map_type="labels")
    assert (out == truth[0, 0].long()).float().mean() > 0.99
    near = jbu_upsample(labels, guide, method="nearest", map_type="labels")
    assert (near == truth[0, 0].long()).float().mean() < 0.97


def test_classical_gradcheck_features_and_guidance():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    guide = torch.rand(1, 2, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, g: joint_bilateral_upsample(f, g, sigma_range=0.3, radius=1, max_chunk_bytes=300), (feats, guide))


def test_classical_guidance_blur_removes_texture_speckle():
    """guidance_blur pre-smooths I(p) in the range term: 0 is Kopf's Eq. 2 exactly (the hand-blurred
    guidance gives the same weights); on a two-region image with pixel noise it removes label flips."""
    from air_core.jbu.classical import gaussian_blur

    gen = torch.Generator().manual_seed(5)
    guide = _step_image() + 0.5 * torch.randn(_step_image().shape, generator=gen)
    truth = (_step_image()[0, 0] > 0.5).long()
    low = (F.adaptive_avg_pool2d(truth[None, None].float(), (6, 8))[0, 0] > 0.5).long()
    plain = classical_kernel(guide, (6, 8), sigma_range=0.1)
    torch.testing.assert_close(classical_kernel(guide, (6, 8), sigma_range=0.1, guidance_blur=0.0).weights,
                               plain.weights)
    blurred = classical_kernel(guide, (6, 8), sigma_range=0.1, guidance_blur=1.0)
    assert not torch.allclose(blurred.weights, plain.weights)
    errs = {}
    for b in (0.0, 1.0):
        out = jbu_upsample(low, guide[0], method="classical", map_type="labels", sigma_range=0.1, guidance_blur=b)
        errs[b] = float((out != truth).float().mean())
    assert errs[1.0] < 0.5 * errs[0.0]
    # gradcheck through the blur
    g = torch.rand(1, 2, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gaussian_blur(x, 0.8), (g,))
    with pytest.raises(ValueError, match="guidance_blur"):
        jbu_upsample(low, guide[0], method="classical", map_type="labels", guidance_blur=-1.0)


def test_classical_kernel_is_reused_across_channel_chunks():
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(1, 6, 5, 5, generator=gen)
    guide = torch.rand(1, 3, 20, 20, generator=gen)
    k = classical_kernel(guide, (5, 5))
    whole = apply_classical_kernel(feats, k)
    parts = torch.cat([apply_classical_kernel(feats[:, i: i + 2], k, max_chunk_bytes=100) for i in (0, 2, 4)], 1)
    torch.testing.assert_close(whole, parts)


# ----------------------------------------------------------------------------------------------
# learned JBU
# ----------------------------------------------------------------------------------------------


def test_stage_sizes_any_size_and_featup_16x():
    assert stage_sizes((28, 28), (448, 448), 4) == [(56, 56), (112, 112), (224, 224), (448, 448)]
    assert stage_sizes((5, 7), (37, 53), 4)[-1] == (37, 53)
    assert len(stage_sizes((5, 7), (37, 53), 4)) == 3
    assert stage_sizes((8, 8), (8, 8), 4) == [(8, 8)]
    assert len(stage_sizes((4, 4), (400, 400), 4)) == 4  # more than 16x: the last stage takes a larger step
    with pytest.raises(ValueError, match="smaller"):
        stage_sizes((8, 8), (4, 16), 4)


def test_learned_stack_reaches_arbitrary_sizes_and_is_differentiable():
    torch.manual_seed(0)
    stack = JBUStack(feat_dim=6)
    feats = torch.randn(2, 6, 5, 7, requires_grad=True)
    guide = torch.rand(2, 3, 37, 53)
    out = stack(feats, guide)
    assert out.shape == (2, 6, 37, 53)
    out.square().mean().backward()
    assert feats.grad is not None and bool(feats.grad.abs().sum() > 0)
    for name in ("range_temp", "sigma_spatial"):
        assert getattr(stack.stages[0], name).grad is not None
    assert stack.refine[1].weight.grad is not None
    # any channel count in channel-agnostic mode; other sizes on request
    assert stack(torch.randn(2, 11, 5, 7), guide, (20, 9 * 7), channel_agnostic=True).shape == (2, 11, 20, 63)
    with pytest.raises(ValueError, match="feat_dim"):
        stack(torch.randn(2, 11, 5, 7), guide)


def test_learned_stage_matches_featup_construction():
    stage = JBUStage()
    assert stage.range_proj[0].in_channels == 3 and stage.range_proj[0].out_channels == 32
    assert stage.fixup_proj[0].in_channels == 52 and stage.fixup_proj[3].out_channels == 49
    assert float(stage.range_temp.detach()) == 0.0 and float(stage.sigma_spatial.detach()) == 1.0
    stack = JBUStack(feat_dim=384)
    assert 0.15e6 < sum(p.numel() for p in stack.parameters()) < 0.25e6  # FeatUp: ~0.2M
    assert stack.config["guidance_mean"] == [0.485, 0.456, 0.406]  # FeatUp's ImageNet-normalised guidance
    assert JBUStack(guidance_dim=1).config["guidance_std"] == [0.225]
    with pytest.raises(ValueError, match="guidance_mean"):
        JBUStack(guidance_dim=1, guidance_mean=[0.5, 0.5])
    with torch.no_grad():
        stage.eval()
        k = stage.kernel(torch.rand(1, 3, 9, 9))
    assert k.shape == (1, 9, 9, 7, 7)


def test_stack_save_load_roundtrip(tmp_path):
    torch.manual_seed(1)
    stack = JBUStack(feat_dim=4, num_stages=2, normalize_features=True).eval()
    path = tmp_path / "stack.pt"
    stack.save(path)
    loaded = JBUStack.load(path)
    assert loaded.config == stack.config and not loaded.training
    feats, guide = torch.randn(1, 4, 6, 6), torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, guide), stack(feats, guide), rtol=0, atol=0)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="JBUStack"):
        JBUStack.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        JBUStack.load(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------
# jbu_upsample: map types
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["classical", "learned", "bilinear", "bicubic", "nearest"])
def test_labels_preserved_and_never_invented(method):
    gen = torch.Generator().manual_seed(5)
    labels = torch.tensor([3, 17, 42, 99])[torch.randint(0, 4, (2, 6, 7), generator=gen)]
    labels[labels == 99] = 17  # 99 absent; 17 appears twice as often
    guide = torch.rand(2, 3, 30, 35, generator=gen)
    torch.manual_seed(0)
    model = JBUStack() if method == "learned" else None
    out = jbu_upsample(labels, guide, method=method, map_type="labels", model=model)
    assert out.shape == (2, 30, 35) and out.dtype == labels.dtype
    assert set(torch.unique(out).tolist()) <= {3, 17, 42}
    # chunking over classes (one class per chunk) changes nothing
    small = jbu_upsample(labels, guide, method=method, map_type="labels", model=model, max_chunk_bytes=1)
    assert torch.equal(out, small)


def test_labels_exact_at_factor_one_and_nearest_copies_blocks():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4) * 7
    guide = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    out = jbu_upsample(labels, guide, method="classical", map_type="labels", sigma_range=0.01)
    assert isinstance(out, np.ndarray) and out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    near = jbu_upsample(labels, torch.rand(12, 16), method="nearest", map_type="labels")
    np.testing.assert_array_equal(near, np.kron(labels, np.ones((4, 4), dtype=np.int32)))


def test_background_label_is_kept():
    guide = torch.zeros(1, 3, 64, 64)
    guide[..., 16:48, 16:48] = 1.0  # a bright object on a dark background
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[2:6, 2:6] = 5
    labels[2:6, 4:6] = 6  # two touching objects
    out = jbu_upsample(labels, guide, method="classical", map_type="labels", background=0)
    assert set(torch.unique(out).tolist()) == {0, 5, 6}
    assert bool((out[:8] == 0).all()) and bool((out[:, -8:] == 0).all())
    inside = out[16:48, 16:48]
    assert bool((inside != 0).all())  # the object area is never handed to the background
    assert (inside[:, :14] == 5).float().mean() > 0.95 and (inside[:, 18:] == 6).float().mean() > 0.95


@pytest.mark.parametrize("method", ["classical", "learned", "bicubic"])
def test_probabilities_sum_to_one_and_are_non_negative(method):
    gen = torch.Generator().manual_seed(6)
    probs = torch.softmax(3 * torch.randn(5, 6, 7, generator=gen), 0)
    guide = torch.rand(3, 40, 45, generator=gen)
    torch.manual_seed(0)
    out = jbu_upsample(probs, guide, method=method, map_type="probabilities",
                       model=JBUStack(feat_dim=9) if method == "learned" else None)
    assert out.shape == (5, 40, 45)
    assert float(out.min()) >= 0
    torch.testing.assert_close(out.sum(0), torch.ones(40, 45))


def test_features_api_scale_size_numpy_and_inputs_untouched():
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(1, 4, 5, 6, generator=gen)
    guide = torch.rand(1, 3, 20, 24, generator=gen)
    f0, g0 = feats.clone(), guide.clone()
    stack = JBUStack(feat_dim=4)  # in training mode: the API must not change that
    for method in ("classical", "learned", "bilinear"):
        out = jbu_upsample(feats, guide, scale=2, method=method, model=stack if method == "learned" else None)
        assert out.shape == (1, 4, 10, 12)
    assert stack.training
    assert torch.equal(feats, f0) and torch.equal(guide, g0)
    out = jbu_upsample(feats.numpy()[0], (guide[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), size=(21, 25))
    assert isinstance(out, np.ndarray) and out.shape == (4, 21, 25)
    f64 = jbu_upsample(feats.double(), guide)
    assert f64.dtype == torch.float64 and f64.shape == (1, 4, 20, 24)
    # differentiable with respect to tensor inputs that require grad
    x = feats.clone().requires_grad_(True)
    jbu_upsample(x, guide).sum().backward()
    assert x.grad is not None


# ----------------------------------------------------------------------------------------------
# jbu_upsample: bad input
# ----------------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    feats = torch.randn(2, 3, 6, 6)
    guide = torch.rand(2, 3, 24, 24)
    with pytest.raises(ValueError, match="batch size"):
        jbu_upsample(feats, guide[:1])
    with pytest.raises(ValueError, match="smaller than the features"):
        jbu_upsample(feats, guide[..., :4, :])
    with pytest.raises(ValueError, match="smaller than the features"):
        jbu_upsample(feats, guide, size=(5, 30))
    with pytest.raises(ValueError, match="NaN"):
        jbu_upsample(feats.index_fill(1, torch.tensor([0]), float("nan")), guide)
    with pytest.raises(ValueError, match="NaN"):
        jbu_upsample(feats, guide.index_fill(1, torch.tensor([2]), float("inf")))
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        jbu_upsample(feats[0, 0], guide)
    with pytest.raises(ValueError, match="guidance must be"):
        jbu_upsample(feats, torch.rand(1, 2, 3, 24, 24))
    with pytest.raises(ValueError, match="method must be one of"):
        jbu_upsample(feats, guide, method="lanczos")
    with pytest.raises(ValueError, match="map_type must be one of"):
        jbu_upsample(feats, guide, map_type="depth")
    with pytest.raises(ValueError, match="needs model"):
        jbu_upsample(feats, guide, method="learned")
    with pytest.raises(TypeError, match="JBUStack"):
        jbu_upsample(feats, guide, method="learned", model=nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="not both"):
        jbu_upsample(feats, guide, size=(24, 24), scale=4)
    with pytest.raises(TypeError, match="label map"):
        jbu_upsample(feats, guide, map_type="labels")
    with pytest.raises(TypeError, match="floating-point"):
        jbu_upsample(torch.ones(3, 6, 6, dtype=torch.long), guide[0])
    with pytest.raises(ValueError, match=">= 0"):
        jbu_upsample(-torch.rand(3, 6, 6), guide[0], map_type="probabilities")
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        jbu_upsample([[1.0]], guide)
    with pytest.raises(ValueError, match="sigma_range"):
        jbu_upsample(feats, guide, sigma_range=0)
    with pytest.raises(ValueError, match="device"):
        jbu_upsample(feats, guide, device="tpu")


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def _tiny_backbone():
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.AvgPool2d(4)).eval()


def _photos():
    from skimage.transform import resize

    from air_core.images import sample_image

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        out.append(resize(sample_image(name), (40, 48), anti_aliasing=True).astype(np.float32))
    return out


def test_fit_jbu_lowers_the_loss_and_is_reproducible():
    backbone, photos = _tiny_backbone(), _photos()
    kwargs = dict(steps=14, batch_size=2, image_size=32, n_jitters=2, max_pad=4, device="cpu", log_every=7)
    a = fit_jbu(backbone, photos, seed=3, **kwargs)
    assert a.steps == 14 and not a.cancelled and a.feature_size == (8, 8)
    assert a.stack.num_stages == 2 and a.stack.feat_dim == 8 and not a.stack.training
    losses = [h["loss"] for h in a.history]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.02
    b = fit_jbu(backbone, photos, seed=3, **kwargs)
    assert [h["loss"] for h in b.history] == losses
    for (name, p), q in zip(a.stack.state_dict().items(), b.stack.state_dict().values()):
        assert torch.equal(p, q), name
    c = fit_jbu(backbone, photos, seed=4, steps=3, **{k: v for k, v in kwargs.items() if k != "steps"})
    assert c.history[0]["loss"] != losses[0]
    assert not backbone.training


def test_fit_jbu_plain_mse_blur_downsampler_progress_and_cancel():
    backbone, photos = _tiny_backbone(), _photos()
    seen = []

    def progress(fraction, message):
        seen.append((fraction, message))
        return len(seen) < 2

    r = fit_jbu(backbone, photos, steps=30, batch_size=1, image_size=32, n_jitters=1, max_pad=4, downsampler="blur",
                outlier_loss=False, random_projection=None, seed=0, device="cpu", log_every=3, progress=progress)
    assert r.cancelled and r.steps == 6 and len(seen) == 2 and seen[0][0] == pytest.approx(0.1)
    assert all(h["loss"] >= 0 for h in r.history)
    assert r.downsampler.kernel().sum().item() == pytest.approx(1.0)


def test_fit_jbu_rejects_bad_input():
    backbone, photos = _tiny_backbone(), _photos()
    with pytest.raises(TypeError, match="callable"):
        fit_jbu("resnet", photos)
    with pytest.raises(ValueError, match="images must not be empty"):
        fit_jbu(backbone, [])
    with pytest.raises(ValueError, match="downsampler"):
        fit_jbu(backbone, photos, downsampler="max")
    with pytest.raises(ValueError, match="max_pad"):
        fit_jbu(backbone, photos, image_size=16, max_pad=16)
    with pytest.raises(ValueError, match="backbone must return"):
        fit_jbu(lambda x: x.mean(1), photos, steps=1, image_size=16, max_pad=2, device="cpu")


def test_learned_kernels_are_made_convex_for_labels_and_probabilities():
    """A stack whose refinement makes kernels negative must not invert label maps."""
    from air_core.jbu import JBUStack, jbu_upsample

    torch.manual_seed(0)
    stack = JBUStack(num_stages=2).eval()
    with torch.no_grad():  # the last stage's refinement adds -0.05 to each of 49 taps: kernel sum 1 - 2.45 < 0
        last = [m for m in stack.stages[-1].fixup_proj.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.zero_()
        last.bias.fill_(-0.5)
    guidance = torch.rand(3, 32, 40)
    labels = torch.zeros(8, 10, dtype=torch.int64)
    labels[:, 5:] = 3
    up = jbu_upsample(labels, guidance, method="learned", map_type="labels", model=stack)
    assert set(up.unique().tolist()) == {0, 3}
    # left and right halves keep their labels away from the boundary
    assert bool((up[:, :16] == 0).all()) and bool((up[:, 24:] == 3).all())
    probs = torch.rand(2, 8, 10)
    probs = probs / probs.sum(0, keepdim=True)
    out = jbu_upsample(probs, guidance, method="learned", map_type="probabilities", model=stack)
    assert bool((out >= 0).all()) and torch.allclose(out.sum(0), torch.ones(32, 40), atol=1e-5)
    # the convex kernels keep a constant probability map constant
    const = torch.full((2, 8, 10), 0.5)
    assert torch.allclose(jbu_upsample(const, guidance, method="learned", map_type="probabilities", model=stack),
                          torch.full((2, 32, 40), 0.5), atol=1e-5)


def _labelled_photos():
    """The test photos with a label embedding as 4 auxiliary channels: left / right halves, two labels."""
    out = []
    for n, photo in enumerate(_photos()):
        rgb = torch.from_numpy(photo).permute(2, 0, 1)
        emb = torch.zeros(4, *rgb.shape[1:])
        cut = 20 + 4 * n
        emb[0, :, :cut] = 1.0
        emb[1, :, cut:] = 1.0
        out.append(torch.cat([rgb, emb]))
    return out


def test_fit_jbu_supervised_with_auxiliary_channels_learns_and_is_convex():
    """hr_target_fn: the full-resolution map the backbone pools is known; the direct loss falls and the
    convex stack's kernels are convex combinations (>= 0, sum 1)."""
    data = _labelled_photos()
    seen_channels = []

    def backbone(x):
        seen_channels.append(x.shape[1])
        return F.avg_pool2d(x[:, 3:], 4)

    r = fit_jbu(backbone, data, steps=40, batch_size=2, image_size=40, crop_size=32, lr=1e-2, seed=0, device="cpu",
                normalize_features=False, random_projection=None, hr_target_fn=lambda x: x[:, 3:],
                convex_kernels=True, clip_grad_norm=1.0, log_every=20)
    assert set(seen_channels) == {7} and r.downsampler is None and r.feature_size == (8, 8)
    assert r.stack.convex_kernels and r.stack.config["convex_kernels"]
    losses = [h["loss"] for h in r.history]
    assert all(v >= 0 for v in losses) and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    guidance = data[0][None, :3]
    kernels = r.stack.kernels(guidance, (10, 12))
    for k in kernels:
        assert bool((k >= 0).all())
        assert torch.allclose(k.sum((-2, -1)), torch.ones(k.shape[:3]), atol=1e-5)


def test_fit_jbu_supervised_and_auxiliary_channel_errors():
    data = _labelled_photos()
    pool = lambda x: F.avg_pool2d(x[:, 3:], 4)  # noqa: E731
    kw = dict(steps=1, image_size=32, max_pad=2, device="cpu", normalize_features=False, random_projection=None)
    with pytest.raises(ValueError, match=r"hr_target_fn must return \[B, 4, 32, 32\]"):
        fit_jbu(pool, data, hr_target_fn=lambda x: x[:, 3:5], **kw)
    with pytest.raises(TypeError, match="hr_target_fn must be None or callable"):
        fit_jbu(pool, data, hr_target_fn="labels", **kw)
    with pytest.raises(ValueError, match="crop_size must be <= image_size"):
        fit_jbu(pool, data, crop_size=64, **kw)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fit_jbu(pool, data, clip_grad_norm=0, **kw)
    with pytest.raises(ValueError, match="same channels"):
        fit_jbu(pool, [data[0], data[1][:5]], **kw)
    bad = data[0].clone()
    bad[4, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"images\[0\] with auxiliary channels"):
        fit_jbu(pool, [bad], **kw)


def test_stack_save_load_keeps_convex_kernels(tmp_path):
    from air_core.jbu import JBUStack

    stack = JBUStack(num_stages=2, convex_kernels=True).eval()
    stack.save(tmp_path / "s.pt")
    back = JBUStack.load(tmp_path / "s.pt")
    assert back.convex_kernels and all(s.convex for s in back.stages)
    k = back.kernels(torch.rand(1, 3, 16, 16), (4, 4))[0]
    assert bool((k >= 0).all())
