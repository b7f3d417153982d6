"""Tests of air_core.images: conversions, validation, files, error maps, sample images."""

from __future__ import annotations

import os
import sys

import imagecodecs
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from air_core import images
from air_core.images import (
    ImageInfo,
    ImageTooLargeError,
    error_map,
    from_tensor,
    load_image,
    sample_image,
    save_error_map,
    save_image,
    to_tensor,
    to_tensor_with_info,
)


def _f32(values, scale):
    return torch.tensor(values, dtype=torch.float32) / scale


# ----------------------------------------------------------------------------------------------
# dtypes and layouts
# ----------------------------------------------------------------------------------------------


def test_uint8_rgb_exact_values():
    arr = np.array([[[0, 128, 255], [1, 2, 3]]], dtype=np.uint8)  # [1, 2, 3]
    t = to_tensor(arr)
    assert t.shape == (3, 1, 2) and t.dtype == torch.float32
    assert torch.equal(t[:, 0, 0], _f32([0, 128, 255], 255))
    assert torch.equal(t[:, 0, 1], _f32([1, 2, 3], 255))


def test_uint16_exact_values():
    arr = np.array([[[0, 1, 65535], [32768, 1000, 40000]]], dtype=np.uint16)
    t = to_tensor(arr)
    assert torch.equal(t[:, 0, 0], _f32([0, 1, 65535], 65535))
    assert torch.equal(t[:, 0, 1], _f32([32768, 1000, 40000], 65535))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_values_kept(dtype):
    arr = np.array([[[0.0, 0.25, 1.0]]], dtype=dtype)
    assert torch.equal(to_tensor(arr)[:, 0, 0], torch.tensor([0.0, 0.25, 1.0]))


def test_float_within_tolerance_is_clipped():
    arr = np.array([[[-5e-7, 0.5, 1 + 5e-7]]], dtype=np.float64)
    assert torch.equal(to_tensor(arr)[:, 0, 0], torch.tensor([0.0, 0.5, 1.0]))


def test_bool_and_gray_replicated():
    arr = np.array([[True, False]])
    t = to_tensor(arr)
    assert t.shape == (3, 1, 2)
    assert torch.equal(t, torch.tensor([[1.0, 0.0]]).expand(3, 1, 2))
    g = to_tensor(np.array([[[10], [20]]], dtype=np.uint8))  # [H, W, 1]
    assert torch.equal(g, _f32([[10, 20]], 255).expand(3, 1, 2))


def test_rgba_drops_alpha():
    arr = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)
    t, info = to_tensor_with_info(arr)
    assert t.shape == (3, 1, 2)
    assert torch.equal(t[:, 0, 1], _f32([40, 50, 60], 255))
    assert info == ImageInfo(channels=4, dtype="uint8", shape=(1, 2, 4))


@pytest.mark.parametrize("dtype, maximum, scale", [(np.int32, 200, 255), (np.int64, 1000, 65535),
                                                   (np.int16, 255, 255), (np.uint32, 65535, 65535)])
def test_other_integers_scaled_by_their_range(dtype, maximum, scale):
    arr = np.array([[0, maximum]], dtype=dtype)
    assert torch.equal(to_tensor(arr)[0], _f32([[0, maximum]], scale))


def test_torch_layouts():
    chw = torch.rand(3, 4, 5)
    assert torch.equal(to_tensor(chw), chw)
    assert to_tensor(chw).data_ptr() != chw.data_ptr()  # a copy, never a view
    one = torch.rand(1, 4, 5)
    assert torch.equal(to_tensor(one), one.expand(3, 4, 5))
    hwc = torch.randint(0, 256, (4, 5, 3), dtype=torch.uint8)
    assert torch.equal(to_tensor(hwc), hwc.permute(2, 0, 1).float() / 255)
    grad = torch.rand(3, 4, 5, requires_grad=True)
    assert not to_tensor(grad).requires_grad


