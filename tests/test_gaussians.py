"""Tests of air_core.gaussians: conversions, the Gaussians2D container and its .npz file format."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from air_core.gaussians import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Gaussians2D,
    cholesky_from_covariances,
    conics_from_covariances,
    conics_from_scales_rotations,
    covariances_from_cholesky,
    covariances_from_scales_rotations,
    load_gaussians,
    save_gaussians,
    scales_rotations_from_covariances,
)


def _random_params(n, seed=0, dtype=torch.float64, channels=3):
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([50.0, 40.0], dtype=dtype)
    scales = 0.5 + 4.0 * torch.rand(n, 2, generator=gen, dtype=dtype)
    rotations = (torch.rand(n, generator=gen, dtype=dtype) - 0.5) * 2 * math.pi
    colours = torch.randn(n, channels, generator=gen, dtype=dtype)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=gen, dtype=dtype)
    return means, scales, rotations, colours, opacities


def _gaussians(n=7, seed=0, dtype=torch.float32, opacities=True, image_size=(40, 50), channels=3, metadata=None):
    m, s, r, c, o = _random_params(n, seed, torch.float64, channels)
    return Gaussians2D(m.to(dtype), s.to(dtype), r.to(dtype), c.to(dtype), o.to(dtype) if opacities else None,
                       image_size, dict(metadata or {}))


def _rot(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# conversions
# ----------------------------------------------------------------------------------------------


def test_covariances_match_explicit_rotation_formula():
    _, scales, rotations, _, _ = _random_params(20, seed=1)
    cov = covariances_from_scales_rotations(scales, rotations)
    assert cov.shape == (20, 2, 2) and cov.dtype == torch.float64
    for k in range(20):
        r = _rot(float(rotations[k]))
        expected = r @ torch.diag(scales[k] ** 2) @ r.T
        torch.testing.assert_close(cov[k], expected, rtol=1e-12, atol=1e-12)


def test_covariance_of_known_rotation():
    # 90 degrees swaps the axes: s = (3, 1) rotated by pi/2 -> var_x = 1, var_y = 9
    cov = covariances_from_scales_rotations(torch.tensor([[3.0, 1.0]], dtype=torch.float64),
                                            torch.tensor([math.pi / 2], dtype=torch.float64))
    torch.testing.assert_close(cov[0], torch.tensor([[1.0, 0.0], [0.0, 9.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # 45 degrees: cov_xy = cos sin (v1 - v2) = 0.5 * (9 - 1) = 4
    cov = covariances_from_scales_rotations(torch.tensor([[3.0, 1.0]], dtype=torch.float64),
                                            torch.tensor([math.pi / 4], dtype=torch.float64))
    torch.testing.assert_close(cov[0], torch.tensor([[5.0, 4.0], [4.0, 5.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_conics_are_inverse_covariances():
    _, scales, rotations, _, _ = _random_params(30, seed=2)
    cov = covariances_from_scales_rotations(scales, rotations)
    inv = torch.linalg.inv(cov)
    for conics in (conics_from_scales_rotations(scales, rotations), conics_from_covariances(cov)):
        assert conics.shape == (30, 3)
        torch.testing.assert_close(conics[:, 0], inv[:, 0, 0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(conics[:, 1], inv[:, 0, 1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(conics[:, 2], inv[:, 1, 1], rtol=1e-10, atol=1e-12)


def test_conics_from_covariances_rejects_non_positive_definite():
    cov = torch.tensor([[[1.0, 2.0], [2.0, 1.0]]], dtype=torch.float64)  # det = -3
    with pytest.raises(ValueError, match="positive definite"):
        conics_from_covariances(cov)


def test_cholesky_reproduces_covariance():
    _, scales, rotations, _, _ = _random_params(25, seed=3)
    cov = covariances_from_scales_rotations(scales, rotations)
    chol = cholesky_from_covariances(cov)
    assert chol.shape == (25, 3)
    assert bool((chol[:, 0] > 0).all()) and bool((chol[:, 2] > 0).all())
    lower = torch.zeros(25, 2, 2, dtype=torch.float64)
    lower[:, 0, 0], lower[:, 1, 0], lower[:, 1, 1] = chol[:, 0], chol[:, 1], chol[:, 2]
    torch.testing.assert_close(lower @ lower.transpose(1, 2), cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(covariances_from_cholesky(chol), cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lower, torch.linalg.cholesky(cov), rtol=1e-10, atol=1e-10)


def test_scales_rotations_from_axis_aligned_covariances():
    cov = torch.tensor([[[9.0, 0.0], [0.0, 4.0]],    # x is the long axis -> theta 0
                        [[4.0, 0.0], [0.0, 9.0]]],   # y is the long axis -> theta pi/2
                       dtype=torch.float64)
    scales, rot = scales_rotations_from_covariances(cov)
    torch.testing.assert_close(scales, torch.tensor([[3.0, 2.0], [3.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(rot, torch.tensor([0.0, math.pi / 2], dtype=torch.float64), rtol=0, atol=1e-12)


def test_scales_rotations_from_rotated_covariances():
    # descending scales and angles in [0, pi): recovered exactly
    scales = torch.tensor([[3.0, 1.0], [2.5, 0.5], [4.0, 3.9], [1.2, 0.7]], dtype=torch.float64)
    rot = torch.tensor([0.3, 1.2, 2.9, 0.01], dtype=torch.float64)
    s2, r2 = scales_rotations_from_covariances(covariances_from_scales_rotations(scales, rot))
    torch.testing.assert_close(s2, scales, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(r2, rot, rtol=1e-10, atol=1e-10)
    # any scales/angles: same covariance back, descending scales, angle in [0, pi)
    _, scales, rotations, _, _ = _random_params(40, seed=4)
    cov = covariances_from_scales_rotations(scales, rotations)
    s3, r3 = scales_rotations_from_covariances(cov)
    assert bool((s3[:, 0] >= s3[:, 1]).all())
    assert bool((r3 >= 0).all()) and bool((r3 < math.pi).all())
    torch.testing.assert_close(covariances_from_scales_rotations(s3, r3), cov, rtol=1e-10, atol=1e-10)


def test_from_covariances_and_from_cholesky_round_trip():
    means, scales, rotations, colours, opac = _random_params(12, seed=5)
    cov = covariances_from_scales_rotations(scales, rotations)
    g = Gaussians2D.from_covariances(means, cov, colours, opac, (40, 50), {"mode": "alpha"})
    torch.testing.assert_close(g.covariances(), cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g.means, means)
    assert g.metadata == {"mode": "alpha"} and g.image_size == (40, 50)
    chol = cholesky_from_covariances(cov)
    g2 = Gaussians2D.from_cholesky(means, chol, colours, None, (40, 50))
    torch.testing.assert_close(g2.covariances(), cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g2.cholesky(), chol, rtol=1e-10, atol=1e-10)
    inv = torch.linalg.inv(cov)
    torch.testing.assert_close(g2.conics(), torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="covariances"):
        Gaussians2D.from_covariances(means, cov[:, 0], colours, image_size=(4, 4))
    with pytest.raises(ValueError, match="cholesky"):
        Gaussians2D.from_cholesky(means, chol[:, :2], colours, image_size=(4, 4))


# ----------------------------------------------------------------------------------------------
# the container
# ----------------------------------------------------------------------------------------------


def test_construction_from_numpy_and_properties():
    m, s, r, c, o = (t.numpy().astype(np.float32) for t in _random_params(5, seed=6))
    g = Gaussians2D(m, s, r, c, o, (40, 50))
    assert isinstance(g.means, torch.Tensor) and g.dtype == torch.float32
    assert len(g) == 5 and g.num_gaussians == 5 and g.num_channels == 3
    assert g.device == torch.device("cpu")
    np.testing.assert_array_equal(g.means.numpy(), m)
    assert "N=5" in repr(g)


@pytest.mark.parametrize(
    "field, change, exc, pattern",
    [
        ("means", lambda p: p.update(means=p["means"][:, :1]), ValueError, r"means must have shape \[N, 2\]"),
        ("means", lambda p: p.update(means=p["means"][0]), ValueError, r"means must have shape"),
        ("scales", lambda p: p.update(scales=p["scales"][:4]), ValueError, r"scales must have N = 5"),
        ("scales", lambda p: p.update(scales=p["scales"][:, :1]), ValueError, r"scales must have shape"),
        ("rotations", lambda p: p.update(rotations=p["rotations"][:3]), ValueError, r"rotations must have N = 5"),
        ("rotations", lambda p: p.update(rotations=p["rotations"][:, None]), ValueError,
         r"rotations must have shape"),
        ("colours", lambda p: p.update(colours=p["colours"][:2]), ValueError, r"colours must have N = 5"),
        ("colours", lambda p: p.update(colours=p["colours"][:, 0]), ValueError, r"colours must have shape"),
        ("colours", lambda p: p.update(colours=p["colours"][:, :0]), ValueError, r"colours must have at least"),
        ("opacities", lambda p: p.update(opacities=p["opacities"][:4]), ValueError, r"opacities must have N = 5"),
        ("means", lambda p: p.update(means=[[1.0, 2.0]] * 5), TypeError, r"means must be a torch.Tensor"),
        ("image_size", lambda p: p.update(image_size=(0, 10)), ValueError, r"image_size must be positive"),
        ("image_size", lambda p: p.update(image_size=(10, -3)), ValueError, r"image_size must be positive"),
        ("image_size", lambda p: p.update(image_size=None), TypeError, r"image_size must be a pair"),
        ("image_size", lambda p: p.update(image_size=(1, 2, 3)), TypeError, r"image_size must be a pair"),
        ("metadata", lambda p: p.update(metadata=[1]), TypeError, r"metadata must be a dict"),
        ("dtype", lambda p: p.update(scales=p["scales"].double()), ValueError, r"share one dtype: scales"),
        ("dtype", lambda p: p.update(opacities=p["opacities"].double()), ValueError, r"share one dtype: opacities"),
    ],
)
def test_construction_validation(field, change, exc, pattern):
    m, s, r, c, o = (t.float() for t in _random_params(5, seed=7))
    params = dict(means=m, scales=s, rotations=r, colours=c, opacities=o, image_size=(40, 50), metadata={})
    change(params)
    with pytest.raises(exc, match=pattern):
        Gaussians2D(**params)


def test_integer_tensors_become_float32():
    g = Gaussians2D(torch.tensor([[1, 2]]), torch.tensor([[1, 1]]), torch.tensor([0]), torch.tensor([[1, 0, 0]]),
                    None, (4, 4))
    assert g.dtype == torch.float32 and g.colours.dtype == torch.float32


def test_to_dtype_detach_clone():
    g = _gaussians(6, seed=8, dtype=torch.float32)
    g64 = g.to(dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in g64._tensors())
    torch.testing.assert_close(g64.means, g.means.double())
    assert g64.image_size == g.image_size and g64.metadata == g.metadata
    g64.metadata["x"] = 1
    assert "x" not in g.metadata

    means = g.means.clone().requires_grad_(True)
    gg = Gaussians2D(means, g.scales, g.rotations, g.colours, g.opacities, g.image_size)
    d = gg.detach()
    assert not d.means.requires_grad and gg.means.requires_grad
    c = gg.clone()
    assert not c.means.requires_grad
    before = gg.means.detach().clone()
    c.means[0, 0] = 1234.0
    c.scales[0, 0] = 99.0
    torch.testing.assert_close(gg.means.detach(), before)  # clone is independent
    assert float(gg.scales[0, 0]) != 99.0
    d.means[1, 1] = -7.0  # detach shares storage (documented torch semantics)
    assert float(gg.means.detach()[1, 1]) == -7.0


def test_getitem_int_slice_mask_index():
    g = _gaussians(6, seed=9)
    for idx in (0, 3, -1, -2):
        one = g[idx]
        assert len(one) == 1
        torch.testing.assert_close(one.means[0], g.means[idx])
        torch.testing.assert_close(one.opacities[0], g.opacities[idx])
    s = g[1:4]
    assert len(s) == 3
    torch.testing.assert_close(s.colours, g.colours[1:4])
    mask = torch.tensor([True, False, True, False, False, True])
    sel = g[mask]
    assert len(sel) == 3
    torch.testing.assert_close(sel.rotations, g.rotations[[0, 2, 5]])
    sel_np = g[mask.numpy()]
    torch.testing.assert_close(sel_np.scales, g.scales[[0, 2, 5]])
    idx = torch.tensor([5, 0, 5])
    sel = g[idx]
    torch.testing.assert_close(sel.means, g.means[[5, 0, 5]])
    assert sel.image_size == g.image_size
    with pytest.raises(ValueError, match="boolean mask must have shape"):
        g[torch.tensor([True, False])]


def test_cat_keeps_order_and_checks_compatibility():
    a = _gaussians(3, seed=10, metadata={"mode": "alpha"})
    b = _gaussians(4, seed=11)
    ab = Gaussians2D.cat([a, b])
    assert len(ab) == 7
    torch.testing.assert_close(ab.means, torch.cat([a.means, b.means]))
    torch.testing.assert_close(ab.opacities, torch.cat([a.opacities, b.opacities]))
    torch.testing.assert_close(Gaussians2D.cat([b, a]).colours, torch.cat([b.colours, a.colours]))
    assert ab.metadata == {"mode": "alpha"}
    with pytest.raises(ValueError, match="image sizes"):
        Gaussians2D.cat([a, _gaussians(2, seed=12, image_size=(41, 50))])
    with pytest.raises(ValueError, match="colour channels"):
        Gaussians2D.cat([a, _gaussians(2, seed=12, channels=1)])
    with pytest.raises(ValueError, match="opacities"):
        Gaussians2D.cat([a, _gaussians(2, seed=12, opacities=False)])
    with pytest.raises(ValueError, match="items"):
        Gaussians2D.cat([])


def test_empty_and_mode():
    e = Gaussians2D.empty((8, 9))
    assert len(e) == 0 and e.image_size == (8, 9) and e.num_channels == 3 and e.opacities is None
    assert e.mode == "sum"
    ea = Gaussians2D.empty((8, 9), num_channels=1, with_opacities=True, dtype=torch.float64)
    assert ea.mode == "alpha" and ea.dtype == torch.float64 and ea.opacities.shape == (0,)
    assert ea.validate() is ea
    assert _gaussians(2, opacities=True).mode == "alpha"
    assert _gaussians(2, opacities=False).mode == "sum"
    assert _gaussians(2, opacities=True, metadata={"mode": "sum"}).mode == "sum"


@pytest.mark.parametrize(
    "field, value, pattern",
    [
        ("means", float("nan"), "means contains NaN"),
        ("rotations", float("inf"), "rotations contains NaN"),
        ("colours", float("nan"), "colours contains NaN"),
        ("scales", 0.0, "scales must be > 0"),
        ("scales", -1.0, "scales must be > 0"),
        ("opacities", 1.5, r"opacities must lie in \[0, 1\]"),
        ("opacities", -0.1, r"opacities must lie in \[0, 1\]"),
    ],
)
def test_validate_errors(field, value, pattern):
    g = _gaussians(4, seed=13)
    assert g.validate() is g
    t = getattr(g, field)
    t.view(-1)[1] = value
    with pytest.raises(ValueError, match=pattern):
        g.validate()


# ----------------------------------------------------------------------------------------------
# file format
# ----------------------------------------------------------------------------------------------


def _assert_same(a: Gaussians2D, b: Gaussians2D):
    for name in ("means", "scales", "rotations", "colours"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if a.opacities is None:
        assert b.opacities is None
    else:
        assert torch.equal(a.opacities, b.opacities)
    assert a.image_size == b.image_size
    assert a.metadata == b.metadata


@pytest.mark.parametrize("with_opacities", [True, False])
def test_save_load_round_trip_exact(tmp_path, with_opacities):
    meta = {"mode": "alpha" if with_opacities else "sum", "note": "héllo", "stages": [1, 2, 3]}
    g = _gaussians(33, seed=14, opacities=with_opacities, image_size=(37, 51), metadata=meta)
    path = tmp_path / "g.npz"
    g.save(path)
    loaded = Gaussians2D.load(path)
    _assert_same(g, loaded)
    assert loaded.dtype == torch.float32
    # the stored arrays follow the documented format
    with np.load(path) as data:
        assert str(data["format"]) == FORMAT_NAME
        assert int(data["version"]) == FORMAT_VERSION == 1
        assert data["means"].dtype == np.float32 and data["image_size"].dtype == np.int64
        assert ("opacities" in data.files) == with_opacities
    # float64 input is stored as float32
    save_gaussians(g.to(dtype=torch.float64), tmp_path / "g64.npz")
    _assert_same(g, load_gaussians(str(tmp_path / "g64.npz")))
    assert sorted(os.listdir(tmp_path)) == ["g.npz", "g64.npz"]


def test_save_errors(tmp_path):
    g = _gaussians(2)
    with pytest.raises(TypeError, match="gaussians must be a Gaussians2D"):
        save_gaussians("not gaussians", tmp_path / "x.npz")
    bad = _gaussians(2, metadata={"f": object()})
    with pytest.raises(ValueError, match="metadata is not JSON"):
        bad.save(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        g.save(tmp_path / "missing_dir" / "x.npz")
    assert os.listdir(tmp_path) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "g.npz"
    _gaussians(5, seed=15).save(path)
    original = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _gaussians(9, seed=16).save(path)
    assert os.listdir(tmp_path) == ["g.npz"]  # no temporary file left behind
    assert path.read_bytes() == original  # the previous file is untouched
    new = tmp_path / "new.npz"
    with pytest.raises(RuntimeError, match="disk full"):
        _gaussians(9, seed=16).save(new)
    assert not new.exists()
    assert os.listdir(tmp_path) == ["g.npz"]


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gaussians(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        load_gaussians(tmp_path)  # a folder is not a file


def _valid_bytes(tmp_path, n=200):
    path = tmp_path / "valid.npz"
    _gaussians(n, seed=17).save(path)
    return path.read_bytes()


def test_load_truncated_file(tmp_path):
    data = _valid_bytes(tmp_path)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_gaussians(bad)
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_gaussians(bad)


def test_load_corrupted_file(tmp_path):
    data = bytearray(_valid_bytes(tmp_path))
    mid = len(data) // 2
    for k in range(mid, mid + 16):
        data[k] ^= 0x5A
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_gaussians(bad)


def test_load_text_and_npy_files(tmp_path):
    txt = tmp_path / "g.npz"
    txt.write_text("this is not a Gaussian file\n" * 10)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_gaussians(txt)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError):
        load_gaussians(npy)


def _write_npz(path, **overrides):
    arrays = {
        "format": np.array(FORMAT_NAME),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "means": np.ones((2, 2), np.float32),
        "scales": np.ones((2, 2), np.float32),
        "rotations": np.zeros(2, np.float32),
        "colours": np.ones((2, 3), np.float32),
        "image_size": np.array([4, 5], np.int64),
        "metadata": np.array("{}"),
    }
    for key, value in overrides.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


def test_save_refuses_invalid_values_and_writes_nothing(tmp_path):
    g = _gaussians(4, seed=18)
    g.means[2, 0] = float("nan")
    with pytest.raises(ValueError, match="means contains NaN"):
        g.save(tmp_path / "nan.npz")
    assert list(tmp_path.iterdir()) == []


def test_getitem_numpy_and_tensor_scalars():
    g = _gaussians(4, seed=3)
    for index in (np.int64(1), torch.tensor(1), 1):
        sub = g[index]
        assert len(sub) == 1 and torch.equal(sub.means[0], g.means[1])
    with pytest.raises(TypeError, match="bool"):
        g[True]


def test_load_hand_written_file(tmp_path):
    g = load_gaussians(_write_npz(tmp_path / "ok.npz"))
    assert len(g) == 2 and g.image_size == (4, 5) and g.opacities is None and g.mode == "sum"


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"version": np.array(99, np.int64)}, "version 99"),
        ({"version": None}, "version"),
        ({"format": np.array("something-else")}, "not an AIR Gaussian file"),
        ({"format": None}, "not an AIR Gaussian file"),
        ({"means": np.array([[np.nan, 1.0], [1.0, 1.0]], np.float32)}, "means contains NaN"),
        ({"scales": np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)}, "scales must be > 0"),
        ({"opacities": np.array([0.5, 2.0], np.float32)}, "opacities must lie"),
        ({"colours": None}, "missing the entries"),
        ({"means": np.ones((3, 2), np.float32)}, "invalid Gaussians"),
        ({"metadata": np.array("{not json")}, "corrupted metadata"),
        ({"image_size": np.array([0, 5], np.int64)}, "image_size must be positive"),
    ],
)
def test_load_bad_contents(tmp_path, overrides, pattern):
    path = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=pattern):
        load_gaussians(path)
