"""Tests of air_core.splat3d.scene: the GaussianScene container, its activations and the INRIA .ply I/O."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from air_core.splat3d.scene import GaussianScene, load_ply, save_ply
from air_core.splat3d.sh import SH_C0

SPLATS = Path(__file__).parents[2] / "shared" / "data" / "splats"
REAL_SCENES = {
    # file: (Gaussians, SH degree, normals, extra properties)
    "v3dg_donut_iter30000_fused.ply": (45_624, 0, False, []),
    "kacytran1122_try_iter7000.ply": (9_080, 3, True, []),
    "loadersgl_tandt_train_1000.ply": (1_000, 3, True, []),
    "supersplat_pr291_fruit_drops_minimal.ply": (4_721, 3, True, ["transform"]),
}


def _real(name: str) -> Path:
    path = SPLATS / name
    if not path.is_file():
        pytest.skip(f"shared splat data not available: {path} is missing")
    return path


# ----------------------------------------------------------------------------------------------
# Synthetic PLY files
# ----------------------------------------------------------------------------------------------

_NP_TYPES = {"float": "f4", "double": "f8", "int": "i4", "uchar": "u1", "short": "i2"}


def _columns(n: int = 5, degree: int = 1, normals: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 columns in INRIA order."""
    rng = np.random.default_rng(seed)
    names = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals else []) + ["f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * ((degree + 1) ** 2 - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return {name: rng.normal(size=n).astype(np.float32) for name in names}


def _write_ply(path: Path, columns: dict[str, np.ndarray], *, fmt: str = "binary_little_endian",
               types: dict[str, str] | None = None, declared: int | None = None) -> Path:
    """Write a one-element PLY by hand (header + body), independent of the code under test."""
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    ply_types = {k: (types or {}).get(k, "float") for k in names}
    lines = ["ply", f"format {fmt} 1.0", "comment written by the test",
             f"element vertex {n if declared is None else declared}"]
    lines += [f"property {ply_types[k]} {k}" for k in names] + ["end_header"]
    head = ("\n".join(lines) + "\n").encode("ascii")
    if fmt == "ascii":
        rows = [" ".join(repr(columns[k][i].item()) for k in names) for i in range(n)]
        body = ("\n".join(rows) + "\n").encode("ascii")
    else:
        endian = "<" if fmt == "binary_little_endian" else ">"
        rec = np.empty(n, dtype=[(k, endian + _NP_TYPES[ply_types[k]]) for k in names])
        for k in names:
            rec[k] = columns[k]
        body = rec.tobytes()
    path.write_bytes(head + body)
    return path


def _expected_sh(columns: dict[str, np.ndarray], degree: int) -> np.ndarray:
    k = (degree + 1) ** 2
    n = len(columns["x"])
    sh = np.zeros((n, k, 3), np.float32)
    for c in range(3):
        sh[:, 0, c] = columns[f"f_dc_{c}"]
        for j in range(k - 1):
            sh[:, 1 + j, c] = columns[f"f_rest_{c * (k - 1) + j}"]
    return sh


def _assert_matches_columns(scene: GaussianScene, columns: dict[str, np.ndarray], degree: int, normals: bool) -> None:
    col = lambda *names: np.stack([columns[n] for n in names], -1)  # noqa: E731
    np.testing.assert_array_equal(scene.means.numpy(), col("x", "y", "z"))
    np.testing.assert_array_equal(scene.log_scales.numpy(), col("scale_0", "scale_1", "scale_2"))
    np.testing.assert_array_equal(scene.quats.numpy(), col("rot_0", "rot_1", "rot_2", "rot_3"))
    np.testing.assert_array_equal(scene.opacity_logits.numpy(), columns["opacity"])
    np.testing.assert_array_equal(scene.sh_coeffs.numpy(), _expected_sh(columns, degree))
    if normals:
        np.testing.assert_array_equal(scene.normals.numpy(), col("nx", "ny", "nz"))
    else:
        assert scene.normals is None


def _header_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    return data[: data.index(b"end_header\n")].decode("ascii").splitlines()


def _random_scene(n: int = 6, degree: int = 2, normals: bool = True, seed: int = 0, extra=None) -> GaussianScene:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return GaussianScene(r(n, 3), r(n, 3), r(n, 4), r(n), r(n, (degree + 1) ** 2, 3), r(n, 3) if normals else None,
                         dict(extra or {}), {"name": "test"})


# ----------------------------------------------------------------------------------------------
# Real scenes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REAL_SCENES))
def test_load_real_scene(name):
    count, degree, normals, extra = REAL_SCENES[name]
    scene = load_ply(_real(name))
    assert len(scene) == scene.num_gaussians == count
    assert scene.sh_degree == degree
    assert scene.sh_coeffs.shape == (count, (degree + 1) ** 2, 3)
    assert (scene.normals is not None) == normals
    assert sorted(scene.extra) == extra
    assert scene.dtype == torch.float32 and scene.device.type == "cpu"
    assert scene.metadata == {"source": str(SPLATS / name)}
    for t in (scene.means, scene.log_scales, scene.quats, scene.opacity_logits, scene.sh_coeffs):
        assert bool(torch.isfinite(t).all())
    assert bool(((scene.opacities > 0) & (scene.opacities < 1)).all())


def test_real_scene_extra_property_kept():
    scene = load_ply(_real("supersplat_pr291_fruit_drops_minimal.ply"))
    transform = scene.extra["transform"]
    assert transform.dtype == np.float32 and transform.shape == (4_721,)


def test_real_scene_sizes():
    lo, hi = load_ply(_real("v3dg_donut_iter30000_fused.ply")).bounds()
    assert 0.1 < float((hi - lo).max()) < 0.4  # "about 0.2 units across"
    lo, hi = load_ply(_real("kacytran1122_try_iter7000.ply")).bounds()
    assert float((hi - lo).max()) > 500  # large coordinates


@pytest.mark.parametrize("name", sorted(REAL_SCENES))
def test_real_scene_round_trip_is_exact(name, tmp_path):
    src = _real(name)
    scene = load_ply(src)
    out = tmp_path / "copy.ply"
    save_ply(scene, out)
    again = load_ply(out)
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh_coeffs"):
        assert torch.equal(getattr(again, field), getattr(scene, field)), field
    assert (again.normals is None) == (scene.normals is None)
    if scene.normals is not None:
        assert torch.equal(again.normals, scene.normals)
    assert sorted(again.extra) == sorted(scene.extra)
    for key, value in scene.extra.items():
        np.testing.assert_array_equal(again.extra[key], value)
        assert again.extra[key].dtype == value.dtype
    # these files use the INRIA order, so the written vertex data is byte-identical to the source
    a, b = src.read_bytes(), out.read_bytes()
    assert a[a.index(b"end_header\n"):] == b[b.index(b"end_header\n"):]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def test_written_header_order(tmp_path):
    extra = {"zeta": np.arange(6, dtype=np.float32), "alpha": np.arange(6, dtype=np.int32)}
    scene = _random_scene(degree=1, extra=extra)
    out = tmp_path / "s.ply"
    save_ply(scene, out)
    lines = _header_lines(out)
    assert lines[:2] == ["ply", f"format binary_{sys.byteorder}_endian 1.0"]
    assert lines[2].startswith("comment ")
    assert lines[3] == "element vertex 6"
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert lines[4:] == [f"property float {p}" for p in expected] + ["property float zeta", "property int32 alpha"]


def test_written_header_without_normals_degree0(tmp_path):
    out = tmp_path / "s.ply"
    save_ply(_random_scene(degree=0, normals=False), out)
    props = [line.split()[-1] for line in _header_lines(out) if line.startswith("property")]
    assert props == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                     "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("normals", [True, False])
def test_round_trip_synthetic(tmp_path, degree, normals):
    extra = {"label": np.array([3, 1, 4, 1, 5, 9], np.int32), "weight": np.linspace(0, 1, 6, dtype=np.float32)}
    scene = _random_scene(degree=degree, normals=normals, extra=extra)
    out = tmp_path / "s.ply"
    save_ply(scene, out)
    again = load_ply(out)
    assert again.sh_degree == degree
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh_coeffs"):
        assert torch.equal(getattr(again, field), getattr(scene, field))
    assert (again.normals is None) == (not normals)
    if normals:
        assert torch.equal(again.normals, scene.normals)
    assert list(again.extra) == ["label", "weight"]
    for key in extra:
        np.testing.assert_array_equal(again.extra[key], extra[key])
        assert again.extra[key].dtype == extra[key].dtype


def test_save_float64_scene(tmp_path):
    scene = _random_scene().to(dtype=torch.float64)
    save_ply(scene, tmp_path / "s.ply")
    again = load_ply(tmp_path / "s.ply", dtype=torch.float64)
    assert again.dtype == torch.float64
    torch.testing.assert_close(again.means, scene.means.float().double())


def test_save_refuses_invalid_scene_and_keeps_old_file(tmp_path):
    out = tmp_path / "s.ply"
    out.write_bytes(b"previous content")
    scene = _random_scene()
    scene.opacity_logits[2] = float("nan")
    with pytest.raises(ValueError, match="opacity_logits contains 1 NaN"):
        save_ply(scene, out)
    scene = _random_scene()
    scene.quats[0] = 0.0
    with pytest.raises(ValueError, match="zero quaternions"):
        save_ply(scene, out)
    with pytest.raises(ValueError, match="no Gaussians"):
        save_ply(_random_scene()[torch.zeros(6, dtype=torch.bool)], out)
    with pytest.raises(ValueError, match="extra\\['flag'\\].*bool"):
        save_ply(_random_scene(extra={"flag": np.ones(6, bool)}), out)
    assert out.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["s.ply"]  # no temporary files left behind


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match="scene must be a GaussianScene"):
        save_ply("not a scene", tmp_path / "s.ply")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_ply(_random_scene(), tmp_path / "missing" / "s.ply")