def test_tiny_images():
    t = to_tensor(np.array([[[255, 0, 51]]], dtype=np.uint8))  # 1 x 1
    assert t.shape == (3, 1, 1) and torch.equal(t[:, 0, 0], _f32([255, 0, 51], 255))
    arr = np.random.default_rng(0).random((3, 5, 3))  # 3 x 5
    assert torch.allclose(to_tensor(arr), torch.from_numpy(arr).permute(2, 0, 1).float())
    assert to_tensor(np.zeros((3, 5), np.uint8)).shape == (3, 3, 5)
    assert to_tensor(torch.zeros(3, 3, 5)).shape == (3, 3, 5)


def test_pil_images():
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert torch.equal(to_tensor(Image.fromarray(rgb)), to_tensor(rgb))
    gray = np.arange(8, dtype=np.uint8).reshape(2, 4)
    t, info = to_tensor_with_info(Image.fromarray(gray).convert("LA"))
    assert torch.equal(t, to_tensor(gray)) and info.channels == 1
    assert torch.equal(to_tensor(Image.fromarray(gray).convert("P")), to_tensor(gray))
    g16 = np.array([[0, 65535, 1234]], dtype=np.uint16)
    assert torch.equal(to_tensor(Image.fromarray(g16))[0], _f32([[0, 65535, 1234]], 65535))


def test_device_auto():
    t = to_tensor(np.zeros((2, 2), np.uint8), device="auto")
    assert t.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_rejected(bad):
    arr = np.full((2, 2, 3), 0.5)
    arr[1, 1, 2] = bad
    with pytest.raises(ValueError, match="target contains NaN or infinite"):
        to_tensor(arr, argument="target")


@pytest.mark.parametrize("shape", [(4, 4, 2), (1, 4, 4, 3), (5,), (4, 4, 5)])
def test_wrong_shapes_rejected(shape):
    with pytest.raises(ValueError, match=r"photo must have shape \[H, W\].*got shape " + str(shape).replace("(", r"\(")
                       .replace(")", r"\)")):
        to_tensor(np.zeros(shape, np.uint8), argument="photo")


def test_channel_first_numpy_hint_and_empty():
    with pytest.raises(ValueError, match="np.moveaxis"):
        to_tensor(np.zeros((3, 8, 9), np.float32))
    with pytest.raises(ValueError, match=r"photo is empty \(shape \(0, 4, 3\)\)"):
        to_tensor(np.zeros((0, 4, 3), np.uint8), argument="photo")
    with pytest.raises(ValueError, match="image is empty"):
        to_tensor(torch.zeros(3, 0, 5))


@pytest.mark.parametrize("value", [1.5, -0.1, 255.0])
def test_float_out_of_range_rejected(value):
    arr = np.full((2, 2), 0.5, np.float32)
    arr[0, 0] = value
    with pytest.raises(ValueError, match=r"photo is a float image with values in .* must lie in \[0, 1\]; normalise"):
        to_tensor(arr, argument="photo")


def test_integer_range_errors():
    with pytest.raises(ValueError, match="photo .* negative values"):
        to_tensor(np.array([[-1, 3]], np.int32), argument="photo")
    with pytest.raises(ValueError, match="photo .* beyond the 16-bit range"):
        to_tensor(np.array([[0, 70000]], np.int64), argument="photo")


@pytest.mark.parametrize("bad", [[[0, 1], [1, 0]], 3.0, None, b"abc"])
def test_wrong_type_rejected(bad):
    with pytest.raises(TypeError, match="photo must be a numpy array, torch tensor, PIL image or file path"):
        to_tensor(bad, argument="photo")


def test_non_image_dtype_rejected():
    with pytest.raises(TypeError, match="photo has dtype complex64"):
        to_tensor(np.zeros((2, 2), np.complex64), argument="photo")


def test_too_large_image(monkeypatch, tmp_path):
    arr = np.zeros((64, 80, 3), np.uint8)
    needed = 3 * 64 * 80 * 4 * images.WORKING_COPIES
    monkeypatch.setenv("AIR_MEMORY_LIMIT_BYTES", str(needed - 1))
    with pytest.raises(ImageTooLargeError, match=r"photo \(64 x 80 pixels\) is too large: .* only 480.0 KiB"):
        to_tensor(arr, argument="photo")
    assert issubclass(ImageTooLargeError, ValueError)
    monkeypatch.setenv("AIR_MEMORY_LIMIT_BYTES", str(needed))
    assert to_tensor(arr).shape == (3, 64, 80)
    path = tmp_path / "big.png"
    iio.imwrite(path, arr)
    monkeypatch.setenv("AIR_MEMORY_LIMIT_BYTES", "100")
    with pytest.raises(ImageTooLargeError, match="big.png"):
        load_image(path)
    monkeypatch.setenv("AIR_MEMORY_LIMIT_BYTES", "lots")
    with pytest.raises(ValueError, match="AIR_MEMORY_LIMIT_BYTES must be a non-negative integer"):
        to_tensor(arr)


