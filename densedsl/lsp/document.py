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

import bisect
import dataclasses
import difflib
import math
import re
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
    """One network of the buffer: its AST, and what resolving and analysing it gave.

    `stale`: the figures are those of `origin`, the same network in an earlier text of the buffer
    (this one has errors), moved to the statements of this text that match its; see `_borrow`.
    `partial`: they are this text's without its settings in error; see `_without_bad_settings`."""

    node: ast.NetworkDef
    network: Network | None = None
    analysis: Analysis | None = None
    stages: tuple[StageFigures, ...] = ()   # spans of the current text
    ops: tuple[OpFigures, ...] = ()         # stem ops, spans of the current text
    stale: bool = False
    partial: bool = False   # figures of this text without the settings in error
    origin: NetworkState | None = field(default=None, compare=False, repr=False)  # when stale
    # indexes built once per state (on the analysis thread), so that a hover or a jump is a
    # lookup: walking every parameter's uses per request cost 25 s with 3,000 parameters
    parameters: ParameterIndex = field(init=False, compare=False, repr=False)
    _stages_by_span: dict = field(init=False, compare=False, repr=False)
    _ops_by_span: dict = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parameters", ParameterIndex.of(self.node))
        by_span: dict[tuple[int, int], list[StageFigures]] = {}
        for s in self.stages:
            if s.span is not None:
                by_span.setdefault(_key(s.span), []).append(s)
        object.__setattr__(self, "_stages_by_span", by_span)
        ops: dict[tuple[int, int], OpFigures] = {}
        for op in self.ops:
            if op.span is not None:
                ops.setdefault(_key(op.span), op)
        object.__setattr__(self, "_ops_by_span", ops)

    def stages_at(self, span: Span | None) -> list[StageFigures]:
        """The stages a statement produced: one, or one per repetition inside `repeat`."""
        if span is None:
            return []
        return list(self._stages_by_span.get(_key(span), ()))

    def op_at(self, span: Span | None) -> OpFigures | None:
        return self._ops_by_span.get(_key(span)) if span is not None else None


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


# What one cached analysis costs, per element (node or edge) of its graph: measured with
# tracemalloc on single-block networks of 300 to 1,300 layers (243-277 bytes; 200 MiB for the
# largest), rounded up. The edges dominate: a block of L layers has about L²/2.
BYTES_PER_GRAPH_ELEMENT = 300
# The cache's budget: room for dozens of ImageNet-sized networks (DenseNet-264: 1.5 MiB) but
# about one network at the graph limits (E304: 10^6 connections, ~300 MiB). The newest entry is
# kept whatever its size (the open document's snapshot holds it anyway).
MAX_CACHE_BYTES = 256 * 2**20


def estimated_bytes(result: Analysed) -> int:
    """What keeping `result` costs, estimated from its graph's size (0 without figures)."""
    a = result.figures
    if a is None:
        return 1024
    edges = sum(len(succ) for succ in a.arch.succ.values())
    return BYTES_PER_GRAPH_ELEMENT * (len(a.arch) + edges + len(a.lowered))


@dataclass
class AnalysisCache:
    """The last few analyses, keyed by the resolved network (equality ignores spans): at most
    `size` of them and, but for the newest, at most `max_bytes` by `estimated_bytes`."""

    size: int = 8
    max_bytes: int = MAX_CACHE_BYTES
    entries: OrderedDict = field(default_factory=OrderedDict)
    weights: dict = field(default_factory=dict)

    def analyze(self, network: Network) -> tuple[Network, Analysed]:
        """(the network the result was computed for, what analysing it gave)."""
        hit = self.entries.get(network)
        if hit is not None:
            self.entries.move_to_end(network)
            return hit
        result = _analyse(network)
        self.entries[network] = (network, result)
        self.weights[network] = estimated_bytes(result)
        while len(self.entries) > 1 and (len(self.entries) > self.size or self.bytes > self.max_bytes):
            oldest, _ = self.entries.popitem(last=False)
            del self.weights[oldest]
        return self.entries[network]

    @property
    def bytes(self) -> int:
        return sum(self.weights.values())


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


