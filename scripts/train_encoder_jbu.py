"""Train the JBU stack shipped for the predictor's encoder features, and measure it on Set14.

    .venv/bin/python scripts/train_encoder_jbu.py --steps 120           # the shipped stack (about 15 min, 2 CPU cores)
    .venv/bin/python scripts/train_encoder_jbu.py --steps 5 --out /tmp/s.pt --report /tmp/r.json   # a quick check

Backbone: the shipped predictor's first-stage encoder (:meth:`AIRPredictor.encoder_features`, 64
channels at stride 8), frozen. Training: :func:`air_core.jbu.fit_jbu` with FeatUp's multi-view
objective and its settings (channel-normalised features, 5 jitters, attention downsampler,
outlier-aware loss, random projection to 30 dimensions, batch 4, 224 x 224 crops, NAdam at 3e-3 where
FeatUp uses 1e-3: a CPU-sized run takes few steps) on the
BSDS500 *train* photos (../shared/data/train/BSDS500_train), fixed seed. Three 2x stages (28 -> 224).

Evaluation (held out, Set14 HR from ../shared/data/sr/Set14/x2/HR, the predictor's validation set; Kodak is
not used): each image resized so its short side is 224, centre crop 224 x 224; for 8 fixed jitters
per image, the multi-view error FeatUp trains on, measured as a plain mean squared error of the
channel-normalised features, || down(t(F_hr)) - f(t(x)) ||^2, with the trained attention
downsampler, for F_hr from the trained stack and from bilinear / bicubic upsampling of the same
features (lower is better; the downsampler is the same for all three). Written to ``--report``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from air_core import load_image, to_tensor  # noqa: E402
from air_core.jbu import channel_norm, fit_jbu  # noqa: E402
from air_core.jbu.training import apply_jitter, sample_jitter  # noqa: E402
from air_core.predictor import ENCODER_JBU_PATH, AIRPredictor  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    s = size / min(h, w)
    image = F.interpolate(image[None], size=(max(size, round(h * s)), max(size, round(w * s))), mode="bilinear",
                          align_corners=False, antialias=True)[0].clamp(0, 1)
    top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
    return image[:, top: top + size, left: left + size]


def evaluate(model: AIRPredictor, stack, down, size: int, jitters: int) -> dict:
    paths = sorted((DATA / "sr" / "Set14" / "x2" / "HR").glob("*.png"))
    errors = {"learned_jbu": [], "bilinear": [], "bicubic": []}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in paths:
            x = centre_crop(to_tensor(load_image(p)), size)[None]
            feats = model.encoder_features(x)
            hr = {"learned_jbu": stack(feats, x),
                  "bilinear": F.interpolate(channel_norm(feats), size=(size, size), mode="bilinear",
                                            align_corners=False),
                  "bicubic": F.interpolate(channel_norm(feats), size=(size, size), mode="bicubic",
                                           align_corners=False)}
            state = torch.random.get_rng_state()
            torch.random.set_rng_state(gen.get_state())
            jits = [sample_jitter((size, size), 20, 2.0) for _ in range(jitters)]
            gen.set_state(torch.random.get_rng_state())
            torch.random.set_rng_state(state)
            for name, up in hr.items():
                err = 0.0
                for jit in jits:
                    target = channel_norm(model.encoder_features(apply_jitter(x, jit)))
                    err += float((down(apply_jitter(up, jit), tuple(target.shape[-2:])) - target).square().mean())
                errors[name].append(err / jitters)
    means = {k: sum(v) / len(v) for k, v in errors.items()}
    return {"images": len(paths), "jitters_per_image": jitters, "mse": means,
            "per_image": {k: dict(zip([p.stem for p in paths], v)) for k, v in errors.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=200, help="BSDS500 train photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-jitters", type=int, default=8)
    ap.add_argument("--out", default=str(ENCODER_JBU_PATH))
    ap.add_argument("--report", default=str(ROOT / "bench" / "results" / "encoder_jbu.json"))
    args = ap.parse_args()
    photos = sorted((DATA / "train" / "BSDS500_train").glob("*.jpg"))[: args.images]
    if not photos:
        sys.exit(f"no training photos under {DATA / 'train' / 'BSDS500_train'}")
    model = AIRPredictor.from_pretrained()
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.perf_counter()
    result = fit_jbu(model.encoder_features, [load_image(p) for p in photos], steps=args.steps, batch_size=4,
                     image_size=args.size, lr=args.lr, seed=args.seed, device="cpu", log_every=max(1, args.steps // 20),
                     progress=lambda f, m: print(f"  {m}  ({time.perf_counter() - t0:.0f} s)", flush=True))
    result.stack.save(args.out)
    report = {"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
              "train": {"steps": result.steps, "seconds": result.seconds, "images": len(photos), "lr": args.lr,
                        "crop": args.size, "feature_size": list(result.feature_size),
                        "num_stages": result.stack.num_stages,
                        "loss_first20": sum(h["loss"] for h in result.history[:20]) / min(20, len(result.history)),
                        "loss_last20": sum(h["loss"] for h in result.history[-20:]) / min(20, len(result.history))},
              "set14": evaluate(model, result.stack, result.downsampler, args.size, args.eval_jitters)}
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("train",)}, indent=1))
    print("Set14 multi-view MSE:", {k: round(v, 4) for k, v in report["set14"]["mse"].items()})


if __name__ == "__main__":
    main()