@pytest.mark.filterwarnings("ignore:The legacy `DICOM` plugin:DeprecationWarning")  # imageio probing plugins
def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        to_tensor(str(tmp_path / "nothere.png"))
    fake = tmp_path / "x.png"
    fake.write_bytes(b"this is plain text, not a PNG")
    with pytest.raises(ValueError, match=r"x.png' is not a readable image file"):
        load_image(fake)
    with pytest.raises(ValueError, match="x.png"):
        to_tensor(fake)
    truncated = tmp_path / "cut.png"
    iio.imwrite(tmp_path / "full.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.png"):
        load_image(truncated)
    with pytest.raises(ValueError, match="is a folder"):
        load_image(tmp_path)


# ----------------------------------------------------------------------------------------------
# Files: 16-bit PNG, save_image, atomicity
# ----------------------------------------------------------------------------------------------


def test_16bit_gray_png_from_imageio(tmp_path):
    arr = np.array([[0, 1, 255, 256], [30000, 65534, 65535, 12345]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    iio.imwrite(path, arr)
    loaded = load_image(path)
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, arr)
    t = to_tensor(path)
    assert torch.equal(t, torch.from_numpy(arr.astype(np.float32) / 65535).expand(3, 2, 4))


def _rand16(shape, seed):
    arr = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    arr.flat[0] = 65535  # extremes
    arr.flat[-1] = 0
    return arr


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_read_exactly(tmp_path, channels):
    arr = _rand16((13, 11) + ((channels,) if channels > 1 else ()), channels)
    path = tmp_path / "c16.png"
    path.write_bytes(imagecodecs.png_encode(arr))
    loaded = load_image(path)
    assert loaded.dtype == np.uint16 and loaded.shape == arr.shape and np.array_equal(loaded, arr)
    # Pillow (imageio's backend) would cut colour to 8 bits: exact for gray, high bytes for RGB(A).
    if channels in (1, 3, 4):
        other = iio.imread(path)
        assert np.array_equal(other, arr if channels == 1 else (arr >> 8).astype(np.uint8))
    if channels != 2:
        expect = arr if channels == 1 else arr[..., :3]
        expect = expect.astype(np.float32) / 65535
        t = to_tensor(path)
        assert torch.equal(t, torch.from_numpy(expect).expand(3, 13, 11) if channels == 1
                           else torch.from_numpy(expect).permute(2, 0, 1))


@pytest.mark.parametrize("shape", [(13, 11), (13, 11, 3)], ids=["gray", "rgb"])
def test_save_image_16bit_exact_round_trip(tmp_path, shape):
    arr = _rand16(shape, 7)
    path = tmp_path / "s16.png"
    save_image(path, arr, bit_depth=16)
    decoded = imagecodecs.png_decode(path.read_bytes())  # a standard 16-bit PNG, gray or RGB as given
    assert decoded.dtype == np.uint16 and decoded.shape == shape and np.array_equal(decoded, arr)
    loaded = load_image(path)
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, arr)
    t, info = to_tensor_with_info(path)
    assert info == ImageInfo(channels=1 if len(shape) == 2 else 3, dtype="uint16", shape=shape)
    assert np.array_equal(from_tensor(t, info, dtype=np.uint16), arr)
    if len(shape) == 3:
        assert np.array_equal(iio.imread(path), (arr >> 8).astype(np.uint8))  # Pillow reads it too


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_8bit_png_read_exactly(tmp_path, channels):
    arr = np.random.default_rng(channels).integers(0, 256, (9, 14) + ((channels,) if channels > 1 else ()),
                                                   dtype=np.uint8)
    path = tmp_path / "c8.png"
    path.write_bytes(imagecodecs.png_encode(arr))
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, arr)
    assert np.array_equal(loaded, iio.imread(path))
    if channels in (1, 3):
        save_image(tmp_path / "s8.png", arr)
        assert np.array_equal(imagecodecs.png_decode((tmp_path / "s8.png").read_bytes()), arr)


