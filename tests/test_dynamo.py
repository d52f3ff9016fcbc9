"""torch.compile of densedsl's models (the aot_eager backend: dynamo and AOT autograd, where
densedsl's path switches and the partitioner's recomputation happen, without a C++ build)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from measure import saved_bytes  # noqa: E402

import densedsl  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402

SPEC = """
network small_dynamo {
    input 3x16x16
    defaults growth=4 bottleneck=4 compression=0.5
    stem {
        conv 8
    }
    dense layers=4
    transition
    dense layers=4
    head classes=10
}
"""


def compiled(memory: str):
    torch.manual_seed(0)
    model = build_model(densedsl.parse(SPEC).network, memory=memory)
    torch._dynamo.reset()
    return model, torch.compile(model, backend="aot_eager")


@pytest.mark.slow
def test_torch_compile_keeps_efficient_modes_recomputation(one_thread, monkeypatch):
    """Under torch.compile a memory="efficient" model keeps its dense layers' checkpoint (dynamo
    traces it as a tagged region, AOT autograd's partitioner recomputes it), so backward holds
    far fewer bytes than compiled standard mode (measured: 0.47×; equal bytes when the checkpoint
    is off under dynamo). Values against eager efficient mode: test_bench_reference's
    test_torch_compile_of_efficient_mode_trains_like_eager_efficient_mode."""
    monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    x = torch.randn(4, 3, 16, 16)
    kept = {}
    for memory in ("standard", "efficient"):
        model, fast = compiled(memory)
        kept[memory] = saved_bytes(fast.train(), x, buffers=True)
    assert kept["efficient"] < 0.75 * kept["standard"], kept


@pytest.mark.slow
def test_a_compiled_eval_model_runs_the_inference_engine_and_gives_eagers_outputs(one_thread):
    """In eval mode without autograd, torch.compile leaves the inference engine to run eagerly
    behind one graph break (`torch.compiler.disable`: faster than the compiled plain path,
    BENCHMARKS.md dynamo section), so the compiled model's outputs are the eager engine's, for
    the classifier and for timm's features_only model."""
    from densedsl.nn.model import DenseNetFeatures

    model, fast = compiled("standard")
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        seen = torch._dynamo.explain(model)(x)
        assert (seen.graph_count, seen.graph_break_count) == (2, 1)  # the engine, behind its break
        torch.testing.assert_close(fast(x), model(x), rtol=1e-6, atol=1e-6)
        features = DenseNetFeatures(model).eval()
        torch._dynamo.reset()
        got, want = torch.compile(features, backend="aot_eager")(x), features(x)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6, msg=name)


def test_the_engine_leaves_torch_dynamo_unimported_in_eager_use():
    """Keeping the engine eager under torch.compile must not cost eager users dynamo's import
    (1-2 s): `torch.compiler.disable` is called only while dynamo traces."""
    import subprocess
    import sys

    code = ("import sys, torch, densedsl\nfrom densedsl.nn.build import build_model\n"
            f"net = densedsl.parse({SPEC!r}).network\n"
            "model = build_model(net).eval()\nwith torch.no_grad():\n    model(torch.randn(2, 3, 16, 16))\n"
            "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
