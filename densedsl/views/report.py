"""Reports over analyses: summary, diff, explain and sweep, as data, text and JSON.

Each report is a frozen dataclass built from `Analysis` objects; `.text()` gives the plain-text
table the CLI prints and `.as_json()` a dict with `"schema": 1` whose keys docs/analysis.md
documents and later versions only add to. Nothing here prints or reads files: `sweep` takes a
function that makes a `Network` from parameter overrides, so it works the same for the CLI and
for a notebook.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..analysis.figures import MEMORY_MODES, Analysis, BlockFigures, StageFigures, analyze
from ..core import diagnostics as d
from ..core.source import Span
from ..core.units import binary, index_list, shape_text, si, size_text
from ..ir.connectivity import Table
from ..ir.lowering import LoweredBlock
from ..ir.ops import kind_of
from ..language.network import Network
from . import diff as table_diff

SCHEMA = 1


# --- helpers -----------------------------------------------------------------------------------



def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: set[int]) -> list[str]:
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def _where(span: Span | None) -> str:
    if span is None:
        return ""
    return f"{span.file}:{span.line}"


def _statement(span: Span | None) -> str:
    return span.source.line_text(span.line).strip() if span is not None else ""


def _diag_json(diag: d.Diagnostic) -> dict[str, Any]:
    return {"code": diag.code.code, "severity": diag.severity, "message": diag.message,
            "file": diag.file, "line": diag.line, "column": diag.column, "hint": diag.hint}


def _signed(delta: int, unit: str = "") -> str:
    return ("+" if delta > 0 else "−" if delta < 0 else "±") + si(abs(delta), unit)


# --- summary -----------------------------------------------------------------------------------

_UNITS = {1: "samples", 2: "px", 3: "voxels"}  # what the receptive field is counted in


@dataclass(frozen=True, slots=True)
class SummaryRow:
    name: str                       # stage name, or stage.child for --layers rows
    kind: str
    level: int                      # 0 stage, 1 layer or op inside a stage
    out_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True, slots=True)
class Summary:
    analysis: Analysis = field(repr=False)
    rows: tuple[SummaryRow, ...]
    batch: int
    dtype: str

    def memory(self) -> dict[str, int]:
        return {m: self.analysis.memory(self.batch, self.dtype, m) for m in MEMORY_MODES}

    def __str__(self) -> str:
        return self.text()

    def as_json(self) -> dict[str, Any]:
        a = self.analysis
        stages, tables = [], _tables(a)
        for s in a.stages:
            entry = _stage_json(s, tables.get(s.name))
            children = [r for r in self.rows if r.level == 1 and r.name.startswith(s.name + ".")]
            if children:
                entry["children"] = [{"name": r.name, "kind": r.kind, "out_shape": list(r.out_shape),
                                      "params": r.params, "macs": r.macs} for r in children]
            stages.append(entry)
        return {
            "schema": SCHEMA, "report": "summary", "network": a.name,
            "input_shape": list(a.input_shape), "output_shape": list(a.output_shape),
            "task": a.network.task,  # classification, regression, or None without a head
            "batch": self.batch, "dtype": self.dtype,
            "totals": {**a.figures(), "cio": a.cio, "state_dict_entries": a.state_dict_entries,
                       "memory": self.memory(),
                       "min_input_size": {"eval": a.min_input_size.eval,
                                          "train": a.min_input_size.train},
                       "receptive_field": a.receptive_field},
            "stages": stages,
            "feature_info": [{"name": f.name, "module": f.module, "channels": f.channels,
                              "reduction": f.reduction, "shape": list(f.shape)} for f in a.feature_info],
            "diagnostics": [_diag_json(x) for x in a.diagnostics],
        }

    def text(self) -> str:
        a = self.analysis
        rank = len(a.input_shape) - 1
        lines = [f"{a.name} · input {shape_text(a.input_shape)} → {shape_text(a.output_shape)}"]
        body = [(("  " * r.level) + r.name.split(".", r.level)[-1] if r.level else r.name,
                 shape_text(r.out_shape), f"{r.params:,}", si(r.macs)) for r in self.rows]
        body.append(("total", shape_text(a.output_shape), f"{a.params:,}", si(a.macs)))
        table = _table(("stage", "output", "params", "MACs"), body, {2, 3})
        rule = "─" * max(len(t) for t in table)
        lines += [rule, table[0], rule, *table[1:-1], rule, table[-1], rule]
        mem = self.memory()
        m = a.min_input_size
        # a feature vector (an MLP) has features, and no receptive field or input size to state
        shape_facts = (f"final features {a.channels:,}" if rank == 0 else
                       f"final channels {a.channels:,} · receptive field {a.receptive_field:,} "
                       f"{_UNITS.get(rank, 'px')}")
        task = f" · {a.network.task}" if a.network.task == "regression" else ""
        lines += [
            f"params {a.params:,} ({si(a.params)}) · buffers {a.buffers:,} · MACs {si(a.macs)} · "
            f"FLOPs {si(a.flops)}",
            f"depth {a.depth} · connections {a.connections:,} · CIO {si(a.cio)} · {shape_facts}{task}",
            f"memory at batch {self.batch}, {self.dtype}: training {binary(mem['standard'])} "
            f"(standard), {binary(mem['efficient'])} (efficient); inference {binary(mem['inference'])}",
        ]
        if rank > 0:
            lines.append(f"min input {size_text(m.eval, rank)} (inference), {size_text(m.train, rank)} "
                         "(training with batch 1)")
        return "\n".join(lines)


def _tables(a: Analysis) -> dict[str, Table]:
    """Each dense block's connectivity table, by stage name."""
    return {x.name: x.table for x in a.lowered if isinstance(x, LoweredBlock)}


