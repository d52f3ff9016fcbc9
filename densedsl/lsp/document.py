"""One editor buffer, analysed: what the language server knows about a text.

`analyze_text` runs the same stages as `densedsl check` (parse, resolve, analyze) and keeps
what each produced, so the editor features have the AST even when resolving failed and the
figures whenever the analysis succeeded. Nothing here imports pygls or torch: the features and
the server sit on top.

Two things differ from `check`, both because an editor shows a text while it is being typed:
- a syntax error does not hide the rest of the file: the broken lines are blanked and the text
  resolved again, and the errors that belong to one line (an unknown setting, a wrong value)
  are reported from that second pass;
- analyses are cached by the resolved `Network` (which compares without spans), so an edit that
  does not change the network (a comment, blank lines, a renamed parameter) costs a parse and a
  resolve, not a new graph. Spans in a cached result are moved to the current text.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..analysis.figures import Analysis, StageFigures, analyze
from ..core import diagnostics as d
from ..core.source import Source, Span
from ..language import ast
from ..language.network import Network
from ..language.resolve import resolve
from ..language.syntax import parse_source

# A spec is a few hundred bytes (DenseNet-264: 1.1 KB); parsing is linear but not free, so a
# buffer far past any spec is refused with a diagnostic instead of parsed on every keystroke.
MAX_DOCUMENT_CHARS = 64 * 1024

# Codes whose diagnostic concerns one line only: safe to report from the second pass that runs
# with the syntax errors' lines blanked (a missing statement or a shape error there would only
# be the blanked line's absence, a cascade).
_LINE_LOCAL = frozenset({
    d.UNKNOWN_STATEMENT, d.UNKNOWN_SETTING, d.DUPLICATE_SETTING, d.WRONG_TYPE, d.OUT_OF_RANGE,
    d.NOT_INTEGER, d.UNKNOWN_NAME, d.DIVISION_BY_ZERO, d.BAD_CALL, d.UNEXPECTED_ARGUMENT,
    d.CONFLICT,
})


@dataclass(frozen=True, slots=True)
class OpFigures:
    """One op of the stem, from the graph: what a hover on `conv 64 kernel=7` shows."""

    span: Span | None
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    flops: int


@dataclass(frozen=True, slots=True)
class NetworkState:
    """One network of the buffer: its AST, and what resolving and analysing it gave."""

    node: ast.NetworkDef
    network: Network | None = None
    analysis: Analysis | None = None
    stages: tuple[StageFigures, ...] = ()   # spans of the current text
    ops: tuple[OpFigures, ...] = ()         # stem ops, spans of the current text

    def stages_at(self, span: Span | None) -> list[StageFigures]:
        """The stages a statement produced: one, or one per repetition inside `repeat`."""
        if span is None:
            return []
        return [s for s in self.stages if s.span is not None and _key(s.span) == _key(span)]

    def op_at(self, span: Span | None) -> OpFigures | None:
        for op in self.ops:
            if span is not None and op.span is not None and _key(op.span) == _key(span):
                return op
        return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything known about one version of a buffer."""

    source: Source
    file: ast.SpecFile | None = None               # None when the text does not parse
    networks: tuple[NetworkState, ...] = ()
    diagnostics: tuple[d.Diagnostic, ...] = ()
    refused: bool = False                          # too large to analyse

    def network_at(self, offset: int) -> NetworkState | None:
        for state in self.networks:
            span = state.node.span
            if span is not None and span.start <= offset <= span.end:
                return state
        return None


# Errors that `analyze` finds only after every figure is known (a failed `expect`, a resource
# limit): the figures still describe the network, and the editor shows them beside the error.
_AFTER_FIGURES = frozenset({d.TOO_MANY_PARAMS, d.TOO_MUCH_MEMORY, d.EXPECTATION})


@dataclass(frozen=True, slots=True)
class Analysed:
    """What analysing a network gave: its figures (None when it has none) and its diagnostics."""

    figures: Analysis | None
    diagnostics: tuple[d.Diagnostic, ...]


@dataclass
class AnalysisCache:
    """The last few analyses, keyed by the resolved network (equality ignores spans)."""

    size: int = 8
    entries: OrderedDict = field(default_factory=OrderedDict)

    def analyze(self, network: Network) -> tuple[Network, Analysed]:
        """(the network the result was computed for, what analysing it gave)."""
        hit = self.entries.get(network)
        if hit is not None:
            self.entries.move_to_end(network)
            return hit
        self.entries[network] = (network, _analyse(network))
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return self.entries[network]


