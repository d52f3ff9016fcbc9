"""Issue 21, "lower once": one analysis (and one compile) lowers each piece of the network
exactly once, and the checks, the closed-form prediction, the spatial plan and the graph all read
that one lowering.

Every recipe entry point of `ir/lowering` is wrapped and each call recorded with the piece it
lowers: the stem, a transition, the head, or one dense layer (block index, layer). A probe
lowering (a piece lowered again at a 1x1 map for a check, or a layer lowered twice for a closed
form) shows up as a second call for the same piece.
"""

from __future__ import annotations

from collections import Counter

import pytest

import densedsl
from densedsl.ir import lowering

SPECS = ["specs/densenet121.dense", "specs/densenet121_3d.dense", "specs/hardnet68.dense"]


def _pieces(network) -> Counter:
    """Each piece of the network once: what one lowering must make, and nothing more."""
    want: Counter = Counter()
    want["stem"] += 1
    for stage in network.stages:
        if isinstance(stage, densedsl.language.network.DenseBlock):
            for layer in range(1, stage.layers + 1):
                want[f"denseblock{stage.index}.denselayer{layer}"] += 1
        else:
            want[f"transition{stage.index}"] += 1
    if network.head is not None:
        want["head"] += 1
    return want


@pytest.fixture
def lowered_pieces(monkeypatch):
    """The pieces lowered while the test runs, counted; `lower` counts whole-network lowerings."""
    seen: Counter = Counter()
    real = {name: getattr(lowering, name) for name in
            ("lower", "stem_ops", "layer_ops", "transition_ops", "head_ops")}

    def lower(network, *args, **kwargs):
        seen["lower()"] += 1
        return real["lower"](network, *args, **kwargs)

    def stem_ops(stem, shape):
        seen["stem"] += 1
        return real["stem_ops"](stem, shape)

    def layer_ops(block, shape, module, width=None):
        # the same block lowered at a probe shape has no module name: counted as its layer 0
        layer = module.rsplit("denselayer", 1)[1] if module else "?"
        seen[f"denseblock{block.index}.denselayer{layer}"] += 1
        return real["layer_ops"](block, shape, module, width)

    def transition_ops(t, shape, module):
        seen[f"transition{t.index}"] += 1
        return real["transition_ops"](t, shape, module)

    def head_ops(head, shape):
        seen["head"] += 1
        return real["head_ops"](head, shape)

    for name, fn in (("lower", lower), ("stem_ops", stem_ops), ("layer_ops", layer_ops),
                     ("transition_ops", transition_ops), ("head_ops", head_ops)):
        monkeypatch.setattr(lowering, name, fn)
    return seen


@pytest.mark.parametrize("path", SPECS)
def test_analyze_lowers_each_piece_once(path, lowered_pieces):
    spec = densedsl.load(path)
    lowered_pieces.clear()
    densedsl.analyze(spec)
    want = _pieces(spec.network) + Counter({"lower()": 1})
    assert lowered_pieces == want, {k: (lowered_pieces[k], want[k]) for k in lowered_pieces.keys() | want.keys()
                                    if lowered_pieces[k] != want[k]}


@pytest.mark.parametrize("path", SPECS)
def test_compile_lowers_each_piece_once(path, lowered_pieces):
    pytest.importorskip("torch")
    spec = densedsl.load(path)
    lowered_pieces.clear()
    model = densedsl.compile(spec)
    assert lowered_pieces == _pieces(spec.network) + Counter({"lower()": 1})
    # the model is made of those very ops: every layer is a module, none lowered again
    assert len(model.lowered) == len(spec.network.stages) + 1 + (spec.network.head is not None)


def test_check_lowers_each_piece_at_most_once(lowered_pieces):
    """`graph.check` alone lowers only what its checks read (a block stands for its first layer
    and the layers its closed form reads), and never a piece twice."""
    from densedsl.analysis import graph
    spec = densedsl.load("specs/densenet121.dense")
    lowered_pieces.clear()
    assert graph.check(spec.network) == []
    assert lowered_pieces["lower()"] == 1
    assert set(lowered_pieces.values()) == {1}
    assert set(lowered_pieces) <= set(_pieces(spec.network)) | {"lower()"}


@pytest.mark.parametrize("layers", [1_500, 30_000])  # past the connection cap; past the node cap too
def test_a_refused_giant_block_is_not_lowered_layer_by_layer(layers, lowered_pieces):
    """The closed-form size guard (E304) reads a block's table and at most two of its layers
    (`block_totals`: the fewest and the most input channels), not all of them."""
    import dataclasses

    from densedsl.analysis import graph
    from densedsl.language.network import DenseBlock
    spec = densedsl.load("specs/densenet121.dense")
    net = dataclasses.replace(spec.network, stages=(DenseBlock(index=1, layers=layers, growth=12),))
    lowered_pieces.clear()
    assert [x.code.code for x in graph.check(net)] == ["E304"]
    assert sum(v for k, v in lowered_pieces.items() if "denselayer" in k) <= 2
    assert set(lowered_pieces.values()) == {1}