# ----------------------------------------------------------------------------------------------
# Reading synthetic files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("normals", [True, False])
def test_load_synthetic_degrees(tmp_path, degree, normals):
    columns = _columns(n=7, degree=degree, normals=normals)
    scene = load_ply(_write_ply(tmp_path / "s.ply", columns))
    assert scene.sh_degree == degree
    _assert_matches_columns(scene, columns, degree, normals)


def test_load_any_property_order(tmp_path):
    columns = _columns(n=9, degree=2, normals=True, seed=3)
    names = list(columns)
    order = np.random.default_rng(1).permutation(len(names))
    shuffled = {names[i]: columns[names[i]] for i in order}
    shuffled["my_extra"] = np.arange(9, dtype=np.float32)
    scene = load_ply(_write_ply(tmp_path / "s.ply", shuffled))
    _assert_matches_columns(scene, columns, 2, True)
    np.testing.assert_array_equal(scene.extra["my_extra"], np.arange(9, dtype=np.float32))


def test_load_big_endian_double_and_int_extra(tmp_path):
    columns = _columns(n=4, degree=1, normals=False)
    columns["count"] = np.array([1, 2, 3, 4], np.int32)
    types = {"x": "double", "opacity": "double", "count": "int"}
    scene = load_ply(_write_ply(tmp_path / "s.ply", columns, fmt="binary_big_endian", types=types))
    _assert_matches_columns(scene, columns, 1, False)
    assert scene.extra["count"].dtype == np.int32 and scene.extra["count"].dtype.isnative
    np.testing.assert_array_equal(scene.extra["count"], [1, 2, 3, 4])
    save_ply(scene, tmp_path / "again.ply")  # native byte order again: writable
    np.testing.assert_array_equal(load_ply(tmp_path / "again.ply").extra["count"], [1, 2, 3, 4])


