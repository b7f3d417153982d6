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


def test_shipped_encoder_jbu_stack_lifts_the_encoder_features():
    """The JBU stack trained with fit_jbu for the shipped predictor's encoder: shipped, loadable, and
    usable through jbu_upsample on the encoder's features of a real photo."""
    from air_core.jbu import JBUStack, jbu_upsample
    from air_core.predictor import ENCODER_JBU_PATH, load_encoder_jbu

    assert ENCODER_JBU_PATH.is_file() and ENCODER_JBU_PATH.stat().st_size <= 2**20
    stack = load_encoder_jbu()
    model = AIRPredictor.from_pretrained()
    assert isinstance(stack, JBUStack) and not stack.training
    assert stack.feat_dim == model.width and stack.normalize_features and stack.num_stages == 3
    image = torch.from_numpy(air.sample_image("chelsea")[40:136, 100:220]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        feats = model.encoder_features(image)
        assert feats.shape == (1, model.width, 12, 15)
        up = jbu_upsample(feats, image, method="learned", model=stack)
    assert up.shape == (1, model.width, 96, 120) and bool(torch.isfinite(up).all())
    # trained for consistency (FeatUp's objective): pooled back to the features' grid, its output is
    # nearer the channel-normalised features than an untrained stack's (measured 0.090 vs 0.140)
    from air_core.jbu import channel_norm

    torch.manual_seed(0)
    untrained = JBUStack(feat_dim=model.width, num_stages=3, normalize_features=True).eval()
    errs = []
    for s in (stack, untrained):
        with torch.no_grad():
            pooled = torch.nn.functional.avg_pool2d(jbu_upsample(feats, image, method="learned", model=s), 8)
        errs.append(float((pooled - channel_norm(feats)).square().mean()))
    assert errs[0] < 0.75 * errs[1]
    with pytest.raises(ValueError, match="channels"):
        jbu_upsample(feats[:, :8], image, method="learned", model=stack)
