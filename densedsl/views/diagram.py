"""Diagrams of the analysis graph, as graphviz `Digraph`s.

    g = to_digraph(analysis, detail="layers", expand=2)   # graphviz.Digraph, no `dot` needed
    write(g, "dn121.svg")                                 # svg/png/pdf need Graphviz's `dot`
    svg(analysis)                                         # SVG text, for notebooks

Three levels of detail, all drawn from `Analysis.graph` (never from a traced model):

- `overview`: one node per stage (stem, dense blocks, transitions, head) between an input and an
  output node, labelled with the stage's figures; edges carry tensor shapes.
- `blocks`: the ops of the stem, transitions and head as rows; each dense block one node that
  states its layer recipe (`BN-ReLU-Conv1x1(128)-BN-ReLU-Conv3x3(32) ×6`).
- `layers`: `blocks` with every dense block expanded (or only those in `expand`): x0 and one node
  per dense layer in a row, one edge per dense connection of the graph (one per read of the
  block's connectivity table: L(L+1)/2 in DenseNet) arcing over the row, fading with distance,
  and the concatenation of the emitted maps into the block output below.
- `matrix` (views/matrix.py): per dense block a grid of who reads whom, one HTML-like table node.

`expand` expands the listed blocks at any level, so `detail="overview", expand=3` shows one
block's layers inside the overview.

Every DOT node stands for analysis nodes: its name is an analysis node id (`stem.conv0`,
`denseblock2.x0`), a stage name (`denseblock2`) or a dense layer (`denseblock2.denselayer5`),
and it stands for the analysis nodes with that id or under that prefix; a dense layer's node
also stands for the map it adds (`denseblock2.x5`). Every drawn edge is one
analysis edge between two such groups and carries `class` = the edge's kind (`dense`, `concat`,
`flow`); decorations carry `class="note"` or `class="layout"`. tests/test_diagram.py checks the
correspondence on `Digraph.source`. Output is deterministic: graph order, fixed formatting.
"""

from __future__ import annotations

import html
import math
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import graphviz

from ..analysis.figures import Analysis, BlockFigures, StageFigures
from ..core import diagnostics as d
from ..core.files import atomic_write, check_writable
from ..core.units import float_text, shape_text, si
from ..ir.connectivity import Table
from ..ir.lowering import LoweredBlock
from ..ir.ops import kind_of
from ..language.network import DenseBlock, RandomLinks, Transition

DETAILS: tuple[str, ...] = ("overview", "blocks", "layers")   # drawings of the analysis graph
# Every detail `to_digraph` draws: the graph's three, and `matrix`, a table per dense block of who
# reads whom (views/matrix.py), which draws the blocks' tables rather than the graph's nodes.
VIEWS: tuple[str, ...] = DETAILS + ("matrix",)
RANKDIRS: tuple[str, ...] = ("TB", "LR")
FORMATS: tuple[str, ...] = ("svg", "png", "pdf", "dot")

SANS = "Helvetica,Arial,DejaVu Sans,sans-serif"
MONO = "DejaVu Sans Mono,Menlo,Consolas,monospace"
INK = "#222222"
MUTED = "#5f6b76"


@dataclass(frozen=True, slots=True)
class _Palette:
    label: str      # the legend's word
    fill: str
    border: str
    tint: str       # cluster background


# One colour per kind of stage; light fills and dark borders print well in grey too.
_PALETTE: dict[str, _Palette] = {
    "io": _Palette("input / output", "#f1f1f1", "#8a8a8a", "#fafafa"),
    "stem": _Palette("stem", "#fde7cc", "#c7801f", "#fff8ef"),
    "dense": _Palette("dense block", "#d9e8f8", "#3a75c4", "#f4f8fd"),
    "transition": _Palette("transition", "#dff0d6", "#4f8f32", "#f5fbf2"),
    "head": _Palette("head", "#ecdff3", "#86539f", "#fbf7fd"),
}
_DENSE_EDGE = (0x1c, 0x4a, 0x80)   # the dense connections' colour; far ones fade towards white
_CONCAT_EDGE = "#8f99a3"

# Edge attributes whose values differ from edge to edge: quoted without remembering them.
_UNIQUE = frozenset({"tooltip", "label"})

# Above this many layers an expanded block's layer nodes shrink to their number and width.
_COMPACT_LAYERS = 24


# --- public API --------------------------------------------------------------------------------