def test_load_ascii(tmp_path):
    columns = _columns(n=3, degree=1, normals=True)
    _assert_matches_columns(load_ply(_write_ply(tmp_path / "s.ply", columns, fmt="ascii")), columns, 1, True)
    reordered = {"opacity": columns["opacity"], **{k: v for k, v in columns.items() if k != "opacity"}}
    with pytest.raises(ValueError, match="ASCII PLY.*x y z"):
        load_ply(_write_ply(tmp_path / "t.ply", reordered, fmt="ascii"))


def test_load_device_and_dtype(tmp_path):
    path = _write_ply(tmp_path / "s.ply", _columns())
    scene = load_ply(path, device="cpu", dtype=torch.float64)
    assert scene.dtype == torch.float64
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        load_ply(path, dtype=torch.int32)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_ply(tmp_path / "nope.ply")


@pytest.mark.parametrize("cut", [1, 37, 4 * 23])  # mid-value, mid-vertex, exactly one whole vertex (23 floats)
def test_load_truncated(tmp_path, cut):
    path = _write_ply(tmp_path / "s.ply", _columns(n=5, degree=1, normals=False))
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ValueError, match="s.ply.*truncated"):
        load_ply(path)


def test_load_truncated_header(tmp_path):
    path = _write_ply(tmp_path / "s.ply", _columns())
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"end_header")])
    with pytest.raises(ValueError, match="no 'end_header'"):
        load_ply(path)


