"""The architecture graph (docs/graph.md): nodes, edges, attributes, counts read off it."""

from __future__ import annotations

import dataclasses
import math
import pickle
import sys
from pathlib import Path

import networks as N
import networkx as nx
import pytest

from densedsl.analysis import graph
from densedsl.core.diagnostics import SpecError
from densedsl.language.network import DenseBlock, Network

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def g121() -> nx.DiGraph:
    return graph.lower(N.torchvision(121))


def test_dense_edges_are_counted_per_block(g121):
    per_block = {}
    for _, v, kind in g121.edges(data="kind"):
        if kind == "dense":
            block = v.split(".")[0]
            per_block[block] = per_block.get(block, 0) + 1
    assert per_block == {"denseblock1": 21, "denseblock2": 78, "denseblock3": 300, "denseblock4": 136}
    assert sum(per_block.values()) == 535


def test_layer_l_gathers_x0_to_x_l_minus_1(g121):
    for layer in range(1, 25):
        concat = f"denseblock3.denselayer{layer}.concat"
        assert sorted(g121.pred[concat], key=lambda n: int(n.rsplit("x", 1)[1])) == \
            [f"denseblock3.x{i}" for i in range(layer)]
        assert g121.nodes[concat]["out_shape"] == (256 + 32 * (layer - 1), 14, 14)
    assert g121.in_degree("denseblock3.out") == 25
    assert {k for _, _, k in g121.in_edges("denseblock3.out", data="kind")} == {"concat"}


def test_nodes_are_in_execution_order(g121):
    order = list(g121.nodes)
    assert order[0] == "input" and order[-1] == "output"
    position = {n: i for i, n in enumerate(order)}
    assert all(position[u] < position[v] for u, v in g121.edges)
    assert nx.is_directed_acyclic_graph(g121)


def test_every_node_has_the_schema_attributes(g121):
    for n, a in g121.nodes(data=True):
        for key in ("kind", "stage", "span", "in_shape", "out_shape", "params", "buffers", "macs", "flops"):
            assert key in a, (n, key)
        assert a["flops"] == 2 * a["macs"]
        if a["kind"] == "conv":
            assert {"in_channels", "out_channels", "kernel", "stride", "padding", "bias", "module"} <= set(a)
    for u, v, a in g121.edges(data=True):
        assert a["kind"] in ("dense", "concat", "flow")
        assert a["shape"] == g121.nodes[u]["out_shape"]


def test_stage_names_and_ids(g121):
    stages = list(dict.fromkeys(s for _, s in g121.nodes(data="stage")))
    assert stages == ["stem", "denseblock1", "transition1", "denseblock2", "transition2",
                      "denseblock3", "transition3", "denseblock4", "head"]
    for n in ("stem.conv0", "stem.norm0", "stem.relu0", "stem.pool0", "denseblock1.x0",
              "denseblock1.denselayer1.norm1", "denseblock1.denselayer6.conv2", "transition3.pool",
              "head.norm", "head.relu", "head.pool", "head.flatten", "head.linear"):
        assert n in g121, n
    assert g121.nodes["head.pool"]["global"] is True
    assert g121.graph["output_shape"] == (1000,)


def _state_dict(name: str) -> dict[str, str]:
    rows = (line.split("\t") for line in (DATA / f"torchvision_{name}_state_dict.tsv").read_text().splitlines()
            if line and not line.startswith("#"))
    return {k: shape for k, shape in rows}


@pytest.mark.parametrize("depth", [121, 161, 169, 201])
def test_modules_and_weight_shapes_match_torchvision(depth):
    g = graph.lower(N.torchvision(depth))
    expected = _state_dict(f"densenet{depth}")
    got = {}
    for _, a in g.nodes(data=True):
        if a["kind"] == "conv":
            got[f"{a['module']}.weight"] = f"{a['out_channels']}x{a['in_channels']}x{a['kernel']}x{a['kernel']}"
        elif a["kind"] == "norm":
            for t in ("weight", "bias", "running_mean", "running_var"):
                got[f"{a['module']}.{t}"] = str(a["channels"])
        elif a["kind"] == "linear":
            got[f"{a['module']}.weight"] = f"{a['out_features']}x{a['in_features']}"
            got[f"{a['module']}.bias"] = str(a["out_features"])
    wanted = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert got == wanted


