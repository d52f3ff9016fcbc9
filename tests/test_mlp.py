"""Dense MLPs: feature-vector inputs (`input F`), dense blocks of linear layers, vector stems,
transitions and heads, the regression task, and the seeds' DenseNet-MLP
(`specs/d2l_flux_mlp.dense`), through analysis, model, export and diagrams."""

from __future__ import annotations

from pathlib import Path

import pytest

import densedsl
from densedsl import diagnostics as d
from densedsl.analysis import analyze

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
    (" dense layers=2 growth=4 kernel=3", "3"),
    (" dense layers=2 growth=4\n transition pool=max", "max"),
    (" head classes=2 kernel=2", "2"),
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