def _stage_json(s: StageFigures, table: Table | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": s.name, "kind": s.kind, "line": s.span.line if s.span else None,
                             "in_shape": list(s.in_shape), "out_shape": list(s.out_shape),
                             "params": s.params, "buffers": s.buffers, "macs": s.macs,
                             "flops": s.flops, "depth": s.depth}
    if isinstance(s, BlockFigures):
        entry.update(layers=s.layers, growth=s.growth, bottleneck=s.bottleneck,
                     in_channels=s.in_channels, out_channels=s.out_channels,
                     connections=s.connections)
        if table is not None:  # what the block emits and each layer's width, DenseNet's table too
            entry.update(emits=list(table.emits), widths=list(table.widths))
    return entry


def summary(a: Analysis, *, batch: int = 1, dtype: str = "float32", layers: bool = False) -> Summary:
    """One row per stage; with `layers`, also one per dense layer and per stem/transition/head op."""
    g = a.arch  # node reads only: no networkx
    rows: list[SummaryRow] = []
    for s in a.stages:
        rows.append(SummaryRow(s.name, s.kind, 0, s.out_shape, s.params, s.macs))
        if not layers:
            continue
        if isinstance(s, BlockFigures):
            for layer in range(1, s.layers + 1):
                prefix = f"{s.name}.denselayer{layer}."
                members = [g.nodes[n] for n in g.nodes if n.startswith(prefix)]
                new = g.nodes[f"{s.name}.x{layer}"]["out_shape"]
                rows.append(SummaryRow(f"{s.name}.denselayer{layer}", "layer", 1, new,
                                       sum(m["params"] for m in members), sum(m["macs"] for m in members)))
        else:
            for n, attrs in g.nodes(data=True):
                if attrs["stage"] == s.name and n not in ("input", "output"):
                    rows.append(SummaryRow(n, attrs["kind"], 1, attrs["out_shape"], attrs["params"],
                                           attrs["macs"]))
    return Summary(a, tuple(rows), batch, dtype)


# --- diff --------------------------------------------------------------------------------------

