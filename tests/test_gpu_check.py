"""bench/gpu_check.py runs on a GPU only now and then; its --dry-run keeps it working in between."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_walks_every_section(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.read_text())
    sections = ("parity", "amp", "memory", "ddp", "speed", "compile")
    assert {s: record[s]["status"] for s in sections} == {
        "parity": "ok", "amp": "ok", "memory": "skipped", "ddp": "ok", "speed": "ok", "compile": "ok"}
    parity = record["parity"]["tiny"]
    assert parity["inference_vs_reference"] < 1e-4 and parity["grads_vs_reference"] < 1e-4
    assert record["amp"]["tiny/fp16"]["status"] == "skipped"  # needs CUDA
    assert record["memory"]["tiny"]["efficient_predicted"] < record["memory"]["tiny"]["standard_predicted"]
    assert record["ddp"]["backend"] == "gloo" and record["ddp"]["checkpoints"]
    assert record["compile"]["tiny"]["ok"]


def test_gpu_check_refuses_to_pretend_without_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
    assert not (tmp_path / "x.json").exists()