def analyze_text(text: str, name: str, cache: AnalysisCache | None = None,
                 previous: Snapshot | None = None) -> Snapshot:
    """Parse, resolve and analyse every network of `text`; never raises SpecError.

    A network that has no figures now (an error anywhere in it, or a syntax error anywhere in
    the file) keeps those of `previous`, the snapshot of the buffer's earlier text, on the
    statements that did not change: one misspelt setting must not blank every hover and hint."""
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
        found, blanked = _after_syntax_errors(source, e.diagnostics)
        # the networks of the text with its broken lines blanked: their statements still take
        # figures from `previous` (but `file` stays None: nothing formats a broken text)
        borrowed = tuple(_borrow(NetworkState(node), previous)
                         for node in blanked.networks) if blanked else ()
        return Snapshot(source, networks=borrowed, diagnostics=tuple(d.sort_diagnostics(
            [*e.diagnostics, *found])))
    diagnostics: list[d.Diagnostic] = []
    states: list[NetworkState] = []
    for node in file.networks:
        state, diags = _network_state(file, node, source, cache)
        states.append(_borrow(state, previous))
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
        return _without_bad_settings(node, source, e.diagnostics, cache) or NetworkState(node), \
            list(e.diagnostics)
    analysed_for, result = cache.analyze(network)
    moved = _span_map(analysed_for, network)
    diagnostics = [_move_diagnostic(x, moved) for x in result.diagnostics]
    if result.figures is None:
        return NetworkState(node, network), diagnostics
    stages, ops = _figures(result.figures, moved)
    return NetworkState(node, network, result.figures, stages, ops), diagnostics


def _figures(a: Analysis, moved) -> tuple[tuple[StageFigures, ...], tuple[OpFigures, ...]]:
    """The stages and stem ops of an analysis, their spans passed through `moved`."""
    stages = tuple(dataclasses.replace(s, span=moved(s.span)) for s in a.stages)
    ops = tuple(OpFigures(moved(attrs["span"]), attrs["kind"], attrs["in_shape"], attrs["out_shape"],
                          attrs["params"], attrs["flops"])
                for n, attrs in a.arch.nodes(data=True) if attrs["stage"] == "stem" and n != "input")
    return stages, ops


def _without_bad_settings(node: ast.NetworkDef, source: Source, errors: tuple[d.Diagnostic, ...],
                          cache: AnalysisCache) -> NetworkState | None:
    """When every error of the network lies inside one setting of a statement (a misspelt name,
    a wrong value), the network with those settings blanked out, analysed: its figures go on the
    statements that are unchanged (the ones in error show none). None when that does not
    resolve and analyse either."""
    settings = [x.span for stmt in statements(node.body) for x in stmt.settings if x.span is not None]
    bad = []
    for x in errors:
        if x.severity != "error":
            continue
        if x.code not in _LINE_LOCAL or x.span is None:
            return None
        inside = [s for s in settings if s.start <= x.span.start and x.span.end <= s.end]
        if not inside:
            return None
        bad.append(inside[0])
    text = source.text
    for span in bad:  # same length: every other span stays put
        text = text[:span.start] + re.sub(r"[^\n]", " ", text[span.start:span.end]) + text[span.end:]
    blanked = Source.from_text(text, source.name)
    try:
        file = parse_source(blanked)
        network = resolve(file, node.name, {}, blanked)
    except d.SpecError:
        return None
    analysed_for, result = cache.analyze(network)
    if result.figures is None:
        return None
    moved = _span_map(analysed_for, network)
    [blanked_node] = [x for x in file.networks if x.name == node.name]
    pairs = _statement_pairs(blanked_node, node)
    stages, ops = _figures(result.figures, lambda span: pairs.get(_key(moved(span))) if span else None)
    return NetworkState(node, network, result.figures, tuple(x for x in stages if x.span is not None),
                        tuple(x for x in ops if x.span is not None), partial=True)


def _after_syntax_errors(source: Source, errors: tuple[d.Diagnostic, ...]
                         ) -> tuple[list[d.Diagnostic], ast.SpecFile | None]:
    """Line-local errors of the rest of the file, found with the broken lines blanked out, and
    the file so blanked (None when it does not parse either)."""
    broken = {x.line for x in errors if x.line is not None}
    if not broken or any(x.code == d.UNEXPECTED_EOF for x in errors):
        return [], None
    lines = source.text.split("\n")
    for line in broken:
        if 1 <= line <= len(lines):
            lines[line - 1] = " " * len(lines[line - 1])  # same length: every span stays put
    blanked = Source.from_text("\n".join(lines), source.name)
    try:
        file = parse_source(blanked)
    except d.SpecError:
        return [], None  # the broken line held a brace: the rest cannot be told apart reliably
    found: list[d.Diagnostic] = []
    for node in file.networks:
        try:
            resolve(file, node.name, {}, blanked)
        except d.SpecError as e:
            found.extend(x for x in e.diagnostics if x.code in _LINE_LOCAL and x.line not in broken)
    # re-anchor on the real text, so excerpts show what the user wrote
    return [_move_diagnostic(x, lambda s: source.span(s.start, s.end) if s is not None else None)
            for x in found], file


# --- figures of an earlier text, for a network that has none now ------------------------------

