"""The editor features, as functions from a `Snapshot` (and a position) to LSP types.

Names offered by completion come from the resolver's own tables (`resolve.STATEMENTS`,
`resolve.DENSE_SETTINGS`, …) and enumerated values from the types of the fields the resolver
fills (`network.Order`, `network.PoolMode`, `bool`), so there is no second list of names here;
`DOCS` only adds a one-line description per name, and a test keeps it in step with the tables.
No pygls here (lsprotocol's types only): the server wires these to requests.
"""

from __future__ import annotations

import re
import typing
from fractions import Fraction
from typing import Any, Iterable, Literal

from lsprotocol import types

from ..analysis.figures import BlockFigures, StageFigures
from ..core import diagnostics as d
from ..core.source import Source, Span
from ..core.units import axes_text, index_list, shape_text, si
from ..ir import connectivity
from ..language import ast
from ..language import network as n
from ..language import resolve as r
from ..language.fmt import format_expr, format_spec
from .document import NetworkState, Snapshot, innermost_statement, names, statements

# --- names and their one-line docs ----------------------------------------------------------------

# What each statement, op, setting and figure means, for completion items and hovers. The names
# themselves come from resolve.py's tables; tests/test_lsp.py checks that both agree. A setting's
# words are written a|b|c, and tests/test_choices.py checks those lists against the network's types.
DOCS: dict[str, str] = {
    # statements
    "input": "the input shape, channels x height x width (input 3x224x224), or a feature vector's "
             "width (input 20: an MLP)",
    "defaults": "settings every dense block and transition inherits",
    "stem": "the ops before the first dense block: stem { conv 64 kernel=7 stride=2 … }",
    "dense": "a dense block: layers L, each adding growth k channels",
    "transition": "BN-ReLU-Conv1x1-pool between blocks; compression θ or channels=N",
    "repeat": "repeat N { … }: repeats dense and transition statements",
    "head": "BN-ReLU, global pool, dropout and the classifier: head classes=1000",
    "expect": "figures the network must add up to: expect params=7_978_856",
    "for": "for [i,] n in LIST { dense … } between { transition }: the body once per element",
    "between": "after a for body: what goes between two elements (not after the last)",
    # stem ops
    "conv": "a convolution: conv CHANNELS kernel= stride= padding= bias=",
    "norm": "batch normalisation (as an op); a dense layer's norm, batch|group|instance|layer|none "
            "(batch: the paper's); on the head, the final BN-ReLU (true|false)",
    "kind": "a dense block's layers, conv|linear: convolutions on maps, or fully connected on a "
            "feature vector",
    "linear": "a fully-connected layer: linear FEATURES bias=",
    "task": "what the head's outputs are, classification|regression: logits, or values",
    "norm_groups": "the group count G of a dense layer's norm=group: GroupNorm(G, C), default 32",
    "relu": "ReLU",
    "relu6": "ReLU6, min(max(x, 0), 6) (HarDNet's stem)",
    "maxpool": "max pooling: maxpool kernel= stride= padding=",
    "avgpool": "average pooling: avgpool kernel= stride= padding=",
    "ceil": "a pool's ceil_mode (true|false): a last, partial window counts (VoVNet's max pools)",
    "dropout": "dropout rate in [0, 1): after each conv of a layer, or before the classifier",
    # settings
    "layers": "L, the number of dense layers in the block",
    "growth": "k, the channels each dense layer adds",
    "bottleneck": "width factor of the 1x1 conv (4: 4k channels), or off",
    "bias": "convolutions with a bias term (true|false)",
    "order": "pre|post: BN-ReLU-Conv (the paper's), or Conv-BN-ReLU (a dense layer's or a transition's)",
    "hidden": "widths of fully-connected layers before the classifier: hidden=[512, 256]",
    "groups": "a dense layer's growth conv, or a stem conv, in groups (must divide its input and output "
              "channels; groups equal to both: a depthwise conv)",
    "activation": "a dense layer's, a transition's or the head's hidden layers' activation, "
                  "relu|relu6|leaky_relu|silu|gelu|elu|none (relu: the paper's)",
    "compression": "θ in (0, 1]: a transition emits ⌊θ·m⌋ of its m input channels",
    "channels": "a transition's output channels (instead of compression); as a figure: the "
                "channels of the final feature map",
    "pool": "avg|max pooling; a transition's pool=depthwise downsamples with a depthwise conv and BN on "
            "the same window (HarDNet-DS), its pool=none has none (its 1x1 conv may stride): "
            "avg|max|depthwise|none",
    "kernel": "the pooling or convolution window: one number for every axis, or one per axis (1x7)",
    "stride": "the step of the pooling or convolution window (one number, or one per axis: 1x2)",
    "padding": "zero padding on each side (one number, or one per axis: 0x3)",
    "classes": "the classifier's outputs",
    "rate": "the dropout probability",
    # figures of `expect`
    "params": "trainable parameters",
    "buffers": "buffer elements (batch-norm running statistics)",
    "macs": "multiply-accumulates of one forward pass at the input size",
    "flops": "floating-point operations of one forward pass (2 per MAC)",
    "connections": "dense connections, counted on the graph",
    "depth": "conv and linear layers",
    # connectivity: DenseNet's relatives
    "links": "which earlier outputs each dense layer reads, all|log|harmonic|chain (DenseNet; SparseNet: "
             "1, 2, 4, … back; HarDNet; VoVNet: the previous one), random(p, seed), or one list per layer "
             "of indexes into x0 … x(j−1): [[0], [1, 0]]",
    "emit": "which outputs the block passes on, all|log|odd (x0 … xL; SparseNet's; HarDNet's odd layers "
            "and the last), or a list of indexes into x0 … xL: [1, 3, 4]",
    "width_factor": "HarDNet's m: layer j adds growth·m^(times 2 divides j) channels, rounded as HarDNet "
                    "rounds (width_factor=1.7)",
    "separable": "depthwise-separable layers (true|false; HarDNet-DS): a 1x1 conv to the layer's width with "
                 "norm and activation, then a depthwise conv with norm only; needs order=post",
    "widths": "the channels each dense layer adds, one per layer: widths=[14, 24, 14, 40]",
}

