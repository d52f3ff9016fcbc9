"""Non-square windows: a kernel, stride or padding per axis (`kernel=1x7 padding=0x3`) on every op
that slides a window, through resolve, the size chain, the figures, the model and the exports. One
number keeps meaning "the same along every axis" (square specs are unchanged: the golden tests)."""

from __future__ import annotations

import dataclasses

import pytest
from twins import exported_twin, without_engine

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.core import diagnostics as d
from densedsl.core.source import Source
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source

SPEC = """network n(k=7) {
    input 3x16x16
    stem {
        conv 8 kernel=1x7 stride=1x2
        maxpool kernel=3x1 stride=2x1 padding=1x0
    }
    dense layers=2 growth=4 bottleneck=2 kernel=1 x k
    transition kernel=2x1 stride=2x1
    dense layers=2 growth=4 kernel=3x5
    transition pool=none stride=1x2
    dense layers=1 growth=4
    head classes=3 kernel=1x2 stride=1x2
}
"""


def network(text: str = SPEC):
    return densedsl.parse(text).network


def test_per_axis_values_resolve_and_equal_numbers_collapse():
    net = network()
    conv, pool = net.stem.ops
    assert (conv.kernel, conv.stride, conv.padding) == ((1, 7), (1, 2), (0, 3))  # 'same' per axis
    assert (pool.kernel, pool.stride, pool.padding) == ((3, 1), (2, 1), (1, 0))
    assert [b.kernel for b in net.blocks] == [(1, 7), (3, 5), 3]
    assert net.transitions[0].pool.kernel == (2, 1) and net.transitions[1].stride == (1, 2)
    assert net.head.window == ((1, 2), (1, 2))
    square = network(SPEC.replace("kernel=3x5", "kernel=3x3"))
    assert square.blocks[1].kernel == 3  # 3x3 is 3: a square spec's network is unchanged


def test_fmt_round_trips_per_axis_values():
    assert format_spec(parse_source(Source.from_text(SPEC))) == SPEC


def test_sizes_figures_and_text_follow_each_axis():
    a = analyze(network())
    g = a.graph
    assert g.nodes["stem.conv0"]["out_shape"] == (8, 16, 8)      # 1x7 padded 0x3, stride 1x2
    assert g.nodes["stem.pool0"]["out_shape"] == (8, 8, 8)       # 3x1 pool, stride 2x1, pad 1x0
    assert g.nodes["transition1.pool"]["out_shape"] == (8 + 8, 4, 8)
    assert g.nodes["transition2.conv"]["out_shape"][1:] == (4, 4)
    assert g.nodes["stem.conv0"]["macs"] == 8 * 3 * 7 * 16 * 8   # Cout·Cin·∏kernel·∏out
    assert g.nodes["denseblock2.denselayer1.conv1"]["params"] == 4 * 16 * 3 * 5
    assert a.output_shape == (3,)
    from densedsl.views import report
    assert report.explain(a, 1).recipe == "BN-ReLU-Conv1x1(8)-BN-ReLU-Conv1x7(4)"
    assert "stem.conv0" in g and g.nodes["stem.conv0"]["kernel"] == (1, 7)


def test_receptive_field_is_the_largest_along_any_axis():
    # one conv 1x7 on a 1x16x16 map: 7 columns, 1 row
    a = analyze(network("network n {\n    input 1x16x16\n    stem {\n        conv 2 kernel=1x7\n    }\n}\n"))
    assert a.receptive_field == 7
    tall = analyze(network("network n {\n    input 1x16x16\n    stem {\n        conv 2 kernel=9x1\n"
                           "        conv 2 kernel=1x7\n    }\n}\n"))
    assert tall.receptive_field == 9


def test_the_model_and_the_python_export_compute_the_analysed_function():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from densedsl.nn.build import build_model
    from densedsl.nn.export import python_source
    net = network()
    a = analyze(net)
    model = build_model(net)
    assert model.features.conv0.kernel_size == (1, 7) and model.features.conv0.padding == (0, 3)
    assert model.features.denseblock2.denselayer1.conv1.kernel_size == (3, 5)
    assert sum(p.numel() for p in model.parameters()) == a.params
    x = torch.randn(2, 3, 16, 16)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        y = model.train()(x)
    assert tuple(y.shape[1:]) == a.output_shape and counter.get_total_flops() == 2 * a.flops
    model.eval()
    with torch.no_grad():
        accelerated = model(x)
        plain = without_engine(model)(x)
    torch.testing.assert_close(accelerated, plain, rtol=1e-4, atol=1e-5)
    source = python_source(net)
    assert "nn.Conv2d(3, 8, (1, 7), stride=(1, 2), padding=(0, 3), bias=False)" in source
    with torch.no_grad():
        torch.testing.assert_close(exported_twin(net, model)(x), plain)


