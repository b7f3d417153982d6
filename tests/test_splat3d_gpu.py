"""On a machine with CUDA and gsplat: our 3DGS render against gsplat.rasterization (PSNR >= 45 dB).

Skipped without CUDA (CI has none); `bench/check_gsplat.py` is the same check as a script.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gsplat has no CPU rasterizer)")
def test_renderer_matches_gsplat_on_real_scenes():
    pytest.importorskip("gsplat")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "check_gsplat.py"), "--size", "256", "--views", "2"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
