"""The paper's counting rules, checked on an analysis graph: `assert_dense_invariants(analysis)`.
Needs no hypothesis: call it on any `densedsl.analyze(...)` result in your own tests."""

from __future__ import annotations

from ..analysis.figures import Analysis
from ..ir import connectivity


def assert_dense_invariants(analysis: Analysis) -> None:
    """The counting rules, checked on the graph itself (never from the formulas alone).

    For every block, against its connectivity table: layer ℓ's concat gathers exactly the maps
    its row reads, in that order, over dense edges, with their channels; the block emits exactly
    its emit list; the dense edges number the table's reads. For DenseNet's table these are the
    paper's rules: in-degree ℓ from x0..x_{ℓ−1}, k0 + k(ℓ−1) channels, L(L+1)/2 dense edges and
    k0 + kL channels emitted. Node params add up to `analysis.params`.
    """
    g = analysis.graph
    total = 0
    for b in analysis.blocks:
        block = next(s for s in analysis.network.blocks if s.index == b.index)
        table = connectivity.table(block)
        k0, k, big_l = b.in_channels, b.growth, b.layers
        edges = 0
        for ell in range(1, big_l + 1):
            concat = f"{b.name}.denselayer{ell}.concat"
            ins = list(g.in_edges(concat, data="kind"))
            reads = table.reads_of(ell)
            assert [u for u, _, _ in ins] == [f"{b.name}.x{i}" for i in reads], concat
            assert all(kind == "dense" for _, _, kind in ins), concat
            assert g.nodes[concat]["out_shape"][0] == table.in_channels(k0, ell), concat
            if table.dense and block.widths is None and block.width_factor is None:
                assert g.in_degree(concat) == ell and g.nodes[concat]["out_shape"][0] == k0 + k * (ell - 1)
            edges += len(reads)
        counted = sum(1 for _, v, kind in g.edges(data="kind")
                      if kind == "dense" and v.startswith(f"{b.name}."))
        assert counted == edges == table.connections == b.connections, (b.name, counted)
        assert [u for u, _ in g.in_edges(f"{b.name}.out")] == [f"{b.name}.x{i}" for i in table.emits]
        assert g.nodes[f"{b.name}.out"]["out_shape"][0] == table.out_channels(k0) == b.out_channels
        if table.dense and block.widths is None and block.width_factor is None:
            assert counted == big_l * (big_l + 1) // 2 and b.out_channels == k0 + k * big_l
        total += counted
    assert total == analysis.connections
    assert sum(p for _, p in g.nodes(data="params")) == analysis.params


__all__ = ["assert_dense_invariants"]