def to_digraph(analysis: Analysis, detail: str = "overview", *,
               expand: int | Iterable[int] | None = None, rankdir: str = "TB") -> graphviz.Digraph:
    """The diagram of `analysis` at `detail`; `expand` lists dense blocks (1-based) to draw layer
    by layer (default: all blocks at `layers`, none otherwise); `rankdir` TB or LR.

    Raises ValueError for an unknown detail or rankdir, or a block that does not exist.
    """
    if detail not in VIEWS:
        raise ValueError(f"unknown detail {detail!r}; use one of {', '.join(VIEWS)}")
    rankdir = rankdir.upper()
    if rankdir not in RANKDIRS:
        raise ValueError(f"unknown rankdir {rankdir!r}; use TB or LR")
    if detail == "matrix":
        from .matrix import matrix_digraph
        return matrix_digraph(analysis, _expanded(analysis, "layers", expand), rankdir,
                              _graph_id(analysis.name), _shown_name(analysis.name))
    return _Builder(analysis, detail, _expanded(analysis, detail, expand), rankdir).build()


def svg(analysis: Analysis, detail: str = "overview", **options) -> str:
    """The diagram as SVG text (for `_repr_svg_` in notebooks); needs Graphviz's `dot` (E906)."""
    data = _pipe(to_digraph(analysis, detail, **options), "svg", "<svg>")
    return data.decode("utf-8")


def output_format(path: str | os.PathLike) -> str:
    """The format a diagram path asks for (`svg`, `png`, `pdf` or `dot`), or SpecError: E907 for
    an extension densedsl cannot write, E912/E902 for an output it must not replace."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        shown = f"'.{ext}'" if ext else "no extension"
        raise d.SpecError([d.Diagnostic(
            d.BAD_OUTPUT, f"cannot write a diagram with {shown}", None,
            "name the output .svg, .png, .pdf or .dot (.dot needs no Graphviz)", file=str(path))])
    check_writable(path)
    return ext


def write(graph: graphviz.Digraph, path: str | os.PathLike) -> None:
    """Write the diagram in the format its extension names, atomically: on any failure (no
    `dot` installed, a bad extension, an unwritable directory) nothing is written."""
    fmt = output_format(path)
    data = graph.source.encode("utf-8") if fmt == "dot" else _pipe(graph, fmt, str(path))
    atomic_write(path, data)


# What `dot` may be given to lay out. Its time grows faster than linearly in each of these
# (measured with dot 2.43 on this project's 2-core machine; docs/diagrams.md has the table):
# 20,512 edges (one 200-layer block) 1.0 s, 102,387 (450 layers) 6.3 s, 998,991 (1,413 layers)
# 2 minutes; 3,013 nodes in one row 4.8 s; 602 clusters 2.1 s, 1,000 clusters 13 s; 40,815
# table cells (a 200-layer matrix) 1.0 s, 91,215 (300 layers) 2.4 s. Each cap keeps dot near
# 2 seconds; a .dot file needs no layout and is never capped.
MAX_EDGES = 20_000
MAX_NODES = 2_500
MAX_CLUSTERS = 600
MAX_CELLS = 50_000

_STATEMENT_ID = r'"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z_0-9.]*'
_EDGE_LINE = re.compile(rf"^\s*(?:{_STATEMENT_ID})(?::\w+)? -> ")
_NODE_LINE = re.compile(rf"^\s*({_STATEMENT_ID})(?: \[|$)")


@dataclass(frozen=True, slots=True)
class LayoutSize:
    """What a DOT text asks `dot` to lay out, counted on the text itself."""
    nodes: int
    edges: int
    clusters: int
    cells: int      # <TD> cells of HTML-like labels (the matrix view's grids)


def layout_size(source: str) -> LayoutSize:
    """Count the statements of a DOT text as densedsl writes it: one statement a line (labels
    never hold a raw newline: names are shown through _shown_name)."""
    nodes = edges = clusters = 0
    for line in source.splitlines():
        if _EDGE_LINE.match(line):
            edges += 1
        elif line.lstrip().startswith("subgraph cluster"):
            clusters += 1
        else:
            m = _NODE_LINE.match(line)
            if m and m.group(1) not in ("graph", "node", "edge", "subgraph", "digraph"):
                nodes += 1
    return LayoutSize(nodes, edges, clusters, source.count("<TD"))


def check_layout_size(source: str, fmt: str, name: str) -> None:
    """SpecError E308 when `dot` could not lay the text out in reasonable time; before dot runs."""
    size = layout_size(source)
    over = [f"{have:,} {what} (at most {cap:,})" for have, cap, what in (
        (size.edges, MAX_EDGES, "edges"), (size.nodes, MAX_NODES, "nodes"),
        (size.clusters, MAX_CLUSTERS, "boxes"), (size.cells, MAX_CELLS, "matrix cells")) if have > cap]
    if not over:
        return
    if size.cells > MAX_CELLS:
        hint = ("draw fewer blocks' matrices (--expand N draws block N's), or --detail layers or "
                "blocks; or write a .dot file, which is never limited, and run `dot` on it yourself")
    else:
        hint = ("draw less: --expand N draws only block N layer by layer, --detail matrix shows who "
                "reads whom as one grid per block, --detail blocks or overview draw no arcs; or write a "
                ".dot file, which is never limited, and run `dot` on it yourself")
    raise d.SpecError([d.Diagnostic(
        d.TOO_BIG_TO_DRAW, f"cannot draw {fmt.upper()}: the diagram has {', '.join(over)}, more than "
        "Graphviz's `dot` lays out in reasonable time", None, hint, file=name)])


def _pipe(graph: graphviz.Digraph, fmt: str, name: str) -> bytes:
    """Run `dot -T<fmt>` on the graph's source. Any failure of `dot` is an error that names it and
    quotes its message (E906 not installed, E914 failed): dot exiting early while densedsl still
    writes its input must not pass for success (`subprocess.run` absorbs the broken pipe and
    reports dot's status and stderr instead). A diagram too big to lay out (E308) is refused
    before dot starts."""
    source = graph.source
    check_layout_size(source, fmt, name)
    try:
        done = subprocess.run(["dot", f"-T{fmt}"], input=source.encode("utf-8"),
                              capture_output=True, check=False)
    except FileNotFoundError:
        raise d.SpecError([d.Diagnostic(
            d.DOT_MISSING, f"cannot draw {fmt.upper()}: Graphviz's `dot` program is not installed "
            "(or not on PATH)", None,
            "install Graphviz (apt-get install graphviz, brew install graphviz, conda install "
            "graphviz), or write a .dot file, which needs no Graphviz", file=name)]) from None
    except OSError as e:
        raise _dot_failed(fmt, f"cannot run it: {e.strerror or e}", name) from None
    if done.returncode != 0:
        raise _dot_failed(fmt, _dot_message(done.stderr, done.returncode), name)
    if not done.stdout:
        raise _dot_failed(fmt, "it wrote nothing", name)
    return done.stdout


def _dot_failed(fmt: str, message: str, name: str) -> d.SpecError:
    return d.SpecError([d.Diagnostic(
        d.DOT_FAILED, f"Graphviz's `dot` could not draw {fmt.upper()}: {message}", None,
        "write a .dot file (no Graphviz needed) and run `dot` on it to see the whole message",
        file=name)])


def _dot_message(stderr: bytes, returncode: int) -> str:
    """dot's first error line (its later lines quote the input, possibly a megabyte of it), or
    how it ended."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")] or lines
    if errors:
        first = errors[0]
        return first if len(first) <= 300 else first[:300] + "…"
    if returncode < 0:
        try:
            return f"it was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"it was killed by signal {-returncode}"
    return f"it exited with status {returncode}"


