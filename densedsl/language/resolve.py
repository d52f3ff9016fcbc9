"""AST → `Network`: choose the network, bind parameters, apply defaults, evaluate arithmetic,
unroll `repeat`, and check every value. Every independent problem becomes a diagnostic; the
stage raises one SpecError holding all of them.

Arithmetic is exact (`fractions.Fraction`): `(depth-4)/6` with depth=101 is 97/6, which is an
error where an integer is required, never a silent floor.
"""

from __future__ import annotations

import decimal
import difflib
import math
import numbers
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping

from ..core import diagnostics as d
from ..core.source import Source, Span
from ..core.units import axes_text
from . import ast
from . import network as n
from .fmt import format_expr

Value = Fraction | bool | str | tuple  # a number, a yes/no, a keyword such as `post`, or a list
# A list holds at most this many elements (a literal's elements count against syntax.MAX_OPERATORS,
# the same figure; a list from Python or --set against this): DenseNet-264 has 4 blocks.
MAX_LIST = 200
_INT_MAX = 2**31 - 1            # torch's sizes are int32-safe below this
# What one network, and one file's networks together, may unroll to: far above any real network
# (DenseNet-264: 7 stages, 130 dense layers), and small enough that analysing it all takes
# seconds (~0.5 ms a layer) rather than the minutes 256 networks of 1,000 stages would.
_MAX_STAGES = 1_000             # after unrolling `repeat`
_MAX_LAYERS = 4_000             # dense layers, summed over a network's blocks
_FILE_MAX_STAGES = 2_000
_FILE_MAX_LAYERS = 8_000
_MAX_FIGURE = 10**18            # an `expect` figure: counts, and DenseNet-264 has ~10**10 FLOPs
_MAX_SUGGESTIONS = 100          # did-you-mean searches among parameters, per network
# Elements `for` loops may visit in one network, nested ones included: nested loops over lists of
# 200 with empty bodies make no stage (so the stage cap never trips) yet would run 200**depth steps
_MAX_LOOP_STEPS = 10_000

_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
_FUNCTIONS: dict[str, tuple[int, int, Callable[..., Fraction]]] = {
    # name: (min args, max args, implementation) — exact on Fractions
    "floor": (1, 1, lambda x: Fraction(math.floor(x))),
    "ceil": (1, 1, lambda x: Fraction(math.ceil(x))),
    "round": (1, 1, lambda x: Fraction(round(x))),
    "int": (1, 1, lambda x: Fraction(int(x))),  # truncates toward zero, as Python and Keras code do
    "abs": (1, 1, abs),
    "min": (1, 64, lambda *xs: min(xs)),  # min(x) of one argument is x, not min() of an iterable
    "max": (1, 64, lambda *xs: max(xs)),
    # on a list (`len(blocks)`, `sum(blocks)`, `max(rates)`): see _Resolver.call
    "len": (1, 1, lambda xs: Fraction(len(xs))),
    "sum": (1, 1, lambda xs: sum(xs, Fraction(0))),
}
_LIST_FUNCTIONS = ("len", "sum")

STATEMENTS = ("input", "defaults", "stem", "dense", "transition", "repeat", "head", "expect")
STAGE_STATEMENTS = ("dense", "transition", "repeat", "for")  # what repeat and for bodies hold
STEM_OPS = ("conv", "norm", "relu", "maxpool", "avgpool", "dropout", "linear")
DENSE_SETTINGS = ("layers", "growth", "bottleneck", "dropout", "bias", "order", "activation", "kernel", "groups",
                  "kind", "norm", "norm_groups")
ACTIVATIONS = typing.get_args(n.ActivationFn)
LAYER_KINDS = typing.get_args(n.LayerKind)
NORMS = typing.get_args(n.NormKind)
TASKS = typing.get_args(n.Task)
TRANSITION_SETTINGS = ("compression", "channels", "bias", "dropout", "pool", "kernel", "stride", "padding")
HEAD_SETTINGS = ("classes", "norm", "pool", "kernel", "stride", "dropout", "hidden", "activation", "task")
DEFAULT_SETTINGS = ("growth", "layers", "bottleneck", "compression", "bias", "dropout", "order", "activation",
                    "norm", "norm_groups")
EXPECT_KEYS = ("params", "buffers", "macs", "flops", "channels", "connections", "depth")
_STEM_SETTINGS = {
    "conv": ("kernel", "stride", "padding", "bias"),
    "maxpool": ("kernel", "stride", "padding"),
    "avgpool": ("kernel", "stride", "padding"),
    "dropout": ("rate",),
    "norm": (),
    "relu": (),
    "linear": ("bias",),
}
_OWNER = {  # which statement a setting belongs to, for "'compression' is a transition setting"
    **{s: "dense" for s in DENSE_SETTINGS},
    **{s: "transition" for s in ("compression", "channels")},
    "classes": "head",
}


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    more = f", … ({len(names) - limit:,} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _did_you_mean(word: str, known: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean '{match[0]}'?" if match else None


def resolve(file: ast.SpecFile, network: str | None, params: Mapping[str, Any] | None = None,
            source: Source | None = None) -> n.Network:
    """Resolve one network of `file` (the only one when `network` is None)."""
    params = dict(params or {})
    chosen = _choose(file, network, source)
    return _Resolver(chosen, params, source, _Budget(_MAX_STAGES, _MAX_LAYERS)).run()


def resolve_all(file: ast.SpecFile, params: Mapping[str, Any] | None = None,
                source: Source | None = None) -> list[n.Network]:
    """Resolve every network of `file`; diagnostics from all of them are raised together."""
    _check_file(file, source)
    networks, diags = [], []
    budget = _Budget(_FILE_MAX_STAGES, _FILE_MAX_LAYERS)  # shared: the file's networks together
    for net in file.networks:
        try:
            networks.append(_Resolver(net, dict(params or {}), source, budget).run())
        except d.SpecError as e:
            diags.extend(e.diagnostics)
        if budget.exhausted:
            break
    d.raise_if_errors(diags)
    return networks


def _check_file(file: ast.SpecFile, source: Source | None) -> None:
    name = source.name if source is not None else "<string>"
    if not file.networks:
        raise d.SpecError([d.Diagnostic(d.EMPTY, "the file holds no network", None,
                                        "a spec starts with: network NAME { input 3x32x32 ... }",
                                        file=name)])
    seen: dict[str, ast.NetworkDef] = {}
    diags = []
    for net in file.networks:
        if net.name in seen:
            diags.append(d.Diagnostic(d.DUPLICATE_DEFINITION, f"network '{net.name}' is defined twice",
                                      net.name_span, "rename one of them",
                                      ((seen[net.name].name_span, "first defined here"),)))
        seen.setdefault(net.name, net)
    d.raise_if_errors(diags)


def _choose(file: ast.SpecFile, network: str | None, source: Source | None) -> ast.NetworkDef:
    _check_file(file, source)
    names = [net.name for net in file.networks]
    name = source.name if source is not None else "<string>"
    if network is None:
        if len(names) == 1:
            return file.networks[0]
        raise d.SpecError([d.Diagnostic(
            d.UNKNOWN_NETWORK, f"the file holds {len(names)} networks ({', '.join(names)}) and none was chosen",
            None, f"choose one with --network (Python: network=...), e.g. --network {names[0]}", file=name)])
    for net in file.networks:
        if net.name == network:
            return net
    hint = _did_you_mean(network, names) or f"the file holds: {', '.join(names)}"
    raise d.SpecError([d.Diagnostic(d.UNKNOWN_NETWORK, f"no network named '{network}' in the file",
                                    None, hint, file=name)])


@dataclass(frozen=True, slots=True)
class _Bound:
    """A setting's expression and the span to blame for it (the defaults line, if inherited)."""

    expr: ast.Expr
    span: Span | None
    name: str


@dataclass(slots=True)
class _Budget:
    """Stages and dense layers still allowed; resolve_all shares one among a file's networks."""

    stages: int
    layers: int
    exhausted: bool = False  # a file-level limit was reported: the later networks are not resolved