def test_8bit_png_special_files_read_as_imageio_does(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "bits.png")  # 1-bit
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png", transparency=3)  # palette + tRNS
    frames = [Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])  # APNG
    for name in ("bits.png", "pal.png", "anim.png"):
        loaded = load_image(tmp_path / name)
        expected = iio.imread(tmp_path / name)
        assert loaded.dtype == expected.dtype and np.array_equal(loaded, expected), name
    assert load_image(tmp_path / "bits.png").dtype == np.bool_
    assert load_image(tmp_path / "anim.png").shape == (3, 5, 7, 3)


def test_save_image_16bit_rgb_round_trip(tmp_path):
    t = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "out16.png"
    save_image(path, t, bit_depth=16)
    loaded = load_image(path)
    assert loaded.dtype == np.uint16 and loaded.shape == (7, 9, 3)
    assert np.array_equal(loaded, from_tensor(t, dtype=np.uint16))
    assert torch.allclose(to_tensor(path), t, atol=0.5 / 65535 + 1e-7)


def test_save_image_8bit(tmp_path):
    t = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(1))
    save_image(tmp_path / "a.png", t)
    loaded = load_image(tmp_path / "a.png")
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, from_tensor(t))
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    save_image(tmp_path / "g.png", gray)
    assert np.array_equal(load_image(tmp_path / "g.png"), gray)
    save_image(tmp_path / "over.png", torch.full((3, 2, 2), 1.3))  # renders may overshoot: clamped
    assert (load_image(tmp_path / "over.png") == 255).all()
    with pytest.raises(ValueError, match="must end in .png"):
        save_image(tmp_path / "a.jpg", t)
    with pytest.raises(ValueError, match="bit_depth must be 8 or 16"):
        save_image(tmp_path / "b.png", t, bit_depth=12)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_image(tmp_path / "no" / "c.png", t)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_save_image_is_atomic(tmp_path, monkeypatch, bit_depth):
    from air_core import _io

    dest = tmp_path / "keep.png"
    dest.write_bytes(b"old content")
    seen = []

    def failing_fsync(fd):  # the PNG has gone into the temporary file; the disk then fails
        temp = [p for p in tmp_path.iterdir() if p.name != "keep.png"]
        seen.append([(p.name, p.read_bytes()[:8]) for p in temp])
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_image(dest, torch.rand(3, 40, 30), bit_depth=bit_depth)
    assert len(seen) == 1 and len(seen[0]) == 1
    assert seen[0][0][0].startswith(".keep.png.") and seen[0][0][1] == b"\x89PNG\r\n\x1a\n"
    assert dest.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["keep.png"]
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "new.png", torch.rand(3, 4, 4), bit_depth=bit_depth)
    assert _listing(tmp_path) == ["keep.png"]
    monkeypatch.undo()

    def failing_encode(*args, **kwargs):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(imagecodecs, "png_encode", failing_encode)
    with pytest.raises(RuntimeError, match="encoder failed"):
        save_error_map(dest, torch.rand(3, 4, 4), torch.rand(3, 4, 4))
    assert dest.read_bytes() == b"old content"
    assert _listing(tmp_path) == ["keep.png"]


# ----------------------------------------------------------------------------------------------
# from_tensor
# ----------------------------------------------------------------------------------------------


def test_from_tensor_round_trips():
    rng = np.random.default_rng(2)
    rgb8 = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t, info = to_tensor_with_info(rgb8)
    assert np.array_equal(from_tensor(t, info), rgb8)
    rgb16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    assert np.array_equal(from_tensor(to_tensor(rgb16), dtype=np.uint16), rgb16)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    t, info = to_tensor_with_info(gray)
    assert info.is_gray and info.shape == (5, 7) and info.dtype == "uint8"
    back = from_tensor(t, info)
    assert back.shape == (5, 7) and np.array_equal(back, gray)
    f = from_tensor(t, info, dtype=np.float32)
    assert f.dtype == np.float32 and np.array_equal(f, gray.astype(np.float32) / np.float32(255))
    assert from_tensor(torch.tensor([[[-0.5]], [[0.5]], [[2.0]]]))[0, 0].tolist() == [0, 128, 255]