def _expanded(analysis: Analysis, detail: str, expand: int | Iterable[int] | None) -> frozenset[int]:
    indices = [b.index for b in analysis.blocks]
    if expand is None:
        return frozenset(indices) if detail == "layers" else frozenset()
    wanted = [expand] if isinstance(expand, int) else list(expand)
    for n in wanted:
        if n not in indices:
            have = f"blocks 1 to {len(indices)}" if len(indices) > 1 else \
                ("block 1" if indices else "no dense blocks")
            raise ValueError(f"there is no dense block {n}: {_shown_name(analysis.name)} has {have}")
    return frozenset(wanted)


# --- text --------------------------------------------------------------------------------------

def _h(text: str) -> str:
    return html.escape(text, quote=False)


# dot refuses quoted strings over 16,384 characters and control characters in HTML labels; a
# diagram shows at most this much of a name.
_NAME_CHARS = 200


def _shown_name(name: str) -> str:
    """A network's name as the diagram shows it: control characters (newlines, tabs, escapes)
    written as repr() writes them, and cut to _NAME_CHARS with the number of characters left
    out; never empty (dot rejects an empty <B></B>). Used through _h() in HTML labels, where <,
    > and & become entities."""
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name) or "(unnamed)"
    if len(shown) > _NAME_CHARS:
        shown = f"{shown[:_NAME_CHARS]}… ({len(shown) - _NAME_CHARS:,} more characters)"
    return shown


def _graph_id(name: str) -> str:
    """The DOT graph's name (shown as the SVG's <title>): the shown name without the two
    characters DOT's quoted strings escape, `"` and `\\`, so no name can end the string; as
    nohtml, so a name in <...> is not read as an HTML string."""
    return graphviz.nohtml(_shown_name(name).replace("\\", "_").replace('"', "_"))


