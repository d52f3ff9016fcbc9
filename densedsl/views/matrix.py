"""The connectivity matrix: per dense block, a grid of who reads whom.

    to_digraph(analysis, "matrix")            # densedsl render spec --detail matrix -o m.svg

Row ℓ is dense layer ℓ, column s the output x_s (x0 the block's input); a filled cell means
layer ℓ concatenates x_s, and the number in it (where a block is small enough to print one) is
its place in the concatenation. The last row, `emit`, marks what the block outputs. Cells right
of the diagonal can never be read (x_s does not exist yet when layer ℓ runs) and are shaded.

At 48 layers the arc view (`layers`) is one solid band; the grid stays readable, and it shows
the families at a glance: DenseNet a full lower triangle, SparseNet (`links=log`) a few
diagonals at powers of two, HarDNet (`links=harmonic`) a comb whose teeth grow at powers of two.

Each block is one DOT node whose label is a graphviz HTML-like table, so .dot, .svg, .png and
.pdf need nothing new. The cells are read off the analysis graph (a concatenation's
predecessors, in their order), not the spec: the matrix is what the model computes. Every read
cell carries `TOOLTIP="layer ℓ reads x_s …"`, every emit cell `TOOLTIP="the block emits x_s …"`;
tests count them.
"""

from __future__ import annotations

import html

import graphviz

from ..analysis.figures import Analysis, BlockFigures
from ..core.units import si

SANS = "Helvetica,Arial,DejaVu Sans,sans-serif"
INK = "#222222"
MUTED = "#5f6b76"
READ = "#1c4a80"        # a dense connection (the layers view's arc colour)
NEAR = "#3a75c4"        # the previous layer's output: the diagonal
EMIT = "#d9822b"        # what the block outputs
EMPTY = "#ffffff"
NEVER = "#eef0f2"       # x_s not yet made when layer ℓ runs
GRID = "#c9ced4"

# Above this many layers a cell drops its number and shrinks, and only every fourth column and
# row is labelled: DenseNet-264's block 4 (64 layers) stays under 900 px on a side.
_NUMBERED = 16
_LABEL_EVERY = 4


def matrix_digraph(analysis: Analysis, blocks: frozenset[int], rankdir: str, graph_id: str,
                   shown_name: str) -> graphviz.Digraph:
    """One node per dense block in `blocks`, side by side (rankdir LR) or stacked (TB)."""
    dot = graphviz.Digraph(
        name=graph_id,
        graph_attr={"rankdir": rankdir, "bgcolor": "white", "pad": "0.25", "nodesep": "0.5",
                    "ranksep": "0.5", "fontname": SANS, "fontsize": "11", "fontcolor": INK,
                    "labelloc": "b", "labeljust": "c"},
        node_attr={"shape": "plaintext", "fontname": SANS, "fontcolor": INK, "margin": "0"})
    drawn = [b for b in analysis.blocks if b.index in blocks]
    for b in drawn:
        with dot.subgraph(name=f"cluster_{b.name}") as c:
            c.attr(label=_title(b, len(block_cells(analysis, b)[1])), labelloc="t", labeljust="l",
                   color="white", margin="4")
            c.node(b.name, _grid(analysis, b), tooltip=f"features.{b.name} · {b.connections:,} connections")
    for tail, head in zip(drawn, drawn[1:]):  # order only: the blocks are not joined by data here
        dot.edge(tail.name, head.name, style="invis", _attributes={"class": "layout"})
    dot.attr(label=_caption(analysis, shown_name, drawn))
    return dot


def block_cells(analysis: Analysis, b: BlockFigures) -> tuple[list[list[int]], list[int]]:
    """Each layer's reads (indexes of x_s, in concatenation order) and the block's emits, read
    off the graph: the concatenation nodes' predecessors, in the order they concatenate."""
    pred = analysis.arch.pred
    reads = [[_index(m) for m in pred[f"{b.name}.denselayer{layer}.concat"]]
             for layer in range(1, b.layers + 1)]
    emits = [_index(m) for m in pred[f"{b.name}.out"]]
    return reads, emits


def _index(node: str) -> int:
    return int(node.rsplit(".x", 1)[1])