def _spelled(value: Any) -> str:
    """A setting as a spec writes it: no bottleneck is `off`, not Python's None."""
    return "off" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class DiffRow:
    name: str
    old: StageFigures | None
    new: StageFigures | None
    # the blocks' connectivity tables (None for other stages) and how they differ (None unless
    # both sides are blocks): reads, widths and emits can differ where every figure agrees
    old_table: Table | None = field(default=None, repr=False, compare=False)
    new_table: Table | None = field(default=None, repr=False, compare=False)
    tables: table_diff.TableDiff | None = field(default=None, repr=False, compare=False)
    # each side's recipe lines (`table_diff.recipes`): ops can differ where every figure agrees
    old_ops: tuple[str, ...] = field(default=(), repr=False, compare=False)
    new_ops: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def changes(self) -> list[str]:
        o, n = self.old, self.new
        if o is None:
            return ["added"]
        if n is None:
            return ["removed"]
        out = []
        if isinstance(o, BlockFigures) and isinstance(n, BlockFigures):
            for attr, word in (("layers", "layers"), ("growth", "growth"), ("bottleneck", "bottleneck"),
                               ("connections", "connections")):
                if getattr(o, attr) != getattr(n, attr):
                    out.append(f"{_spelled(getattr(o, attr))} → {_spelled(getattr(n, attr))} {word}")
            tables = self.tables
            if tables is not None:
                out += tables.changes()
        out += table_diff.op_changes(self.old_ops, self.new_ops)
        if o.out_shape != n.out_shape:
            out.append(f"{shape_text(o.out_shape)} → {shape_text(n.out_shape)}")
        if o.params != n.params:
            out.append(f"{_signed(n.params - o.params)} params")
        if o.macs != n.macs:
            out.append(f"{_signed(n.macs - o.macs)} MACs")
        return out


@dataclass(frozen=True, slots=True)
class Diff:
    old: Analysis = field(repr=False)
    new: Analysis = field(repr=False)
    old_label: str
    new_label: str
    rows: tuple[DiffRow, ...]
    batch: int
    dtype: str

    def totals(self) -> dict[str, tuple[int, int]]:
        o, n = self.old.figures(), self.new.figures()
        result = {k: (o[k], n[k]) for k in o}
        for mode in MEMORY_MODES:
            result[f"memory_{mode}"] = (self.old.memory(self.batch, self.dtype, mode),
                                        self.new.memory(self.batch, self.dtype, mode))
        return result

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "report": "diff", "old": self.old_label, "new": self.new_label,
            "batch": self.batch, "dtype": self.dtype,
            "totals": {k: {"old": a, "new": b, "delta": b - a} for k, a, b in
                       ((k, *v) for k, v in self.totals().items())},
            "stages": [{"name": r.name, "old": _stage_json(r.old, r.old_table) if r.old else None,
                        "new": _stage_json(r.new, r.new_table) if r.new else None, "changes": r.changes,
                        "tables": None if (t := r.tables) is None else t.as_json()}
                       for r in self.rows],
        }

    def text(self) -> str:
        lines = [f"--- {self.old_label}", f"+++ {self.new_label}"]
        changed = [r for r in self.rows if r.changes]
        for r in changed:
            lines.append(f"{r.name}: {', '.join(r.changes)}")
        if not changed:
            lines.append("no stage changed")
        body = []
        for key, (a, b) in self.totals().items():
            if key.startswith("memory_"):
                label = f"memory ({key[7:]}, batch {self.batch})"
                cells = (label, binary(a), binary(b), ("+" if b >= a else "−") + binary(abs(b - a)))
            else:
                cells = (key, f"{a:,}", f"{b:,}", _signed(b - a))
            if a != b:
                body.append(cells)
        if body:
            lines += ["", *_table(("total", "old", "new", "change"), body, {1, 2, 3})]
        else:
            lines.append("totals unchanged")
        return "\n".join(lines)


def diff(old: Analysis, new: Analysis, *, old_label: str | None = None, new_label: str | None = None,
         batch: int = 1, dtype: str = "float32") -> Diff:
    """Stages matched by name (denseblock3 with denseblock3), in the order of the new network
    with removed stages where they stood in the old one."""
    old_by = {s.name: s for s in old.stages}
    new_by = {s.name: s for s in new.stages}
    names: list[str] = []
    for s in new.stages:
        names.append(s.name)
    for i, s in enumerate(old.stages):
        if s.name not in new_by:
            names.insert(min(i, len(names)), s.name)
    old_tables, new_tables = _tables(old), _tables(new)
    old_ops, new_ops = table_diff.recipes(old.arch), table_diff.recipes(new.arch)
    rows = tuple(_diff_row(n, old_by.get(n), new_by.get(n), old_tables.get(n), new_tables.get(n),
                           old_ops.get(n, ()), new_ops.get(n, ()))
                 for n in names)
    return Diff(old, new, old_label or old.name, new_label or new.name, rows, batch, dtype)


