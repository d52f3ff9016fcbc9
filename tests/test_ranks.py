"""1-D signals and 3-D volumes, end to end: language, analysis, model, exports, training.

Generated networks of every rank are held against the model in test_promises.py; here the
named figures (DenseNet-121 per rank), the error messages and the commands.
"""

from __future__ import annotations

import json

import pytest
from conftest import SPECS

import densedsl
from densedsl import cli
from densedsl.analysis.figures import analyze
from densedsl.core.diagnostics import SpecError

SIGNAL = """network s {
    input 2x64
    stem {
        conv 8 kernel=7 stride=2 padding=3
        norm
        relu
        maxpool kernel=3 stride=2 padding=1
    }
    dense layers=2 growth=4 bottleneck=2 dropout=0.1
    transition compression=0.5
    dense layers=2 growth=4
    head classes=3
}
"""
VOLUME = SIGNAL.replace("input 2x64", "input 1x12x12x12").replace("network s", "network v")


@pytest.mark.parametrize("rank, text", [(1, SIGNAL), (3, VOLUME)])
def test_figures_count_every_axis(rank, text):
    a = analyze(densedsl.parse(text).network)
    stem_conv = a.graph.nodes["stem.conv0"]
    cin = 2 if rank == 1 else 1
    assert stem_conv["params"] == 8 * cin * 7 ** rank  # kernel 7 along each axis
    side = 64 if rank == 1 else 12
    out = (side + 6 - 7) // 2 + 1
    assert stem_conv["out_shape"] == (8,) + (out,) * rank
    assert stem_conv["macs"] == 8 * cin * 7 ** rank * out ** rank
    assert a.output_shape == (3,)


def test_densenet121_of_every_rank_has_the_same_depth_and_connections():
    """Kernels apply along each axis: the layer graph is the rank's, the counts are not."""
    figures = {}
    for name in ("densenet121_1d", "densenet121", "densenet121_3d"):
        a = analyze(densedsl.load(SPECS / f"{name}.dense").network)
        figures[name] = (a.depth, a.connections, a.channels, a.receptive_field,
                         a.min_input_size.eval, a.min_input_size.train)
    assert len(set(figures.values())) == 1
    assert figures["densenet121"] == (121, 535, 1024, 2071, 29, 61)


def test_messages_speak_of_the_rank():
    with pytest.raises(SpecError) as e:
        analyze(densedsl.parse(SIGNAL.replace("input 2x64", "input 2x4")).network)
    message = e.value.diagnostics[0].message
    assert message.startswith("transition1.pool (avg pool 2 stride 2) would shrink the 1 signal")
    assert "4 → 2 (stem.conv0) → 1 (stem.pool0) → nothing" in message
    assert "at least 5," in e.value.diagnostics[0].hint  # a length, not 5x5
    with pytest.raises(SpecError) as e:
        analyze(densedsl.parse(VOLUME.replace("1x12x12x12", "1x4x4x4")).network)
    assert "2x2x2" in e.value.diagnostics[0].message


def test_input_shapes_of_rank_one_to_three_only():
    with pytest.raises(SpecError) as e:
        densedsl.parse("network n {\n input 1x2x3x4x5\n dense layers=1 growth=1\n}\n")
    assert [x.code.code for x in e.value.diagnostics] == ["E104"]
    assert "channels x length" in e.value.diagnostics[0].message


@pytest.mark.parametrize("text", [SIGNAL, VOLUME], ids=["1d", "3d"])
def test_summary_and_render_need_no_torch(text, tmp_path, capsys):
    spec = tmp_path / "n.dense"
    spec.write_text(text)
    assert cli.main(["summary", str(spec), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == list(densedsl.parse(text).network.input)
    assert cli.main(["render", str(spec), "-o", str(tmp_path / "n.dot"), "--detail", "blocks"]) == 0
    dot = (tmp_path / "n.dot").read_text()
    kernel, recipe = ("conv 7 /2", "Conv3(4)") if text is SIGNAL else ("conv 7x7x7 /2", "Conv3x3x3(4)")
    assert kernel in dot and recipe in dot


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("text, modules", [
    (SIGNAL, ("Conv1d", "BatchNorm1d", "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d")),
    (VOLUME, ("Conv3d", "BatchNorm3d", "MaxPool3d", "AvgPool3d", "AdaptiveAvgPool3d"))],
    ids=["1d", "3d"])
def test_model_uses_the_rank_modules_and_equals_the_analysis(text, modules):
    from torch.utils.flop_counter import FlopCounterMode
    network = densedsl.parse(text).network
    a = analyze(network)
    model = densedsl.compile(text)
    kinds = {type(m).__name__ for m in model.modules()}
    assert set(modules) <= kinds and not kinds & {"Conv2d", "BatchNorm2d"}
    assert sum(p.numel() for p in model.parameters()) == a.params
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        y = model.train()(torch.randn(2, *network.input))
    assert tuple(y.shape) == (2, *a.output_shape)
    assert counter.get_total_flops() == 2 * a.flops


def _eval_model(text: str):
    """(network, compiled model in eval mode, an input batch, the model's output on it)."""
    network = densedsl.parse(text).network
    model = densedsl.compile(text).eval()
    x = torch.randn(2, *network.input)
    with torch.no_grad():
        return network, model, x, model(x)


@pytest.mark.parametrize("text", [SIGNAL, VOLUME], ids=["1d", "3d"])
def test_python_export_computes_the_model(text, tmp_path):
    network, model, x, expected = _eval_model(text)
    py = tmp_path / "m.py"
    from densedsl.nn.export import python_source
    py.write_text(python_source(network))
    namespace: dict = {}
    exec(compile(py.read_text(), str(py), "exec"), namespace)
    rebuilt = namespace["build"]().eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the dynamo ONNX exporter takes seconds
@pytest.mark.parametrize("text", [SIGNAL, VOLUME], ids=["1d", "3d"])
def test_onnx_export_computes_the_model(text, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from densedsl.nn.export import write_onnx
    _, model, x, expected = _eval_model(text)
    path = tmp_path / "m.onnx"
    write_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("text", [SIGNAL, VOLUME], ids=["1d", "3d"])
def test_train_on_synthetic_data_of_the_spec_shape(text, tmp_path):
    torch.set_num_threads(1)
    from densedsl.training.train import train
    result = train(text, data="synthetic:32", batch_size=8, epochs=1, memory="efficient",
                   out=tmp_path / "run")
    assert result.epochs == 1 and (tmp_path / "run" / "checkpoint.pt").is_file()
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].split(",")[1] == "4"  # 32 examples / batch 8


def test_volume_average_pooling_needs_its_kernel_unpadded():
    """PyTorch's avg_pool3d checks the unpadded input against the kernel; 1-D and 2-D pad first."""
    text = "network p {\n input 1x%s\n stem {\n avgpool kernel=3 stride=2 padding=1\n }\n dense layers=1 growth=1\n}\n"
    sizes = {rank: analyze(densedsl.parse(text % "x".join(["9"] * rank)).network).min_input_size.eval
             for rank in (1, 2, 3)}
    assert sizes == {1: 1, 2: 1, 3: 3}
    model = densedsl.compile(text % "3x3x3").eval()
    with torch.no_grad():
        model(torch.randn(1, 1, 3, 3, 3))
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 1, 2, 2, 2))
