"""Properties of the graph and analysis over generated networks (densedsl.testing.strategies)."""

from __future__ import annotations

from hypothesis import given, settings

import densedsl
from densedsl.analysis.figures import analyze
from densedsl.testing.strategies import assert_dense_invariants, networks, spec_text, spec_texts


@settings(max_examples=40, deadline=None)
@given(networks(ranks=(2, 0)))  # 0: MLPs of linear layers
def test_dense_invariants_hold(network):
    assert_dense_invariants(analyze(network))


@settings(max_examples=25, deadline=None)
@given(networks(max_blocks=2, max_layers=8, bottleneck=True, growth=(1, 8), ranks=(2, 0)))
def test_stage_figures_add_up(network):
    a = analyze(network)
    assert sum(s.params for s in a.stages) == a.params
    assert sum(s.macs for s in a.stages) == a.macs
    assert a.flops == 2 * a.macs
    for mode in ("standard", "efficient", "inference"):
        one, two, three = (a.memory(b, mode=mode) for b in (1, 2, 3))
        assert 0 < one <= two and three - two == two - one  # affine in the batch size


@settings(max_examples=25, deadline=None)
@given(networks(max_blocks=2, ranks=(2, 0)))
def test_spec_text_round_trips(network):
    assert densedsl.parse(spec_text(network)).network == network


@settings(max_examples=15, deadline=None)
@given(spec_texts(max_blocks=2, max_layers=3, ranks=(2, 0)))
def test_spec_texts_analyse(text):
    analyze(densedsl.parse(text).network)


@settings(max_examples=30, deadline=None)
@given(networks(max_blocks=1, max_layers=12))
def test_min_input_size_is_tight(network):
    import dataclasses

    from densedsl.core.diagnostics import SpecError
    a = analyze(network)
    side = a.min_input_size.eval
    c = network.input[0]
    analyze(dataclasses.replace(network, input=(c, side, side)))
    if side > 1:
        try:
            smaller = analyze(dataclasses.replace(network, input=(c, side - 1, side - 1)))
        except SpecError as e:
            errors = {x.code.code for x in e.diagnostics if x.severity == "error"}
            assert errors and errors <= {"E202", "E203"}
        else:
            # a norm with one channel per group (instance norm) refuses a 1x1 map at batch 1 in
            # eval too: a warning, since larger batches run
            assert any(x.code.code == "W206" and "in eval too" in x.message for x in smaller.diagnostics), \
                f"{side - 1} should be too small"