def _borrow(state: NetworkState, previous: Snapshot | None) -> NetworkState:
    """`state`, or when it has no figures, those of the same network in `previous` (by name) on
    the statements that match: same nesting, keyword and line text (so an edited line, where
    the error usually is, shows none), paired in order by difflib."""
    if state.analysis is not None or previous is None:
        return state
    old = next((x.origin or x for x in previous.networks
                if x.node.name == state.node.name and x.analysis is not None), None)
    if old is None:
        return state
    pairs = _statement_pairs(old.node, state.node)
    stages = tuple(dataclasses.replace(s, span=pairs[_key(s.span)]) for s in old.stages
                   if s.span is not None and _key(s.span) in pairs)
    ops = tuple(dataclasses.replace(op, span=pairs[_key(op.span)]) for op in old.ops
                if op.span is not None and _key(op.span) in pairs)
    return NetworkState(state.node, old.network, old.analysis, stages, ops, stale=True, origin=old)


def _statement_pairs(old: ast.NetworkDef, new: ast.NetworkDef) -> dict[tuple[int, int], Span]:
    """The span of each statement of `old` that reappears unchanged in `new` -> its new span."""
    a, b = _outline(old.body), _outline(new.body)
    # an edit changes one stretch: pair the common head and tail directly, and leave difflib
    # (quadratic at worst) only the stretch between
    head = 0
    while head < min(len(a), len(b)) and a[head][0] == b[head][0]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail][0] == b[-1 - tail][0]:
        tail += 1
    pairs = {_key(x[1]): y[1] for x, y in zip(a[:head], b[:head])}
    pairs.update({_key(x[1]): y[1] for x, y in zip(a[len(a) - tail:], b[len(b) - tail:])})
    mid_a, mid_b = a[head:len(a) - tail], b[head:len(b) - tail]
    matcher = difflib.SequenceMatcher(None, [k for k, _ in mid_a], [k for k, _ in mid_b], autojunk=False)
    for block in matcher.get_matching_blocks():
        for i in range(block.size):
            pairs[_key(mid_a[block.a + i][1])] = mid_b[block.b + i][1]
    return pairs


def _outline(body: tuple[ast.Statement, ...] | None, depth: int = 0) -> list[tuple[tuple, Span]]:
    """Each statement with a span, in order, keyed by depth, keyword and its first line's text."""
    found = []
    for stmt in body or ():
        if stmt.span is not None:
            line = stmt.span.source.line_text(stmt.span.line).strip()
            found.append(((depth, stmt.keyword, line), stmt.span))
        found.extend(_outline(stmt.body, depth + 1))
        found.extend(_outline(stmt.between, depth + 1))
    return found


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


def names(e: ast.Expr | ast.ShapeLit | ast.Dims | None) -> Iterator[ast.Name]:
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


def _parameter_reads(node: ast.NetworkDef) -> Iterator[ast.Name]:
    """Every name an expression of the network reads: parameter defaults, statement arguments
    and setting values."""
    for p in node.params:
        yield from names(p.default)
    for stmt in statements(node.body):
        for e in [stmt.arg] + [s.value for s in stmt.settings]:
            yield from names(e)


@dataclass(frozen=True, slots=True)
class ParameterIndex:
    """Where each declared parameter of a network is declared and read, from one walk of it."""

    uses: dict[str, tuple[Span, ...]]     # a declared name -> the spans that read it, in order
    starts: tuple[int, ...]               # sorted: where each declaration or use starts
    spots: tuple[tuple[Span, ast.Param, bool], ...]   # (span, parameter, is declaration), by start

    @classmethod
    def of(cls, node: ast.NetworkDef) -> ParameterIndex:
        declared = {p.name: p for p in node.params}
        uses: dict[str, list[Span]] = {}
        for x in _parameter_reads(node):
            if x.id in declared and x.span is not None:
                uses.setdefault(x.id, []).append(x.span)
        spots = [(p.name_span, p, True) for p in node.params if p.name_span is not None]
        spots += [(span, declared[name], False) for name, spans in uses.items() for span in spans]
        spots.sort(key=lambda spot: (spot[0].start, not spot[2]))
        return cls({k: tuple(v) for k, v in uses.items()}, tuple(x[0].start for x in spots),
                   tuple(spots))

    def at(self, offset: int) -> tuple[ast.Param, Span] | None:
        """The declaration or use at `offset` (ends inclusive, so the cursor just after a name
        finds it); a declaration wins over a use that touches it."""
        i = bisect.bisect_right(self.starts, offset)
        # names never overlap, so only the last one starting at or before `offset` and the one
        # before it (when the two touch) can hold it
        found = [self.spots[j] for j in (i - 2, i - 1) if j >= 0 and self.spots[j][0].end >= offset]
        found.sort(key=lambda spot: not spot[2])
        return (found[0][1], found[0][0]) if found else None


def parameter_uses(node: ast.NetworkDef, name: str) -> list[Span]:
    """Every place an expression of the network reads parameter `name`."""
    return list(ParameterIndex.of(node).uses.get(name, ()))


def parameter_at(node: ast.NetworkDef, offset: int) -> tuple[ast.Param, Span] | None:
    """The declared parameter whose declaration or use lies at `offset`, with that span."""
    return ParameterIndex.of(node).at(offset)
