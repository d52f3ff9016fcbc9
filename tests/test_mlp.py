"""Dense MLPs: feature-vector inputs (`input F`), dense blocks of linear layers, vector stems,
transitions and heads, the regression task, and the seeds' DenseNet-MLP
(`specs/d2l_flux_mlp.dense`), through analysis, model, export and diagrams."""

from __future__ import annotations

from pathlib import Path

import networks
import pytest
from measure import saved_bytes
from twins import exported_twin

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.core import diagnostics as d

SPECS = Path(__file__).resolve().parent.parent / "specs"
SEED = SPECS / "d2l_flux_mlp.dense"


def mlp(body: str, features: int = 12) -> densedsl.Spec:
    return densedsl.parse(f"network m {{\n    input {features}\n{body}\n}}\n")


def errors(text: str) -> list[d.Diagnostic]:
    with pytest.raises(densedsl.SpecError) as e:
        spec = densedsl.parse(text)
        analyze(spec.network)
    return e.value.diagnostics


def test_input_f_is_a_feature_vector_also_as_an_expression():
    assert mlp("").network.input == (12,)
    spec = densedsl.parse("network m(features=7) {\n input features\n head classes=3\n}\n")
    assert spec.network.input == (7,) and spec.network.vector
    assert densedsl.load(SEED, features=20).network.input == (20,)


