"""`air encode` / `air decode` / `air train`: files, consistent numbers, exit codes and messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from air_core import Gaussians2D, load_gaussians, sample_image, save_gaussians
from air_core.cli import main
from air_core.predictor import AIRPredictor

H, W = 48, 64


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A 48 x 64 photo crop, small untrained predictor weights, and one encoded .air file."""
    folder = tmp_path_factory.mktemp("codec_cli")
    iio.imwrite(folder / "photo.png", sample_image("astronaut")[100:100 + H, 150:150 + W])
    torch.manual_seed(0)
    AIRPredictor(width=8).save_pretrained(folder / "w.safetensors")
    return folder


def _encode_json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_encode_image_report_is_consistent(work, capsys):
    dest = work / "enc.air"
    rep = _encode_json(capsys, ["encode", str(work / "photo.png"), "-o", str(dest), "--weights",
                                str(work / "w.safetensors"), "--device", "cpu", "--quiet"])
    size = dest.stat().st_size
    assert dest.is_file() and size > 0
    assert rep["source"] == "image" and rep["layout"] == "patch" and rep["image_size"] == [H, W]
    assert rep["bytes"] == size
    assert rep["bits_per_pixel"] == pytest.approx(8 * size / (H * W))
    assert rep["bits_per_gaussian"] == pytest.approx(8 * size / rep["num_gaussians"])
    assert rep["raw_bits_per_gaussian"] == 53  # AIR's default budget
    assert rep["header_bytes"] + rep["mask_bytes"] + sum(rep["channel_bytes"].values()) == size
    m, u = rep["metrics"], rep["metrics_unquantized"]
    assert set(m) == {"psnr", "ssim", "ms_ssim"} and m["ms_ssim"] is not None  # 48 x 64 >= 33 x 33
    assert np.isfinite(m["psnr"]) and abs(m["psnr"] - u["psnr"]) < 1.0  # quantization costs little
    assert rep["psnr_vs_unquantized"] > 30
    assert rep["timings"]["encode_s"] >= 0