def test_the_minimum_input_size_is_exact_with_per_axis_windows():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    net = network()
    side = analyze(net).min_input_size.eval
    assert side == 5
    model = build_model(dataclasses.replace(net, input=(3, side, side))).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, side, side))
    with pytest.raises(densedsl.SpecError) as e:
        analyze(dataclasses.replace(net, input=(3, side - 1, side - 1)))
    assert any(x.code is d.TOO_SMALL for x in e.value.diagnostics)


def test_a_kernel_larger_than_its_map_along_one_axis_is_located():
    text = "network n {\n    input 1x4x16\n    stem {\n        conv 2 kernel=7x1 padding=0\n    }\n}\n"
    with pytest.raises(densedsl.SpecError) as e:
        analyze(network(text))
    (diag,) = e.value.diagnostics
    assert diag.code is d.KERNEL_TOO_LARGE and diag.message.startswith("stem.conv0 has a 7x1 kernel, larger than its 4x16")


@pytest.mark.parametrize("shape, kernel, message", [
    ("1x16x16x16", "1x7", "kernel 1x7 has 2 dimensions, and the input 1x16x16x16 is a volume (three axes)"),
    ("3x16x16", "1x7x7", "kernel 1x7x7 has 3 dimensions, and the input 3x16x16 is an image (two axes)"),
    ("2x100", "1x7", "kernel 1x7 has 2 dimensions, and the input 2x100 is a signal (one axis)"),
])
def test_a_kernel_with_the_wrong_number_of_dimensions_is_located(shape, kernel, message):
    text = f"network n {{\n    input {shape}\n    stem {{\n        conv 8 kernel={kernel}\n    }}\n}}\n"
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(text)
    (diag,) = e.value.diagnostics
    assert diag.code is d.WRONG_RANK and diag.message == message
    assert diag.span.source.text[diag.span.start:diag.span.end] == kernel and "one per axis" in diag.hint


def test_per_axis_checks_name_the_axis():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(SPEC.replace("kernel=3x5", "kernel=3x4"))
    (diag,) = e.value.diagnostics
    assert diag.code is d.OUT_OF_RANGE and "must be odd, got 3x4" in diag.message
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(SPEC.replace("padding=1x0", "padding=1x1"))
    assert "pooling padding 1 is more than half the kernel 3x1" in e.value.diagnostics[0].message
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse(SPEC.replace("stride=1x2\n        maxpool", "stride=1x0\n        maxpool"))
    assert "stride along axis 2 must be at least 1" in e.value.diagnostics[0].message


def test_a_setting_named_x_still_explains_itself():
    with pytest.raises(densedsl.SpecError) as e:
        densedsl.parse("network n {\n    input 3x8x8\n    dense layers=3 x=1 growth=2\n}\n")
    (diag,) = e.value.diagnostics
    assert diag.code is d.SYNTAX and "separates dimensions" in diag.hint


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 0), (3, 3, 0), (4, 3, 1)])
def test_a_ceil_mode_pool_accepts_what_pytorch_accepts(kernel, stride, padding):
    """ceil_mode keeps a window that starts inside the input however far it overhangs, so a
    ceil pool takes inputs smaller than its kernel (found by test_promises drawing ceil=true):
    the predicted minimum runs, one less is refused by PyTorch itself."""
    import torch

    import densedsl

    def spec(size: int, ceil: bool) -> str:
        return (f"network n {{\n input 2x{size}x{size}\n stem {{\n conv 4 kernel=1\n"
                f" maxpool kernel={kernel} stride={stride} padding={padding} ceil={str(ceil).lower()}\n }}\n"
                " dense layers=1 growth=2\n}\n")

    least = densedsl.analyze(spec(8, True)).min_input_size.eval
    floor_least = densedsl.analyze(spec(8, False)).min_input_size.eval
    assert least == max(1, kernel - 2 * padding - stride + 1) < floor_least == kernel - 2 * padding
    model = densedsl.compile(spec(least, True)).eval()
    with torch.no_grad():
        model(torch.randn(1, 2, least, least))
        if least > 1:
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 2, least - 1, least - 1))
