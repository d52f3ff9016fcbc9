"""What a diagram says is what the analysis says: the title's totals, every stage's label and
every op's tooltip are checked against the analysis (issue 21: diagram titles and labels were
never checked, so a figure could drift from the one `summary` prints)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

import densedsl
from densedsl.core.units import shape_text, si

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["densenet121", "seed_example", "densenet_bc_cifar", "tiny_digits", "densenet121_1d"]


def _nodes(source: str) -> dict[str, dict[str, str]]:
    """DOT node statements → {name: {attribute: value}} (labels unescaped, markup dropped)."""
    nodes = {}
    for m in re.finditer(r'^\t+("?)([\w.]+)\1 \[(.*)\]$', source, flags=re.M):
        attrs = dict(re.findall(r'(\w+)=(<.*?>(?= \w+=|$)|"[^"]*"|\S+)', m.group(3)))
        nodes[m.group(2)] = {k: html.unescape(re.sub(r"<[^>]+>", " ", v).strip('"')) for k, v in attrs.items()}
    return nodes


def _title(source: str) -> str:
    m = re.search(r"^\tlabel=(<.*>)$", source, flags=re.M)
    assert m, "the diagram has a title"
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(1)))


@pytest.mark.parametrize("name", SPECS)
def test_the_title_states_the_analysis_totals(name):
    a = densedsl.analyze(ROOT / "specs" / f"{name}.dense")
    title = _title(densedsl.render(ROOT / "specs" / f"{name}.dense").source)
    assert a.name in title
    assert f"{a.params:,} params" in title
    assert si(a.flops, "FLOPs") in title
    assert f"depth {a.depth}" in title
    assert f"{a.connections:,} dense connections" in title or a.connections == 0
    assert f"{shape_text(a.input_shape)} → {shape_text(a.output_shape)}" in title


@pytest.mark.parametrize("name", SPECS)
def test_every_stage_label_states_its_figures(name):
    a = densedsl.analyze(ROOT / "specs" / f"{name}.dense")
    nodes = _nodes(densedsl.render(ROOT / "specs" / f"{name}.dense", detail="blocks").source)
    for s in a.stages:
        if s.kind != "dense":
            continue
        label = nodes[s.name]["label"]
        assert f"{s.in_shape[0]} → {s.out_shape[0]}" in label, (s.name, label)
        assert si(s.params) + " params" in label or f"{s.params:,} params" in label, (s.name, label)
        assert si(s.flops, "FLOPs") in label, (s.name, label)
        assert f"{s.connections:,} connections" in label, (s.name, label)
        assert f"{s.layers} layers" in label or s.layers == 1, (s.name, label)


@pytest.mark.parametrize("name", ["densenet121", "seed_example", "densenet121_1d"])
def test_op_tooltips_name_the_module_shape_and_params_of_the_graph_node(name):
    a = densedsl.analyze(ROOT / "specs" / f"{name}.dense")
    nodes = _nodes(densedsl.render(ROOT / "specs" / f"{name}.dense", detail="blocks").source)
    checked = 0
    for key, attrs in nodes.items():
        if key not in a.arch.nodes or "tooltip" not in attrs:
            continue
        node = a.arch.nodes[key]
        tip = attrs["tooltip"]
        if node.get("module"):
            assert tip.startswith(node["module"]), (key, tip)
        if node.get("out_shape"):
            assert shape_text(node["out_shape"]) in tip, (key, tip)
        if node.get("params"):
            assert f"{node['params']:,} params" in tip or si(node["params"]) in tip, (key, tip)
        checked += 1
    assert checked >= 4