_STEM_SETTINGS: dict[str, tuple[str, ...]] = r.STEM_SETTINGS  # the resolver's table of op settings

SETTINGS: dict[str, tuple[str, ...]] = {
    "dense": r.DENSE_SETTINGS, "transition": r.TRANSITION_SETTINGS, "head": r.HEAD_SETTINGS,
    "defaults": r.DEFAULT_SETTINGS, "expect": r.EXPECT_KEYS, **_STEM_SETTINGS,
}

# which network type a statement becomes: the types of its fields give the enumerated values
_BUILDS: dict[str, tuple[type, ...]] = {
    "dense": (n.DenseBlock,), "transition": (n.Transition,), "head": (n.Head,),
    "defaults": (n.DenseBlock, n.Transition), "conv": (n.Conv,), "maxpool": (n.Pool,),
    "avgpool": (n.Pool,), "linear": (n.Linear,),
}


def enumerated_values(keyword: str, setting: str) -> tuple[str, ...]:
    """The words a setting accepts (`order` → pre, post), read off the network's field types."""
    for cls in _BUILDS.get(keyword, ()):
        hint = typing.get_type_hints(cls).get(setting)
        if hint is n.Pool or n.Pool in typing.get_args(hint):  # a transition's `pool=`: its Pool's mode
            modes = typing.get_args(typing.get_type_hints(n.Pool)["mode"])
            return modes + (("none",) if type(None) in typing.get_args(hint) else ())
        if hint is bool:
            return ("true", "false")
        if typing.get_origin(hint) is Literal:
            return tuple(typing.get_args(hint))
        # a rule or an explicit list (`links`, `emit`): the rule's words
        rules = [a for a in typing.get_args(hint) if typing.get_origin(a) is Literal]
        if rules:
            return tuple(w for rule in rules for w in typing.get_args(rule))
    return ()


# --- positions ------------------------------------------------------------------------------------