def test_bottleneck_free_layers_have_only_the_1_ops():
    g = graph.lower(N.d2l_fashion_mnist())
    layer = [n for n in g if n.startswith("denseblock1.denselayer2.")]
    assert layer == ["denseblock1.denselayer2.concat", "denseblock1.denselayer2.norm1",
                     "denseblock1.denselayer2.relu1", "denseblock1.denselayer2.conv1"]
    assert g.nodes["denseblock1.denselayer2.conv1"]["kernel"] == 3


def test_post_activation_order():
    g = graph.lower(N.d2l_flux())
    layer = [g.nodes[n]["kind"] for n in g if n.startswith("denseblock2.denselayer1.")]
    assert layer == ["concat", "conv", "norm", "relu"]
    assert "head.norm" not in g


def test_dropout_follows_each_conv_and_head_window_flattens():
    g = graph.lower(N.keras_assignment(layers=2))
    assert [n.rsplit(".", 1)[1] for n in g if n.startswith("denseblock1.denselayer1.")] == \
        ["concat", "norm1", "relu1", "conv1", "drop1"]
    assert g.nodes["head.pool"]["out_shape"] == (6 + 6 * 2, 2, 2)
    assert g.nodes["head.linear"]["in_features"] == 18 * 2 * 2


def test_no_head_ends_at_the_last_map():
    net = dataclasses.replace(N.tiny(), head=None)
    g = graph.lower(net)
    assert g.graph["output_shape"] == (32 + 12 * 3, 16, 16)
    assert list(g.pred["output"]) == ["denseblock2.out"]


def test_spans_point_at_the_statements():
    import densedsl
    spec = densedsl.load("specs/densenet121.dense")
    g = graph.lower(spec.network)
    assert spec.text.splitlines()[g.nodes["denseblock3.denselayer4.conv2"]["span"].line - 1].strip() == "dense layers=24"
    assert spec.text.splitlines()[g.nodes["stem.pool0"]["span"].line - 1].strip().startswith("maxpool")


def test_lower_refuses_invalid_networks():
    with pytest.raises(SpecError) as e:
        graph.lower(N.tiny(input_size=8, transitions=4))
    assert [x.code.code for x in e.value.diagnostics] == ["E202"]


def test_huge_block_is_refused_without_building():
    net = dataclasses.replace(N.tiny(), stages=(DenseBlock(index=1, layers=10**6, growth=12),))
    assert [x.code.code for x in graph.check(net)] == ["E304"]


def test_the_block_cap_sits_where_its_connections_pass_the_ceiling():
    """A block of L layers has L(L+1)/2 dense connections: the largest block under
    MAX_CONNECTIONS passes `check`, one more layer is E304, both decided from integers."""
    largest = (math.isqrt(8 * graph.MAX_CONNECTIONS + 1) - 1) // 2
    assert largest * (largest + 1) // 2 <= graph.MAX_CONNECTIONS < (largest + 1) * (largest + 2) // 2
    assert largest >= 1024  # torchvision builds a 1,024-layer block (issue 15); so does densedsl
    fits = dataclasses.replace(N.tiny(), stages=(DenseBlock(index=1, layers=largest, growth=1),))
    assert "E304" not in [x.code.code for x in graph.check(fits)]
    over = dataclasses.replace(N.tiny(), stages=(DenseBlock(index=1, layers=largest + 1, growth=1),))
    (diag,) = graph.check(over)
    assert diag.code.code == "E304" and f"denseblock1 has {largest + 1:,} layers" in diag.message