def _grid(analysis: Analysis, b: BlockFigures) -> str:
    reads, emits = block_cells(analysis, b)
    n = b.layers
    numbered = n <= _NUMBERED
    size = 16 if numbered else (10 if n <= 64 else 6)
    font = 7 if numbered else 6
    shown = (lambda i: True) if numbered else (lambda i: i % _LABEL_EVERY == 0)
    widths = [b.in_channels] + [analysis.arch.nodes[f"{b.name}.x{j}"]["out_shape"][0] for j in range(1, n + 1)]

    def cell(colour: str, text: str = "", tip: str = "", ink: str = "white") -> str:
        tooltip = f' TOOLTIP="{html.escape(tip)}" HREF="#"' if tip else ""  # dot keeps tooltips on linked cells
        body = f'<FONT POINT-SIZE="{font}" COLOR="{ink}">{text}</FONT>' if text else ""
        return (f'<TD BGCOLOR="{colour}" WIDTH="{size}" HEIGHT="{size}" FIXEDSIZE="TRUE"{tooltip}>'
                f"{body}</TD>")

    def label(text: str, bold: bool = False) -> str:
        inner = f"<B>{text}</B>" if bold else text
        if not text:
            return f'<TD BORDER="0" HEIGHT="{size}"></TD>'
        return (f'<TD BORDER="0" HEIGHT="{size}" ALIGN="RIGHT"><FONT POINT-SIZE="{font}" COLOR="{MUTED}">'
                f"{inner}</FONT></TD>")

    head = [label("")] + [
        f'<TD BORDER="0" WIDTH="{size}" HEIGHT="{size}" FIXEDSIZE="TRUE"><FONT POINT-SIZE="{font}" '
        f'COLOR="{MUTED}">{s}</FONT></TD>' if shown(s) else
        f'<TD BORDER="0" WIDTH="{size}" HEIGHT="{size}" FIXEDSIZE="TRUE"></TD>' for s in range(n + 1)]
    rows = [f'<TR>{"".join(head)}</TR>']
    for layer in range(1, n + 1):
        order = {s: k for k, s in enumerate(reads[layer - 1], start=1)}
        cells = [label(str(layer) if shown(layer) or layer == n else "")]
        for s in range(n + 1):
            if s in order:
                colour = NEAR if s == layer - 1 else READ
                cells.append(cell(colour, str(order[s]) if numbered else "",
                                  f"layer {layer} reads x{s} ({widths[s]} ch), "
                                  f"{_ordinal(order[s])} of its {len(order)} inputs"))
            else:
                cells.append(cell(EMPTY if s < layer else NEVER))
        rows.append(f'<TR>{"".join(cells)}</TR>')
    place = {s: k for k, s in enumerate(emits, start=1)}
    cells = [label("emit", bold=True)]
    for s in range(n + 1):
        if s in place:
            cells.append(cell(EMIT, str(place[s]) if numbered else "",
                              f"the block emits x{s} ({widths[s]} ch), {_ordinal(place[s])} of {len(emits)}"))
        else:
            cells.append(cell(EMPTY))
    rows.append(f'<TR>{"".join(cells)}</TR>')
    grid = (f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="0" COLOR="{GRID}">'
            f'{"".join(rows)}</TABLE>>')
    return grid


def _title(b: BlockFigures, emitted: int) -> str:
    # The cluster's label, not a row of the grid: a row wider than the grid would widen its columns.
    return (f'<<B>dense block {b.index}</B><FONT POINT-SIZE="9" COLOR="{MUTED}"> · {b.layers} layers · '
            f"{b.connections:,} connections<BR/>emits {emitted} of {b.layers + 1} maps, {b.out_channels} ch</FONT>>")


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _caption(a: Analysis, shown_name: str, drawn: list[BlockFigures]) -> str:
    totals = f"{a.params:,} params ({si(a.params)}) · {si(a.flops, 'FLOPs')} · {a.connections:,} dense connections"
    swatch = "".join(
        f'<TD BGCOLOR="{c}" WIDTH="12" HEIGHT="12" FIXEDSIZE="TRUE" BORDER="1" COLOR="{GRID}"></TD>'
        f'<TD><FONT POINT-SIZE="9">{html.escape(w)}  </FONT></TD>'
        for c, w in ((NEAR, "reads the previous output"), (READ, "reads an earlier output"),
                     (EMIT, "emitted by the block"), (NEVER, "not yet made")))
    note = "row ℓ: dense layer ℓ · column s: the output x_s (x0 the block's input)"
    if any(b.layers <= _NUMBERED for b in drawn):
        note += " · the number in a cell: its place in the concatenation"
    note_row = f'<TR><TD><FONT POINT-SIZE="9" COLOR="{MUTED}">{note}</FONT></TD></TR>' if note else ""
    return (f'<<TABLE BORDER="0" CELLSPACING="2"><TR><TD><B>{html.escape(shown_name, quote=False)}</B>  '
            f'<FONT POINT-SIZE="9">{html.escape(totals, quote=False)}</FONT></TD></TR>'
            f'<TR><TD><TABLE BORDER="0" CELLSPACING="3"><TR>{swatch}</TR></TABLE></TD></TR>{note_row}</TABLE>>')