def test_load_truncated_ascii(tmp_path):
    path = _write_ply(tmp_path / "s.ply", _columns(n=4), fmt="ascii")
    text = path.read_bytes()
    path.write_bytes(text[: text.rindex(b"\n", 0, len(text) - 1) + 1])  # drop the last vertex line
    with pytest.raises(ValueError, match="header declares 4 vertices, 3 could be read"):
        load_ply(path)


@pytest.mark.parametrize("missing", ["x", "opacity", "scale_1", "rot_3", "f_dc_2"])
def test_load_missing_property(tmp_path, missing):
    columns = _columns()
    del columns[missing]
    with pytest.raises(ValueError, match=f"missing vertex properties \\['{missing}'\\]"):
        load_ply(_write_ply(tmp_path / "s.ply", columns))


def test_load_nan_and_inf(tmp_path):
    columns = _columns(n=6)
    columns["opacity"][[1, 4]] = np.nan
    columns["scale_2"][0] = np.inf
    with pytest.raises(ValueError, match=r"s\.ply.*NaN/Inf.*opacity \(2\), scale_2 \(1\)"):
        load_ply(_write_ply(tmp_path / "s.ply", columns))


def test_load_garbage(tmp_path):
    path = tmp_path / "garbage.ply"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="garbage.ply.*not a PLY file"):
        load_ply(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a PLY file"):
        load_ply(path)
    path.write_bytes(b"ply\n\xff\xfe\x00binary junk\nend_header\n")
    with pytest.raises(ValueError, match="corrupted PLY header"):
        load_ply(path)
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nbogus line\n"
                     b"end_header\n")
    with pytest.raises(ValueError, match="invalid PLY header line"):
        load_ply(path)


def test_load_meshio_failure_is_wrapped(tmp_path):
    columns = _columns()
    columns["small"] = np.zeros(5, np.int16)  # meshio's binary reader has no "short" type
    with pytest.raises(ValueError, match="s.ply. could not be parsed as a PLY file: KeyError"):
        load_ply(_write_ply(tmp_path / "s.ply", columns, types={"small": "short"}))


def test_load_without_vertices(tmp_path):
    columns = _columns(n=0)
    with pytest.raises(ValueError, match="no vertices"):
        load_ply(_write_ply(tmp_path / "s.ply", columns))
    path = tmp_path / "faces.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    with pytest.raises(ValueError, match="no vertices"):
        load_ply(path)