class _Invalid(Exception):
    """An expression that already produced a diagnostic; the caller skips the value."""


class _Resolver:
    def __init__(self, net: ast.NetworkDef, overrides: dict[str, Any], source: Source | None,
                 budget: _Budget | None = None):
        self.net = net
        self.budget = budget or _Budget(_MAX_STAGES, _MAX_LAYERS)
        self.overrides = overrides
        self.source = source
        self.diags: list[d.Diagnostic] = []
        self.env: dict[str, Value] = {}
        self.defaults: dict[str, ast.Setting] = {}
        self.overridden = False
        self.failed: set[str] = set()  # parameters whose value was refused (already reported)
        self._suggested: dict[tuple, str | None] = {}
        self._reported: set[tuple] = set()
        self._loop_steps = 0
        self._unroll_failed = False  # a loop went past a cap: stop unrolling, report it once
        self.input_shape: n.Shape | None = None  # (F,) makes dense blocks linear by default

    # --- diagnostics ------------------------------------------------------------------------

    def error(self, code: d.Code, message: str, span: Span | None, hint: str | None = None,
              notes: tuple = ()) -> None:
        # a `for` body is resolved once per element: its mistakes are reported once
        key = (code, message, None if span is None else (span.start, span.end))
        if key in self._reported:
            return
        self._reported.add(key)
        self.diags.append(d.Diagnostic(code, message, span, hint, notes,
                                       file=None if span else (self.source.name if self.source else None)))

    def suggest(self, word: str, known: Iterable[str]) -> str | None:
        """A did-you-mean among a network's own names, which may be many: difflib costs ~5 µs a
        candidate, so past the first diagnostics (the only ones printed) it is skipped, and a
        name is looked up once."""
        if len(self.diags) >= _MAX_SUGGESTIONS:
            return None
        key = (word, id(known), len(known))
        if key not in self._suggested:
            self._suggested[key] = _did_you_mean(word, known)
        return self._suggested[key]

    # --- entry ------------------------------------------------------------------------------

    def run(self) -> n.Network:
        if not self.bind_parameters():
            raise d.SpecError(self.diags)  # later statements would only cascade from here
        body = self.net.body
        self.collect_defaults(body)
        input_shape = input_span = None
        stem: n.Stem | None = None
        stem_stmt = head_stmt = input_stmt = None
        head: n.Head | None = None
        stage_stmts: list[ast.Statement] = []
        expectations: list[n.Expectation] = []
        expect_seen: dict[str, ast.Setting] = {}
        for stmt in body:
            kw = stmt.keyword
            if kw == "defaults":
                self.no_arg(stmt)
                self.no_body(stmt)
            elif kw == "input":
                if input_stmt is not None:
                    self.duplicate(stmt, input_stmt, "input")
                    continue
                input_stmt = stmt
                input_shape, input_span = self.input(stmt)
                self.input_shape = input_shape
            elif kw == "stem":
                if stem_stmt is not None:
                    self.duplicate(stmt, stem_stmt, "stem")
                    continue
                stem_stmt = stmt
                if stage_stmts or head_stmt is not None:
                    self.error(d.MISPLACED, "the stem must come before the first dense block or transition",
                               stmt.keyword_span, "move `stem { ... }` up, after `input`")
                stem = self.stem(stmt)
            elif kw in STAGE_STATEMENTS:
                if head_stmt is not None:
                    self.error(d.MISPLACED, f"'{kw}' after the head", stmt.keyword_span,
                               "the head is the last stage; move it to the end")
                stage_stmts.append(stmt)
            elif kw == "head":
                if head_stmt is not None:
                    self.duplicate(stmt, head_stmt, "head")
                    continue
                head_stmt = stmt
            elif kw == "expect":
                expectations.extend(self.expect(stmt, expect_seen))
            else:
                self.unknown_statement(stmt, STATEMENTS)
        if input_stmt is None:
            self.error(d.MISSING, f"network '{self.net.name}' has no input shape", self.net.name_span,
                       "add a line such as `input 3x32x32` (channels x height x width)")
        stages = self.stages(stage_stmts)
        if head_stmt is not None:
            head = self.head(head_stmt)
        if d.has_errors(self.diags):
            raise d.SpecError(self.diags)
        return n.Network(name=self.net.name, input=input_shape, stem=stem or n.Stem(),
                         stages=tuple(stages), head=head, expectations=tuple(expectations),
                         parameters=tuple((k, _plain(v)) for k, v in self.env.items()),
                         span=self.net.span, input_span=input_span)

    # --- parameters -------------------------------------------------------------------------

    def bind_parameters(self) -> bool:
        """Bind every parameter; False when one has no value (its uses would all fail)."""
        declared: dict[str, ast.Param] = {}
        for p in self.net.params:
            if p.name in declared:
                self.error(d.DUPLICATE_DEFINITION, f"parameter '{p.name}' is declared twice", p.name_span,
                           "remove one of them", ((declared[p.name].name_span, "first declared here"),))
                continue
            declared[p.name] = p
        for name in self.overrides:
            if name not in declared:
                hint = self.suggest(name, declared) or (
                    f"'{self.net.name}' takes: {_listing(declared)}" if declared
                    else f"'{self.net.name}' declares no parameters; add them as network {self.net.name}(name=default)")
                self.error(d.UNKNOWN_PARAMETER, f"network '{self.net.name}' has no parameter '{name}'",
                           self.net.name_span, hint)
        ok = True
        defaults: dict[str, Value] = {}
        for name, p in declared.items():
            try:
                defaults[name] = self.eval(p.default, symbols=True)
                if name in self.overrides:
                    self.env[name] = self.override_value(name, self.overrides[name])
                else:
                    self.env[name] = self.eval(p.default, symbols=True)
            except _Invalid:
                self.failed.add(name)
                ok = False
        # `expect params=769162` describes the network as written; with other parameter values
        # only expectations that are written in terms of the parameters still apply.
        self.overridden = any(defaults.get(k) != v for k, v in self.env.items())
        return ok

    def override_value(self, name: str, raw: Any) -> Value:
        """A value passed from Python (`load(p, depth=100)`) or `--set` (a string to parse)."""
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, numbers.Rational):  # int, Fraction, numpy integers
            return self.override_fits(name, Fraction(raw.numerator, raw.denominator))
        if isinstance(raw, numbers.Real):  # float, numpy floats
            real = float(raw)
            if not math.isfinite(real):
                self.error(d.OUT_OF_RANGE, f"parameter '{name}' must be finite, got {real}", self.net.name_span)
                raise _Invalid
            return self.override_fits(name, Fraction(repr(real)))  # 0.1 means 1/10, not 0.1000000000000000055…
        if isinstance(raw, (list, tuple)):
            if len(raw) > MAX_LIST:
                self.error(d.TOO_COMPLEX, f"the list given for parameter '{name}' has {len(raw):,} elements "
                           f"(at most {MAX_LIST})", self.net.name_span)
                raise _Invalid
            if any(isinstance(x, (list, tuple)) for x in raw):
                self.error(d.WRONG_TYPE, f"parameter '{name}' is a list of lists; lists do not nest",
                           self.net.name_span, "give a flat list, e.g. blocks=[6, 12, 24, 16]")
                raise _Invalid
            return tuple(self.override_value(name, x) for x in raw)
        if isinstance(raw, str):
            from .syntax import parse_expression
            if _top_level_comma(raw):
                raw = f"[{raw}]"  # --set blocks=6,12,32,32
            try:
                expr = parse_expression(raw, f"--set {name}")
            except d.SpecError as e:
                self.diags.extend(e.diagnostics)
                raise _Invalid from None
            # names in an override are keywords (`order=post`), not references
            saved, self.env = self.env, {}
            try:
                return self.eval(expr, symbols=True)
            finally:
                self.env = saved
        self.error(d.WRONG_TYPE, f"parameter '{name}' must be a number, a bool, a keyword (str) or a list, "
                   f"not {type(raw).__name__}", self.net.name_span)
        raise _Invalid

    def override_fits(self, name: str, value: Fraction) -> Fraction:
        if ast.fits(value):
            return value
        self.error(d.TOO_COMPLEX, f"the value given for parameter '{name}' has more than {ast.MAX_DIGITS} digits",
                   self.net.name_span, "no network needs numbers this large or this precise")
        raise _Invalid

    # --- expressions ------------------------------------------------------------------------

    def eval(self, e: ast.Expr, symbols: bool = False) -> Value:
        """Evaluate; a bare name that is not a parameter is a keyword when `symbols` is true.

        Iterative (an explicit stack, operands left to right), so no input depth can exhaust
        Python's stack; every value, intermediate ones included, is checked against
        `ast.MAX_DIGITS` as soon as it exists, so chained squaring stops within a few steps.
        """
        if isinstance(e, ast.Name):
            return self.lookup(e, symbols)
        values: list[Value] = []
        # (node, operands done, a bare name here is a keyword): the elements of a list are, as
        # the value of a setting is (`orders=[pre, post]`)
        todo: list[tuple[ast.Expr, bool, bool]] = [(e, False, False)]
        while todo:
            node, operands_done, keyword = todo.pop()
            if isinstance(node, ast.Number):
                values.append(self.bounded(node.value, node))
            elif isinstance(node, ast.Name):
                values.append(self.lookup(node, symbols=keyword))
            elif not operands_done:
                if isinstance(node, ast.Call):
                    self.check_call(node)
                todo.append((node, True, keyword))
                in_list = isinstance(node, ast.ListExpr)
                todo.extend((child, False, in_list) for child in reversed(_operands(node)))
            else:
                count = len(_operands(node))
                args = values[len(values) - count:]
                del values[len(values) - count:]
                result = self.apply(node, args)
                values.append(self.bounded(result, node) if isinstance(result, Fraction) else result)
        return values[0]

    def lookup(self, e: ast.Name, symbols: bool) -> Value:
        if e.id in self.env:
            return self.env[e.id]
        if e.id in self.failed:
            raise _Invalid  # its own error says why; "unknown name" would be a cascade
        if symbols:
            return e.id
        if e.id in _BOOL_WORDS:
            self.error(d.WRONG_TYPE, f"expected a number, got {e.id}", e.span)
            raise _Invalid
        hint = self.suggest(e.id, self.env) or (
            f"parameters: {_listing(self.env)}" if self.env else
            f"declare it: network {self.net.name}({e.id}=...)")
        self.error(d.UNKNOWN_NAME, f"unknown name '{e.id}'", e.span, hint)
        raise _Invalid

    def need_number(self, v: Value, e: ast.Expr) -> Fraction:
        """An operand of arithmetic or of a function: it must be a number."""
        if isinstance(v, tuple):
            self.error(d.WRONG_TYPE, f"expected a number, got the list {_show(v)}", e.span, _LIST_HINT)
            raise _Invalid
        if isinstance(v, bool) or not isinstance(v, Fraction):
            hint = self.suggest(v, self.env) if isinstance(v, str) else None
            self.error(d.WRONG_TYPE, f"expected a number, got {_show(v)}", e.span, hint)
            raise _Invalid
        return v

    def need_list(self, v: Value, e: ast.Expr, what: str) -> tuple:
        if not isinstance(v, tuple):
            self.error(d.WRONG_TYPE, f"{what} needs a list, got {_show(v)}", e.span,
                       "lists are written [6, 12, 24, 16]; a parameter holds one as blocks=[6, 12, 24, 16]")
            raise _Invalid
        return v

    def bounded(self, v: Fraction, e: ast.Expr | None) -> Fraction:
        if ast.fits(v):
            return v
        self.error(d.TOO_COMPLEX, f"this value would have more than {ast.MAX_DIGITS} digits",
                   e.span if e is not None else self.net.name_span,
                   "no network needs numbers this large or this precise; write the value you mean")
        raise _Invalid

    def check_call(self, e: ast.Call) -> None:
        spec = _FUNCTIONS.get(e.func)
        if spec is None:
            self.error(d.BAD_CALL, f"unknown function '{e.func}'", e.func_span,
                       _did_you_mean(e.func, _FUNCTIONS) or f"functions: {', '.join(_FUNCTIONS)}")
            raise _Invalid
        lo, hi, _ = spec
        if not lo <= len(e.args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            self.error(d.BAD_CALL, f"{e.func}() takes {want} argument{'s' if hi > 1 else ''}, "
                       f"got {len(e.args)}", e.span)
            raise _Invalid

    def apply(self, e: ast.Expr, values: list[Value]) -> Value:
        if isinstance(e, ast.ListExpr):
            return self.make_list(e, values)
        if isinstance(e, ast.Index):
            return self.element(e, values[0], values[1])
        if isinstance(e, ast.Call):
            return self.call(e, values)
        args = [self.need_number(v, x) for v, x in zip(values, _operands(e))]
        if isinstance(e, ast.UnaryOp):
            return -args[0] if e.op == "-" else args[0]
        if not isinstance(e, ast.BinOp):
            raise AssertionError(f"unknown expression {e!r}")
        a, b = args
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b  # both operands fit, so the product is at most twice as long
        if b == 0:
            self.error(d.DIVISION_BY_ZERO, f"division by zero in {_source_text(e)}", e.span)
            raise _Invalid
        if e.op == "/":
            return a / b
        if e.op == "//":
            return Fraction(a // b)
        return a % b

    def make_list(self, e: ast.ListExpr, values: list[Value]) -> tuple:
        for v, x in zip(values, e.items):
            if isinstance(v, tuple):
                self.error(d.WRONG_TYPE, "lists do not nest", x.span, "write a flat list, e.g. [6, 12, 24, 16]")
                raise _Invalid
        return tuple(values)

    def element(self, e: ast.Index, target: Value, index: Value) -> Value:
        items = self.need_list(target, e.target, "indexing")
        i = self.need_number(index, e.index)
        shown = _source_text(e.target)
        if i.denominator != 1:
            self.error(d.NOT_INTEGER, f"a list index must be a whole number, got {_show(i)}", e.index.span,
                       "round explicitly with floor(...) or round(...)")
            raise _Invalid
        if not 0 <= i < len(items):
            last = f"0 to {len(items) - 1}" if items else "none: the list is empty"
            self.error(d.OUT_OF_RANGE, f"index {_show(i)} is out of range: {shown} has {len(items)} "
                       f"element{'s' if len(items) != 1 else ''} (indices {last})", e.span,
                       f"indices count from 0; the last element is {shown}[len({shown})-1]")
            raise _Invalid
        return items[int(i)]

    def call(self, e: ast.Call, values: list[Value]) -> Fraction:
        impl = _FUNCTIONS[e.func][2]
        if e.func == "len":
            return impl(self.need_list(values[0], e.args[0], "len()"))
        if e.func == "sum" or (e.func in ("min", "max") and len(values) == 1 and isinstance(values[0], tuple)):
            items = self.need_list(values[0], e.args[0], f"{e.func}()")
            numbers_ = [self.need_number(v, e.args[0]) for v in items]
            if not numbers_ and e.func != "sum":
                self.error(d.BAD_CALL, f"{e.func}() of an empty list", e.span)
                raise _Invalid
            return impl(numbers_) if e.func == "sum" else impl(*numbers_)  # max(rates): the largest
        return impl(*(self.need_number(v, x) for v, x in zip(values, e.args)))

    def number(self, e: ast.Expr) -> Fraction:
        v = self.eval(e)
        if isinstance(v, tuple):
            self.error(d.WRONG_TYPE, f"expected a number, got the list {_show(v)}", e.span, _LIST_HINT)
            raise _Invalid
        if isinstance(v, bool) or not isinstance(v, Fraction):
            self.error(d.WRONG_TYPE, f"expected a number, got {_show(v)}", e.span)
            raise _Invalid
        return v

    def derivation(self, e: ast.Expr) -> str:
        """`(depth-4)/6 = 97/6 ≈ 16.17 with depth=101`, for messages about derived values."""
        names = sorted({x.id for x in _walk(e) if isinstance(x, ast.Name) and x.id in self.env})
        v = self.eval(e)
        shown = _show(v)
        if isinstance(v, Fraction) and v.denominator != 1 and "/" in shown:
            shown += f" ≈ {float(v):.4g}"
        text = _source_text(e)
        if isinstance(e, ast.Name):
            return f"{shown} (parameter {e.id})"
        where = f" with {', '.join(f'{k}={_show(self.env[k])}' for k in names)}" if names else ""
        return shown if text == shown else f"{text} = {shown}{where}"

    # --- typed settings ---------------------------------------------------------------------

    def integer(self, b: _Bound, lo: int, hi: int = _INT_MAX, what: str | None = None) -> int:
        v = self.number(b.expr)
        what = what or b.name
        if v.denominator != 1:
            self.error(d.NOT_INTEGER, f"{what} must be a whole number, but {self.derivation(b.expr)}",
                       b.span, "change the parameters or round explicitly with floor(...) or round(...)")
            raise _Invalid
        if not lo <= v <= hi:
            if v > hi:
                self.error(d.OUT_OF_RANGE, f"{what} = {_show(v)} is absurdly large (at most {hi:,})", b.span)
            else:
                self.error(d.OUT_OF_RANGE, f"{what} must be at least {lo}, got {self.derivation(b.expr)}", b.span)
            raise _Invalid
        return int(v)

    def axes(self, b: _Bound, lo: int, hi: int = _INT_MAX, what: str | None = None) -> n.Axes:
        """A window's kernel, stride or padding: one number (the same along every axis) or one
        per spatial axis, written as a shape (`kernel=1x7`, `padding=0 x k//2`). Equal numbers
        collapse to one, so `3x3` is `3` and a square spec's network is unchanged."""
        what = what or b.name
        e = b.expr
        if not isinstance(e, (ast.ShapeLit, ast.Dims)):
            return self.integer(b, lo, hi, what)
        if isinstance(e, ast.ShapeLit):
            items = [_Bound(ast.Number(value=Fraction(x), text=str(x), span=e.span), e.span, what) for x in e.dims]
        else:
            items = [_Bound(x, x.span, what) for x in e.dims]
        values = tuple(self.integer(item, lo, hi, f"{what} along axis {i}") for i, item in enumerate(items, 1))
        spatial = len(self.input_shape) - 1 if self.input_shape is not None else None
        if spatial is not None and len(values) != spatial:
            noun = {1: "a signal (one axis)", 2: "an image (two axes)", 3: "a volume (three axes)"}.get(
                spatial, f"{spatial} axes")
            example = "x".join(["1"] + ["3"] * (spatial - 1)) if spatial > 1 else "3"
            self.error(d.WRONG_RANK, f"{what} {'x'.join(map(str, values))} has {len(values)} dimensions, and the "
                       f"input {'x'.join(map(str, self.input_shape))} is {noun}", b.span,
                       f"write one number for every axis ({b.name}={max(values)}) or one per axis "
                       f"({b.name}={example})")
            raise _Invalid
        return values[0] if len(set(values)) == 1 else values

    def real(self, b: _Bound, lo: Fraction, hi: Fraction, lo_open: bool, hi_open: bool,
             what: str | None = None) -> Fraction:
        v = self.number(b.expr)
        low_ok = v > lo if lo_open else v >= lo
        high_ok = v < hi if hi_open else v <= hi
        if not (low_ok and high_ok):
            interval = f"{'(' if lo_open else '['}{_show(lo)}, {_show(hi)}{')' if hi_open else ']'}"
            self.error(d.OUT_OF_RANGE, f"{what or b.name} must lie in {interval}, got {self.derivation(b.expr)}",
                       b.span)
            raise _Invalid
        return v

    def boolean(self, b: _Bound) -> bool:
        v = self.eval(b.expr, symbols=True)
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v in _BOOL_WORDS:
            return _BOOL_WORDS[v]
        self.error(d.WRONG_TYPE, f"{b.name} must be true or false, got {_show(v)}", b.span,
                   _did_you_mean(v, _BOOL_WORDS) if isinstance(v, str) else None)
        raise _Invalid

    def choice(self, b: _Bound, options: tuple[str, ...]) -> str:
        v = self.eval(b.expr, symbols=True)
        if isinstance(v, str) and v in options:
            return v
        hint = (_did_you_mean(v, options) if isinstance(v, str) else None) or f"choose one of: {', '.join(options)}"
        self.error(d.WRONG_TYPE, f"{b.name} must be one of {', '.join(options)}, got {_show(v)}", b.span, hint)
        raise _Invalid

    def bottleneck(self, b: _Bound) -> int | None:
        v = self.eval(b.expr, symbols=True)
        if v is False or v in ("off", "none", "false", "no"):
            return None
        if isinstance(v, str) or isinstance(v, bool):
            self.error(d.WRONG_TYPE, f"bottleneck must be a width factor (e.g. 4 for 4k channels) or off, "
                       f"got {_show(v)}", b.span)
            raise _Invalid
        return self.integer(b, 1, 1024, "bottleneck")

    # --- statements -------------------------------------------------------------------------

    def settings(self, stmt: ast.Statement, allowed: tuple[str, ...], what: str,
                 inherit: tuple[str, ...] = ()) -> dict[str, _Bound]:
        """The statement's settings (checked for unknown and duplicate names) over inherited defaults."""
        bound: dict[str, _Bound] = {}
        for name in inherit:
            if name in self.defaults:
                s = self.defaults[name]
                bound[name] = _Bound(s.value, s.value.span, name)
        seen: dict[str, ast.Setting] = {}
        for s in stmt.settings:
            if s.name not in allowed:
                hint = _did_you_mean(s.name, allowed)
                if hint is None and s.name in _OWNER:
                    hint = f"'{s.name}' is a {_OWNER[s.name]} setting; {what} takes: {', '.join(allowed) or 'none'}"
                elif hint is None:
                    hint = f"{what} takes: {', '.join(allowed)}" if allowed else f"{what} takes no settings"
                self.error(d.UNKNOWN_SETTING, f"unknown setting '{s.name}' for {what}", s.name_span, hint)
                continue
            if s.name in seen:
                self.error(d.DUPLICATE_SETTING, f"'{s.name}' is set twice", s.name_span,
                           "remove one of them", ((seen[s.name].name_span, "first set here"),))
                continue
            seen[s.name] = s
            bound[s.name] = _Bound(s.value, s.value.span, s.name)
        return bound

    def collect_defaults(self, body: tuple[ast.Statement, ...]) -> None:
        for stmt in body:
            if stmt.keyword != "defaults":
                continue
            for s in stmt.settings:
                if s.name not in DEFAULT_SETTINGS:
                    self.error(d.UNKNOWN_SETTING, f"unknown setting '{s.name}' for defaults", s.name_span,
                               _did_you_mean(s.name, DEFAULT_SETTINGS)
                               or f"defaults takes: {', '.join(DEFAULT_SETTINGS)}")
                elif s.name in self.defaults:
                    self.error(d.DUPLICATE_SETTING, f"default '{s.name}' is set twice", s.name_span,
                               "remove one of them", ((self.defaults[s.name].name_span, "first set here"),))
                else:
                    self.defaults[s.name] = s

    def unknown_statement(self, stmt: ast.Statement, known: tuple[str, ...], where: str = "a network") -> None:
        hint = _did_you_mean(stmt.keyword, known)
        if stmt.keyword in STEM_OPS and "stem" in known:
            hint = f"'{stmt.keyword}' is a stem operation; put it inside stem {{ ... }}"
        elif stmt.keyword in STATEMENTS and "stem" not in known:
            hint = f"'{stmt.keyword}' cannot appear in {where}"
        self.error(d.UNKNOWN_STATEMENT, f"unknown statement '{stmt.keyword}' in {where}", stmt.keyword_span,
                   hint or f"{where} holds: {', '.join(known)}")

    def duplicate(self, stmt: ast.Statement, first: ast.Statement, what: str) -> None:
        self.error(d.DUPLICATE_DEFINITION, f"a second '{what}' statement", stmt.keyword_span,
                   f"a network has one {what}; merge them", ((first.keyword_span, "first given here"),))

    def no_arg(self, stmt: ast.Statement, hint: str = "write settings as name=value") -> None:
        if stmt.arg is not None:
            self.error(d.UNEXPECTED_ARGUMENT, f"'{stmt.keyword}' takes no value before its settings",
                       stmt.arg.span, hint)

    def no_body(self, stmt: ast.Statement) -> None:
        if stmt.body is not None:
            self.error(d.UNEXPECTED_ARGUMENT, f"'{stmt.keyword}' takes no {{ ... }} block", stmt.keyword_span)

    def input(self, stmt: ast.Statement) -> tuple[n.Shape | None, Span | None]:
        self.no_body(stmt)
        if stmt.settings:
            self.error(d.UNKNOWN_SETTING, f"unknown setting '{stmt.settings[0].name}' for input",
                       stmt.settings[0].name_span, "write the shape as CxHxW, e.g. input 3x32x32")
        if isinstance(stmt.arg, ast.Dims) and 2 <= len(stmt.arg.dims) <= 4:
            return self.input_dims(stmt.arg)
        if stmt.arg is not None and not isinstance(stmt.arg, (ast.ShapeLit, ast.Dims)):
            return self.input_features(stmt.arg)
        if not isinstance(stmt.arg, ast.ShapeLit) or not 2 <= len(stmt.arg.dims) <= 4:
            span = stmt.arg.span if stmt.arg is not None else stmt.keyword_span
            self.error(d.WRONG_TYPE, "input expects a shape: features (a vector), channels x length (a "
                       "signal), channels x height x width (an image) or channels x depth x height x "
                       "width (a volume)", span,
                       "write e.g. input 20, input 3x224x224, input 12x1000, input 1x64x64x64 or, with "
                       "parameters, input features or input 3 x size x size")
            return None, None
        dims = stmt.arg.dims
        if any(x < 1 for x in dims) or any(x > _INT_MAX for x in dims):
            self.error(d.OUT_OF_RANGE, f"every input dimension must lie in [1, {_INT_MAX:,}]", stmt.arg.span)
            return None, None
        return tuple(dims), stmt.arg.span

    def input_features(self, e: ast.Expr) -> tuple[n.Shape | None, Span | None]:
        """`input 20` or `input features`: a feature vector (an MLP's input), shape (F,)."""
        try:
            return (self.integer(_Bound(e, e.span, "input features"), 1),), e.span
        except _Invalid:
            return None, None

    def input_dims(self, dims: ast.Dims) -> tuple[n.Shape | None, Span | None]:
        """`input 3 x size x size`: each dimension a whole number in [1, _INT_MAX]."""
        names = ("channels",) + {2: ("length",), 3: ("height", "width"),
                                 4: ("depth", "height", "width")}[len(dims.dims)]
        shape = []
        for what, e in zip(names, dims.dims):
            try:
                shape.append(self.integer(_Bound(e, e.span, f"input {what}"), 1))
            except _Invalid:
                pass
        return (tuple(shape), dims.span) if len(shape) == len(dims.dims) else (None, None)

    def stem(self, stmt: ast.Statement) -> n.Stem:
        self.no_arg(stmt)
        if stmt.settings:
            self.error(d.UNKNOWN_SETTING, f"unknown setting '{stmt.settings[0].name}' for stem",
                       stmt.settings[0].name_span, "put operations inside stem { ... }, one per line")
        if stmt.body is None:
            self.error(d.MISSING, "stem needs a { ... } block of operations", stmt.keyword_span,
                       "e.g. stem { conv 16 kernel=3 }")
            return n.Stem(span=stmt.span)
        ops = []
        for op in stmt.body:
            try:
                built = self.stem_op(op)
            except _Invalid:
                continue
            if built is not None:
                ops.append(built)
        return n.Stem(ops=tuple(ops), span=stmt.span)

    def stem_op(self, op: ast.Statement):
        kw = op.keyword
        if kw not in _STEM_SETTINGS:
            self.unknown_statement(op, STEM_OPS, "a stem")
            return None
        self.no_body(op)
        inherit = ("bias",) if kw in ("conv", "linear") else ()
        s = self.settings(op, _STEM_SETTINGS[kw], kw, inherit)
        if kw == "conv":
            if op.arg is None:
                self.error(d.MISSING, "conv needs its number of output channels", op.keyword_span,
                           "e.g. conv 64 kernel=7 stride=2 padding=3")
                raise _Invalid
            v = self.try_all(
                out_channels=lambda: self.integer(self.positional(op), 1, what="conv channels"),
                kernel=lambda: self.axes(s["kernel"], 1) if "kernel" in s else 3,
                stride=lambda: self.axes(s["stride"], 1) if "stride" in s else 1,
                padding=lambda: self.axes(s["padding"], 0) if "padding" in s else None,
                bias=lambda: self.boolean(s["bias"]) if "bias" in s else False,
            )
            if v["padding"] is None:  # 'same' for odd kernels
                k = v["kernel"]
                v["padding"] = tuple(x // 2 for x in k) if isinstance(k, tuple) else k // 2
            return n.Conv(span=op.span, **v)
        if kw == "linear":
            if op.arg is None:
                self.error(d.MISSING, "linear needs its number of output features", op.keyword_span,
                           "e.g. linear 64")
                raise _Invalid
            v = self.try_all(
                out_features=lambda: self.integer(self.positional(op), 1, what="linear features"),
                bias=lambda: self.boolean(s["bias"]) if "bias" in s else True,
            )
            return n.Linear(span=op.span, **v)
        if kw in ("maxpool", "avgpool"):
            self.no_arg(op)
            return self.pool(kw[:3], s, op.span)
        if kw == "dropout":
            if op.arg is not None and "rate" in s:
                self.error(d.DUPLICATE_SETTING, "the dropout rate is given twice", s["rate"].span)
                raise _Invalid
            b = self.positional(op, "rate") if op.arg is not None else s.get("rate")
            if b is None:
                self.error(d.MISSING, "dropout needs a rate", op.keyword_span, "e.g. dropout 0.2")
                raise _Invalid
            return n.Dropout(rate=float(self.real(b, Fraction(0), Fraction(1), False, True)), span=op.span)
        self.no_arg(op)
        return n.Norm(span=op.span) if kw == "norm" else n.ReLU(span=op.span)

    def positional(self, stmt: ast.Statement, name: str | None = None) -> _Bound:
        if isinstance(stmt.arg, ast.ShapeLit):
            self.error(d.WRONG_TYPE, f"{stmt.keyword} expects a number here, not a shape", stmt.arg.span)
            raise _Invalid
        return _Bound(stmt.arg, stmt.arg.span, name or stmt.keyword)

    def pool(self, mode: str, s: dict[str, _Bound], span: Span | None) -> n.Pool:
        kernel = self.axes(s["kernel"], 1) if "kernel" in s else 2
        stride = self.axes(s["stride"], 1) if "stride" in s else kernel
        padding = self.axes(s["padding"], 0) if "padding" in s else 0
        r = max(len(x) for x in (kernel, stride, padding) if isinstance(x, tuple)) if any(
            isinstance(x, tuple) for x in (kernel, stride, padding)) else 1
        if any(2 * p > k for k, p in zip(n.per_axis(kernel, r), n.per_axis(padding, r))):
            self.error(d.OUT_OF_RANGE, f"pooling padding {axes_text(padding)} is more than half the kernel "
                       f"{axes_text(kernel)}", s["padding"].span, "PyTorch allows padding up to kernel/2")
            raise _Invalid
        return n.Pool(mode=mode, kernel=kernel, stride=stride, padding=padding, span=span)

    def stages(self, stmts: list[ast.Statement]) -> list[n.Stage]:
        flat = self.unroll(stmts, {})
        if len(flat) > self.budget.stages:  # only a file's earlier networks make this bind
            self.error(d.TOO_LARGE, f"this network's {len(flat):,} stages take the file's networks past "
                       f"{_FILE_MAX_STAGES:,} stages together", self.net.name_span,
                       "split the networks over several files")
            self.budget.exhausted = True
            return []
        self.budget.stages -= len(flat)
        stages: list[n.Stage] = []
        blocks = transitions = layers = 0
        for stmt, scope in flat:
            try:
                with self.scoped(scope):
                    if stmt.keyword == "dense":
                        blocks += 1
                        stages.append(self.dense(stmt, blocks))
                        layers += stages[-1].layers
                        if layers > min(_MAX_LAYERS, self.budget.layers):
                            self.too_many_layers(stmt)
                            return stages
                    else:
                        transitions += 1
                        stages.append(self.transition(stmt, transitions))
            except _Invalid:
                continue
        self.budget.layers -= layers
        return stages

    def too_many_layers(self, stmt: ast.Statement) -> None:
        if self.budget.layers >= _MAX_LAYERS:
            self.error(d.TOO_LARGE, f"the network would have more than {_MAX_LAYERS:,} dense layers",
                       stmt.keyword_span, "DenseNet-264 has 130; densedsl analyses networks up to "
                       f"{_MAX_LAYERS:,} dense layers")
        else:
            self.error(d.TOO_LARGE, f"the file's networks would have more than {_FILE_MAX_LAYERS:,} dense "
                       "layers together", stmt.keyword_span, "split the networks over several files")
            self.budget.exhausted = True

    @contextmanager
    def scoped(self, scope: Mapping[str, Value]):
        """Evaluate with a `for` loop's variables bound (they never reach Network.parameters)."""
        if not scope:
            yield
            return
        saved = self.env
        self.env = {**saved, **scope}
        try:
            yield
        finally:
            self.env = saved

    def unroll(self, stmts: Iterable[ast.Statement], scope: Mapping[str, Value],
               where: str = "repeat") -> list[tuple[ast.Statement, Mapping[str, Value]]]:
        """Expand `repeat` and `for`: each dense block or transition with the loop variables it
        sees. Refuses to produce more than _MAX_STAGES stages."""
        out: list[tuple[ast.Statement, Mapping[str, Value]]] = []
        for stmt in stmts:
            if stmt.keyword in ("dense", "transition"):
                out.append((stmt, scope))
            elif stmt.keyword == "for" and stmt.names:
                out.extend(self.for_loop(stmt, scope, len(out)))
            elif stmt.keyword == "repeat":
                if stmt.arg is None:
                    self.error(d.MISSING, "repeat needs a count", stmt.keyword_span, "e.g. repeat 3 { ... }")
                    continue
                if stmt.body is None:
                    self.error(d.MISSING, "repeat needs a { ... } block", stmt.keyword_span,
                               "e.g. repeat 2 { dense layers=16; transition }")
                    continue
                if stmt.settings:
                    self.error(d.UNKNOWN_SETTING, f"unknown setting '{stmt.settings[0].name}' for repeat",
                               stmt.settings[0].name_span, "repeat takes only a count: repeat 3 { ... }")
                try:
                    with self.scoped(scope):
                        count = self.integer(self.positional(stmt, "repeat count"), 0, _MAX_STAGES)
                except _Invalid:
                    continue
                inner = self.unroll(stmt.body, scope)
                if len(out) + count * len(inner) > _MAX_STAGES:
                    self.error(d.TOO_LARGE, f"repeat {count} would make {count * len(inner):,} stages "
                               f"(at most {_MAX_STAGES:,})", stmt.keyword_span)
                    continue
                out.extend(inner * count)
            elif stmt.keyword in STATEMENTS:
                self.error(d.MISPLACED, f"'{stmt.keyword}' cannot appear inside {where}", stmt.keyword_span,
                           f"{where} holds dense, transition, repeat and for statements")
            else:
                self.unknown_statement(stmt, STAGE_STATEMENTS, f"a {where} block")
        return out

    def for_loop(self, stmt: ast.Statement, scope: Mapping[str, Value], before: int
                 ) -> list[tuple[ast.Statement, Mapping[str, Value]]]:
        """`for [i,] n in LIST { body } between { … }`: the body once per element, `between`
        after every element but the last (with that element's variables bound)."""
        clash = False
        for name, span in zip(stmt.names, stmt.name_spans or (None,) * len(stmt.names)):
            if name in self.env or name in scope or stmt.names.count(name) > 1:
                what = "a parameter" if name in self.env else "another loop variable"
                self.error(d.DUPLICATE_DEFINITION, f"loop variable '{name}' has the name of {what}",
                           span or stmt.keyword_span, "give the loop variable a name of its own, e.g. for n in blocks")
                clash = True
        try:
            with self.scoped(scope):
                items = self.eval(stmt.arg)
        except _Invalid:
            return []
        if not isinstance(items, tuple):
            self.error(d.WRONG_TYPE, f"for walks a list, but {_source_text(stmt.arg)} is {_show(items)}",
                       stmt.arg.span, "write a list, e.g. for n in [6, 12, 24, 16] { ... }, or use "
                       "repeat N { ... } to write a block N times")
            return []
        if clash:
            return []
        out: list[tuple[ast.Statement, Mapping[str, Value]]] = []
        for i, item in enumerate(items):
            self._loop_steps += 1
            if self._unroll_failed:
                return []
            if self._loop_steps > _MAX_LOOP_STEPS:
                self.error(d.TOO_COMPLEX, f"the for loops take more than {_MAX_LOOP_STEPS:,} steps",
                           stmt.keyword_span, "nested loops multiply: loop over shorter lists")
                self._unroll_failed = True
                return []
            values = (Fraction(i), item) if len(stmt.names) == 2 else (item,)
            inner = {**scope, **dict(zip(stmt.names, values))}
            out.extend(self.unroll(stmt.body or (), inner, "for"))
            if stmt.between is not None and i < len(items) - 1:
                out.extend(self.unroll(stmt.between, inner, "for"))
            if before + len(out) > _MAX_STAGES:
                self.error(d.TOO_LARGE, f"this for loop makes more than {_MAX_STAGES:,} stages",
                           stmt.keyword_span, f"a network has at most {_MAX_STAGES:,} stages after unrolling")
                self._unroll_failed = True
                return []
        return out

    def dense(self, stmt: ast.Statement, index: int) -> n.DenseBlock:
        if stmt.arg is not None:
            shown = _source_text(stmt.arg) if not isinstance(stmt.arg, ast.ShapeLit) else "L"
            self.no_arg(stmt, f"write the number of layers as a setting: dense layers={shown}")
            raise _Invalid
        self.no_body(stmt)
        s = self.settings(stmt, DENSE_SETTINGS, "dense block",
                          ("growth", "layers", "bottleneck", "dropout", "bias", "order", "activation", "norm",
                           "norm_groups"))
        missing = [k for k in ("layers", "growth") if k not in s]
        misspelt = [x.name for x in stmt.settings if x.name not in DENSE_SETTINGS]
        for k in missing:
            if difflib.get_close_matches(k, misspelt, n=1):
                continue  # already reported as "unknown setting 'grwoth'… did you mean 'growth'?"
            self.error(d.MISSING, f"dense block {index} has no {k}", stmt.keyword_span,
                       f"write dense {k}=N, or set {k} in `defaults`")
        if missing:
            raise _Invalid
        values = self.try_all(
            layers=lambda: self.integer(s["layers"], 1),
            growth=lambda: self.integer(s["growth"], 1),
            bottleneck=lambda: self.bottleneck(s["bottleneck"]) if "bottleneck" in s else None,
            dropout=lambda: float(self.real(s["dropout"], Fraction(0), Fraction(1), False, True))
            if "dropout" in s else 0.0,
            bias=lambda: self.boolean(s["bias"]) if "bias" in s else False,
            order=lambda: self.choice(s["order"], ("pre", "post")) if "order" in s else "pre",
            activation=lambda: self.choice(s["activation"], ACTIVATIONS) if "activation" in s else "relu",
            kernel=lambda: self.odd_kernel(s["kernel"]) if "kernel" in s else 3,
            groups=lambda: self.integer(s["groups"], 1, 1 << 16) if "groups" in s else 1,
            kind=lambda: self.choice(s["kind"], LAYER_KINDS) if "kind" in s else self.default_kind(),
            norm=lambda: self.choice(s["norm"], NORMS) if "norm" in s else "batch",
            norm_groups=lambda: self.integer(s["norm_groups"], 1, 1 << 16) if "norm_groups" in s else 32,
        )
        self.norm_fits(s, values, {x.name for x in stmt.settings})
        if values["kind"] == "linear":
            self.linear_only(stmt, s, index)
            values["bias"] = self.boolean(s["bias"]) if "bias" in s else True
        return n.DenseBlock(index=index, span=stmt.span, **values)

    def norm_fits(self, s: dict[str, _Bound], values: dict[str, Any], explicit: set[str]) -> None:
        """`norm_groups` belongs to `norm=group` (a default one is simply unused by other norms);
        group and instance norms need maps (channels)."""
        norm = values["norm"]
        if "norm_groups" in explicit and norm != "group":
            self.error(d.CONFLICT, f"norm_groups sets a group norm's groups, and this block has norm={norm}",
                       s["norm_groups"].span, "write norm=group norm_groups=G, or remove norm_groups")
            raise _Invalid
        if values["kind"] == "linear" and norm in ("group", "instance"):
            self.error(d.WRONG_DATA_KIND, f"norm={norm} normalises groups of a map's channels, and these "
                       "layers are linear (fully connected)", s["norm"].span,
                       "on a feature vector use norm=batch, norm=layer or norm=none")
            raise _Invalid
        if norm != "group":
            values["norm_groups"] = n.DenseBlock.__dataclass_fields__["norm_groups"].default  # unused

    def default_kind(self) -> n.LayerKind:
        """A dense block on a feature vector (`input F`) is made of linear layers, else of convs."""
        return "linear" if self.input_shape is not None and len(self.input_shape) == 1 else "conv"

    @staticmethod
    def setting_span(stmt: ast.Statement, b: _Bound) -> Span | None:
        """The whole `name=value` a statement writes (its value's span when inherited)."""
        return next((x.span for x in stmt.settings if x.name == b.name and x.span is not None), b.span)

    def linear_only(self, stmt: ast.Statement, s: dict[str, _Bound], index: int) -> None:
        """`kernel` and `groups` are a conv's: refused on a block of linear layers (E210)."""
        for name in ("kernel", "groups"):
            if name in s:
                self.error(d.WRONG_DATA_KIND, f"'{name}' is a conv setting, and denseblock{index}'s layers "
                           "are linear (fully connected)", self.setting_span(stmt, s[name]),
                           f"remove {name}=…; a linear layer sees every feature")
        if any(name in s for name in ("kernel", "groups")):
            raise _Invalid

    def widths(self, b: _Bound) -> tuple[int, ...]:
        """`hidden=[512, 256]` (or one width, `hidden=512`): whole numbers ≥ 1."""
        v = self.eval(b.expr)
        items = v if isinstance(v, tuple) else (v,)
        spans = [x.span for x in b.expr.items] if isinstance(b.expr, ast.ListExpr) else [b.span] * len(items)
        out = []
        for i, (x, span) in enumerate(zip(items, spans)):
            what = f"hidden width {i}" if isinstance(v, tuple) else "hidden width"
            if isinstance(x, bool) or not isinstance(x, Fraction) or x.denominator != 1 or not 1 <= x <= _INT_MAX:
                self.error(d.OUT_OF_RANGE if isinstance(x, Fraction) else d.WRONG_TYPE,
                           f"{what} must be a whole number of at least 1, got {_show(x)}", span,
                           "hidden lists the widths of the layers before the classifier, e.g. hidden=[512, 256]")
                raise _Invalid
            out.append(int(x))
        return tuple(out)

    def odd_kernel(self, b: _Bound) -> n.Axes:
        k = self.axes(b, 1, 255, "kernel")
        even = [x for x in n.per_axis(k, 1) if x % 2 == 0]
        if even:
            x = even[0]
            self.error(d.OUT_OF_RANGE, f"a dense layer's kernel must be odd, got {axes_text(k)}", b.span,
                       f"padding k//2 keeps the map's size only for odd kernels: use {x - 1} or {x + 1}")
            raise _Invalid
        return k

    def try_all(self, **thunks: Callable[[], Any]) -> dict[str, Any]:
        """Evaluate every setting, so one run reports every bad value; then give up if any was bad."""
        values, failed = {}, False
        for key, thunk in thunks.items():
            try:
                values[key] = thunk()
            except _Invalid:
                failed = True
        if failed:
            raise _Invalid
        return values

    def transition(self, stmt: ast.Statement, index: int) -> n.Transition:
        self.no_arg(stmt)
        self.no_body(stmt)
        explicit = {x.name for x in stmt.settings}
        if {"compression", "channels"} <= explicit:
            self.error(d.CONFLICT, "a transition takes compression or channels, not both", stmt.keyword_span,
                       "channels=N sets the output count; compression=θ scales the input count")
            raise _Invalid
        inherit = ("bias", "dropout") + (() if "channels" in explicit else ("compression",))
        s = self.settings(stmt, TRANSITION_SETTINGS, "transition", inherit)
        if self.default_kind() == "linear":
            return self.vector_transition(stmt, index, s)
        if "pool" in s and self.eval_quietly(s["pool"]) == "none":
            return self.poolless_transition(stmt, index, s)
        values = self.try_all(
            **self.transition_values(s),
            pool=lambda: self.pool(self.choice(s["pool"], ("avg", "max", "none")) if "pool" in s else "avg",
                                   s, stmt.span),
        )
        return n.Transition(index=index, span=stmt.span, **self.default_compression(values))

    def transition_values(self, s: dict[str, _Bound]) -> dict[str, Callable[[], Any]]:
        """The settings every transition takes, pooled or not, as `try_all` thunks."""
        return dict(
            compression=lambda: self.real(s["compression"], Fraction(0), Fraction(1), True, False,
                                          "compression θ") if "compression" in s else None,
            channels=lambda: self.integer(s["channels"], 1) if "channels" in s else None,
            bias=lambda: self.boolean(s["bias"]) if "bias" in s else False,
            dropout=lambda: float(self.real(s["dropout"], Fraction(0), Fraction(1), False, True))
            if "dropout" in s else 0.0,
        )

    @staticmethod
    def default_compression(values: dict[str, Any]) -> dict[str, Any]:
        """Neither compression nor channels: θ = 1 (the transition keeps every channel)."""
        if values["compression"] is None and values["channels"] is None:
            values["compression"] = Fraction(1)
        return values

    def eval_quietly(self, b: _Bound) -> Value | None:
        """The value, or None when it is invalid (the caller's own check reports it)."""
        mark, reported = len(self.diags), set(self._reported)
        try:
            return self.eval(b.expr, symbols=True)
        except _Invalid:
            return None
        finally:
            del self.diags[mark:]
            self._reported = reported

    def vector_transition(self, stmt: ast.Statement, index: int, s: dict[str, _Bound]) -> n.Transition:
        """On a feature vector (an MLP): BN-ReLU-Linear to ⌊θ·m⌋ features, no pool (E210 for a
        window setting)."""
        windowed = [name for name in ("pool", "kernel", "stride", "padding") if name in s]
        for name in windowed:
            self.error(d.WRONG_DATA_KIND, f"the transition's '{name}' is a map's, and the input is a feature "
                       "vector", self.setting_span(stmt, s[name]), f"remove {name}=…; on a vector a transition is a linear "
                       "projection to ⌊θ·m⌋ features (compression=θ) or channels=N")
        if windowed:
            raise _Invalid
        values = self.try_all(**self.transition_values(s))
        return n.Transition(index=index, span=stmt.span, pool=None, **self.default_compression(values))

    def poolless_transition(self, stmt: ast.Statement, index: int, s: dict[str, _Bound]) -> n.Transition:
        """`pool=none`: BN-ReLU-Conv1x1 only; `stride` is the conv's (2 downsamples in the conv)."""
        for name in ("kernel", "padding"):
            if name in s:
                self.error(d.CONFLICT, f"'{name}' sets the pooling window, and this transition has "
                           "pool=none", s[name].span,
                           "the transition's conv is 1x1; use stride=2 to downsample in the conv")
                raise _Invalid
        values = self.try_all(
            **self.transition_values(s),
            stride=lambda: self.axes(s["stride"], 1) if "stride" in s else 1,
        )
        return n.Transition(index=index, span=stmt.span, pool=None, **self.default_compression(values))

    def head(self, stmt: ast.Statement) -> n.Head | None:
        self.no_arg(stmt)
        self.no_body(stmt)
        s = self.settings(stmt, HEAD_SETTINGS, "head")
        if "classes" not in s:
            if difflib.get_close_matches("classes", [x.name for x in stmt.settings], n=1):
                return None  # reported as a misspelt setting
            self.error(d.MISSING, "the head has no classes", stmt.keyword_span, "e.g. head classes=10")
            return None
        vector = self.default_kind() == "linear"
        if vector and (windowed := [x for x in ("pool", "kernel", "stride") if x in s]):
            for name in windowed:
                self.error(d.WRONG_DATA_KIND, f"the head's '{name}' sets a pooling window, and the input is a "
                           "feature vector: there is no map to pool", self.setting_span(stmt, s[name]),
                           f"remove {name}=…; on a vector the head is (dropout) → linear layers")
            return None
        try:
            values = self.try_all(
                classes=lambda: self.integer(s["classes"], 1),
                norm=lambda: self.boolean(s["norm"]) if "norm" in s else not vector,
                pool=lambda: self.choice(s["pool"], ("avg", "max")) if "pool" in s else "avg",
                kernel=lambda: self.axes(s["kernel"], 1) if "kernel" in s else None,
                stride=lambda: self.axes(s["stride"], 1) if "stride" in s else None,
                dropout=lambda: float(self.real(s["dropout"], Fraction(0), Fraction(1), False, True))
                if "dropout" in s else 0.0,
                hidden=lambda: self.widths(s["hidden"]) if "hidden" in s else (),
                activation=lambda: self.choice(s["activation"], ACTIVATIONS) if "activation" in s else "relu",
                task=lambda: self.choice(s["task"], TASKS) if "task" in s else None,
            )
        except _Invalid:
            return None
        if values["task"] is None:  # one output is a regression: a one-class classifier learns nothing
            values["task"] = "regression" if values["classes"] == 1 else "classification"
        elif values["task"] == "classification" and values["classes"] == 1:
            self.error(d.OUT_OF_RANGE, "a classification head needs at least 2 classes, got classes=1",
                       s["task"].span, "a one-class classifier learns nothing (its softmax is always 1); "
                       "for one real-valued output write task=regression, or leave task out")
            return None
        kernel, stride = values.pop("kernel"), values.pop("stride")
        if stride is not None and kernel is None:
            self.error(d.MISSING, "a head stride needs a pooling kernel", s["stride"].span,
                       "add kernel=K for a fixed pooling window, or drop stride for a global pool")
            return None
        window = (kernel, stride or kernel) if kernel is not None else None
        return n.Head(window=window, span=stmt.span, **values)

    def expect(self, stmt: ast.Statement, seen: dict[str, ast.Setting]) -> list[n.Expectation]:
        self.no_arg(stmt)
        self.no_body(stmt)
        out = []
        for s in stmt.settings:
            if s.name not in EXPECT_KEYS:
                self.error(d.UNKNOWN_SETTING, f"unknown figure '{s.name}' for expect", s.name_span,
                           _did_you_mean(s.name, EXPECT_KEYS) or f"expect takes: {', '.join(EXPECT_KEYS)}")
                continue
            if s.name in seen:
                self.error(d.DUPLICATE_SETTING, f"'{s.name}' is expected twice", s.name_span,
                           "remove one of them", ((seen[s.name].name_span, "first expected here"),))
                continue
            seen[s.name] = s
            if self.overridden and not any(isinstance(x, ast.Name) and x.id in self.env
                                           for x in _walk(s.value)):
                continue
            try:
                value = self.real(_Bound(s.value, s.value.span, f"expected {s.name}"), Fraction(0),
                                  Fraction(_MAX_FIGURE), False, False)
            except _Invalid:
                continue
            out.append(n.Expectation(key=s.name, value=value, tolerance=_tolerance(s.value),
                                     text=format_expr(s.value), span=s.span))
        return out


def _tolerance(e: ast.Expr) -> Fraction:
    """Half a unit of the last digit written: `5.668G` → 0.0005 G; an integer → 0 (exact)."""
    if not isinstance(e, ast.Number):
        return Fraction(0)
    body = e.text.replace("_", "")
    scale = 1
    if body[-1] in "KMGT":
        scale = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[body[-1]]
        body = body[:-1]
    mantissa, _, exponent = body.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    if decimals == 0 and not exponent and scale == 1:
        return Fraction(0)
    unit = Fraction(10) ** (int(exponent or 0) - decimals) * scale
    return unit / 2


def _source_text(e: ast.Expr) -> str:
    """The expression exactly as the user wrote it (Elm: show the code as written)."""
    span = e.span
    if span is not None and span.source.text and span.end > span.start:
        return span.source.text[span.start:span.end]
    return format_expr(e)


_LIST_HINT = ("pick one element with an index (blocks[0]), or write one block per element: "
              "for n in blocks { dense layers=n }")


def _top_level_comma(text: str) -> bool:
    """Whether a --set value is a bare list (`6,12,32,32`), not `max(1, 2)` or `[6, 12]`."""
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def _operands(e: ast.Expr) -> tuple[ast.Expr, ...]:
    if isinstance(e, ast.ListExpr):
        return e.items
    if isinstance(e, ast.Index):
        return (e.target, e.index)
    if isinstance(e, ast.BinOp):
        return (e.left, e.right)
    if isinstance(e, ast.UnaryOp):
        return (e.operand,)
    if isinstance(e, ast.Call):
        return e.args
    return ()


def _walk(e: ast.Expr):
    """Every node of `e`, parents before children (iterative: no recursion on input depth)."""
    todo = [e]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(reversed(_operands(node)))


def _show(v: Value) -> str:
    if isinstance(v, tuple):
        shown = ", ".join(_show(x) for x in v[:8])
        return f"[{shown}{', …' if len(v) > 8 else ''}]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Fraction) and abs(v) >= 10**15:
        return _scientific(v)
    if isinstance(v, Fraction):
        if v.denominator == 1:
            return str(v.numerator)
        f = float(v)
        if Fraction(repr(f)) == v:
            return repr(f)
        if v.denominator < 10**15:
            return f"{v.numerator}/{v.denominator}"
        return "≈" + _scientific(v)  # 1e-350: no float holds it, and 350 digits say nothing
    return f"'{v}'"


def _scientific(v: Fraction) -> str:
    """Four significant digits: 1e308, 1.286e399, 6.667e-21 (Decimal: no float overflow)."""
    with decimal.localcontext() as context:
        context.prec = 4
        x = decimal.Decimal(v.numerator) / decimal.Decimal(v.denominator)
        return f"{x.normalize():e}".replace("e+", "e")


def _plain(v: Value) -> n.ParamValue:
    """An int where exact, else a float where that is exact, else the Fraction itself."""
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, Fraction):
        if v.denominator == 1:
            return int(v)
        try:
            f = float(v)
        except OverflowError:  # beyond 1.8e308: no float holds it
            return v
        return f if Fraction(repr(f)) == v else v
    return v