def test_the_seeds_mlp_has_the_parameters_counted_by_hand():
    """The header comment's arithmetic: 704 (stem) + 558,080 (16 layers) + 1,089 (head)."""
    a = analyze(densedsl.load(SEED).network)
    assert a.params == 10 * 64 + 64 + 64 * 64 * sum(range(1, 17)) + 16 * 64 + 1088 + 1 == 559_873
    assert [s.params for s in a.stages] == [704, 41_216, 106_752, 172_288, 237_824, 1_089]
    assert a.connections == 4 * (4 * 5 // 2)
    assert a.depth == 1 + 16 + 1
    assert a.buffers == 0
    assert a.output_shape == (1,) and a.channels == 1088


def test_linear_layers_see_every_earlier_feature():
    """Layer ℓ of a block sees k0 + k(ℓ−1) features, and the blocks chain without transitions."""
    a = analyze(densedsl.load(SEED).network)
    widths = [a.graph.nodes[f"denseblock{b}.denselayer{l}.linear1"]["in_features"]
              for b in range(1, 5) for l in range(1, 5)]
    assert widths == [64 * j for j in range(1, 17)]
    for b in a.blocks:
        assert b.connections == 10 and b.out_channels - b.in_channels == 4 * 64


def test_regression_is_the_heads_task_when_classes_is_one():
    assert densedsl.load(SEED).network.task == "regression"
    assert densedsl.load(SEED, classes=10).network.task == "classification"
    assert mlp(" head classes=3 task=regression").network.head.task == "regression"
    assert analyze(densedsl.load(SEED).network).network.head.task == "regression"


def test_a_one_class_classifier_is_refused():
    (diag,) = errors("network m {\n input 4\n head classes=1 task=classification\n}\n")
    assert diag.code is d.OUT_OF_RANGE and "at least 2 classes" in diag.message


@pytest.mark.parametrize("body, located", [
    (" stem {\n  conv 16\n }", "conv 16"),
    (" stem {\n  linear 8\n  maxpool\n }", "maxpool"),
    (" dense layers=2 growth=4 kind=conv", "dense layers=2 growth=4 kind=conv"),
    (" dense layers=2 growth=4 kernel=3", "kernel=3"),
    (" dense layers=2 growth=4\n transition pool=max", "pool=max"),
    (" head classes=2 kernel=2", "kernel=2"),
    (" dense layers=2 growth=4 norm=instance", "instance"),
])
def test_ops_for_maps_on_a_vector_are_located_errors(body, located):
    diags = errors(f"network m {{\n input 12\n{body}\n}}\n")
    assert [x.code for x in diags] == [d.WRONG_DATA_KIND]
    span = diags[0].span
    assert span.source.text[span.start:span.end] == located


def test_linear_layers_on_a_map_are_a_located_error():
    diags = errors("network m {\n input 3x8x8\n dense layers=2 growth=4 kind=linear\n}\n")
    assert [x.code for x in diags] == [d.WRONG_DATA_KIND]
    assert "feature vector" in diags[0].message and "3x8x8 map" in diags[0].message
    diags = errors("network m {\n input 3x8x8\n stem {\n  linear 8\n }\n}\n")
    assert [x.code for x in diags] == [d.WRONG_DATA_KIND]


# --- the model, its memory, its exports --------------------------------------------------------

RICH = networks.MLP_EVERY_OP


def _model(text: str, **kwargs):
    from densedsl.nn.build import build_model
    net = densedsl.parse(text).network
    return net, analyze(net), build_model(net, **kwargs)


def test_the_compiled_mlp_is_the_analysis():
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    net, a, model = _model(RICH)
    assert sum(p.numel() for p in model.parameters()) == a.params
    assert sum(b.numel() for n_, b in model.named_buffers() if "num_batches" not in n_) == a.buffers
    assert len(model.state_dict()) == a.state_dict_entries
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = model(torch.randn(5, 12))
    assert counter.get_total_flops() == 5 * a.flops  # the analysis counts one sample
    assert tuple(y.shape) == (5, *a.output_shape) == (5, 3)
    # the recipe, in torch's classes: BatchNorm1d, GroupNorm(1, F) as layer norm, Linear
    layer = model.features.denseblock2.denselayer1
    assert [type(m).__name__ for m in layer.children()] == ["Linear", "GroupNorm", "GELU"]
    assert layer.norm1.num_groups == 1 and type(model.features.norm0).__name__ == "BatchNorm1d"
    assert model.features.denseblock1.denselayer1.linear1.out_features == 2 * 8  # the bottleneck
    assert model.features.transition1.linear.out_features == (16 + 3 * 8) // 2




@pytest.mark.parametrize("text", [
    RICH.replace("    dropout 0.1\n", "").replace(" dropout=0.2", "").replace(" dropout=0.1", ""),
    SEED.read_text().replace("dropout=0.4 ", "").replace("        dropout 0.2\n", "")])
def test_standard_memory_is_what_autograd_saves(text):
    """Exactly, without dropout: on the CPU torch's dropout keeps a float noise tensor where the
    analysis counts CUDA's one-byte mask."""
    torch = pytest.importorskip("torch")
    net, a, model = _model(text)
    assert not any(kind == "dropout" for _, kind in a.graph.nodes(data="kind"))
    assert saved_bytes(model.train(), torch.randn(4, *net.input), buffers=True) == a.memory(4)


def test_efficient_mode_computes_the_same_gradients_and_keeps_less():
    torch = pytest.importorskip("torch")
    text = "network m {\n input 12\n dense layers=6 growth=8 bottleneck=2\n head classes=3\n}\n"
    net, a, standard = _model(text)
    _, _, efficient = _model(text, memory="efficient")
    efficient.load_state_dict(standard.state_dict())
    x = torch.randn(4, 12)
    standard(x).square().sum().backward()
    efficient(x).square().sum().backward()
    for (name, p), q in zip(standard.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert a.memory(4, mode="efficient") < a.memory(4)


def test_a_relu_that_opens_a_layer_without_norm_leaves_the_block_input_alone():
    """Pre-activation with norm=none: layer 1's ReLU reads the block input itself, which the
    block's output concatenates too; run in place, negative inputs would come out as 0."""
    torch = pytest.importorskip("torch")
    _, _, model = _model("network m {\n input 6\n dense layers=1 growth=2 norm=none\n}\n")
    x = -torch.rand(3, 6) - 0.1
    with torch.no_grad():
        out = model.eval()(x.clone())
    torch.testing.assert_close(out[:, :6], x)


def test_the_inference_engine_leaves_an_mlp_on_the_plain_path():
    torch = pytest.importorskip("torch")
    from densedsl.nn.build import build_model
    net = densedsl.parse(RICH).network
    accelerated, plain = build_model(net), build_model(net, engine=False)
    plain.load_state_dict(accelerated.state_dict())
    assert accelerated.engine is None
    x = torch.randn(4, 12)
    with torch.no_grad():
        torch.testing.assert_close(accelerated.eval()(x), plain.eval()(x), rtol=0, atol=0)


def _randomised(model):
    import torch
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model.eval()


def test_python_export_rebuilds_the_mlp_with_the_same_outputs():
    torch = pytest.importorskip("torch")
    from densedsl.nn.model import DenseNet
    for text in (RICH, SEED.read_text()):
        net = densedsl.parse(text).network
        model = _randomised(DenseNet(net))
        generated = exported_twin(net, model)
        x = torch.randn(2, *net.input)
        with torch.no_grad():
            torch.testing.assert_close(generated(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_of_the_mlp_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from densedsl.nn.export import write_onnx
    from densedsl.nn.model import DenseNet
    model = _randomised(DenseNet(densedsl.parse(RICH).network))
    out = tmp_path / "rich.onnx"
    write_onnx(model, out)
    onnx.checker.check_model(onnx.load(str(out)))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 12)  # another batch size than the export's example
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model.eval()(x), rtol=1e-3, atol=1e-4)


# --- reports and diagrams ------------------------------------------------------------------------

def test_batch_norm_in_an_mlp_warns_that_a_batch_of_one_cannot_train():
    (warning,) = analyze(mlp(" dense layers=2 growth=4\n head classes=2").network).diagnostics
    assert warning.code is d.TRAIN_TOO_SMALL and "one value per feature" in warning.message
    assert "norm=layer" in warning.hint
    assert analyze(mlp(" dense layers=2 growth=4 norm=layer\n head classes=2").network).diagnostics == ()


def test_summary_and_explain_speak_of_features():
    from densedsl.views import report
    a = analyze(densedsl.load(SEED).network)
    text = report.summary(a).text()
    assert "final features 1,088 · regression" in text
    assert "receptive field" not in text and "min input" not in text
    explained = report.explain(a, 2).text()
    assert "denseblock2: 4 layers, growth 64, 320 + 64·4 = 576 features, 10 connections" in explained
    assert "denselayer4 concatenates 4 vectors, 512 features:" in explained
    assert "each layer: Linear(64)-Dropout(0.4)" in explained


@pytest.mark.parametrize("detail", ["overview", "blocks", "layers"])
def test_diagrams_draw_every_concatenation(detail):
    from densedsl.views import diagram
    a = analyze(densedsl.load(SEED).network)
    source = diagram.to_digraph(a, detail=detail).source
    if detail == "layers":
        assert source.count("kind=dense") + source.count('class=dense') >= 0
        for b in range(1, 5):
            assert f"denseblock{b}.denselayer4" in source
        assert "832 → 64 features" in source
    else:
        assert "64 → 320 features" in source
    assert " ch" not in source.replace("ch=", "")


def test_editors_offer_the_mlp_words():
    """Completion reads the resolver's tables and the network's field types; the TextMate
    grammar lists the same words (tests/test_editors.py keeps its ops in step)."""
    import json
    pytest.importorskip("lsprotocol")
    from densedsl.language import resolve
    from densedsl.lsp.features import enumerated_values
    assert "linear" in resolve.STEM_OPS and {"kind", "norm"} <= set(resolve.DENSE_SETTINGS)
    assert enumerated_values("dense", "kind") == ("conv", "linear")
    assert enumerated_values("head", "task") == ("classification", "regression")
    assert "none" in enumerated_values("dense", "activation")
    assert enumerated_values("linear", "bias") == ("true", "false")
    grammar = (SPECS.parent / "grammars" / "densedsl.tmLanguage.json").read_text()
    values = next(p["match"] for p in json.loads(grammar)["repository"]["value"]["patterns"]
                  if "keyword values" in p.get("comment", ""))
    assert all(word in values for word in ("linear", "classification", "regression", "layer"))


def test_efficient_mode_recomputes_no_linear_layer():
    """Memory-efficient mode keeps each layer's Linear outputs (as the analysis counts them) and
    recomputes only the cheap ops: its backward costs the FLOPs of the standard one."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    text = "network m {\n input 12\n dense layers=3 growth=8 bottleneck=2\n head classes=3\n}\n"
    flops = []
    for memory in ("standard", "efficient"):
        _, _, model = _model(text, memory=memory)
        loss = model.train()(torch.randn(4, 12)).sum()
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0


def test_summary_input_takes_a_feature_width(capsys):
    """`--input 20` analyses the MLP at 20 features (its `expect params` no longer applies: the
    stem's Linear takes every feature); on a conv network it is E210, exit 1."""
    from densedsl import cli
    assert cli.main(["summary", str(SEED), "--input", "20"]) == 0
    out = capsys.readouterr().out
    assert "input 20 → 1" in out and f"{20 * 64 + 64 + 558_080 + 1_089:,}" in out
    assert cli.main(["summary", str(SPECS / "densenet121.dense"), "--input", "20"]) == 1
    assert "error[E210]" in capsys.readouterr().err


def test_diff_of_two_mlps_names_the_blocks_that_changed():
    from densedsl.views import report
    old = analyze(densedsl.load(SEED).network)
    new = analyze(densedsl.load(SEED, features=20).network)
    text = report.diff(old, new).text()
    assert "stem: +640 params" in text and "denseblock1" not in text  # only the stem's Linear grows
    assert "559,873" in text and "560,513" in text


def test_the_docs_show_the_seed_spec_as_it_is():
    body = SEED.read_text("utf-8")
    body = body[body.index("network d2l_flux_mlp"):].rstrip("\n")
    assert f"```\n{body}\n```" in (SPECS.parent / "docs" / "language.md").read_text("utf-8")


def test_summary_json_states_the_task():
    from densedsl.views import report
    assert report.summary(analyze(densedsl.load(SEED).network)).as_json()["task"] == "regression"
    assert report.summary(analyze(densedsl.load(SEED, classes=3).network)).as_json()["task"] == "classification"


def test_connection_strength_reads_an_mlps_linear_layers():
    """The paper's Figure 5 on an MLP: row ℓ averages |w| of layer ℓ's Linear over each source's
    columns; a block followed directly by another has no last row."""
    torch = pytest.importorskip("torch")
    np = pytest.importorskip("numpy")
    from densedsl.nn.model import DenseNet
    from densedsl.views.heatmap import connection_strength
    net = densedsl.parse("network m {\n input 4\n dense layers=2 growth=3 norm=none\n"
                         " transition channels=5\n dense layers=2 growth=2\n dense layers=1 growth=1\n"
                         " head classes=2\n}\n").network
    model = DenseNet(net)
    with torch.no_grad():
        layer2 = model.features.denseblock1.denselayer2.linear1.weight
        layer2.fill_(1.0)
        layer2[:, 4:].fill_(3.0)  # the columns of x1, layer 1's 3 features
    first, second, third = connection_strength(model, net)
    assert first.shape == (3, 3) and first[1, 0] == 1.0 and first[1, 1] == 3.0
    assert not np.isnan(first[2]).all()        # the transition's Linear reads the block output
    assert np.isnan(second[2]).all()           # denseblock3 follows directly: no consumer row
    assert not np.isnan(third[1]).all()        # the classifier reads the last block