def _diff_row(name: str, old: StageFigures | None, new: StageFigures | None, old_table: Table | None,
              new_table: Table | None, old_ops: tuple[str, ...] = (), new_ops: tuple[str, ...] = ()) -> DiffRow:
    tables = (table_diff.compare(old_table, new_table, old.growth, new.growth)
              if isinstance(old, BlockFigures) and isinstance(new, BlockFigures)
              and old_table is not None and new_table is not None else None)
    return DiffRow(name, old, new, old_table, new_table, tables, old_ops, new_ops)


# --- explain -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Input:
    """One feature map a layer concatenates, with where it comes from."""

    map: str                        # denseblock2.x3
    channels: int
    made_by: str                    # the op that produced it: transition1.pool, denselayer3.conv2
    span: Span | None = field(compare=False)

    @property
    def line(self) -> int | None:
        return self.span.line if self.span is not None else None


@dataclass(frozen=True, slots=True)
class LayerInputs:
    layer: int
    in_channels: int
    inputs: tuple[Input, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    block: BlockFigures
    layers: tuple[LayerInputs, ...]
    recipe: str = ""  # every layer's ops, as the diagrams write them: BN-SiLU-Conv3x3(32)
    table: Table | None = field(default=None, repr=False)  # who reads whom; None: DenseNet's

    def as_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "report": "explain", "block": _stage_json(self.block, self.table),
                "recipe": self.recipe,
                "layers": [{"layer": li.layer, "in_channels": li.in_channels,
                            # the table's row: what the layer reads (indexes of x0 …) and adds
                            "reads": list(self._reads(li.layer)), "width": self._width(li.layer),
                            "inputs": [{"map": i.map, "channels": i.channels, "made_by": i.made_by,
                                        "file": i.span.file if i.span else None, "line": i.line,
                                        "statement": _statement(i.span)} for i in li.inputs]}
                           for li in self.layers]}

    def _reads(self, layer: int) -> tuple[int, ...]:
        return tuple(range(layer)) if self.table is None else self.table.reads_of(layer)

    def _width(self, layer: int) -> int:
        return self.block.growth if self.table is None else self.table.widths[layer - 1]

    @property
    def densenet(self) -> bool:
        """DenseNet's table with every layer adding `growth`: the paper's wording applies."""
        t = self.table
        return t is None or t.dense and t.widths == (self.block.growth,) * t.layers

    def text(self) -> str:
        b = self.block
        # an MLP's block concatenates feature vectors: the same table, in its words
        map_, unit = ("vector", "features") if len(b.in_shape) == 1 else ("map", "channels")
        t = self.table
        if t is None or self.densenet:
            head = (f"{b.name}: {b.layers} layers, growth {b.growth}, {b.in_channels} + "
                    f"{b.growth}·{b.layers} = {b.out_channels} {unit}, {b.connections:,} connections")
        else:
            widths = (f"growth {b.growth}" if t.widths == (b.growth,) * t.layers
                      else f"widths [{index_list(t.widths, noun='layers')}]")
            head = (f"{b.name}: {b.layers} layers, {widths}, {b.in_channels} {unit} in, emits "
                    f"{index_list(t.emits, 'x', 'maps')} = {b.out_channels} {unit}, "
                    f"{b.connections:,} connections")
        where = f"  ({_where(b.span)}: {_statement(b.span)})" if b.span else ""
        lines = [head + where] + ([f"each layer: {self.recipe}"] if self.recipe else [])
        for li in self.layers:
            lines.append("")
            maps = f"1 {map_}" if len(li.inputs) == 1 else f"{len(li.inputs)} {map_}s"
            adds = "" if self.densenet else f", and adds {self._width(li.layer)} {unit}"
            lines.append(f"denselayer{li.layer} concatenates {maps}, "
                         f"{li.in_channels} {unit}{adds}:")
            body = [(i.map.split(".")[-1], f"{i.channels}", i.made_by,
                     f"{_where(i.span)}: {_statement(i.span)}" if i.span else "") for i in li.inputs]
            lines += ["  " + t for t in _table((map_, unit, "made by", "from"), body, {1})]
        return "\n".join(lines)