class Positions:
    """Spans (1-based, code points) ↔ LSP positions (0-based, in the client's code units)."""

    def __init__(self, source: Source, units):
        self.source = source
        self.units = units  # str -> number of code units in the negotiated encoding

    def position(self, line: int, column: int) -> types.Position:
        text = self.source.line_text(line)
        return types.Position(line=max(0, line - 1), character=self.units(text[: max(0, column - 1)]))

    def range(self, span: Span | None) -> types.Range:
        if span is None:
            start = types.Position(line=0, character=0)
            return types.Range(start=start, end=start)
        return types.Range(start=self.position(span.line, span.column),
                           end=self.position(span.end_line, span.end_column))

    def offset(self, position: types.Position) -> int:
        starts = self.source.line_starts
        line = min(max(position.line, 0), len(starts) - 1)
        text = self.source.line_text(line + 1)
        column, used = 0, 0
        while column < len(text) and used < position.character:
            used += self.units(text[column])
            column += 1
        return starts[line] + column

    def end(self) -> types.Position:
        last = len(self.source.line_starts)
        return self.position(last, len(self.source.line_text(last)) + 1)


# --- diagnostics ----------------------------------------------------------------------------------

_SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning}
_DID_YOU_MEAN = re.compile(r"did you mean '([A-Za-z_][A-Za-z0-9_]*)'\?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def docs_anchor(code: d.Code) -> str:
    """The anchor of the code's heading in docs/errors.md (`## E102 unknown-setting`)."""
    return f"{code.code.lower()}-{code.name}"


def to_lsp_diagnostic(x: d.Diagnostic, pos: Positions, uri: str, docs_url: str | None) -> types.Diagnostic:
    message = x.message + (f"\nhint: {x.hint}" if x.hint else "")
    return types.Diagnostic(
        range=pos.range(x.span), message=message, severity=_SEVERITY[x.severity], code=x.code.code,
        code_description=types.CodeDescription(href=f"{docs_url}#{docs_anchor(x.code)}")
        if docs_url else None,
        source="densedsl",
        related_information=[types.DiagnosticRelatedInformation(
            location=types.Location(uri=uri, range=pos.range(span)), message=note)
            for span, note in x.notes] or None)


def quick_fix(x: d.Diagnostic, source: Source) -> str | None:
    """The spelling a did-you-mean hint suggests, when the diagnostic underlines exactly one name."""
    match = _DID_YOU_MEAN.search(x.hint or "")
    if match is None or x.span is None:
        return None
    written = source.text[x.span.start:x.span.end]
    return match.group(1) if _NAME.match(written) and written != match.group(1) else None


def code_actions(snap: Snapshot, pos: Positions, uri: str, wanted: types.Range,
                 docs_url: str | None) -> list[types.CodeAction]:
    lo, hi = pos.offset(wanted.start), pos.offset(wanted.end)
    actions = []
    for x in snap.diagnostics:
        fix = quick_fix(x, snap.source)
        if fix is None or x.span is None or x.span.end < lo or x.span.start > hi:  # a fix has a span
            continue
        edit = types.TextEdit(range=pos.range(x.span), new_text=fix)
        actions.append(types.CodeAction(
            title=f"Change to '{fix}'", kind=types.CodeActionKind.QuickFix, is_preferred=True,
            diagnostics=[to_lsp_diagnostic(x, pos, uri, docs_url)],
            edit=types.WorkspaceEdit(changes={uri: [edit]})))
    return actions


# --- hover ----------------------------------------------------------------------------------------

# under a hover whose figures come from an earlier text (this one has an error)
STALE_NOTE = "*figures of an earlier version of this text*"
# under a hover whose figures leave out the settings in error
PARTIAL_NOTE = "*figures without the settings in error*"


def _note(state: NetworkState) -> str | None:
    return STALE_NOTE if state.stale else PARTIAL_NOTE if state.partial else None


def hover(snap: Snapshot, pos: Positions, at: types.Position) -> types.Hover | None:
    offset = pos.offset(at)
    state = snap.network_at(offset)
    if state is None:
        return None
    found = _hover_at(snap, state, pos, offset)
    note = _note(state)
    if found is not None and note:
        assert isinstance(found.contents, types.MarkupContent)  # what _hover builds
        found.contents.value += "  \n" + note
    return found


def _hover_at(snap: Snapshot, state: NetworkState, pos: Positions, offset: int) -> types.Hover | None:
    found = state.parameters.at(offset)
    if found is not None:
        param, span = found
        return _hover(_parameter_text(state, param), pos.range(span))
    stmt = innermost_statement(state.node, offset)
    if stmt is None:
        if state.node.name_span is not None and state.node.name_span.line == snap.source.position(offset)[0]:
            return _hover(_network_text(state), pos.range(state.node.name_span))
        return None
    text = _statement_text(state, stmt, offset)
    return _hover(text, pos.range(_first_line(stmt))) if text else None


def _hover(lines: list[str], where: types.Range) -> types.Hover:
    # two trailing spaces: a Markdown line break, so each figure keeps its own line
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown,
                                                    value="  \n".join(lines)), range=where)