def _label(title: str, *lines: str, size: int = 9, left: bool = False) -> str:
    """An HTML-like label: the title in bold sans, the figures below in monospace."""
    br = '<BR ALIGN="LEFT"/>' if left else "<BR/>"
    body = "".join(f'{br}<FONT FACE="{MONO}" POINT-SIZE="{size}">{_h(line)}</FONT>'
                   for line in lines if line)
    return f"<<B>{_h(title)}</B>{body}{br if left else ''}>"


def _unit(shape: tuple[int, ...]) -> str:
    """What a width counts: a map's channels, a feature vector's (an MLP's) features."""
    return "ch" if len(shape) >= 2 else "features"


def _at(shape: tuple[int, ...]) -> str:
    """` · 56x56` after a width, nothing for a vector (it has no spatial size)."""
    return f" · {shape_text(shape[1:])}" if len(shape) >= 2 else ""


def _figures(s: StageFigures) -> str:
    return f"{si(s.params)} params · {si(s.flops, 'FLOPs')}"


def _op_token(a: dict) -> str:
    """One op in a recipe: `BN`, `ReLU`, `Conv3x3(32)`, `AvgPool2x2/2`, `Dropout(0.2)`."""
    return kind_of(a["kind"]).token(a)


def _op_words(a: dict) -> tuple[str, str]:
    """An op node's (title, detail line): `conv 7x7 /2`, `64x112x112`."""
    return kind_of(a["kind"]).words(a)


def _tooltip(name: str, a: dict) -> str:
    parts = [a.get("module", name), shape_text(a["out_shape"])]
    if a["params"]:
        parts.append(f"{a['params']:,} params")
    if a["flops"]:
        parts.append(si(a["flops"], "FLOPs"))
    return " · ".join(parts)


def _rgb(rgb: tuple[int, int, int], fade: float) -> str:
    """`rgb` mixed with white: fade 0 is the colour, 1 white (no alpha, so PDFs print alike)."""
    return "#" + "".join(f"{round(c + (255 - c) * fade):02x}" for c in rgb)


# --- building ----------------------------------------------------------------------------------