def test_load_bad_f_rest(tmp_path):
    columns = _columns(degree=1)
    columns["f_rest_9"] = columns["f_rest_0"]
    with pytest.raises(ValueError, match="10 f_rest_\\* properties; expected 0, 9, 24 or 45"):
        load_ply(_write_ply(tmp_path / "s.ply", columns))
    columns = _columns(degree=1)
    columns["f_rest_12"] = columns.pop("f_rest_4")
    with pytest.raises(ValueError, match="not numbered 0..8: missing \\[4\\]"):
        load_ply(_write_ply(tmp_path / "t.ply", columns))


def test_load_partial_normals_and_list_property(tmp_path):
    columns = _columns(normals=True)
    del columns["nz"]
    with pytest.raises(ValueError, match="not all of nx, ny, nz"):
        load_ply(_write_ply(tmp_path / "s.ply", columns))
    path = tmp_path / "t.ply"
    data = _write_ply(path, _columns()).read_bytes()
    path.write_bytes(data.replace(b"end_header\n", b"property list uchar int idx\nend_header\n"))
    with pytest.raises(ValueError, match="list properties \\['idx'\\]"):
        load_ply(path)


# ----------------------------------------------------------------------------------------------
# The container: activations, construction, selection
# ----------------------------------------------------------------------------------------------


def test_activations_hand_values():
    half = math.pi / 8  # quaternion of a 45 degree rotation about z: (cos 22.5, 0, 0, sin 22.5)
    scene = GaussianScene(
        means=torch.zeros(2, 3),
        log_scales=torch.tensor([[0.0, math.log(2.0), math.log(0.5)], [1.0, 1.0, 1.0]]),
        quats=torch.tensor([[2 * math.cos(half), 0.0, 0.0, 2 * math.sin(half)], [0.0, 3.0, 0.0, 0.0]]),
        opacity_logits=torch.tensor([0.0, math.log(3.0)]),
        sh_coeffs=torch.zeros(2, 1, 3),
    )
    torch.testing.assert_close(scene.scales[0], torch.tensor([1.0, 2.0, 0.5]))
    torch.testing.assert_close(scene.scales[1], torch.full((3,), math.e))
    torch.testing.assert_close(scene.opacities, torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(scene.rotations[0], torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)]))
    c = math.sqrt(0.5)
    rz = torch.tensor([[c, -c, 0.0], [c, c, 0.0], [0.0, 0.0, 1.0]])
    rx180 = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # quaternion (0, 1, 0, 0)
    torch.testing.assert_close(scene.rotation_matrices(), torch.stack([rz, rx180]))
    # covariance of the first: R diag(1, 4, 0.25) R^T
    expected = rz @ torch.diag(torch.tensor([1.0, 4.0, 0.25])) @ rz.T
    torch.testing.assert_close(scene.covariances()[0], expected)


def test_covariances_symmetric_psd():
    scene = _random_scene(n=50, seed=5).to(dtype=torch.float64)
    rot = scene.rotation_matrices()
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(50, dtype=torch.float64))
    cov = scene.covariances()
    torch.testing.assert_close(cov, cov.transpose(1, 2))
    assert bool((torch.linalg.eigvalsh(cov) > 0).all())
    s = torch.diag_embed(scene.scales)
    torch.testing.assert_close(cov, rot @ s @ s.transpose(1, 2) @ rot.transpose(1, 2))
    # eigenvalues are the squared scales
    torch.testing.assert_close(torch.linalg.eigvalsh(cov), (scene.scales ** 2).sort(dim=1).values)


def test_activations_differentiable():
    scene = _random_scene()
    scene.log_scales.requires_grad_(True)
    scene.quats.requires_grad_(True)
    scene.covariances().sum().backward()
    assert scene.log_scales.grad is not None and scene.quats.grad is not None


