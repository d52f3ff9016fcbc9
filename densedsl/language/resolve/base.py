"""What every part of the resolver shares: its state, diagnostics with did-you-mean, and the
expression helpers that need no state."""

from __future__ import annotations

import decimal
import difflib
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Collection, Iterable

from ...core import diagnostics as d
from ...core.source import Source, Span
from .. import ast
from .. import network as n
from ..fmt import format_expr
from .vocabulary import _MAX_LAYERS, _MAX_STAGES, _MAX_SUGGESTIONS, Value


def _listing(names: Iterable[str], limit: int = 12) -> str:
    names = list(names)
    more = f", … ({len(names) - limit:,} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _did_you_mean(word: str, known: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean '{match[0]}'?" if match else None


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


class ResolverBase:
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

    def suggest(self, word: str, known: Collection[str]) -> str | None:
        """A did-you-mean among a network's own names, which may be many: difflib costs ~5 µs a
        candidate, so past the first diagnostics (the only ones printed) it is skipped, and a
        name is looked up once."""
        if len(self.diags) >= _MAX_SUGGESTIONS:
            return None
        key = (word, id(known), len(known))
        if key not in self._suggested:
            self._suggested[key] = _did_you_mean(word, known)
        return self._suggested[key]

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


def _source_text(e: ast.Expr | ast.ShapeLit | ast.Dims) -> str:
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