def test_from_tensor_errors():
    with pytest.raises(ValueError, match="NaN"):
        from_tensor(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match=r"tensor must have shape \[3, H, W\].*\(4, 2, 2\)"):
        from_tensor(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="dtype must be"):
        from_tensor(torch.zeros(3, 2, 2), dtype=np.int8)
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor"):
        from_tensor(np.zeros((3, 2, 2)))


# ----------------------------------------------------------------------------------------------
# Error maps and sample images
# ----------------------------------------------------------------------------------------------


def test_error_map_values():
    target = torch.zeros(3, 4, 5)
    recon = target.clone()
    recon[0] = 0.3  # one channel off by 0.3 -> mean over channels 0.1
    recon[:, 0, 0] = 2.0  # overshoot clamped to 1 -> error 1
    err = error_map(recon, target)
    assert err.shape == (4, 5) and err.dtype == torch.float32
    assert torch.allclose(err[1:], torch.full((3, 5), 0.1))
    assert err[0, 0] == pytest.approx(1.0)
    assert error_map(recon[None], target[None]).shape == (1, 4, 5)
    mismatch = r"reconstruction and target must have the same shape.*\(3, 4, 5\).*\(3, 4, 6\)"
    with pytest.raises(ValueError, match=mismatch):
        error_map(recon, torch.zeros(3, 4, 6))


def test_save_error_map_magma_scale(tmp_path):
    from matplotlib import colormaps

    target = torch.zeros(3, 2, 3)
    recon = target.clone()
    recon[:, 0, :] = torch.tensor([0.0, 0.05, 0.1])  # errors 0, 0.05, 0.1
    recon[:, 1, :] = 0.7  # far above 0.1: top of the map
    save_error_map(tmp_path / "err.png", recon, target)
    img = load_image(tmp_path / "err.png")
    cmap = colormaps["magma"]
    expect = lambda v: np.rint(np.array(cmap(v)[:3]) * 255).astype(np.uint8)  # noqa: E731
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert np.array_equal(img[0, 0], expect(0.0))
    assert np.array_equal(img[0, 1], expect(0.5))
    assert np.array_equal(img[0, 2], expect(1.0))
    assert np.array_equal(img[1, 1], expect(1.0))


def test_save_error_map_gray_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    target = torch.zeros(3, 1, 2)
    recon = torch.tensor([[[0.05, 0.2]]]).expand(3, 1, 2)
    save_error_map(tmp_path / "err.png", recon, target)
    img = load_image(tmp_path / "err.png")
    assert img.shape == (1, 2) and img.tolist() == [[128, 255]]


def test_sample_image_real_photo():
    astronaut = sample_image()
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8
    assert astronaut.std() > 30  # a real photo, not a blank image
    assert to_tensor(sample_image("camera")).shape == (3, 512, 512)
    assert to_tensor(sample_image("logo")).shape == (3, 500, 500)  # RGBA
    assert to_tensor(sample_image("horse")).shape == (3, 328, 400)  # bool
    with pytest.raises(ValueError, match="name must be one of astronaut, camera"):
        sample_image("lena")


def test_paths_accepted(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "p.png", arr)
    assert torch.equal(to_tensor(tmp_path / "p.png"), to_tensor(arr))
    assert torch.equal(to_tensor(os.fspath(tmp_path / "p.png")), to_tensor(arr))
    la = np.stack([arr[..., 0], np.full((4, 6), 200, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert torch.equal(to_tensor(tmp_path / "la.png"), to_tensor(arr[..., 0]))


def test_written_files_get_umask_permissions(tmp_path):
    """atomic_write's temporary file is 0600; the renamed result must have open()'s permissions."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_image(tmp_path / "a.png", torch.rand(3, 4, 4))
        mode = stat.S_IMODE(os.stat(tmp_path / "a.png").st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644