class _Builder:
    def __init__(self, analysis: Analysis, detail: str, expanded: frozenset[int], rankdir: str):
        self.a = analysis
        self.g = analysis.graph
        self.detail = detail
        self.expanded = expanded
        self.rankdir = rankdir
        self.owner: dict[str, str] = {}          # analysis node → DOT node
        self.anchors: list[tuple[str, str]] = []  # each stage's (entry, exit) DOT node, in order
        self.kinds: list[str] = []               # palette keys in use, for the legend
        self._quoted: dict[str, str] = {}         # attribute keys and values, quoted for DOT
        self._edge_ids: dict[str, str] = {}       # node names, quoted as edge ends
        biggest = max((b.layers for b in analysis.blocks if b.index in expanded), default=0)
        # Dense arcs are flat edges, routed in the gap above their row: give them room.
        ranksep = 0.45 if not biggest else min(0.5 + 0.06 * biggest, 1.8)
        self.dot = graphviz.Digraph(
            name=_graph_id(analysis.name),
            graph_attr={"rankdir": rankdir, "ranksep": f"{ranksep:.2f}", "nodesep": "0.25",
                        "newrank": "true", "outputorder": "edgesfirst", "bgcolor": "white",
                        "pad": "0.25", "fontname": SANS, "fontsize": "11", "fontcolor": INK,
                        "labelloc": "b", "labeljust": "c"},
            node_attr={"shape": "box", "style": "rounded,filled", "fontname": SANS,
                       "fontsize": "11", "fontcolor": INK, "penwidth": "1.2",
                       "margin": "0.14,0.07"},
            edge_attr={"color": "#555555", "arrowsize": "0.7", "fontname": MONO,
                       "fontsize": "9", "fontcolor": MUTED, "penwidth": "1.1"})

    def build(self) -> graphviz.Digraph:
        self._io("input")
        for s in self.a.stages:
            if isinstance(s, BlockFigures):
                if s.index in self.expanded:
                    self._expanded_block(s)
                else:
                    self._collapsed(s, self._block_label(s))
            elif self.detail == "overview":
                self._collapsed(s, self._stage_label(s))
            else:
                self._op_row(s)
        self._io("output")
        # Stack the stages on one axis: without heavy edges between consecutive stages' anchors
        # each row of ops would hang off the previous row's last op and the diagram would drift
        # sideways. A drawn edge that joins two anchors gets the weight itself (an invisible
        # twin would bend it).
        align = [(exit_, entry) for (_, exit_), (entry, _) in zip(self.anchors, self.anchors[1:])]
        drawn = self._edges(set(align))
        for tail, head in align:
            if (tail, head) not in drawn:
                # Into an expanded block's title it must not constrain the ranks: as an ordinary
                # edge it makes dot's crossing minimisation reorder the block's row.
                free = {"constraint": "false"} if head.endswith(".title") else {}
                self.dot.edge(tail, head, style="invis", weight="10",
                              _attributes={**free, "class": "layout"})
        self.dot.attr(label=self._caption())
        return self.dot

    def _use(self, kind: str) -> _Palette:
        if kind not in self.kinds:
            self.kinds.append(kind)
        return _PALETTE[kind]

    def _members(self, stage: str) -> list[str]:
        return [n for n, s in self.g.nodes(data="stage") if s == stage and n not in ("input", "output")]

    # nodes

    def _io(self, name: str) -> None:
        p = self._use("io")
        a = self.g.nodes[name]
        shape = a["out_shape"]
        self.dot.node(name, _label(name, shape_text(shape)), fillcolor=p.fill, color=p.border,
                      tooltip=f"{name} · {shape_text(shape)}")
        self.owner[name] = name
        self.anchors.append((name, name))

    def _collapsed(self, s: StageFigures, label: str) -> None:
        p = self._use(s.kind)
        self.dot.node(s.name, label, fillcolor=p.fill, color=p.border,
                      tooltip=f"features.{s.name}" if s.kind in ("dense", "transition") else s.name)
        for n in self._members(s.name):
            self.owner[n] = s.name
        self.anchors.append((s.name, s.name))

    def _stage_label(self, s: StageFigures) -> str:
        members = [self.g.nodes[n] for n in self._members(s.name)]
        shapes = f"{s.in_shape[0]} → {s.out_shape[0]} {_unit(s.in_shape)}"
        sizes = shape_text(s.in_shape[1:]) if shape_text(s.in_shape[1:]) == shape_text(s.out_shape[1:]) or len(s.out_shape) == 1 \
            else f"{shape_text(s.in_shape[1:])} → {shape_text(s.out_shape[1:])}"
        t = next(x.source for x in self.a.lowered if x.name == s.name)
        if isinstance(t, Transition):
            squeeze = f"θ={float_text(t.compression)}" if t.compression is not None else f"channels={t.channels}"
            return _label(f"transition {t.index}", f"{squeeze} · {shapes}",
                          f"{shape_text(s.in_shape[1:])} → {shape_text(s.out_shape[1:])}" if len(s.in_shape) > 1 else "",
                          _figures(s))
        recipe = "-".join(_op_token(m) for m in members)
        if s.kind == "head":
            out = s.out_shape[0] if len(s.out_shape) == 1 else shape_text(s.out_shape)
            if len(s.in_shape) == 1:
                return _label("head", recipe, f"{s.in_shape[0]} features → {out}", _figures(s))
            return _label("head", recipe, f"{s.in_shape[0]} ch · {shape_text(s.in_shape[1:])} → {out}", _figures(s))
        return _label(s.name, recipe, f"{shapes} · {sizes}" if sizes else shapes, _figures(s))

    def _block_label(self, b: BlockFigures) -> str:
        table = self._table(b)
        lines = [self._block_facts(b), f"{b.in_channels} → {b.out_channels} {_unit(b.in_shape)}{_at(b.in_shape)}",
                 f"{b.connections:,} connections · {_figures(b)}"]
        if not table.dense:
            lines.append(f"emits {maps_text(table.emits)}")
        if self.detail != "overview":
            lines.append(f"{self._recipe(b)} ×{b.layers}" if _uniform(table)
                         else f"layer 1: {self._recipe(b)}")
        return _label(f"dense block {b.index}", *lines)

    def _table(self, b: BlockFigures) -> Table:
        return next(x.table for x in self.a.lowered if isinstance(x, LoweredBlock) and x.name == b.name)

    def _block_facts(self, b: BlockFigures) -> str:
        block = next(x for x in self.a.network.blocks if x.index == b.index)
        table = self._table(b)
        facts = [f"{b.layers} layer" + ("s" if b.layers != 1 else ""),
                 f"k={b.growth}" if _uniform(table) else f"widths {widths_text(table.widths)}",
                 f"bottleneck {b.bottleneck}k" if b.bottleneck else "no bottleneck"]
        if not table.dense:
            facts.append(f"links={_rule(block.links)} emit={_rule(block.emit)}")
        if block.dropout:
            facts.append(f"dropout {float_text(block.dropout)}")
        if block.order == "post":
            facts.append("post-activation")
        return " · ".join(facts)

    def _recipe(self, b: BlockFigures) -> str:
        """Layer 1's ops: every layer of a block runs the same recipe, only its input widens."""
        prefix = f"{b.name}.denselayer1."
        return "-".join(_op_token(self.g.nodes[n]) for n in self._members(b.name)
                        if n.startswith(prefix) and kind_of(self.g.nodes[n]["kind"]).computes)

    def _op_row(self, s: StageFigures) -> None:
        p = self._use(s.kind)
        members = self._members(s.name)
        with self.dot.subgraph(name=f"cluster_{s.name}") as c:
            title = {"transition": f"transition {s.name.removeprefix('transition')}"}.get(s.kind, s.name)
            sizes = f"{shape_text(s.in_shape[1:])} → {shape_text(s.out_shape[1:])}" if len(s.out_shape) > 1 else \
                f"{shape_text(s.in_shape[1:])} → {s.out_shape[0]}"
            widths = f"{s.in_shape[0]} → {s.out_shape[0]} {_unit(s.in_shape)}"
            c.attr(label=_label(title, f"{widths} · {sizes} · {_figures(s)}" if len(s.in_shape) > 1
                                else f"{widths} · {_figures(s)}", left=True),
                   labelloc="t", labeljust="l", style="rounded,filled", fillcolor=p.tint,
                   color=p.border, penwidth="1", fontsize="11", margin="10")
            for n in members:
                a = self.g.nodes[n]
                title, line = _op_words(a)
                c.node(n, _label(title, line, size=8), fillcolor=p.fill, color=p.border,
                       fontsize="10", tooltip=_tooltip(n, a))
                self.owner[n] = n
            if self.rankdir == "TB":  # in LR the ranks already run left to right
                c.body.append(_same_rank(members))
        middle = members[len(members) // 2]
        self.anchors.append((middle, middle))

    def _expanded_block(self, b: BlockFigures) -> None:
        p = self._use("dense")
        compact = b.layers > _COMPACT_LAYERS
        row = [f"{b.name}.x0"] + [f"{b.name}.denselayer{l}" for l in range(1, b.layers + 1)]
        with self.dot.subgraph(name=f"cluster_{b.name}") as c:
            c.attr(label="", style="rounded,filled", fillcolor=p.tint, color=p.border,
                   penwidth="1", margin="12")
            # The title is a node in the rank above the row, not the cluster's label, so the
            # arcs (routed between the two ranks) stay inside the cluster.
            title = f"{b.name}.title"
            # An edge to every node of the row centres the title over it.
            c.node(title, self._expanded_title(b), shape="plaintext", style="", margin="0",
                   _attributes={"class": "note"})
            for n in row:
                c.edge(title, n, style="invis", _attributes={"class": "layout"})
            x0 = self.g.nodes[row[0]]
            c.node(row[0], _label("x0", f"{x0['out_shape'][0]} {_unit(b.in_shape)}", size=8), fillcolor="white",
                   color=p.border, tooltip=f"x0: the block input · {shape_text(x0['out_shape'])}")
            self.owner[row[0]] = row[0]
            params = [0] * (b.layers + 1)
            for n in self._members(b.name):
                layer = self.g.nodes[n].get("layer")
                if layer:
                    self.owner[n] = row[layer]
                    params[layer] += self.g.nodes[n]["params"]
            table = self._table(b)
            for layer in range(1, b.layers + 1):
                concat = self.g.nodes[f"{b.name}.denselayer{layer}.concat"]
                cin, width = concat["out_shape"][0], table.widths[layer - 1]
                # what the layer reads, as the graph's concatenation gathers it (its table's order)
                reads = reads_text([int(m.rsplit(".x", 1)[1]) for m in self.g.pred[concat_id(b, layer)]],
                                   table.prefix)
                label = _label(str(layer), str(cin), size=7) if compact else \
                    _label(f"layer {layer}", f"{cin} → {width} {_unit(b.in_shape)}",
                           "" if table.prefix else f"reads {reads}", size=8)
                c.node(row[layer], label, fillcolor=p.fill, color=p.border,
                       fontsize="9" if compact else "10", margin="0.06,0.04" if compact else "0.12,0.06",
                       tooltip=f"features.{b.name}.denselayer{layer} · reads {reads} "
                               f"({cin} {_unit(b.in_shape)}), adds x{layer} ({width} {_unit(b.in_shape)}) · "
                               f"{params[layer]:,} params")
            c.body.append(_same_rank(row))
            out = f"{b.name}.out"
            a = self.g.nodes[out]
            c.node(out, _label(f"concatenate {maps_text(table.emits, dense=table.dense)}",
                               shape_text(a["out_shape"]), size=8),
                   shape="box", style="filled", fillcolor=p.fill, color=p.border,
                   tooltip=f"features.{b.name} output · {shape_text(a['out_shape'])}")
            self.owner[out] = out
        self.anchors.append((title, out))

    def _expanded_title(self, b: BlockFigures) -> str:
        table = self._table(b)
        block = next(x for x in self.a.network.blocks if x.index == b.index)
        recipe = f"each layer: {self._recipe(b)}" if _uniform(table) else f"layer 1: {self._recipe(b)}"
        return (f"<<B>dense block {b.index}</B><FONT FACE=\"{MONO}\" POINT-SIZE=\"9\"> · "
                f"{_h(self._block_facts(b))}<BR/>{b.in_channels} → {b.out_channels} {_unit(b.in_shape)}"
                f"{_at(b.in_shape)} · {_h(_figures(b))}</FONT><BR/>"
                f"<FONT POINT-SIZE=\"10\">{_h(links_sentence(block, table, b.connections))}</FONT><BR/>"
                f"<FONT FACE=\"{MONO}\" POINT-SIZE=\"9\">{_h(recipe)}</FONT>>")

    # edges

    def _edges(self, heavy: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Draw every analysis edge between two DOT nodes; returns the (tail, head) pairs."""
        g, owner = self.g, self.owner
        drawn: set[tuple[str, str]] = set()
        for u, v, a in g.edges(data=True):
            tail, head = owner[u], owner[v]
            if tail == head:
                continue
            drawn.add((tail, head))
            kind = a["kind"]
            attrs = {"class": kind}
            if (tail, head) in heavy:
                attrs["weight"] = "10"
            if kind == "dense":
                distance = g.nodes[v]["layer"] - g.nodes[u]["layer"]
                self._dense_style(attrs, distance)
                attrs["tooltip"] = f"x{g.nodes[u]['layer']} → layer {g.nodes[v]['layer']} " \
                                   f"({a['shape'][0]} {_unit(a['shape'])})"
            elif kind == "concat":
                attrs.update(color=_CONCAT_EDGE, style="dashed", arrowsize="0.45", penwidth="0.8")
            elif g.nodes[u]["stage"] != g.nodes[v]["stage"] or "input" in (u, v) or "output" in (u, v):
                attrs["label"] = " " + shape_text(a["shape"])
                if head.endswith(".x0") and g.nodes[v]["block"] in self.expanded:
                    # Into x0 from its outer side, away from the arcs.
                    attrs["headport"] = "w" if self.rankdir == "TB" else "n"
            if kind == "dense" and self.rankdir == "LR":
                # dot orders a rotated row bottom to top; reversed edges (drawn with dir=back,
                # so the arrows still point at the reading layer) put x0 at the top.
                attrs["dir"] = "back"
                tail, head = head, tail
            self._edge(tail, head, attrs)
        return drawn

    def _edge(self, tail: str, head: str, attrs: dict[str, str]) -> None:
        """`self.dot.edge(tail, head, _attributes=attrs)`, the same text, with the quoting of
        names and repeated values remembered: graphviz's own quoting was three quarters of the
        time of a 1,000-layer block's million edges (`.dot` output has no cap)."""
        q = self._quote
        items = " ".join(f"{q(k)}={graphviz.quoting.quote(v) if k in _UNIQUE else q(v)}"
                         for k, v in sorted(attrs.items()))
        self.dot.body.append(f"\t{self._quote_edge(tail)} -> {self._quote_edge(head)} [{items}]\n")

    def _quote(self, text: str) -> str:
        done = self._quoted.get(text)
        if done is None:
            done = self._quoted[text] = graphviz.quoting.quote(text)
        return done

    def _quote_edge(self, name: str) -> str:
        done = self._edge_ids.get(name)
        if done is None:
            done = self._edge_ids[name] = graphviz.quoting.quote_edge(name)
        return done

    @staticmethod
    def _dense_style(attrs: dict, distance: int) -> None:
        """Nearer connections darker and thicker, by distance alone, so blocks of any size
        share one scale; the farthest stay visible (fade below 0.7)."""
        if distance == 1:
            attrs.update(color=_rgb(_DENSE_EDGE, 0), penwidth="1.8", arrowsize="0.6")
            return
        far = 1 - math.exp(-(distance - 1) / 6)
        attrs.update(color=_rgb(_DENSE_EDGE, 0.1 + 0.6 * far), penwidth=f"{1.4 - 0.8 * far:.2f}",
                     arrowsize="0.5")

    # caption

    def _caption(self) -> str:
        a = self.a
        totals = (f"{a.params:,} params ({si(a.params)}) · {si(a.flops, 'FLOPs')} · depth {a.depth} · "
                  f"{a.connections:,} dense connections · {shape_text(a.input_shape)} → "
                  f"{shape_text(a.output_shape)}")
        swatches = "".join(
            f'<TD BGCOLOR="{_PALETTE[k].fill}" COLOR="{_PALETTE[k].border}" BORDER="1" '
            f'FIXEDSIZE="TRUE" WIDTH="{12 + 6 * len(_PALETTE[k].label)}" HEIGHT="18"><FONT POINT-SIZE="9">{_h(_PALETTE[k].label)}</FONT></TD>'
            for k in _PALETTE if k in self.kinds)
        rows = [f'<TR><TD><B>{_h(_shown_name(a.name))}</B>  <FONT FACE="{MONO}" POINT-SIZE="9">{_h(totals)}</FONT></TD></TR>',
                f'<TR><TD ALIGN="CENTER"><TABLE BORDER="0" CELLSPACING="4"><TR>{swatches}</TR></TABLE></TD></TR>']
        if self.expanded:
            rows.append('<TR><TD><FONT POINT-SIZE="9" COLOR="#5f6b76">solid arcs: dense connections '
                        '(one per edge of the graph; darker = nearer) · dashed: concatenation into '
                        'the block output</FONT></TD></TR>')
        return f'<<TABLE BORDER="0" CELLSPACING="2">{"".join(rows)}</TABLE>>'


def concat_id(b: BlockFigures, layer: int) -> str:
    return f"{b.name}.denselayer{layer}.concat"


def _uniform(table: Table) -> bool:
    return len(set(table.widths)) <= 1


def _rule(value: object) -> str:
    """A links/emit setting as a spec writes it: `log`, `random(0.5, 1)`, `[…]` for a table."""
    if isinstance(value, RandomLinks):
        return f"random({float_text(float(value.p))}, {value.seed})"
    if isinstance(value, tuple):
        return "[…]"
    return str(value)


# A label lists at most this many maps; longer lists show their ends.
_LISTED = 8


def maps_text(indices: Sequence[int], *, dense: bool = False) -> str:
    """`x1, x3, x5, x7, x8`; DenseNet's whole block `x0…x48`; long lists by their ends."""
    if dense or (len(indices) > 2 and list(indices) == list(range(indices[0], indices[0] + len(indices)))):
        return f"x{indices[0]}…x{indices[-1]}"
    names = [f"x{i}" for i in indices]
    if len(names) > _LISTED:
        names = names[:_LISTED // 2] + [f"… ({len(names) - _LISTED + 1} more) …"] + names[-(_LISTED // 2 - 1):]
    return ", ".join(names)


def reads_text(reads: Sequence[int], prefix: bool) -> str:
    """What a layer reads, in its concatenation order: `x0…x6`, or `x7, x6, x4, x0`."""
    if prefix and len(reads) > 1:
        return f"x0…x{len(reads) - 1}"
    return maps_text(reads)


def widths_text(widths: Sequence[int]) -> str:
    return ", ".join(map(str, widths)) if len(widths) <= _LISTED else \
        f"{', '.join(map(str, widths[:_LISTED]))}, … ({min(widths)}–{max(widths)})"


_RULES = {"all": "x0 … x(ℓ−1), the outputs of all earlier layers",
          "log": "x(ℓ−1), x(ℓ−2), x(ℓ−4), … (offsets 1, 2, 4, … up to ℓ; links=log)",
          "harmonic": "x(ℓ−2ⁿ) for every 2ⁿ dividing ℓ, nearest first (links=harmonic)",
          "chain": "x(ℓ−1) only (links=chain)"}


def links_sentence(block: DenseBlock, table: Table, connections: int) -> str:
    """The block's rule in words, with its connections counted on the graph."""
    if table.dense:
        n = table.layers
        return f"layer ℓ reads {_RULES['all']}: {n}·{n + 1}/2 = {connections:,} connections"
    links = block.links
    if isinstance(links, RandomLinks):
        rule = f"x(ℓ−1) and each earlier output with probability {float_text(float(links.p))} ({_rule(links)})"
    elif isinstance(links, tuple):
        rule = "the outputs its row of the links table lists"
    else:
        rule = _RULES[links]
    return f"layer ℓ reads {rule}: {connections:,} connections · the block emits {maps_text(table.emits)}"


def _same_rank(names: list[str]) -> str:
    quoted = " ".join(graphviz.quoting.quote(n) for n in names)
    return f"\t{{rank=same; {quoted}}}\n"