def explain(a: Analysis, block: int, layer: int | None = None) -> Explanation:
    """The maps each layer of a block concatenates, read off the concat node's in-edges."""
    name = f"denseblock{block}"
    try:
        figures = a.stage(name)
    except KeyError:
        known = ", ".join(str(b.index) for b in a.blocks) or "none"
        raise ValueError(f"the network has no dense block {block} (blocks: {known})") from None
    assert isinstance(figures, BlockFigures)
    if layer is not None and not 1 <= layer <= figures.layers:
        raise ValueError(f"{name} has layers 1 to {figures.layers}, not {layer}")
    g = a.arch  # node and predecessor reads only: no networkx
    wanted = range(1, figures.layers + 1) if layer is None else (layer,)
    out = []
    for ell in wanted:
        concat = f"{name}.denselayer{ell}.concat"
        maps = list(g.pred[concat])  # in the order the layer concatenates them (its table's reads)
        inputs = []
        for m in maps:
            maker = next(iter(g.pred[m]))
            inputs.append(Input(m, g.nodes[m]["out_shape"][0], maker.removeprefix(f"{name}."),
                                g.nodes[maker]["span"]))
        out.append(LayerInputs(ell, g.nodes[concat]["out_shape"][0], tuple(inputs)))
    prefix = f"{name}.denselayer1."
    recipe = "-".join(kind_of(a_["kind"]).token(a_) for n_, a_ in g.nodes(data=True)
                      if n_.startswith(prefix) and kind_of(a_["kind"]).computes)
    table = next(x.table for x in a.lowered if isinstance(x, LoweredBlock) and x.name == name)
    return Explanation(figures, tuple(out), recipe, table)


# --- sweep -------------------------------------------------------------------------------------

SORT_KEYS = ("params", "flops", "macs", "memory", "depth")


@dataclass(frozen=True, slots=True)
class PointFigures:
    """What a sweep keeps of a point's analysis: its figures (`Analysis.figures()`), read as
    attributes like the analysis' own. The analysis itself (the graph, the memory models: about
    250 MB for a block of 1,413 layers) is dropped as soon as the row is made."""

    params: int
    buffers: int
    macs: int
    flops: int
    channels: int
    connections: int
    depth: int

    @classmethod
    def of(cls, a: Analysis) -> "PointFigures":
        return cls(**a.figures())

    def figures(self) -> dict[str, int]:
        return {"params": self.params, "buffers": self.buffers, "macs": self.macs, "flops": self.flops,
                "channels": self.channels, "connections": self.connections, "depth": self.depth}


@dataclass(frozen=True, slots=True)
class SweepRow:
    values: tuple[tuple[str, str], ...]          # the grid point, in grid order
    analysis: PointFigures | None = field(repr=False, compare=False)  # the figures; None: invalid
    memory: int | None
    errors: tuple[str, ...] = ()                 # error codes when the point is invalid
    message: str | None = None                   # the first error's message

    @property
    def ok(self) -> bool:
        return self.analysis is not None