def _first_line(stmt: ast.Statement) -> Span | None:
    """The statement's keyword line (a `stem { … }` spans several)."""
    span = stmt.span
    if span is None or span.end_line == span.line:
        return span
    end = span.source.line_starts[span.line - 1] + len(span.source.line_text(span.line))
    return span.source.span(span.start, end)


def _network_text(state: NetworkState) -> list[str]:
    lines = [f"**network {state.node.name}**"]
    if state.analysis is not None:
        a = state.analysis
        lines.append(f"{_count(a.params)} params · {si(a.flops, 'FLOPs')} · depth {a.depth} · "
                     f"{a.connections:,} dense connections")
        lines.append(f"{shape_text(a.input_shape)} → {shape_text(a.output_shape)} · minimum input "
                     f"{a.min_input_size.eval}x{a.min_input_size.eval} · receptive field {a.receptive_field}")
    if state.network is not None and state.network.parameters:
        lines.append("parameters: " + ", ".join(f"`{k}={_value(v)}`" for k, v in state.network.parameters))
    return lines


def _parameter_text(state: NetworkState, param: ast.Param) -> list[str]:
    value = dict(state.network.parameters).get(param.name) if state.network is not None else None
    default = format_expr(param.default)
    head = f"**parameter `{param.name}`**" + (f" = {_value(value)}" if value is not None else "")
    assert param.name_span is not None  # the parser gives every parameter one
    lines = [head, f"declared on line {param.name_span.line}: `{param.name}={default}`"]
    uses = sorted({s.line for s in state.parameters.uses.get(param.name, ())})
    lines.append(f"used on line{'s' if len(uses) != 1 else ''} {_lines(uses)}" if uses else "not used")
    return lines


def _statement_text(state: NetworkState, stmt: ast.Statement, offset: int) -> list[str]:
    kw = stmt.keyword
    if kw == "defaults":
        return _defaults_text(state, stmt, offset)
    if kw == "expect":
        return _expect_text(state, stmt)
    if kw == "input":
        if state.network is None:
            return [f"`input {format_expr(stmt.arg) if stmt.arg else ''}`"]
        lines = [f"**input** {shape_text(state.network.input)}"]
        if state.analysis is not None:
            m = state.analysis.min_input_size
            lines.append(f"minimum input {m.eval}x{m.eval} (to train with batch 1: {m.train}x{m.train})")
        return lines
    if kw in r.STEM_OPS:
        op = state.op_at(stmt.span)
        if op is None:
            return []
        return [f"**{kw}** ({op.kind})",
                f"channels {op.in_shape[0]} → {op.out_shape[0]} · {shape_text(op.in_shape)} → "
                f"{shape_text(op.out_shape)}",
                f"params {op.params:,} · {si(op.flops, 'FLOPs')}"]
    stages = state.stages_at(stmt.span)
    if kw == "repeat":
        inside = {(x.span.start, x.span.end) for x in statements(stmt.body) if x.span is not None}
        inner = [s for s in state.stages if s.span is not None and (s.span.start, s.span.end) in inside]
        return ([f"**repeat** → {', '.join(s.name for s in inner)}"] +
                [f"{s.name}: {shape_text(s.in_shape)} → {shape_text(s.out_shape)}" for s in inner]) if inner else []
    if not stages:
        return []
    lines = []
    for stage in stages:
        if lines:
            lines.append("")
        lines.extend(_stage_text(stage))
        lines.extend(_table_text(state, stage))
    lines.extend(_settings_text(state, stmt, stages))
    return lines