def test_from_activated():
    means = torch.randn(4, 3)
    scales = torch.tensor([[0.1, 0.2, 0.3]]).repeat(4, 1)
    rotations = torch.tensor([[2.0, 0.0, 0.0, 0.0]]).repeat(4, 1)
    opacities = torch.tensor([0.0, 0.25, 0.5, 1.0])
    rgb = torch.tensor([[1.0, 0.5, 0.0]]).repeat(4, 1)
    scene = GaussianScene.from_activated(means, scales, rotations, opacities, colours=rgb)
    assert scene.sh_degree == 0
    torch.testing.assert_close(scene.sh_coeffs[:, 0], (rgb - 0.5) / SH_C0)
    torch.testing.assert_close(0.5 + SH_C0 * scene.sh_coeffs[:, 0], rgb)
    torch.testing.assert_close(scene.scales, scales)
    torch.testing.assert_close(scene.quats, torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(4, 1))
    torch.testing.assert_close(scene.opacities, opacities, atol=2e-6, rtol=0)
    assert bool(torch.isfinite(scene.opacity_logits).all())
    sh = torch.randn(4, 16, 3)
    assert torch.equal(GaussianScene.from_activated(means, scales, rotations, opacities, sh_coeffs=sh).sh_coeffs, sh)
    with pytest.raises(ValueError, match="exactly one of sh_coeffs and colours"):
        GaussianScene.from_activated(means, scales, rotations, opacities)
    with pytest.raises(ValueError, match="scales must be > 0"):
        GaussianScene.from_activated(means, -scales, rotations, opacities, colours=rgb)
    with pytest.raises(ValueError, match="non-zero quaternions"):
        GaussianScene.from_activated(means, scales, torch.zeros(4, 4), opacities, colours=rgb)


