"""The public API: spec parameters and a function's own options never share a channel by
accident (issue 21), every entry point takes a Spec, a path or text, and the namespace is clean."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import densedsl

ROOT = Path(__file__).resolve().parent.parent
FLUX_MLP = ROOT / "specs" / "d2l_flux_mlp.dense"
CLASH = "network n(memory=2) {\n    input 3x16x16\n    dense layers=memory growth=4\n}\n"


def test_a_spec_parameter_named_like_an_old_option_is_the_parameter():
    """The seeds' MLP declares `features`; compile used to build the features-only model."""
    model = densedsl.compile(FLUX_MLP, features=331)
    assert model.features.linear0.in_features == 331
    assert model(torch.zeros(2, 331)).shape == (2, 1)
    features = densedsl.compile(FLUX_MLP, features_only=True)
    assert type(features).__name__ == "DenseNetFeatures"


def test_a_keyword_naming_both_an_option_and_a_parameter_is_refused_not_guessed():
    with pytest.raises(TypeError, match=r"memory= is an option of densedsl\.compile\(\) and also a parameter"):
        densedsl.compile(CLASH, memory="efficient")
    model = densedsl.compile(CLASH, memory="efficient", params={"memory": 3})
    assert len(model.features.denseblock1) == 3
    assert all(layer.memory_efficient for layer in model.features.denseblock1.children())
    # the option at its default is no clash: nothing was asked of it
    assert len(densedsl.compile(CLASH).features.denseblock1) == 2


def test_params_and_shorthand_keywords_bind_the_same_parameters():
    a = densedsl.analyze(ROOT / "specs" / "densenet_bc_cifar.dense", params={"depth": 40, "growth": 12})
    b = densedsl.analyze(ROOT / "specs" / "densenet_bc_cifar.dense", depth=40, growth=12)
    assert a.params == b.params != densedsl.analyze(ROOT / "specs" / "densenet_bc_cifar.dense").params
    with pytest.raises(TypeError, match="growth both in params= and as a keyword"):
        densedsl.analyze(ROOT / "specs" / "densenet_bc_cifar.dense", growth=12, params={"growth": 24})
    with pytest.raises(TypeError, match="params= takes a mapping"):
        densedsl.load(ROOT / "specs" / "densenet_bc_cifar.dense", params=[("growth", 12)])


def test_options_the_functions_underneath_take_are_options_here():
    with pytest.raises(densedsl.SpecError, match="E301"):
        densedsl.analyze(ROOT / "specs" / "densenet121.dense", max_params=1_000_000)
    assert densedsl.analyze(ROOT / "specs" / "densenet264.dense", max_params=math.inf).params > 3e7
    model = densedsl.compile(ROOT / "specs" / "seed_example.dense", device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with pytest.raises(TypeError):  # diagram options only: spec parameters go in params=
        densedsl.render(ROOT / "specs" / "densenet_bc_cifar.dense", growth=24)
    drawn = densedsl.render(ROOT / "specs" / "densenet_bc_cifar.dense", params={"depth": 40})
    assert "denseblock1" in drawn.source


def test_every_entry_point_takes_text_a_path_or_a_spec():
    text = (ROOT / "specs" / "seed_example.dense").read_text()
    spec = densedsl.load(text)
    assert spec.name == densedsl.load(ROOT / "specs" / "seed_example.dense").name == "seed_example"
    assert densedsl.load(spec, params={}).network == spec.network
    assert densedsl.analyze(text).params == densedsl.analyze(spec).params == 1_778


def test_summary_is_printable_like_torchinfo_and_matches_the_cli(capsys):
    from densedsl.cli import main
    table = densedsl.summary(ROOT / "specs" / "densenet121.dense", batch=8)
    assert isinstance(table, densedsl.Summary)
    assert main(["summary", str(ROOT / "specs" / "densenet121.dense"), "--batch", "8"]) == 0
    assert capsys.readouterr().out.strip() == str(table).strip()
    small = densedsl.summary(ROOT / "specs" / "densenet121.dense", input_shape=(3, 64, 64))
    assert small.analysis.input_shape == (3, 64, 64)
    assert "7,978,856" in str(small)


def test_the_namespace_names_what_it_offers():
    public = dir(densedsl)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(public)
    assert {"Analysis", "Summary", "summary", "analyze", "compile", "load", "render"} <= set(public)
    assert isinstance(densedsl.analyze(ROOT / "specs" / "seed_example.dense"), densedsl.Analysis)
    scope: dict = {}
    exec("from densedsl import *", scope)
    assert "compile" not in scope and scope["summary"] is densedsl.summary
    with pytest.raises(AttributeError):
        densedsl.no_such_name  # noqa: B018
