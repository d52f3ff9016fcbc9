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
    if not _has_monai():
        assert set(record["models"]) == {"tiny"} and "MONAI" in record["models_left_out"]["volume"]
        return
    # the volume, against MONAI's DenseNet with the same layers
    assert record["models"] == {"tiny": "3x16x16, batch 4", "tiny_3d": "1x16x16x16, batch 2"}
    assert record["models_left_out"] == {}
    volume = record["parity"]["tiny_3d"]
    assert volume["reference"] == "MONAI" and volume["ok"]
    assert volume["inference_vs_reference"] < 1e-4 and volume["grads_vs_reference"] < 1e-4
    assert record["amp"]["tiny_3d/bf16"]["status"] == "ok" and record["amp"]["tiny_3d/bf16"]["finite"]
    assert record["amp"]["tiny_3d/fp16"]["status"] == "skipped"
    assert record["memory"]["tiny_3d"]["efficient_predicted"] < record["memory"]["tiny_3d"]["standard_predicted"]
    assert {"tiny_3d/NCDHW", "tiny_3d/channels_last_3d"} <= set(record["speed"])
    assert "tiny_3d" in record["compile"]["not_compiled"] and "tiny_3d" not in record["compile"]


def _has_monai() -> bool:
    try:
        import monai.networks.nets  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_dry_runs_volume_shares_monais_weights_and_parameter_names(one_thread):
    """The 3-D pair: MONAI's weights in the compiled model, MONAI's gradients under the compiled
    model's names, and the volume's channels-last layout is channels_last_3d."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai.networks.nets")
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    plan = gpu_check.Plan(dry_run=True, device="cpu")
    assert plan.is_monai("tiny_3d") and not plan.is_monai("tiny")
    model, ref = plan.pair("tiny_3d")
    assert type(ref).__module__.startswith("monai.")
    x, y = plan.batch("tiny_3d", fmt=plan.channels_last("tiny_3d"))
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    assert list(plan.formats("tiny_3d").values()) == [torch.contiguous_format, torch.channels_last_3d]
    model.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)
    model.train(), ref.train()
    ours = gpu_check._grads(model, x, y)
    theirs = plan.reference_grads("tiny_3d", gpu_check._grads(ref, x, y))
    assert theirs.keys() == ours.keys() and len(ours) == len(list(model.parameters()))
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gpu_check_refuses_to_pretend_without_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
    assert not (tmp_path / "x.json").exists()