def test_construction_errors():
    good = dict(means=torch.zeros(3, 3), log_scales=torch.zeros(3, 3), quats=torch.ones(3, 4),
                opacity_logits=torch.zeros(3), sh_coeffs=torch.zeros(3, 4, 3))
    GaussianScene(**good)
    for field, bad, message in [
        ("means", torch.zeros(3, 2), "means must have shape \\[N, 3\\]"),
        ("log_scales", torch.zeros(2, 3), "log_scales must have N = 3 rows"),
        ("quats", torch.zeros(3, 3), "quats must have shape \\[N, 4\\]"),
        ("opacity_logits", torch.zeros(3, 1), "opacity_logits must have shape \\[N\\]"),
        ("sh_coeffs", torch.zeros(3, 5, 3), "sh_coeffs must have shape \\[N, K, 3\\]"),
        ("sh_coeffs", torch.zeros(2, 4, 3), "sh_coeffs must have N = 3 rows"),
        ("normals", torch.zeros(3, 2), "normals must have shape"),
        ("quats", torch.ones(3, 4, dtype=torch.float64), "one dtype: quats"),
        ("extra", {"x": np.zeros(3)}, "clashes with a standard"),
        ("extra", {"f_rest_3": np.zeros(3)}, "clashes with a standard"),
        ("extra", {"bad name": np.zeros(3)}, "printable ASCII"),
        ("extra", {"e": np.zeros(4)}, "extra\\['e'\\] must have shape \\[N\\] = \\[3\\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            GaussianScene(**{**good, field: bad})
    with pytest.raises(TypeError, match="means must be a torch.Tensor"):
        GaussianScene(**{**good, "means": [[0.0, 0.0, 0.0]]})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        GaussianScene(**good, metadata=[])
    # numpy and integer inputs are converted
    scene = GaussianScene(**{**good, "means": np.zeros((3, 3), np.int64)})
    assert scene.means.dtype == torch.float32


def test_validate_names_field():
    scene = _random_scene()
    assert scene.validate() is scene
    scene.sh_coeffs[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="sh_coeffs contains 1 NaN or Inf"):
        scene.validate()
    scene = _random_scene()
    scene.normals = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="normals must have N = 6 rows"):
        scene.validate()


def test_subset_and_indexing():
    extra = {"id": np.arange(6, dtype=np.int32)}
    scene = _random_scene(extra=extra)
    mask = torch.tensor([True, False, True, False, False, True])
    for index, rows in [(mask, [0, 2, 5]), (mask.numpy(), [0, 2, 5]), (torch.tensor([4, 1]), [4, 1]),
                        (np.array([3]), [3]), ([5, 0], [5, 0]), (slice(1, 4), [1, 2, 3]), (2, [2]), (-1, [5]),
                        ([], [])]:
        sub = scene[index]
        assert len(sub) == len(rows)
        assert torch.equal(sub.means, scene.means[rows])
        assert torch.equal(sub.sh_coeffs, scene.sh_coeffs[rows])
        assert torch.equal(sub.normals, scene.normals[rows])
        np.testing.assert_array_equal(sub.extra["id"], rows)
        assert sub.metadata == scene.metadata
    with pytest.raises(ValueError, match="boolean mask must have shape \\[6\\]"):
        scene[torch.ones(5, dtype=torch.bool)]
    with pytest.raises(IndexError):
        scene[6]
    with pytest.raises(TypeError):
        scene[True]
    with pytest.raises(TypeError):
        scene[torch.tensor([0.5])]


def test_to_clone_detach():
    scene = _random_scene(extra={"id": np.arange(6, dtype=np.int32)})
    double = scene.to(dtype=torch.float64)
    assert double.dtype == torch.float64 and double.sh_coeffs.dtype == torch.float64
    assert double.normals.dtype == torch.float64
    assert double.extra["id"].dtype == np.int32
    torch.testing.assert_close(double.means.float(), scene.means)
    with pytest.raises(ValueError, match="floating dtype"):
        scene.to(dtype=torch.int64)
    copy = scene.clone()
    copy.means[0, 0] = 123.0
    copy.extra["id"][0] = 99
    assert float(scene.means[0, 0]) != 123.0 and scene.extra["id"][0] == 0
    scene.means.requires_grad_(True)
    assert not scene.detach().means.requires_grad
    assert "N=6" in repr(scene) and "sh_degree=2" in repr(scene)


def test_bounds_and_center_radius():
    means = torch.zeros(101, 3)
    means[:, 0] = torch.arange(101, dtype=torch.float32)  # 0..100
    means[:, 1] = torch.linspace(-1, 1, 101)
    means[100] = torch.tensor([1000.0, 1000.0, 1000.0])  # a floater
    scene = GaussianScene(means, torch.zeros(101, 3), torch.ones(101, 4), torch.zeros(101), torch.zeros(101, 1, 3))
    lo, hi = scene.bounds()
    torch.testing.assert_close(lo, torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(hi, torch.tensor([1000.0, 1000.0, 1000.0]))
    lo, hi = scene.bounds(0.01)  # the 1 % / 99 % quantiles with linear interpolation
    assert float(hi[0]) == pytest.approx(99.0 + 0.0) and float(lo[0]) == pytest.approx(1.0)
    assert float(hi[2]) == pytest.approx(0.0)
    np.testing.assert_allclose(lo.numpy(), np.quantile(means.numpy(), 0.01, axis=0), atol=1e-5)
    np.testing.assert_allclose(hi.numpy(), np.quantile(means.numpy(), 0.99, axis=0), atol=1e-4)
    center, radius = scene.center_and_radius(0.01)
    torch.testing.assert_close(center, 0.5 * (lo + hi))
    assert radius == pytest.approx(0.5 * float(torch.linalg.vector_norm(hi - lo)))
    with pytest.raises(ValueError, match="quantile must be in \\[0, 0.5\\)"):
        scene.bounds(0.5)
    with pytest.raises(ValueError, match="empty scene"):
        scene[[]].bounds()