def _analyse(network: Network) -> Analysed:
    try:
        a = analyze(network)
        return Analysed(a, a.diagnostics)
    except d.SpecError as e:
        found = e.diagnostics
    if not all(x.code in _AFTER_FIGURES for x in found if x.severity == "error"):
        return Analysed(None, found)
    # while an `expect` line lags behind an edit, hovers still show the new figures: the same
    # network again without its expectations and limits (a second analysis, only in this case)
    try:
        figures = analyze(dataclasses.replace(network, expectations=()), max_params=math.inf,
                          max_memory=math.inf)
    except d.SpecError:
        figures = None
    return Analysed(figures, found)


def analyze_text(text: str, name: str, cache: AnalysisCache | None = None) -> Snapshot:
    """Parse, resolve and analyse every network of `text`; never raises SpecError."""
    source = Source.from_text(text, name)
    if len(text) > MAX_DOCUMENT_CHARS:
        return Snapshot(source, refused=True, diagnostics=(d.Diagnostic(
            d.TOO_COMPLEX, f"the document has {len(text):,} characters, more than the "
            f"{MAX_DOCUMENT_CHARS:,} the language server analyses", source.span(0, 0),
            "a spec is a short text (DenseNet-264 takes 1.1 KB); split the file, or run "
            "`densedsl check` on it"),))
    cache = cache if cache is not None else AnalysisCache()
    try:
        file = parse_source(source)
    except d.SpecError as e:
        return Snapshot(source, diagnostics=tuple(d.sort_diagnostics(
            [*e.diagnostics, *_after_syntax_errors(source, e.diagnostics)])))
    diagnostics: list[d.Diagnostic] = []
    states = []
    for node in file.networks:
        state, diags = _network_state(file, node, source, cache)
        states.append(state)
        diagnostics.extend(diags)
    if not file.networks:
        try:
            resolve(file, None, {}, source)  # the "file holds no network" diagnostic
        except d.SpecError as e:
            diagnostics.extend(e.diagnostics)
    return Snapshot(source, file, tuple(states), tuple(d.sort_diagnostics(diagnostics)))


def parse_text(text: str, name: str) -> Snapshot:
    """Only the parse (no resolve, no graph): what completion needs, in milliseconds, so it
    never waits behind the analysis of a large network."""
    source = Source.from_text(text, name)
    if len(text) > MAX_DOCUMENT_CHARS:
        return Snapshot(source, refused=True)
    try:
        file = parse_source(source)
    except d.SpecError:
        return Snapshot(source)
    return Snapshot(source, file, tuple(NetworkState(node) for node in file.networks))


def _network_state(file: ast.SpecFile, node: ast.NetworkDef, source: Source,
                   cache: AnalysisCache) -> tuple[NetworkState, list[d.Diagnostic]]:
    try:
        network = resolve(file, node.name, {}, source)
    except d.SpecError as e:
        return NetworkState(node), list(e.diagnostics)
    analysed_for, result = cache.analyze(network)
    moved = _span_map(analysed_for, network)
    diagnostics = [_move_diagnostic(x, moved) for x in result.diagnostics]
    a = result.figures
    if a is None:
        return NetworkState(node, network), diagnostics
    stages = tuple(dataclasses.replace(s, span=moved(s.span)) for s in a.stages)
    ops = tuple(OpFigures(moved(attrs["span"]), attrs["kind"], attrs["in_shape"], attrs["out_shape"],
                          attrs["params"], attrs["flops"])
                for n, attrs in a.arch.nodes(data=True) if attrs["stage"] == "stem" and n != "input")
    return NetworkState(node, network, a, stages, ops), diagnostics


