"""bench_monai compares densedsl's DenseNet-121 with MONAI's on 1-D and 3-D inputs: the two
networks it times must be the same network (parameters, outputs with MONAI's weights), its
ceiling conv must have a dense layer's shape, and its report must land in one section."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai.networks.nets")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_monai as bm  # noqa: E402


def test_every_case_has_monais_parameter_count_and_its_own_input():
    for case, c in bm.CASES.items():
        a = bm.analysis(case)
        assert a.input_shape == c["input"], case
        assert a.params == bm.count(bm.monai_model(case)), case
    # the spec files' own inputs keep their `expect` line (MONAI's figures, checked on compile)
    assert "\n    expect " in bm.spec_text("1-D 1x1024") and "\n    expect " in bm.spec_text("3-D 1x96^3")
    assert "# expect " in bm.spec_text("3-D 1x64^3") and "input 1x64x64x64" in bm.spec_text("3-D 1x64^3")


def _randomised_monai(original):
    def make(case):
        model = original(case)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # non-trivial BN statistics, so eval mode really uses them
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        return model
    return make


@pytest.mark.parametrize("case, size", [("1-D 1x1024", (1, 96)), ("3-D 1x64^3", (1, 32, 32, 32))])
def test_the_timed_networks_compute_the_same_function(one_thread, monkeypatch, case, size):
    monkeypatch.setattr(bm, "monai_model", _randomised_monai(bm.monai_model))
    models = {impl: bm.make(case, impl).eval() for impl in bm.INFERENCE}
    assert type(models["monai"]).__module__.startswith("monai.")
    assert type(models["densedsl"]).__module__.startswith("densedsl.")
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(3))
    assert bm.check_parity(case, models, x) < 1e-5
    with torch.no_grad():
        next(models["densedsl"].parameters()).mul_(1.5)  # a different network must be caught
    with pytest.raises(RuntimeError, match="differs from MONAI"):
        bm.check_parity(case, models, x)


class _Seen(Exception):
    pass


@pytest.mark.parametrize("case", list(bm.CASES))
def test_the_ceiling_conv_is_block_1s_first_3x3_conv(one_thread, case):
    """In, out, kernel, padding and input size of MONAI's own conv there (its forward is
    stopped there), at the case's batch; every layout computes the same conv."""
    monai = bm.monai_model(case).eval()
    conv2 = monai.features.denseblock1.denselayer1.layers.conv2
    seen = {}

    def stop(module, args):
        seen["shape"] = tuple(args[0].shape[1:])
        raise _Seen

    conv2.register_forward_pre_hook(stop)
    with torch.no_grad(), pytest.raises(_Seen):
        monai(torch.zeros(1, *bm.CASES[case]["input"]))
    layouts = bm.ceiling_layouts(bm.ceiling_op(bm.analysis(case)), bm.CASES[case]["batch"], "cpu")
    conv, x = layouts["contiguous"]
    assert type(conv) is type(conv2)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (
        conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.padding) == (
        128, 32, (3,) * bm.CASES[case]["rank"], (1,) * bm.CASES[case]["rank"])
    assert tuple(x.shape) == (bm.CASES[case]["batch"], *seen["shape"])
    assert len(layouts) == 2
    with torch.no_grad():
        want = conv(x)
        for name, (module, inp) in layouts.items():
            torch.testing.assert_close(module(inp).reshape(want.shape), want, rtol=1e-4, atol=1e-4, msg=name)


def _result(densedsl_inference, peak):
    memory = {f"{phase}/{impl}": {"peak": peak, "predicted": 100 * 2**20}
              for phase, impls in (("inference", bm.INFERENCE), ("training", bm.TRAINING)) for impl in impls}
    return {"batch": 2, "input": "1x8", "macs": 10**9, "params": 1000, "rounds": (2, 2), "parity": 0.0,
            "ceiling_conv": {"in": (128, 4), "out": (32, 4), "kernel": 3, "macs": 1},
            "ceiling_layout": "contiguous", "ceiling_macs_per_s": 1e10,
            "densedsl_ceiling_share": 0.5, "monai_ceiling_share": 0.4,
            "inference": {"densedsl": densedsl_inference, "monai": [2.0, 1.0]},
            "training": {"monai": [1.0, 2.0], "standard": [2.0, 2.0], "efficient": [3.0, 2.0]},
            "memory": memory}


META = {"command": "python bench/bench_monai.py", "machine": "test", "threads": 1, "load_before": "0",
        "load_after": "0", "python": "3", "torch": "2", "monai": "1", "device": "cpu", "elapsed": 1.0}


def test_ratios_pair_rounds_and_the_prediction_goal_is_25_percent():
    text = bm.report({"1-D": _result([1.0, 2.0], 80 * 2**20)}, META)
    # round by round: 1/2 and 2/1 (the sorted times would pair 1/1 and 2/2)
    assert "| 1-D | inference: densedsl / MONAI | 2.00× (0.50–2.00) |" in text
    assert "| 1-D | training step: densedsl efficient / densedsl standard | 1.50× (1.00–1.50) |" in text
    assert "| 1-D | training | standard | 80 | 100 | +25% | yes |" in text
    assert "| 1-D | training | monai | 80 | 100 | +25% | — |" in text
    text = bm.report({"1-D": _result([1.0, 2.0], 79 * 2**20)}, META)
    assert "| 1-D | training | efficient | 79 | 100 | +27% | **no** |" in text


def test_predictions_follow_the_measured_mode():
    a = bm.analysis("1-D 1x1024")
    case = "1-D 1x1024"
    inference, standard, efficient = (bm.predicted(a, case, impl, phase) for impl, phase in (
        ("densedsl", "inference"), ("standard", "training"), ("efficient", "training")))
    assert inference < efficient < standard
    assert bm.predicted(a, case, "monai", "training") == standard
    assert standard - a.memory(16, "float32", "standard") == 4 * a.params  # the gradients


def test_the_section_is_replaced_not_duplicated(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n<!-- bench:compiler -->\n## Compiled\nkept\n<!-- /bench:compiler -->\n")
    bm.write(path, bm.report({"1-D": _result([1.0, 2.0], 80 * 2**20)}, META))
    bm.write(path, bm.report({"3-D": _result([1.0, 2.0], 80 * 2**20)}, META))
    text = path.read_text()
    assert text.count(bm.HEADING) == 1 and text.count("<!-- bench:monai -->") == 1
    assert "| 3-D | inference: densedsl / MONAI |" in text and "| 1-D |" not in text
    assert "## Compiled\nkept\n" in text and text.index("## Compiled") < text.index(bm.HEADING)