def test_min_input_size_search():
    plan = graph.spatial_plan(N.torchvision(121))
    assert graph.min_input_size(plan) == 29
    assert graph.min_input_size(plan, train=True) == 61
    assert graph.min_input_size(graph.spatial_plan(Network(name="x", input=(1, 1, 1)))) == 1


def test_the_public_networkx_api_builds_the_same_graph(monkeypatch):
    """`Analysis.graph` wraps the analysis' own dicts in a DiGraph when networkx keeps its graph
    in `_node`/`_succ`/`_pred` (`graph.direct()`, probed on first need); a networkx that changed
    them gets the public API: the same graph, node for node and edge for edge, in the same order."""
    import densedsl

    assert graph.direct()  # this networkx keeps _node/_succ/_pred: the fast path is the one tested elsewhere
    ROOT = Path(__file__).resolve().parent.parent
    specs = [ROOT / "specs" / "densenet121.dense", ROOT / "specs" / "d2l_flux_mlp.dense"]
    fast = [densedsl.analyze(densedsl.load(p)) for p in specs]
    assert all(a.graph._succ is a.arch._succ and a.graph._node is a.arch._node for a in fast)  # adopted, not copied
    monkeypatch.setattr(graph, "_DIRECT", False)
    slow = [densedsl.analyze(densedsl.load(p)) for p in specs]
    for a, b in zip(fast, slow):
        assert b.graph._succ is not b.arch._succ  # built with add_nodes_from/add_edges_from
        assert list(a.graph.nodes(data=True)) == list(b.graph.nodes(data=True)) == list(a.arch.nodes(data=True))
        assert list(a.graph.edges(data=True)) == list(b.graph.edges(data=True))
        assert all(list(a.graph.pred[n]) == list(b.graph.pred[n]) for n in a.graph)
        assert a.graph.graph == b.graph.graph == a.arch.graph
        assert (a.params, a.macs, a.connections, a.receptive_field) == (b.params, b.macs, b.connections, b.receptive_field)
        assert a.stages == b.stages


def test_a_networkx_without_the_private_dicts_is_detected(monkeypatch):
    class Slotted(nx.DiGraph):
        """A DiGraph that keeps its adjacency somewhere `to_networkx` does not know about."""
        def __getattribute__(self, name):
            if name in ("_succ", "_pred", "_node") and sys._getframe(1).f_globals.get("__name__") == graph.__name__:
                raise AttributeError(name)
            return super().__getattribute__(name)

    assert graph._direct_writes_work()
    monkeypatch.setattr(nx, "DiGraph", Slotted)
    assert not graph._direct_writes_work()


def test_the_arch_graph_reads_as_the_networkx_graph(g121):
    """The analysis walks an `ArchGraph` with the DiGraph surface it uses; `lower` wraps the same
    graph for networkx: every read the analysis makes gives what networkx gives."""
    arch = graph.lower_arch(N.torchvision(121))
    assert list(arch) == list(arch.nodes) == list(arch.nodes()) == list(g121) and len(arch) == len(g121)
    assert list(arch.nodes(data=True)) == list(g121.nodes(data=True))
    assert list(arch.nodes(data="stage")) == list(g121.nodes(data="stage"))
    assert list(arch.nodes(data="block", default=-1)) == list(g121.nodes(data="block", default=-1))
    assert all(arch.nodes[n] == g121.nodes[n] and (n in arch.nodes) and (n in arch) for n in g121)
    assert "nowhere" not in arch and "nowhere" not in arch.nodes
    assert all(arch.succ[n] == g121.succ[n] and list(arch.pred[n]) == list(g121.pred[n]) for n in g121)
    assert arch.graph == g121.graph and sum(map(len, arch.succ.values())) == g121.number_of_edges()
    assert pickle.loads(pickle.dumps(arch)).nodes["denseblock1.x3"] == arch.nodes["denseblock1.x3"]