def _stage_text(stage: StageFigures) -> list[str]:
    lines = [f"**{stage.name}**"]
    if isinstance(stage, BlockFigures):
        width = (f"bottleneck {stage.bottleneck} (1x1 conv to {stage.bottleneck * stage.growth} channels)"
                 if stage.bottleneck else "no bottleneck")
        lines.append(f"{stage.layers} layer{'s' if stage.layers != 1 else ''} · growth {stage.growth} · "
                     f"{width} · {stage.connections:,} dense connection{'s' if stage.connections != 1 else ''}")
    lines.append(f"channels {stage.in_shape[0]} → {stage.out_shape[0]} · "
                 f"{shape_text(stage.in_shape)} → {shape_text(stage.out_shape)}")
    lines.append(f"params {_count(stage.params)} · {si(stage.flops, 'FLOPs')} · depth {stage.depth}")
    return lines


def _table_text(state: NetworkState, stage: StageFigures) -> list[str]:
    """A relative's block (a table not DenseNet's): what it emits and, where they differ, each
    layer's width. A DenseNet block says nothing more: its layers read all, it emits all."""
    block = _resolved_stage(state.network, stage) if state.network is not None else None
    if not isinstance(stage, BlockFigures) or not isinstance(block, n.DenseBlock):
        return []
    t = connectivity.table(block)
    uniform = t.widths == (block.growth,) * block.layers
    if t.dense and uniform:
        return []
    line = f"emits {index_list(t.emits, 'x', 'maps')} ({stage.out_shape[0]:,} channels)"
    return [line + ("" if uniform else f" · widths {index_list(t.widths, noun='layers')}")]


def _settings_text(state: NetworkState, stmt: ast.Statement, stages: list[StageFigures]) -> list[str]:
    """Every setting the statement takes, resolved, and where its value comes from."""
    resolved = _resolved_stage(state.network, stages[0]) if state.network is not None else None
    if resolved is None:
        return []
    written = {s.name: s for s in stmt.settings}
    defaults = {s.name: s for x in state.node.body if x.keyword == "defaults" for s in x.settings}
    parts = []
    for name in SETTINGS.get(stmt.keyword, ()):
        value = _read(resolved, name)
        if value is None and name not in ("bottleneck",):
            continue
        if name == "norm_groups" and getattr(resolved, "norm", None) != "group":
            continue  # a group count only means something to a group norm
        if (name, value) in (("links", "all"), ("emit", "all"), ("separable", False)) and name not in written:
            continue  # DenseNet's connectivity and layers, as every block without these settings has
        shown = _value(value) if value is not None else "off"
        if name in written:
            expr = format_expr(written[name].value)
            parts.append(f"`{name}={expr}` → {shown}" if expr != shown else f"`{name}={shown}`")
        elif name in defaults and _inherits(stmt, name):
            parts.append(f"`{name}={shown}` (defaults, line {_line(defaults[name].span)})")
        else:
            parts.append(f"`{name}={shown}`")
    return ["settings: " + " · ".join(parts)] if parts else []


def _resolved_stage(network: n.Network, stage: StageFigures) -> Any:
    """The resolved object a stage's figures describe, by the stage's compiled name."""
    named: dict[str, Any] = {f"denseblock{b.index}": b for b in network.blocks}
    named.update({f"transition{t.index}": t for t in network.transitions})
    named["head"] = network.head
    return named.get(stage.name)


def _read(resolved: Any, name: str) -> Any:
    """A setting's resolved value: a field of the stage, of its pool, or of the head's window (a
    window per axis as the spec writes it: 1x7)."""
    value = _field(resolved, name)
    return axes_text(value) if name in ("kernel", "stride", "padding") and isinstance(value, tuple) else value


