"""Training the AIR predictor: data, the two losses, the Lightning run (checkpoints, logs, resume, export)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from air_core import sample_image, save_image
from air_core.predictor import AIRPredictor
from air_core.predictor.training import (CropDataset, TrainConfig, config_from_args, finetune_loss, pod_loss,
                                         train)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Four small real crops (astronaut) as PNG files, two of them grey."""
    d = tmp_path_factory.mktemp("imgs")
    photo = sample_image("astronaut")
    for i, (y, x) in enumerate([(0, 0), (100, 200), (300, 120), (200, 350)]):
        crop = photo[y:y + 60, x:x + 72]
        if i % 2:
            crop = crop.mean(-1).astype(np.uint8)
        save_image(d / f"img{i}.png", crop)
    return d


def _tiny_crops(n: int = 4, size: int = 32) -> torch.Tensor:
    photo = torch.from_numpy(sample_image("astronaut")).permute(2, 0, 1).float() / 255
    return torch.stack([photo[:, 60 * i + 100:60 * i + 100 + size, 80 * i + 150:80 * i + 150 + size]
                        for i in range(n)])


def test_crop_dataset_shapes_range_and_seed(image_dir):
    ds = CropDataset([image_dir], crop=24, length=5)
    assert len(ds) == 5 and len(ds.images) == 4
    torch.manual_seed(3)
    a = [ds[i] for i in range(5)]
    torch.manual_seed(3)
    b = [ds[i] for i in range(5)]
    for x, y in zip(a, b):
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        assert torch.equal(x, y)
    assert not torch.equal(a[0], a[1])


def test_crop_dataset_bad_input(image_dir, tmp_path):
    with pytest.raises(ValueError, match="crop=100 is larger"):
        CropDataset([image_dir], crop=100)
    with pytest.raises(ValueError, match="crop must be"):
        CropDataset([image_dir], crop=4)
    with pytest.raises(FileNotFoundError, match="training directory not found"):
        CropDataset([tmp_path / "missing"])
    with pytest.raises(ValueError, match="no images"):
        CropDataset([tmp_path])


def test_finetune_loss_decreases_on_a_few_crops():
    torch.manual_seed(0)
    model = AIRPredictor(width=8)
    crops = _tiny_crops()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss, logs = finetune_loss(model, crops)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert set(logs) >= {"loss_s0", "loss_s3", "psnr"}
    assert losses[-1] < 0.8 * losses[0]


def test_pod_loss_distills_towards_refined_parameters():
    torch.manual_seed(0)
    model = AIRPredictor(width=8)
    crops = _tiny_crops(2)
    loss, logs = pod_loss(model, crops, stages=2, inner_steps=3, inner_lr=1e-2)
    assert loss.requires_grad and float(loss) > 0
    assert set(k for k in logs if k.startswith("pod_")) == {"pod_distill_s0", "pod_distill_s1"}
    loss.backward()
    grads = [p.grad for p in model.stages[0].parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.stages[2].parameters())   # stage 2 not switched on yet


def test_train_run_checkpoints_logs_resume_and_export(image_dir, tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), train_dirs=[str(image_dir)], val_dir=str(image_dir),
                      val_limit=2, width=8, crop=32, batch_size=2, pod_steps=2, pod_steps_per_stage=1,
                      pod_inner_steps=1, finetune_steps=2, warmup_steps=1, val_every=2, checkpoint_every=2,
                      log_every=1, seed=1)
    record = train(cfg, progress_bar=False)
    run = tmp_path / "run"
    assert record["steps"] == 4
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader(open(run / "logs" / "version_0" / "metrics.csv")))
    assert any(r.get("train_loss") for r in rows) and any(r.get("val_psnr") for r in rows)
    assert (run / "loss_curves.png").stat().st_size > 1000
    model = AIRPredictor.from_pretrained(run / "air_predictor.safetensors")
    assert model.width == 8 and model.training_record["steps"] == 4
    # resume: two more finetuning steps continue from the checkpoint's step
    cfg.finetune_steps = 4
    record = train(cfg, resume=True, progress_bar=False)
    assert record["steps"] == 6 and record["resumed"]
    # the first run's log survives the resumption (a new log version)
    first = list(csv.DictReader(open(run / "logs" / "version_0" / "metrics.csv")))
    second = list(csv.DictReader(open(run / "logs" / "version_1" / "metrics.csv")))
    assert min(int(r["step"]) for r in first) == 0 and min(int(r["step"]) for r in second) >= 4


def test_same_seed_same_weights(image_dir, tmp_path):
    def run(name):
        cfg = TrainConfig(out_dir=str(tmp_path / name), train_dirs=[str(image_dir)], val_dir=None, width=8,
                          crop=32, batch_size=2, pod_steps=0, finetune_steps=2, warmup_steps=1, seed=5,
                          checkpoint_every=10)
        train(cfg, progress_bar=False)
        return AIRPredictor.from_pretrained(tmp_path / name / "air_predictor.safetensors").state_dict()

    a, b = run("a"), run("b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_validation_and_args():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="finetune_lr must be a positive number"):
        TrainConfig(finetune_lr=-1.0).validate()
    with pytest.raises(ValueError, match="pod_steps \\+ finetune_steps"):
        TrainConfig(pod_steps=0, finetune_steps=0).validate()
    with pytest.raises(FileNotFoundError, match="resume=True"):
        train(TrainConfig(out_dir="/nonexistent/run"), resume=True)
    import argparse

    from air_core.predictor.training import add_train_arguments
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--width", "16", "--devices", "2", "--val-dir", ""]))
    assert cfg.width == 16 and cfg.devices == 2 and cfg.val_dir is None and len(cfg.train_dirs) == 2