def test_encode_human_summary_and_bits(work, capsys):
    dest = work / "enc_bits.air"
    argv = ["encode", str(work / "photo.png"), "-o", str(dest), "--weights", str(work / "w.safetensors"),
            "--device", "cpu", "--quiet", "--bits", "colour=5", "scale=5"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "bpp" in text and "PSNR" in text and str(dest) in text
    rep = _encode_json(capsys, argv)
    assert rep["raw_bits_per_gaussian"] == 8 + 8 + 5 + 5 + 7 + 5 + 5 + 5
    assert rep["bits"] == {"colour": 5, "scale": 5}


def test_decode_png_and_gaussians(work, capsys):
    src = work / "dec.air"
    rep = _encode_json(capsys, ["encode", str(work / "photo.png"), "-o", str(src), "--weights",
                                str(work / "w.safetensors"), "--device", "cpu", "--quiet"])
    png, npz = work / "dec.png", work / "dec.npz"
    assert main(["decode", str(src), "-o", str(png), "--gaussians", str(npz), "--device", "cpu"]) == 0
    assert iio.imread(png).shape == (H, W, 3)
    g = load_gaussians(npz)
    assert len(g) == rep["num_gaussians"] and g.image_size == (H, W) and g.mode == "sum"
    assert g.metadata["patch_size"] == 7 and sum(g.metadata["counts"]) == len(g)
    assert main(["decode", str(src), "-o", str(work / "dec2.png"), "--scale", "2", "--device", "cpu"]) == 0
    assert iio.imread(work / "dec2.png").shape == (2 * H, 2 * W, 3)
    assert main(["decode", str(src), "-o", str(work / "dec16.png"), "--size", "30", "40", "--bit-depth", "16"]) == 0
    assert iio.imread(work / "dec16.png").shape[:2] == (30, 40)
    assert (work / "dec16.png").read_bytes()[24] == 16  # IHDR bit depth (Pillow reads 16-bit RGB as 8-bit)
    capsys.readouterr()
    # the decoded Gaussians re-encode as a Gaussian file
    rep2 = _encode_json(capsys, ["encode", str(npz), "-o", str(work / "again.air"), "--device", "cpu"])
    assert rep2["source"] == "gaussians" and rep2["num_gaussians"] == len(g)


def test_encode_gaussian_npz_free_layout(tmp_path, capsys):
    gen = torch.Generator().manual_seed(1)
    n = 120
    g = Gaussians2D(torch.rand(n, 2, generator=gen) * torch.tensor([40.0, 30.0]),
                    0.5 + 3 * torch.rand(n, 2, generator=gen), torch.rand(n, generator=gen) * 6.0,
                    torch.rand(n, 3, generator=gen) - 0.2, None, (30, 40), {"mode": "sum"})
    src = tmp_path / "g.npz"
    save_gaussians(g, src)
    dest = tmp_path / "g.air"
    assert main(["encode", str(src), "-o", str(dest), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "free layout" in text and "no image to compare with" in text
    rep = _encode_json(capsys, ["encode", str(src), "-o", str(dest), "--device", "cpu"])
    size = dest.stat().st_size
    assert rep["source"] == "gaussians" and rep["layout"] == "free" and rep["num_gaussians"] == n
    assert rep["bytes"] == size and rep["bits_per_pixel"] == pytest.approx(8 * size / (30 * 40))
    assert rep["metrics"] is None and rep["psnr_vs_unquantized"] > 25
    assert main(["decode", str(dest), "-o", str(tmp_path / "g.png")]) == 0
    assert iio.imread(tmp_path / "g.png").shape == (30, 40, 3)


def test_bad_inputs_exit_2_with_messages(work, tmp_path, capsys):
    weights = ["--weights", str(work / "w.safetensors"), "--device", "cpu", "--quiet"]
    assert main(["encode", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.air")] + weights) == 2
    assert "missing.png" in capsys.readouterr().err
    # OUT == INPUT: refused, input untouched
    photo = tmp_path / "photo.png"
    photo.write_bytes((work / "photo.png").read_bytes())
    assert main(["encode", str(photo), "-o", str(photo)] + weights) == 2
    assert "overwrite the input" in capsys.readouterr().err
    assert photo.read_bytes() == (work / "photo.png").read_bytes()
    # bad --bits: syntax, unknown name, range (the codec's messages), before any work
    for bad, words in ((["colour"], "NAME=INT"), (["colour=x"], "NAME=INT"), (["nosuch=4"], "nosuch"),
                       (["colour=99"], "1..16")):
        assert main(["encode", str(photo), "-o", str(tmp_path / "x.air"), "--bits", *bad] + weights) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "x.air").exists()
    # decode: not an .air file, truncated, missing
    assert main(["decode", str(photo), "-o", str(tmp_path / "y.png")]) == 2
    assert "not an .air file" in capsys.readouterr().err
    good = tmp_path / "good.air"
    assert main(["encode", str(photo), "-o", str(good)] + weights) == 0
    capsys.readouterr()
    data = good.read_bytes()
    for cut in (3, 20, len(data) - 5):
        bad = tmp_path / f"cut{cut}.air"
        bad.write_bytes(data[:cut])
        assert main(["decode", str(bad), "-o", str(tmp_path / "y.png")]) == 2
        assert "truncated" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "nope.air"), "-o", str(tmp_path / "y.png")]) == 2
    assert "nope.air" in capsys.readouterr().err
    assert main(["decode", str(good), "-o", str(good)]) == 2  # not a .png (and the input)
    assert not (tmp_path / "y.png").exists()
    with pytest.raises(SystemExit) as exc:
        main(["decode", str(good), "-o", str(tmp_path / "y.png"), "--scale", "0"])
    assert exc.value.code == 2


def test_help_lists_new_commands_without_lightning(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "encode", "decode"):
        assert command in text
    # building the parser and parsing another command does not import the training module
    import air_core.cli as cli

    before = "air_core.predictor.training" in sys.modules
    cli.build_parser().parse_args(["decode", "f.air", "-o", "x.png"])
    assert ("air_core.predictor.training" in sys.modules) == before


def test_train_tiny_run_writes_weights(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    photo = sample_image("astronaut")
    for i, (y, x) in enumerate(((0, 0), (200, 180), (300, 320))):
        iio.imwrite(imgs / f"c{i}.png", photo[y:y + 48, x:x + 48])
    run = tmp_path / "run"
    code = main(["train", "-o", str(run), "--train-dir", str(imgs), "--val-dir", "", "--width", "8",
                 "--num-stages", "1", "--crop", "32", "--batch-size", "2", "--pod-steps", "1",
                 "--pod-steps-per-stage", "1", "--pod-inner-steps", "1", "--finetune-steps", "1",
                 "--accelerator", "cpu", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "air_predictor.safetensors" in out
    model = AIRPredictor.from_pretrained(run / "air_predictor.safetensors")
    assert isinstance(model, AIRPredictor)
    # a bad config value is bad input
    assert main(["train", "-o", str(tmp_path / "run2"), "--train-dir", str(imgs), "--val-dir", "",
                 "--width", "0", "--quiet"]) == 2
    assert "width" in capsys.readouterr().err