def _field(resolved: Any, name: str) -> Any:
    pool = getattr(resolved, "pool", None)
    if isinstance(pool, n.Pool) and name in ("pool", "kernel", "stride", "padding"):
        return pool.mode if name == "pool" else getattr(pool, name)
    if isinstance(resolved, n.Head) and name in ("kernel", "stride"):
        return resolved.window[name == "stride"] if resolved.window else None
    return getattr(resolved, name, None)


def _defaults_text(state: NetworkState, stmt: ast.Statement, offset: int) -> list[str]:
    """For each default (or only the one under the cursor): who inherits it, who overrides it."""
    pointed = [s for s in stmt.settings if s.span is not None and s.span.start <= offset <= s.span.end]
    lines = ["**defaults**"]
    for setting in pointed or stmt.settings:
        inherit: list[int] = []
        override: list[int] = []
        for x in statements(state.node.body):
            if _inherits(x, setting.name):
                overridden = any(s.name == setting.name for s in x.settings)
                (override if overridden else inherit).append(_line(x.span))
        text = f"`{setting.name}={format_expr(setting.value)}`"
        text += (f": inherited on line{'s' if len(inherit) != 1 else ''} {_lines(inherit)}"
                 if inherit else ": inherited nowhere")
        if override:
            text += f"; overridden on line{'s' if len(override) != 1 else ''} {_lines(override)}"
        lines.append(text)
    return lines


def _expect_text(state: NetworkState, stmt: ast.Statement) -> list[str]:
    lines = ["**expect**"]
    figures = state.analysis.figures() if state.analysis is not None else {}
    for s in stmt.settings:
        got = figures.get(s.name)
        lines.append(f"`{s.name}={format_expr(s.value)}`" + (f": analysed {got:,}" if got is not None else ""))
    return lines


def _count(n: int) -> str:
    """`2,837,760 (2.84 M)`; a count under a thousand needs no abbreviation."""
    return f"{n:,} ({si(n)})" if n >= 1000 else f"{n:,}"


def _inherits(stmt: ast.Statement, name: str) -> bool:
    """Whether the statement takes `name` from `defaults` when it does not write it (as the
    resolver does: dense blocks and transitions inherit, and channels=N replaces compression)."""
    if stmt.keyword not in ("dense", "transition") or name not in r.DEFAULT_SETTINGS:
        return False
    written = {s.name for s in stmt.settings}
    return name in SETTINGS[stmt.keyword] and not (name == "compression" and "channels" in written)


def _line(span: Span | None) -> int:
    """The line of a parsed statement or setting: the parser gives each one a span."""
    assert span is not None
    return span.line


def _lines(numbers: Iterable[int]) -> str:
    return ", ".join(str(x) for x in sorted(set(numbers)))


def _value(v: Any) -> str:
    if isinstance(v, n.RandomLinks):
        return f"random({_value(v.p)}, {v.seed})"
    if isinstance(v, tuple):  # a links table, an emit or widths list, as the spec writes them
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Fraction):
        return str(v.numerator) if v.denominator == 1 else (
            repr(float(v)) if Fraction(repr(float(v))) == v else f"{v.numerator}/{v.denominator}")
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --- inlay hints ----------------------------------------------------------------------------------

def inlay_hints(snap: Snapshot, pos: Positions, wanted: types.Range) -> list[types.InlayHint]:
    """`→ 256x56x56` at the end of each stage's line: the shape (channels first) it emits."""
    first, last = wanted.start.line + 1, wanted.end.line + 1
    hints = []
    for state in snap.networks:
        for stmt in statements(state.node.body):
            stages = state.stages_at(stmt.span)
            line = stmt.span.line if stmt.span is not None else 0
            if not stages or not first <= line <= last:
                continue
            label = "→ " + ", ".join(shape_text(s.out_shape) for s in stages)
            end = len(snap.source.line_text(line).rstrip()) + 1
            hints.append(types.InlayHint(position=pos.position(line, end), label=label,
                                         kind=types.InlayHintKind.Type, padding_left=True,
                                         tooltip=_note(state)))
    return hints


# --- completion -----------------------------------------------------------------------------------