def _after_syntax_errors(source: Source, errors: tuple[d.Diagnostic, ...]) -> list[d.Diagnostic]:
    """Line-local errors of the rest of the file, found with the broken lines blanked out."""
    broken = {x.line for x in errors if x.line is not None}
    if not broken or any(x.code == d.UNEXPECTED_EOF for x in errors):
        return []
    lines = source.text.split("\n")
    for line in broken:
        if 1 <= line <= len(lines):
            lines[line - 1] = " " * len(lines[line - 1])  # same length: every span stays put
    blanked = Source.from_text("\n".join(lines), source.name)
    try:
        file = parse_source(blanked)
    except d.SpecError:
        return []  # the broken line held a brace: the rest cannot be told apart reliably
    found = []
    for node in file.networks:
        try:
            resolve(file, node.name, {}, blanked)
        except d.SpecError as e:
            found.extend(x for x in e.diagnostics if x.code in _LINE_LOCAL and x.line not in broken)
    # re-anchor on the real text, so excerpts show what the user wrote
    return [_move_diagnostic(x, lambda s: source.span(s.start, s.end) if s is not None else None)
            for x in found]


# --- spans of a cached result, moved to the current text ------------------------------------------

def _key(span: Span) -> tuple[int, int]:
    return span.start, span.end


def _span_map(old: Network, new: Network):
    """A function from spans of `old` to the matching spans of `new` (two equal networks)."""
    if old is new:
        return lambda span: span
    pairs: dict[tuple[int, int], Span] = {}
    for a, b in _paired_spans(old, new):
        pairs.setdefault(_key(a), b)
    return lambda span: pairs.get(_key(span), span) if span is not None else None


def _paired_spans(a: Any, b: Any) -> Iterator[tuple[Span, Span]]:
    if isinstance(a, Span) and isinstance(b, Span):
        yield a, b
    elif dataclasses.is_dataclass(a) and not isinstance(a, type) and type(a) is type(b):
        for f in dataclasses.fields(a):
            yield from _paired_spans(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, tuple) and isinstance(b, tuple):
        for x, y in zip(a, b):
            yield from _paired_spans(x, y)


def _move_diagnostic(x: d.Diagnostic, moved) -> d.Diagnostic:
    if x.span is None:
        return x
    return dataclasses.replace(x, span=moved(x.span), file=x.file,
                               notes=tuple((moved(s), text) for s, text in x.notes))


# --- what lies at an offset ---------------------------------------------------------------------

def statements(body: tuple[ast.Statement, ...] | None) -> Iterator[ast.Statement]:
    """Every statement of a body, nested ones (inside stem, repeat and for) included."""
    for stmt in body or ():
        yield stmt
        yield from statements(stmt.body)
        yield from statements(stmt.between)


def innermost_statement(node: ast.NetworkDef, offset: int) -> ast.Statement | None:
    """The deepest statement whose line(s) hold `offset`."""
    found = None
    body = node.body
    while body:
        for stmt in body:
            if stmt.span is not None and stmt.span.start <= offset <= stmt.span.end:
                found, body = stmt, (stmt.body or ()) + (stmt.between or ())
                break
        else:
            break
    return found


def names(e: ast.Expr | ast.ShapeLit | None) -> Iterator[ast.Name]:
    """Every `Name` in an expression."""
    if isinstance(e, ast.Name):
        yield e
    for child in (getattr(e, "left", None), getattr(e, "right", None), getattr(e, "operand", None)):
        if child is not None:
            yield from names(child)
    for arg in (*getattr(e, "args", ()), *getattr(e, "items", ()), *getattr(e, "dims", ()),
                getattr(e, "target", None), getattr(e, "index", None)):
        if arg is not None:
            yield from names(arg)


def parameter_uses(node: ast.NetworkDef, name: str) -> list[Span]:
    """Every place an expression of the network reads parameter `name`."""
    uses = []
    for p in node.params:
        uses.extend(x.span for x in names(p.default) if x.id == name and x.span is not None)
    for stmt in statements(node.body):
        exprs = [stmt.arg] + [s.value for s in stmt.settings]
        for e in exprs:
            uses.extend(x.span for x in names(e) if x.id == name and x.span is not None)
    return uses


def parameter_at(node: ast.NetworkDef, offset: int) -> tuple[ast.Param, Span] | None:
    """The declared parameter whose declaration or use lies at `offset`, with that span."""
    declared = {p.name: p for p in node.params}
    for p in node.params:
        if p.name_span is not None and p.name_span.start <= offset <= p.name_span.end:
            return p, p.name_span
    for name, p in declared.items():
        for span in parameter_uses(node, name):
            if span.start <= offset <= span.end:
                return p, span
    return None
