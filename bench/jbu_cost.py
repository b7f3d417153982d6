"""Benchmark: cost of 16x learned-JBU upsampling on this CPU, chunked adaptive convolution vs unfold + einsum.

    .venv/bin/python bench/jbu_cost.py                              # 384 channels (and 96), forward
    .venv/bin/python bench/jbu_cost.py --channels 24 48 --backward  # quick check, forward + backward

The problem: a C-channel 28 x 28 feature map upsampled 16x to 448 x 448 guided by a 448 x 448 image, by
FeatUp's JBU stack (``air_core.jbu.JBUStack(feat_dim=C)``: four 2x stages, 7 x 7 windows, the 1x1
refinement; random weights from seed 0, eval mode, batch 1), on the CPU. Methods:

* ``learned_chunked``: the stack as shipped: adaptive convolutions and range-kernel correlations in
  bounded-memory blocks (``air_core.jbu.adaptive_conv``, ``local_correlation``; default 4 MiB blocks).
* ``learned_unfold``: the same stack, inputs and weights with both operations replaced by their
  ``unfold`` + ``einsum`` versions (FeatUp's pure-PyTorch route: ``adaptive_conv_reference`` and the
  same for the correlation), patched into ``air_core.jbu.learned`` inside the worker process only.
* ``classical``: ``joint_bilateral_upsample`` (Kopf et al. 2007; 5 x 5 low-res window), chunked.
* ``bilinear``: ``F.interpolate`` (the floor).

Each (method, channels) pair runs in a fresh subprocess. Peak memory is the process's own peak
resident set (``VmHWM`` in /proc/self/status, reset through /proc/self/clear_refs after the inputs and
the model exist and one warm-up call on a 4x smaller problem has run); ``peak_extra_mb`` is that peak
minus the resident set just before the measured calls: the memory the upsampling itself needed
(output included). Time: the best of ``--repeats`` calls. With ``--backward`` the measured call is
forward + backward (gradients for the features and the stack's parameters).

A memory guard protects the shared machine: every worker runs under RLIMIT_AS = ``--memory-limit-gb``
(default: the smaller of 12 GB and 60 % of the available memory). A method that needs more fails its
allocation and is recorded as ``out of memory`` together with the size of its largest tensor: for
unfold + einsum, the [1, C, 49, 448, 448] patch tensor (15.1 GB in float32 for C = 384).

Results: ``bench/results/jbu_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("learned_chunked", "learned_unfold", "classical", "bilinear")
LOW, HIGH = 28, 448


def _status_kb(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _available_gb() -> float:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2 ** 20
    return 8.0


def _patch_unfold() -> None:
    """Replace the chunked operations inside air_core.jbu.learned with unfold + einsum versions."""
    import torch
    import torch.nn.functional as F

    from air_core.jbu import adaptive_conv_reference, learned

    def correlation_reference(a: torch.Tensor, src: torch.Tensor, *, max_chunk_bytes=None) -> torch.Tensor:
        b, c, h, w = a.shape
        kh, kw = src.shape[2] - h + 1, src.shape[3] - w + 1
        patches = F.unfold(src, (kh, kw)).view(b, c, kh * kw, h, w)
        return torch.einsum("bckhw,bchw->bhwk", patches, a).reshape(b, h, w, kh, kw)

    learned.adaptive_conv = lambda src, kernel, max_chunk_bytes=None: adaptive_conv_reference(src, kernel)
    learned.local_correlation = correlation_reference


def worker(method: str, channels: int, repeats: int, backward: bool, limit_gb: float) -> dict:
    limit = int(limit_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F

    from air_core.jbu import JBUStack, joint_bilateral_upsample

    if method == "learned_unfold":
        _patch_unfold()
    torch.manual_seed(0)
    stack = JBUStack(feat_dim=channels).eval()

    def make(low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(1, channels, low, low, requires_grad=backward), torch.rand(1, 3, high, high))

    def call(feats: torch.Tensor, guide: torch.Tensor) -> None:
        with torch.set_grad_enabled(backward):
            if method.startswith("learned"):
                out = stack(feats, guide)
            elif method == "classical":
                out = joint_bilateral_upsample(feats, guide)
            else:
                out = F.interpolate(feats, size=guide.shape[-2:], mode="bilinear", align_corners=False)
            if backward:
                out.square().mean().backward()

    row = {"method": method, "channels": channels, "backward": backward, "repeats": repeats}
    call(*make(LOW // 4, HIGH // 4))  # warm-up: lazy initialisation, thread pools
    feats, guide = make(LOW, HIGH)
    rss0 = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # reset the peak resident set size (Linux >= 4.0)
        row["peak_reset"] = True
    except OSError:
        row["peak_reset"] = False
    times = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            call(feats, guide)
            times.append(time.perf_counter() - t0)
            if backward:
                feats.grad = None
                stack.zero_grad(set_to_none=True)
        row["status"] = "ok"
        row["time_s"] = min(times)
    except RuntimeError as exc:  # the allocator refuses memory beyond RLIMIT_AS
        if "memory" not in str(exc).lower():
            raise
        row["status"] = "out of memory"
        row["error"] = str(exc).splitlines()[0][:300]
    hwm = _status_kb("VmHWM")
    row.update(rss_before_mb=rss0 / 1024, peak_rss_mb=hwm / 1024, peak_extra_mb=(hwm - rss0) / 1024)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, nargs="+", default=[96, 384])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backward", action="store_true", help="measure forward + backward")
    ap.add_argument("--memory-limit-gb", type=float, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "jbu_cost.json"))
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "CHANNELS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    limit_gb = args.memory_limit_gb or min(12.0, 0.6 * _available_gb())
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.backward, limit_gb)))
        return
    import torch

    rows = []
    for c in args.channels:
        for m in args.methods:
            cmd = [sys.executable, __file__, "--worker", m, str(c), "--repeats", str(args.repeats),
                   "--memory-limit-gb", str(limit_gb)] + (["--backward"] if args.backward else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                row = {"method": m, "channels": c, "backward": args.backward, "status": "failed",
                       "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["unfold_patch_tensor_gb"] = c * 49 * HIGH * HIGH * 4 / 1e9
            rows.append(row)
            extra = f"{row['peak_extra_mb']:.0f} MB" if row.get("status") == "ok" else "-"
            took = f"{row['time_s']:.2f} s" if "time_s" in row else row["status"]
            print(f"C={c:4d} {m:16s} {took:>14s}  peak extra {extra}", flush=True)
    for row in rows:
        base = next((r for r in rows if r["channels"] == row["channels"] and r["method"] == "learned_unfold"
                     and r.get("status") == "ok"), None)
        if base is not None and row.get("status") == "ok" and row["method"] != "learned_unfold":
            row["peak_extra_vs_unfold"] = row["peak_extra_mb"] / base["peak_extra_mb"]
            row["time_vs_unfold"] = row["time_s"] / base["time_s"]
    report = {"problem": f"[1, C, {LOW}, {LOW}] -> [1, C, {HIGH}, {HIGH}] (16x), guidance [1, 3, {HIGH}, {HIGH}]",
              "backward": args.backward, "memory_limit_gb": limit_gb, "rows": rows,
              "environment": {"torch": torch.__version__, "python": platform.python_version(),
                              "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "processor": platform.processor() or platform.machine()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print("\n| C | method | time s | peak extra MB | vs unfold (memory) |\n|---|---|---|---|---|")
    for r in rows:
        t = f"{r['time_s']:.2f}" if "time_s" in r else r["status"]
        if r.get("status") == "ok":
            mem = f"{r['peak_extra_mb']:.0f}"
        else:
            mem = f"needs > {r['unfold_patch_tensor_gb']:.1f} GB" if r["method"] == "learned_unfold" else "-"
        ratio = f"{r['peak_extra_vs_unfold']:.3f}" if "peak_extra_vs_unfold" in r else "-"
        print(f"| {r['channels']} | {r['method']} | {t} | {mem} | {ratio} |")


if __name__ == "__main__":
    main()