# what each `{ … }` holds: a network its statements (and loops), a stem its ops, loop bodies stages
_BLOCK_CONTENTS = {"network": r.STATEMENTS + ("for",), "stem": r.STEM_OPS, "repeat": r.STAGE_STATEMENTS,
                   "for": r.STAGE_STATEMENTS, "between": r.STAGE_STATEMENTS}
# functions a value may call (`len(blocks)`), from the resolver's table, with what each does
FUNCTION_DOCS: dict[str, str] = {
    "floor": "floor(x): round down", "ceil": "ceil(x): round up", "round": "round(x): to the nearest",
    "int": "int(x): toward zero", "abs": "abs(x)", "min": "min(a, b, …)", "max": "max(a, b, …)",
    "len": "len(list): its number of elements", "sum": "sum(list): its elements added",
    # not arithmetic: the whole value of `links=`
    "random": "random(p, seed): each earlier output read with probability p, the previous one "
              "always; a seed names one table",
}


def completion(snap: Snapshot, pos: Positions, at: types.Position) -> list[types.CompletionItem]:
    offset = pos.offset(at)
    text = snap.source.text
    line_start = text.rfind("\n", 0, offset) + 1
    segment = re.split(r"[;{]", text[line_start:offset])[-1]
    if "#" in segment:
        return []
    value = re.search(r"^\s*([A-Za-z_]\w*)\b.*?\b([A-Za-z_]\w*)=(\w*)$", segment)
    if value:
        keyword, setting = value.group(1), value.group(2)
        words: list[tuple[str, types.CompletionItemKind, str | None]] = [
            (v, types.CompletionItemKind.EnumMember, f"{setting}={v}")
            for v in enumerated_values(keyword, setting)]
        state = snap.network_at(offset)
        if state is not None:
            words += [(p.name, types.CompletionItemKind.Variable, f"parameter, default "
                       f"{format_expr(p.default)}") for p in state.node.params]
        if setting == "links":  # the one value written as a call
            words.append((r.RANDOM_LINKS, types.CompletionItemKind.Function, FUNCTION_DOCS[r.RANDOM_LINKS]))
        if not enumerated_values(keyword, setting):  # a number: `layers=len(blocks)`
            words += [(f, types.CompletionItemKind.Function, FUNCTION_DOCS.get(f)) for f in r.FUNCTIONS]
        return [types.CompletionItem(label=w, kind=k, detail=doc) for w, k, doc in words]
    if re.fullmatch(r"\s*\}\s*\w*", segment) and _enclosing_block(text, line_start) == "for":
        return [types.CompletionItem(label="between", kind=types.CompletionItemKind.Keyword,
                                     detail=DOCS["between"])]
    if re.fullmatch(r"\s*\w*", segment):
        block = _enclosing_block(text, line_start)
        if block is None:
            return [types.CompletionItem(label="network", kind=types.CompletionItemKind.Keyword,
                                         detail="network NAME(param=default, …) { … }")]
        return [types.CompletionItem(label=w, kind=types.CompletionItemKind.Keyword, detail=DOCS.get(w))
                for w in _BLOCK_CONTENTS.get(block, ())]
    setting = re.fullmatch(r"\s*([A-Za-z_]\w*)\s.*?(\w*)", segment)
    if setting and not segment.rstrip().endswith("="):
        keyword = setting.group(1)
        written = set(re.findall(r"([A-Za-z_]\w*)=", segment))
        return [types.CompletionItem(label=s, kind=types.CompletionItemKind.Property, detail=DOCS.get(s),
                                     insert_text=f"{s}=")
                for s in SETTINGS.get(keyword, ()) if s not in written]
    return []


def _enclosing_block(text: str, offset: int) -> str | None:
    """The keyword of the innermost `{ … }` open at `offset`: network, stem or repeat."""
    stack: list[str] = []
    code = re.sub(r"#[^\n]*", "", text[:offset])
    for m in re.finditer(r"[{}]", code):
        if m.group() == "}":
            if stack:
                stack.pop()
            continue
        head = re.split(r"[;{}\n]", code[:m.start()])[-1].split()
        stack.append(head[0] if head else "")
    return stack[-1] if stack else None


