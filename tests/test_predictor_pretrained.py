"""The predictor weights shipped inside the package: present, loadable offline, small, and trained."""

from __future__ import annotations

import json

import pytest
import torch

import air_core as air
from air_core.predictor import PRETRAINED_PATH, AIRPredictor, load_predictor


def test_shipped_weights_file():
    assert PRETRAINED_PATH.is_file(), "the package must ship its predictor weights"
    assert PRETRAINED_PATH.stat().st_size <= 40 * 2**20
    from safetensors import safe_open

    with safe_open(str(PRETRAINED_PATH), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "air-predictor"
    record = json.loads(meta["training"])
    assert record["steps"] > 0 and record["hardware"] and record["config"]["train_dirs"]
    assert not any("kodak" in d.lower() for d in record["config"]["train_dirs"])   # Kodak is test-only


def test_from_pretrained_loads_without_network():
    model = AIRPredictor.from_pretrained()
    assert not model.training
    assert model.num_stages >= 4 and model.patch_size == 7
    assert sum(p.numel() for p in model.parameters()) <= 10_000_000
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_shipped_weights_are_trained():
    """A trained predictor reconstructs a real photo crop far above what untrained weights reach."""
    image = air.sample_image("astronaut")[100:228, 150:278]
    trained = air.reconstruct(image, model=load_predictor(device="cpu"))
    untrained = air.reconstruct(image, model=AIRPredictor())
    assert trained.metrics["psnr"] > 24.0
    assert trained.metrics["psnr"] > untrained.metrics["psnr"] + 10
    # later stages add detail: the last stage's PSNR is above the first's
    assert trained.metrics["stage_psnr"][-1] > trained.metrics["stage_psnr"][0] + 1.0


def test_bad_weights_files(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        AIRPredictor.from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="predictor weights not found"):
        AIRPredictor.from_pretrained(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not an AIR predictor file"):
        AIRPredictor.from_pretrained(other)

    noconfig = tmp_path / "noconfig.safetensors"
    save_file({"a": torch.zeros(2)}, str(noconfig), metadata={"format": "air-predictor", "version": "1"})
    with pytest.raises(ValueError, match="bad predictor config"):
        AIRPredictor.from_pretrained(noconfig)