@dataclass(frozen=True, slots=True)
class Sweep:
    grid: tuple[tuple[str, tuple[str, ...]], ...]
    rows: tuple[SweepRow, ...]
    excluded: int                                 # valid points over a budget
    batch: int
    dtype: str
    budgets: tuple[tuple[str, int], ...]

    def as_json(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            entry: dict[str, Any] = {"values": dict(r.values), "ok": r.ok}
            if r.analysis is not None:
                entry.update(r.analysis.figures(), memory=r.memory)
            else:
                entry.update(errors=list(r.errors), message=r.message)
            rows.append(entry)
        return {"schema": SCHEMA, "report": "sweep", "grid": {k: list(v) for k, v in self.grid},
                "batch": self.batch, "dtype": self.dtype, "budgets": dict(self.budgets),
                "excluded": self.excluded, "rows": rows}

    def text(self) -> str:
        keys = [k for k, _ in self.grid]
        body = []
        for r in self.rows:
            values = [v for _, v in r.values]
            if r.analysis is not None:
                a = r.analysis
                body.append((*values, f"{a.params:,}", si(a.params), si(a.flops), binary(r.memory or 0),
                             str(a.depth), ""))
            else:
                body.append((*values, "", "", "", "", "", f"{', '.join(r.errors)}: {r.message}"))
        n = len(keys)
        # Grid columns read like the --set they stand for, so `depth=` (the parameter) and
        # `depth` (the analysed figure) stay apart.
        lines = _table((*(f"{k}=" for k in keys), "params", "", "FLOPs", f"memory (batch {self.batch})",
                        "depth", ""),
                       body, set(range(n, n + 5)))
        if self.excluded:
            limits = ", ".join(f"{k} ≤ {si(v)}" for k, v in self.budgets)
            lines.append(f"({self.excluded} of {len(self.rows) + self.excluded} points over budget: "
                         f"{limits})")
        return "\n".join(lines)


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """`["growth=12,24", "depth=40,100"]` → `{"growth": ["12", "24"], "depth": ["40", "100"]}`;
    a list value is one point: `blocks=[6,12,24,16],[6,12,32,32]` has two."""
    grid: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        parts = [v.strip() for v in _top_level_split(values) if v.strip()]
        if not sep or not name.strip() or not parts:
            raise ValueError(f"--grid expects NAME=V1,V2,..., got {item!r}")
        if name.strip() in grid:
            raise ValueError(f"--grid names {name.strip()!r} twice")
        grid[name.strip()] = parts
    _check_grid_size(grid)
    return grid


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets and parentheses: `[6,12],[6,32]` → `[6,12]`, `[6,32]`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


MAX_SWEEP_POINTS = 500  # each point is a row of figures; one analysis is alive at a time


def _check_grid_size(grid: Mapping[str, Sequence[str]]) -> None:
    points = math.prod(len(v) for v in grid.values())
    if points > MAX_SWEEP_POINTS:
        raise ValueError(f"the grid has {points:,} points; a sweep analyses at most {MAX_SWEEP_POINTS:,} "
                         "(split it into several sweeps)")


def sweep(make: Callable[[Mapping[str, str]], Network], grid: Mapping[str, Sequence[str]], *,
          batch: int = 1, dtype: str = "float32", max_params: int | None = None,
          max_flops: int | None = None, max_memory: int | None = None,
          sort: str | None = None) -> Sweep:
    """Analyse every point of the grid (the cartesian product, first key slowest).

    `make` turns parameter values into a Network and may raise SpecError: such points become
    rows with their error codes, as do points `analyze` rejects. Valid points over a budget
    (`max_memory` counts standard training memory at `batch`) are left out and counted;
    `sort` orders valid rows by a figure, invalid rows last.
    """
    if sort is not None and sort not in SORT_KEYS:
        raise ValueError(f"cannot sort by {sort!r}; use one of {', '.join(SORT_KEYS)}")
    _check_grid_size(grid)
    keys = list(grid)
    rows: list[SweepRow] = []
    excluded = 0
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = tuple(zip(keys, combo))
        try:
            a = analyze(make(dict(values)), max_params=math.inf, max_memory=math.inf)
        except d.SpecError as e:
            errors = [x for x in e.diagnostics if x.severity == "error"]
            rows.append(SweepRow(values, None, None, tuple(dict.fromkeys(x.code.code for x in errors)),
                                 errors[0].message if errors else None))
            continue
        memory = a.memory(batch, dtype, "standard")
        figures = PointFigures.of(a)
        del a  # before the next point is analysed: only one analysis is ever alive
        if ((max_params is not None and figures.params > max_params)
                or (max_flops is not None and figures.flops > max_flops)
                or (max_memory is not None and memory > max_memory)):
            excluded += 1
            continue
        rows.append(SweepRow(values, figures, memory))
    if sort is not None:
        def key(r: SweepRow) -> tuple:
            if r.analysis is None:
                return (1, 0)
            return (0, r.memory if sort == "memory" else r.analysis.figures()[sort])
        rows.sort(key=key)
    budgets = tuple((k, v) for k, v in (("params", max_params), ("flops", max_flops),
                                        ("memory", max_memory)) if v is not None)
    return Sweep(tuple((k, tuple(grid[k])) for k in keys), tuple(rows), excluded, batch, dtype, budgets)