# --- formatting, symbols, definitions, rename -------------------------------------------------

def formatting(snap: Snapshot, pos: Positions) -> list[types.TextEdit] | None:
    """One edit replacing the text by `fmt`'s canonical form; None when the text does not parse."""
    if snap.file is None:
        return None
    formatted = format_spec(snap.file)
    if formatted == snap.source.text:
        return []
    whole = types.Range(start=types.Position(line=0, character=0), end=pos.end())
    return [types.TextEdit(range=whole, new_text=formatted)]


def document_symbols(snap: Snapshot, pos: Positions) -> list[types.DocumentSymbol]:
    symbols = []
    for state in snap.networks:
        node = state.node
        detail = f"{state.analysis.params:,} params" if state.analysis is not None else None
        symbols.append(types.DocumentSymbol(
            name=node.name, kind=types.SymbolKind.Class, detail=detail, range=pos.range(node.span),
            selection_range=pos.range(node.name_span),
            children=[_symbol(state, x, pos) for x in node.body if x.span is not None]))
    return symbols


def _symbol(state: NetworkState, stmt: ast.Statement, pos: Positions) -> types.DocumentSymbol:
    stages = state.stages_at(stmt.span)
    name = ", ".join(s.name for s in stages) if stages and stmt.keyword != "stem" else stmt.keyword
    detail = "→ " + ", ".join(shape_text(s.out_shape) for s in stages) if stages else None
    kind = types.SymbolKind.Function if stages or stmt.keyword == "repeat" else types.SymbolKind.Property
    return types.DocumentSymbol(
        name=name, kind=kind, detail=detail, range=pos.range(stmt.span),
        selection_range=pos.range(stmt.keyword_span or stmt.span),
        children=[_symbol(state, x, pos) for x in stmt.body or () if x.span is not None] or None)


def definition(snap: Snapshot, pos: Positions, uri: str, at: types.Position) -> types.Location | None:
    found = _parameter(snap, pos, at)
    if found is None:
        return None
    _, param, _ = found
    return types.Location(uri=uri, range=pos.range(param.name_span))


def references(snap: Snapshot, pos: Positions, uri: str, at: types.Position,
               include_declaration: bool) -> list[types.Location]:
    found = _parameter(snap, pos, at)
    if found is None:
        return []
    state, param, _ = found
    spans = ([param.name_span] if include_declaration else []) + list(state.parameters.uses.get(param.name, ()))
    return [types.Location(uri=uri, range=pos.range(s)) for s in spans]


class RenameRefused(ValueError):
    """A rename that would not be a rename (a clash, not a name): the message says why."""


def prepare_rename(snap: Snapshot, pos: Positions, at: types.Position) -> types.Range | None:
    if snap.file is None:
        return None  # a text with syntax errors: its networks are a guess (broken lines blanked)
    found = _parameter(snap, pos, at)
    return pos.range(found[2]) if found is not None else None


def rename(snap: Snapshot, pos: Positions, uri: str, at: types.Position,
           new_name: str) -> types.WorkspaceEdit | None:
    if snap.file is None:
        return None
    found = _parameter(snap, pos, at)
    if found is None:
        return None
    state, param, _ = found
    if not _NAME.match(new_name) or new_name == "network":
        raise RenameRefused(f"'{new_name}' is not a name: use letters, digits and _")
    taken = {p.name for p in state.node.params} | {
        x.id for stmt in statements(state.node.body)
        for e in [stmt.arg, *(s.value for s in stmt.settings)] for x in names(e)}
    if new_name in taken - {param.name}:
        raise RenameRefused(f"'{new_name}' is already used in network '{state.node.name}'")
    spans = [param.name_span, *state.parameters.uses.get(param.name, ())]
    return types.WorkspaceEdit(changes={uri: [types.TextEdit(range=pos.range(s), new_text=new_name)
                                              for s in spans]})


def _parameter(snap: Snapshot, pos: Positions, at: types.Position):
    offset = pos.offset(at)
    state = snap.network_at(offset)
    if state is None:
        return None
    found = state.parameters.at(offset)
    return (state, *found) if found is not None else None
