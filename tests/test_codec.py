"""AIR's image-adaptive quantizer and the entropy-coded .air file (air_core.codec)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import air_core
from air_core import codec
from air_core.codec import (FORMAT_VERSION, MAGIC, YCBCR_MATRIX, colour_error_bound, decode, decode_bytes,
                            dequantize, encode, encode_bytes, quantize)
from air_core.gaussians import Gaussians2D
from air_core.metrics import psnr
from air_core.predictor import decode_candidates, patch_centres, patch_grid

H, W, PS = 40, 52, 7  # non-multiple sizes: partial patches at the right / bottom border
EPS = 1e-5


def _patch_set(seed: int = 0, stages: int = 3, fractions=(0.9, 0.4, 0.2), raw_std: float = 0.7,
               size=(H, W), ps=PS):
    """A realistic AIR set: decoded candidates of random raw maps, kept by random masks."""
    gen = torch.Generator().manual_seed(seed)
    ph, pw = patch_grid(size, ps)
    parts, keeps = [], []
    for s in range(stages):
        raw = torch.randn(ph * pw, 8, generator=gen) * raw_std
        raw[:, 5:8] *= 0.5 if s else 1.5  # later stages add small residual colours
        cand = decode_candidates(raw, size, ps)
        keep = torch.rand(ph, pw, generator=gen) < fractions[s]
        parts.append(cand[keep.reshape(-1)])
        keeps.append(keep)
    return Gaussians2D.cat(parts), keeps


def _free_set(n: int = 300, seed: int = 1, alpha: bool = True) -> Gaussians2D:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=gen) * torch.tensor([W, H]) + torch.randn(n, 2, generator=gen)
    scales = torch.exp(torch.rand(n, 2, generator=gen) * math.log(400.0)) * 0.05  # 0.05 .. 20 px
    rotations = (torch.rand(n, generator=gen) - 0.5) * 20  # any real angle
    colours = torch.rand(n, 3, generator=gen) * 1.4 - 0.2
    opac = torch.rand(n, generator=gen) * 0.98 + 0.01 if alpha else None
    return Gaussians2D(means, scales, rotations, colours, opac, (H, W), {"mode": "alpha" if alpha else "sum"})


def _assert_close(a, b, atol, rtol=0.0):
    # (torch.testing.assert_close imports torch.distributed on first use: a second of test time)
    assert a.shape == b.shape
    err = (a.double() - b.double()).abs()
    assert bool((err <= atol + rtol * b.double().abs()).all()), f"max error {float(err.max())}"


def _check_bound(err, delta, name):
    err = float(np.max(np.abs(err))) if np.size(err) else 0.0
    assert err <= delta / 2 * (1 + EPS) + 1e-6, f"{name}: error {err} > Delta/2 = {delta / 2}"


# -- quantizer ---------------------------------------------------------------------------------------------------


def test_quantizer_round_trip_error_bounds_patch_layout():
    g, keeps = _patch_set()
    q = quantize(g, keep=keeps, patch_size=PS)
    assert q.layout == "patch" and q.raw_bits_per_gaussian == 53 and q.num_gaussians == len(g)
    assert [c.name for c in q.channels] == ["offset_x", "offset_y", "scale_1", "scale_2", "angle",
                                            "colour_y", "colour_cb", "colour_cr"]
    assert [c.bits for c in q.channels] == [8, 8, 7, 7, 7, 8, 4, 4]
    for c in q.channels:
        assert c.symbols.min() >= 0 and c.symbols.max() <= (1 << c.bits) - 1 and c.delta > 0
        assert np.float32(c.beta) == c.beta and np.float32(c.delta) == c.delta  # stored exactly as float32
    centres = patch_centres((H, W), PS, dtype=torch.float64)
    c_kept = torch.cat([centres[k.reshape(-1)] for k in keeps]).numpy()
    offsets = g.means.double().numpy() - c_kept
    _check_bound(q.channel("offset_x").values() - offsets[:, 0], q.channel("offset_x").delta, "offset_x")
    _check_bound(q.channel("offset_y").values() - offsets[:, 1], q.channel("offset_y").delta, "offset_y")
    for i in (0, 1):
        ch = q.channel(f"scale_{i + 1}")
        _check_bound(ch.values() - g.scales[:, i].double().numpy(), ch.delta, ch.name)
    ang = np.mod(g.rotations.double().numpy(), math.pi)
    _check_bound(q.channel("angle").values() - ang, q.channel("angle").delta, "angle")
    ycc = g.colours.double().numpy() @ YCBCR_MATRIX.T
    for i, n in enumerate(("colour_y", "colour_cb", "colour_cr")):
        _check_bound(q.channel(n).values() - ycc[:, i], q.channel(n).delta, n)
    # after the inverse YCbCr transform: the guaranteed bound |M^-1| Delta / 2
    d = dequantize(q)
    bound = colour_error_bound(q)
    err = (d.colours.double() - g.colours.double()).abs().amax(0).numpy()
    assert (err <= bound * (1 + EPS) + 1e-6).all(), (err, bound)
    _assert_close(d.means.double(), g.means.double(), atol=max(
        q.channel("offset_x").delta, q.channel("offset_y").delta) / 2 + 1e-5, rtol=0)


def test_constant_channels_are_exact():
    n = 20
    g = Gaussians2D(torch.rand(n, 2) * 30, torch.full((n, 2), 2.5), torch.full((n,), 0.3),
                    torch.full((n, 3), 0.25), None, (H, W), {"mode": "sum"})
    q = quantize(g)
    for name in ("scale_1", "scale_2", "angle", "colour_y", "colour_cb", "colour_cr"):
        c = q.channel(name)
        assert c.delta > 0 and (c.symbols == 0).all()
    d = dequantize(q)
    _assert_close(d.scales, g.scales, atol=1e-6, rtol=1e-6)
    _assert_close(d.rotations, g.rotations, atol=1e-6, rtol=0)
    _assert_close(d.colours, g.colours, atol=1e-6, rtol=0)
    data, stats = encode_bytes(g)
    # constant channels cost their header and a few bytes of stream, not N symbols
    assert all(stats.channel_bytes[k] <= 6 for k in ("scale_1", "angle", "colour_y", "colour_cb"))
    _assert_close(decode_bytes(data).colours, g.colours, atol=1e-6, rtol=0)


def test_angle_mod_pi_same_covariance():
    g, keeps = _patch_set(seed=3)
    flipped = Gaussians2D(g.means, g.scales, g.rotations + math.pi, g.colours, None, g.image_size, g.metadata)
    _assert_close(flipped.covariances(), g.covariances(), atol=1e-4, rtol=1e-5)
    qa = quantize(g, keep=keeps, patch_size=PS)
    qb = quantize(flipped, keep=keeps, patch_size=PS)
    assert np.array_equal(qa.channel("angle").symbols, qb.channel("angle").symbols)
    d = dequantize(qa)
    assert float(d.rotations.min()) >= 0 and float(d.rotations.max()) <= math.pi + 1e-6
    # covariance error of the decoded set is small relative to its size
    cov_err = (d.covariances() - g.covariances()).abs().amax(dim=(1, 2))
    assert float((cov_err / g.scales.amax(1) ** 2).max()) < 0.1


def test_free_layout_log_scales_positions_and_opacity():
    g = _free_set()
    q = quantize(g)
    names = [c.name for c in q.channels]
    assert names == ["pos_x", "pos_y", "scale_1", "scale_2", "angle", "colour_y", "colour_cb", "colour_cr",
                     "opacity"]
    pos_bits = math.ceil(math.log2(max(H, W) * 16))
    assert q.channel("pos_x").bits == pos_bits == q.channel("pos_y").bits
    assert q.raw_bits_per_gaussian == 2 * pos_bits + 8 + 8 + 7 + 8 + 6 + 6 + 8
    d = dequantize(q)
    for i in (0, 1):
        c = q.channel(f"scale_{i + 1}")
        assert c.log
        _check_bound(np.log(d.scales[:, i].double().numpy()) - np.log(g.scales[:, i].double().numpy()),
                     c.delta, c.name)
        pc = q.channel(("pos_x", "pos_y")[i])
        _check_bound(d.means[:, i].double().numpy() - g.means[:, i].double().numpy(), pc.delta, pc.name)
    _check_bound(d.opacities.double().numpy() - g.opacities.double().numpy(), q.channel("opacity").delta, "opacity")
    assert d.mode == "alpha" and d.opacities is not None


def test_bits_override_groups_and_ignored_names():
    g, keeps = _patch_set()
    q = quantize(g, keep=keeps, patch_size=PS, bits={"colour": 8, "position": 10, "scale_2": 5, "opacity": 3,
                                                      "pos_x": 12})
    assert [c.bits for c in q.channels] == [10, 10, 7, 5, 7, 8, 8, 8]
    g1 = Gaussians2D(torch.rand(5, 2) * 10, torch.ones(5, 2), torch.zeros(5), torch.rand(5, 1), None, (H, W))
    q1 = quantize(g1, bits={"colour": 5})
    assert [c.name for c in q1.channels][-1] == "colour_0" and q1.channels[-1].bits == 5


# -- encode / decode -----------------------------------------------------------------------------------------------


def test_encode_decode_patch_layout_file(tmp_path):
    g, keeps = _patch_set()
    path = tmp_path / "img.air"
    stats = encode(g, path, keep=keeps, patch_size=PS)
    raw = path.read_bytes()
    assert raw[:4] == MAGIC and raw[4] == FORMAT_VERSION
    assert stats.num_bytes == os.path.getsize(path) == len(raw)
    assert stats.bits_per_pixel == pytest.approx(8 * len(raw) / (H * W))
    assert stats.bits_per_gaussian == pytest.approx(8 * len(raw) / len(g))
    assert stats.raw_bits_per_gaussian == 53 and stats.layout == "patch" and stats.path == str(path)
    assert stats.header_bytes + stats.mask_bytes + sum(stats.channel_bytes.values()) == stats.num_bytes
    assert not [p for p in os.listdir(tmp_path) if p != "img.air"]  # no temporary file left behind
    d = decode(path)
    assert isinstance(d, Gaussians2D) and len(d) == len(g) and d.image_size == (H, W) and d.mode == "sum"
    assert d.opacities is None and d.dtype == torch.float32
    assert d.metadata["patch_size"] == PS
    assert d.metadata["keep"].dtype == torch.bool and torch.equal(d.metadata["keep"], torch.stack(keeps))
    q = quantize(g, keep=keeps, patch_size=PS)
    ref = dequantize(q)  # the file holds exactly the quantized set
    for name in ("means", "scales", "rotations", "colours"):
        _assert_close(getattr(d, name), getattr(ref, name), atol=0, rtol=0)
    ds = max(q.channel("scale_1").delta, q.channel("scale_2").delta)
    _assert_close(d.scales, g.scales, atol=ds / 2 + 1e-5, rtol=0)
    # renders of the decoded set stay close to the original's
    a, b = air_core.render(g, mode="sum"), air_core.render(d)
    assert b.shape == (3, H, W) and torch.isfinite(b).all()
    assert psnr(b.clamp(0, 1), a.clamp(0, 1)) > 30


def test_encode_decode_free_layout_alpha_renders(tmp_path):
    g = _free_set(alpha=True)
    path = tmp_path / "fit.air"
    stats = encode(g, path)
    assert stats.layout == "free" and stats.mask_bytes == 0 and stats.num_bytes == os.path.getsize(path)
    d = air_core.decode_gaussians(path, device="cpu")
    assert d.mode == "alpha" and "keep" not in d.metadata and len(d) == len(g)
    q = quantize(g)
    bound = torch.as_tensor(colour_error_bound(q), dtype=torch.float32)
    assert ((d.colours - g.colours).abs() <= bound * (1 + EPS) + 1e-6).all()
    a, b = air_core.render(g), air_core.render(d)
    assert psnr(b.clamp(0, 1), a.clamp(0, 1)) > 30


def test_keep_mask_forms_empty_stage_and_empty_set():
    g, keeps = _patch_set(stages=3, fractions=(0.5, 0.0, 1.0))
    assert not keeps[1].any() and keeps[2].all()
    forms = [keeps, torch.stack(keeps), torch.stack(keeps).numpy(), [k.numpy().astype(np.uint8) for k in keeps]]
    datas = [encode_bytes(g, keep=k, patch_size=PS)[0] for k in forms]
    assert all(x == datas[0] for x in datas)
    d = decode_bytes(datas[0])
    assert torch.equal(d.metadata["keep"], torch.stack(keeps))
    # a single [ph, pw] mask is one stage
    g0, k0 = _patch_set(stages=1, fractions=(0.3,))
    assert decode_bytes(encode_bytes(g0, keep=k0[0], patch_size=PS)[0]).metadata["keep"].shape == (1, 6, 8)
    # no Gaussians at all, both layouts
    ph, pw = patch_grid((H, W), PS)
    empty = Gaussians2D.empty((H, W))
    data, stats = encode_bytes(empty, keep=torch.zeros(2, ph, pw, dtype=torch.bool), patch_size=PS)
    d = decode_bytes(data)
    assert len(d) == 0 and d.metadata["keep"].shape == (2, ph, pw) and not d.metadata["keep"].any()
    assert math.isnan(stats.bits_per_gaussian) and stats.num_bytes == len(data)
    assert len(decode_bytes(encode_bytes(empty)[0])) == 0
    assert air_core.render(d).abs().max() == 0


def test_entropy_coding_beats_raw_bits_on_skewed_distribution():
    # heavy-tailed raw outputs, as a trained predictor gives (most offsets / residual colours near 0, a few
    # outliers stretching the adaptive range): the histogram model must pay off
    size, ps = (280, 280), 7
    ph, pw = patch_grid(size, ps)
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(3, ph * pw, 8, generator=gen) * 0.1
    outliers = torch.rand(3, ph * pw, 8, generator=gen) < 0.03
    raw = torch.where(outliers, torch.randn(3, ph * pw, 8, generator=gen) * 2, raw)
    keeps = [torch.ones(ph, pw, dtype=torch.bool), torch.rand(ph, pw, generator=gen) < 0.5,
             torch.rand(ph, pw, generator=gen) < 0.2]
    g = Gaussians2D.cat([decode_candidates(raw[s], size, ps)[keeps[s].reshape(-1)] for s in range(3)])
    assert len(g) > 2500
    _, stats = encode_bytes(g, keep=keeps, patch_size=ps)
    assert stats.raw_bits_per_gaussian == 53
    assert stats.bits_per_gaussian < 0.8 * 53, stats
    # the realistic random set of the other tests still codes below the raw budget, side information included
    g2, k2 = _patch_set(stages=2, fractions=(1.0, 0.5), raw_std=0.25, size=size, ps=ps)
    assert encode_bytes(g2, keep=k2, patch_size=ps)[1].bits_per_gaussian < 53
    # and never much worse than raw on a uniform one (side information is bounded by the shift choice)
    gen = torch.Generator().manual_seed(0)
    n = 200
    u = Gaussians2D(torch.rand(n, 2, generator=gen) * 100, torch.rand(n, 2, generator=gen) + 0.5,
                    torch.rand(n, generator=gen) * 3, torch.rand(n, 3, generator=gen), None, size)
    q = quantize(u)
    _, s2 = encode_bytes(u)
    # (a constant overhead of at most 12 bytes per stream: length, shift, histogram range, ANS state flush)
    assert 8 * sum(s2.channel_bytes.values()) / n <= q.raw_bits_per_gaussian + 8 * 12 * len(q.channels) / n


# -- errors -----------------------------------------------------------------------------------------------------------


def test_decode_errors(tmp_path):
    g, keeps = _patch_set()
    data, _ = encode_bytes(g, keep=keeps, patch_size=PS)
    bad = tmp_path / "bad.air"
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match=r"bad\.air.*not an \.air file"):
        decode(bad)
    with pytest.raises(ValueError, match="version 7"):
        decode_bytes(data[:4] + bytes([7]) + data[5:])
    for cut in list(range(1, 40)) + list(range(40, len(data), 37)) + [len(data) - 1]:
        with pytest.raises(ValueError, match="truncated"):
            decode_bytes(data[:cut])
    short = tmp_path / "short.air"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"short\.air.*truncated"):
        decode(short)
    with pytest.raises(ValueError, match="trailing"):
        decode_bytes(data + b"\x00")
    with pytest.raises(FileNotFoundError):
        decode(tmp_path / "missing.air")
    with pytest.raises(TypeError, match="data"):
        decode_bytes("not bytes")


def test_encode_argument_errors(tmp_path):
    g, keeps = _patch_set()
    ph, pw = patch_grid((H, W), PS)
    with pytest.raises(ValueError, match="patch_size is required"):
        encode_bytes(g, keep=keeps)
    with pytest.raises(ValueError, match="patch_size was given without keep"):
        encode_bytes(g, patch_size=PS)
    with pytest.raises(ValueError, match=r"keep\[1\] must have shape"):
        encode_bytes(g, keep=[keeps[0], keeps[1][:, :-1], keeps[2]], patch_size=PS)
    with pytest.raises(ValueError, match="keep must have shape"):
        encode_bytes(g, keep=torch.zeros(3, ph + 1, pw, dtype=torch.bool), patch_size=PS)
    with pytest.raises(ValueError, match="keep marks"):
        encode_bytes(g[:-1], keep=keeps, patch_size=PS)
    with pytest.raises(TypeError, match="keep must be boolean"):
        encode_bytes(g, keep=torch.stack(keeps).float(), patch_size=PS)
    with pytest.raises(TypeError, match="keep"):
        encode_bytes(g, keep="mask", patch_size=PS)
    with pytest.raises(TypeError, match="patch_size"):
        encode_bytes(g, keep=keeps, patch_size=7.0)
    for bits, exc, msg in [({"angle": 0}, ValueError, "angle"), ({"angle": 17}, ValueError, "angle"),
                           ({"angle": 7.5}, TypeError, "angle"), ({"angle": True}, TypeError, "angle"),
                           ({"wibble": 3}, ValueError, "wibble"), ([("angle", 3)], TypeError, "bits")]:
        with pytest.raises(exc, match=msg):
            encode_bytes(g, keep=keeps, patch_size=PS, bits=bits)
    nan = g.clone()
    nan.colours[0, 1] = float("nan")
    with pytest.raises(ValueError, match="colours contains NaN"):
        encode_bytes(nan, keep=keeps, patch_size=PS)
    inf = g.clone()
    inf.means[3, 0] = float("inf")
    with pytest.raises(ValueError, match="means contains NaN or Inf"):
        encode(inf, tmp_path / "x.air", keep=keeps, patch_size=PS)
    assert not os.listdir(tmp_path)  # nothing written on failure
    with pytest.raises(TypeError, match="gaussians"):
        encode_bytes({"means": 1})
    odd = Gaussians2D(g.means, g.scales, g.rotations, g.colours, None, g.image_size, {"mode": "max"})
    with pytest.raises(ValueError, match="mode"):
        encode_bytes(odd, keep=keeps, patch_size=PS)
    with pytest.raises(FileNotFoundError):
        encode(g, tmp_path / "no" / "x.air", keep=keeps, patch_size=PS)


def test_public_exports():
    assert air_core.encode_gaussians is codec.encode and air_core.decode_gaussians is codec.decode
    assert air_core.EncodeStats is codec.EncodeStats and air_core.codec is codec
    for name in ("codec", "encode_gaussians", "decode_gaussians", "EncodeStats"):
        assert name in air_core.__all__
