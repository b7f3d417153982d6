"""air_core.reconstruct and `air reconstruct`: shapes, stage control, refinement, progress, errors, CLI files."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import air_core
from air_core import Gaussians2D, ReconstructCancelled, ReconstructResult, load_gaussians, reconstruct
from air_core.cli import main
from air_core.predictor import AIRPredictor, api


@pytest.fixture(scope="module")
def model() -> AIRPredictor:
    torch.manual_seed(0)
    return AIRPredictor(width=8).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return air_core.sample_image("astronaut")[100:140, 200:256].copy()  # uint8 [40, 56, 3]


@pytest.fixture(scope="module")
def result(model, image) -> ReconstructResult:
    return reconstruct(image, model=model)


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    model.save_pretrained(path, training={"test": True})
    return path


def test_result_shapes_and_counts(result, model):
    s, (h, w) = model.num_stages, (40, 56)
    ph, pw = -(-h // model.patch_size), -(-w // model.patch_size)
    assert isinstance(result.gaussians, Gaussians2D) and result.gaussians.device.type == "cpu"
    assert result.gaussians is result.predicted and not result.refined and result.refine_steps == 0
    assert result.renders.shape == (s, 3, h, w) and result.renders.device.type == "cpu"
    assert result.keep.shape == (s, ph, pw) and result.keep.dtype == torch.bool
    assert result.counts == [int(k.sum()) for k in result.keep]
    assert sum(result.counts) == len(result.gaussians) == result.num_gaussians
    assert result.patch_size == model.patch_size and result.stages == s and result.image_size == (h, w)
    assert result.gaussians.mode == "sum" and result.gaussians.metadata["counts"] == result.counts
    assert result.render.shape == (3, h, w) and 0 <= float(result.render.min()) <= float(result.render.max()) <= 1
    m = result.metrics
    assert {"psnr", "ssim", "ms_ssim", "mse", "stage_psnr"} <= set(m) and "feedforward" not in m
    assert len(m["stage_psnr"]) == s and m["stage_psnr"][-1] == pytest.approx(m["psnr"], abs=1e-4)
    t = result.timings
    assert len(t["stages"]) == s and all(x >= 0 for x in t["stages"])
    assert t["feedforward"] == pytest.approx(sum(t["stages"]), rel=1e-6)
    assert t["refine"] == 0 and t["total"] >= t["feedforward"]
    assert "ReconstructResult(56x40" in repr(result)


def test_render_of_gaussians_matches_last_stage(result):
    with torch.no_grad():
        again = air_core.render(result.gaussians, mode="sum")
    torch.testing.assert_close(again, result.renders[-1], atol=1e-5, rtol=0)


def test_matches_model_forward(result, model, image):
    with torch.no_grad():
        out = model(air_core.to_tensor(image)[None])
    torch.testing.assert_close(out.renders[0], result.renders)
    assert out.counts[0].tolist() == result.counts


def test_fewer_stages(model, image, result):
    r2 = reconstruct(image, stages=2, model=model)
    assert r2.renders.shape[0] == 2 and len(r2.counts) == 2 and len(r2.timings["stages"]) == 2
    assert r2.counts == result.counts[:2] and len(r2.gaussians) == sum(result.counts[:2])
    torch.testing.assert_close(r2.renders, result.renders[:2])


def test_refinement_keeps_count_and_improves(model, image, result):
    r = reconstruct(image, refine_steps=15, model=model)
    assert r.refined and r.refine_steps == 15
    assert len(r.gaussians) == len(r.predicted) == len(result.gaussians)
    assert r.metrics["psnr"] >= r.metrics["feedforward"]["psnr"]
    assert r.metrics["feedforward"]["psnr"] == pytest.approx(result.metrics["psnr"], abs=1e-4)
    assert r.timings["refine"] > 0
    with torch.no_grad():
        final = air_core.render(r.gaussians, mode="sum").clamp(0, 1)
    torch.testing.assert_close(final, r.render, atol=1e-5, rtol=0)


def test_gray_input_gives_gray_gaussians(model):
    gray = air_core.sample_image("camera")[200:240, 200:256]
    r = reconstruct(gray, model=model, refine_steps=5)
    assert r.gray and r.gaussians.colours.shape[1] == 3
    c = r.gaussians.colours
    torch.testing.assert_close(c[:, 0], c[:, 1])
    torch.testing.assert_close(c[:, 0], c[:, 2])
    torch.testing.assert_close(r.renders[:, 0], r.renders[:, 2])


def test_other_inputs(model, image, tmp_path):
    chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    r1 = reconstruct(chw, model=model, stages=1)
    path = tmp_path / "img.png"
    iio.imwrite(path, image)
    r2 = reconstruct(str(path), model=model, stages=1)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], -1)
    r3 = reconstruct(rgba, model=model, stages=1)  # alpha dropped
    torch.testing.assert_close(r1.renders, r2.renders)
    torch.testing.assert_close(r1.renders, r3.renders)


def test_progress_and_cancel(model, image):
    calls = []
    reconstruct(image, model=model, refine_steps=4, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    assert any(m.startswith("stage") for _, m in calls) and any(m.startswith("refine") for _, m in calls)

    def cancel_at_stage_2(fraction, message):
        return message != "stage 2/4"

    with pytest.raises(ReconstructCancelled):
        reconstruct(image, model=model, progress=cancel_at_stage_2)
    assert not any(h for net in model.stages for h in net._forward_pre_hooks.values())  # hooks removed
    with pytest.raises(ReconstructCancelled, match="refinement"):
        reconstruct(image, model=model, refine_steps=10, progress=lambda f, m: not m.startswith("refine"))


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"stages": 0}, ValueError, "stages"),
    ({"stages": 5}, ValueError, "stages"),
    ({"stages": 2.0}, TypeError, "stages"),
    ({"stages": True}, TypeError, "stages"),
    ({"refine_steps": -1}, ValueError, "refine_steps"),
    ({"refine_steps": 1.5}, TypeError, "refine_steps"),
    ({"refine_loss": "l3"}, ValueError, "refine_loss"),
    ({"refine_lr_scale": 0}, ValueError, "refine_lr_scale"),
    ({"progress": 3}, TypeError, "progress"),
    ({"model": "tiny"}, TypeError, "model"),
    ({"device": "tpu"}, ValueError, "device"),
])
def test_bad_arguments(model, image, kwargs, exc, name):
    kwargs = {"model": model, **kwargs}
    with pytest.raises(exc, match=name):
        reconstruct(image, **kwargs)


def test_bad_images(model, tmp_path):
    with pytest.raises(ValueError, match="image"):
        reconstruct(np.full((20, 20, 3), 2.0), model=model)
    with pytest.raises(TypeError, match="image"):
        reconstruct([1, 2, 3], model=model)
    with pytest.raises(FileNotFoundError):
        reconstruct(tmp_path / "missing.png", model=model)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        reconstruct(bad, model=model)


def test_missing_weights(monkeypatch, tmp_path, image):
    monkeypatch.setattr(api, "PRETRAINED_PATH", tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="pretrained AIR predictor weights are not installed"):
        reconstruct(image)
    with pytest.raises(FileNotFoundError, match="other.safetensors"):
        api.load_predictor(tmp_path / "other.safetensors")


def test_default_model_is_cached(monkeypatch, weights, image):
    monkeypatch.setattr(api, "PRETRAINED_PATH", weights)
    monkeypatch.setattr(api, "_MODEL_CACHE", {})
    r1 = reconstruct(image, stages=1, device="cpu")
    assert len(api._MODEL_CACHE) == 1
    r2 = reconstruct(image, stages=1, device="cpu")
    assert len(api._MODEL_CACHE) == 1 and r2.timings["load_model"] < 0.05
    assert api.load_predictor(device="cpu") is api.load_predictor(weights, "cpu")
    torch.testing.assert_close(r1.renders, r2.renders)


# -- CLI ---------------------------------------------------------------------------------------------


def test_cli_single_image(weights, image, tmp_path, capsys):
    src = tmp_path / "in.png"
    iio.imwrite(src, image)
    out = tmp_path / "out"
    code = main(["reconstruct", str(src), "-o", str(out), "--weights", str(weights), "--stages", "2",
                 "--refine-steps", "3", "--device", "cpu", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["error.png", "gaussians.npz", "metrics.json", "render.png"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["stages"] == 2 and len(report["counts"]) == 2 and report["refine_steps"] == 3
    assert report["num_gaussians"] == sum(report["counts"]) and (report["width"], report["height"]) == (56, 40)
    assert {"psnr", "ms_ssim", "stage_psnr", "feedforward"} <= set(report["metrics"])
    assert {"stages", "feedforward", "refine", "total"} <= set(report["timings"])
    g = load_gaussians(out / "gaussians.npz")
    assert len(g) == report["num_gaussians"] and g.metadata["source"].endswith("in.png")
    assert iio.imread(out / "render.png").shape == (40, 56, 3)
    assert "Gaussians" in capsys.readouterr().out
    # never overwrite the input
    before = src.read_bytes()
    (tmp_path / "render.png").write_bytes(before)
    assert main(["reconstruct", str(tmp_path / "render.png"), "-o", str(tmp_path), "--weights", str(weights),
                 "--quiet"]) == 2
    assert (tmp_path / "render.png").read_bytes() == before


def test_cli_folder_with_a_corrupt_file(weights, image, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "b.png", image)
    iio.imwrite(src / "a.jpg", image[:, ::-1])
    (src / "c.png").write_bytes(b"corrupt")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main(["reconstruct", str(src), "-o", str(out), "--weights", str(weights), "--stages", "1",
                 "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "c.png" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "summary.csv", "summary.json"]
    for name in ("a", "b"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["error.png", "gaussians.npz", "metrics.json",
                                                                   "render.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["image"] for r in summary["images"]] == ["a.jpg", "b.png"]
    assert [Path(f["image"]).name for f in summary["failed"]] == ["c.png"]
    assert summary["mean"]["psnr"] == pytest.approx(np.mean([r["psnr"] for r in summary["images"]]))
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("image,folder,width,height,num_gaussians,psnr") and lines[-1].startswith("mean,")
    assert len(lines) == 4
    assert "mean" in captured.out and "a.jpg" in captured.out


@pytest.mark.parametrize("make,args", [
    (lambda d: d / "missing.png", []),
    (lambda d: (d / "empty").mkdir() or d / "empty", []),
    (lambda d: (d / "bad.png").write_bytes(b"xx") and d / "bad.png", []),
    (lambda d: d / "x.png", ["--stages", "0"]),
    (lambda d: d / "x.png", ["--stages", "9"]),
    (lambda d: d / "x.png", ["--refine-steps", "-2"]),
])
def test_cli_bad_input_exit_2(weights, image, tmp_path, make, args, capsys):
    iio.imwrite(tmp_path / "x.png", image)
    target = make(tmp_path)
    try:
        code = main(["reconstruct", str(target), "-o", str(tmp_path / "out"), "--weights", str(weights),
                     "--quiet", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_cli_missing_weights(tmp_path, capsys):
    code = main(["reconstruct", "--sample", "astronaut", "-o", str(tmp_path / "o"),
                 "--weights", str(tmp_path / "none.safetensors"), "--quiet"])
    assert code == 2 and "none.safetensors" in capsys.readouterr().err


def test_cli_interrupt(weights, image, tmp_path, monkeypatch):
    iio.imwrite(tmp_path / "x.png", image)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "reconstruct", interrupted)
    monkeypatch.setattr(air_core.predictor, "reconstruct", interrupted)
    assert main(["reconstruct", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--weights", str(weights),
                 "--quiet"]) == 130


def test_stage_control_thresholds_per_call(model, image, result):
    before = (model.mse_threshold, model.ssim_threshold)
    none = reconstruct(image, model=model, mse_threshold=1e9, ssim_threshold=1e9)
    assert none.num_gaussians == 0 and none.counts == [0] * model.num_stages
    assert float(none.renders.abs().max()) == 0
    keep_all = reconstruct(image, model=model, mse_threshold=-1.0, ssim_threshold=-1.0)
    assert keep_all.num_gaussians == model.num_stages * keep_all.keep[0].numel() >= result.num_gaussians
    assert (model.mse_threshold, model.ssim_threshold) == before
    with pytest.raises(ValueError, match="mse_threshold must be a finite number"):
        reconstruct(image, model=model, mse_threshold=float("nan"))


def test_cuda_cache_released_after_work(monkeypatch, model, image):
    """reconstruct and fit hand the CUDA cache back after success and after failure."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    reconstruct(image, model=model, device="cpu")
    assert len(calls) == 1
    with pytest.raises(ValueError):
        reconstruct(image, model=model, stages=99)
    assert len(calls) == 2
    import air_core
    air_core.fit(image, 50, steps=1, device="cpu")
    assert len(calls) == 3
