"""A dense block's connectivity settings: `links=`, `emit=`, `width_factor=` and `widths=`
(DenseNet's relatives), read into the `DenseBlock` fields and checked against its layer count
with the rules of `language/links.py`, each problem pointed at the element that causes it."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from ...core import diagnostics as d
from ...core.source import Span
from .. import ast
from .. import network as n
from ..links import Problem, problems
from .base import _Bound, _did_you_mean, _Invalid, _show
from .values import Values
from .vocabulary import EMIT_RULES, LINK_RULES, RANDOM_LINKS, Value

_LINKS_HINT = (f"links takes {', '.join(LINK_RULES)}, random(p, seed) or one list of indexes per layer: "
               "links=[[0], [1, 0], [2]]")
_EMIT_HINT = f"emit takes {', '.join(EMIT_RULES)} or a list of indexes into x0 … xL: emit=[1, 3, 4]"
# HarDNet's m is 1.6 to 1.7; the bound keeps m^(times 2 divides j) a finite float for any block
_MAX_WIDTH_FACTOR = 64
_CODES = {"not-earlier": d.BAD_LINK, "empty": d.NO_INPUT, "duplicate": d.DUPLICATE_LINK,
          "count": d.WRONG_COUNT}


class Connectivity(Values):
    # --- the settings, one by one -----------------------------------------------------------

    def links(self, b: _Bound) -> n.Links:
        e = b.expr
        if isinstance(e, ast.Call) and e.func == RANDOM_LINKS:
            return self.random_links(e)
        if isinstance(e, ast.ListExpr):  # a table: one level of nesting, for this setting only
            return tuple(self.link_row(item, j) for j, item in enumerate(e.items, start=1))
        v = self.eval(e, symbols=True)
        if isinstance(v, str) and v in LINK_RULES:
            return v  # type: ignore[return-value]  # one of LinkRule's words
        self.error(d.WRONG_TYPE, f"links must be {', '.join(LINK_RULES)}, random(p, seed) or a list of lists, "
                   f"got {_show(v)}", b.span, self.links_hint(v))
        raise _Invalid

    @staticmethod
    def links_hint(v: Value) -> str:
        if v == RANDOM_LINKS:
            return "random takes the probability p and a seed: links=random(0.5, 1)"
        if isinstance(v, str):
            return _did_you_mean(v, LINK_RULES + (RANDOM_LINKS,)) or _LINKS_HINT
        if isinstance(v, tuple):
            return "an explicit table lists each layer's reads as a list: links=[[0], [1, 0], [2]]"
        return _LINKS_HINT

    def random_links(self, e: ast.Call) -> n.RandomLinks:
        if len(e.args) != 2:
            self.error(d.BAD_CALL, f"random() takes 2 arguments (p, seed), got {len(e.args)}", e.span,
                       "each earlier output is kept with probability p; the seed names one table: "
                       "links=random(0.5, 1)")
            raise _Invalid
        p_expr, seed_expr = e.args
        p: Fraction | None = None
        try:  # both arguments checked, so one run reports both mistakes
            p = self.real(_Bound(p_expr, p_expr.span, "random's p"), Fraction(0), Fraction(1), True, False)
        finally:
            seed = self.integer(_Bound(seed_expr, seed_expr.span, "random's seed"), 0)
        assert p is not None  # else real() raised, and so did this call
        return n.RandomLinks(p=p, seed=seed)

    def link_row(self, e: ast.Expr, j: int) -> tuple[int, ...]:
        """Layer j's reads: a list of indexes (a literal, or a parameter holding one)."""
        v = self.eval(e)
        if not isinstance(v, tuple):
            self.error(d.WRONG_TYPE, f"layer {j}'s links must be a list of indexes, got {_show(v)}", e.span,
                       f"write [{_show(v) if isinstance(v, Fraction) else 0}] for a layer that reads one output")
            raise _Invalid
        return self.indexes(v, self.item_spans(e, len(v)), f"layer {j}'s links")

    def emit(self, b: _Bound) -> n.Emit:
        v = self.eval(b.expr, symbols=True)
        if isinstance(v, str) and v in EMIT_RULES:
            return v  # type: ignore[return-value]  # one of EmitRule's words
        if isinstance(v, tuple):
            return self.indexes(v, self.item_spans(b.expr, len(v), b.span), "emit")
        hint = (_did_you_mean(v, EMIT_RULES) if isinstance(v, str) else None) or _EMIT_HINT
        self.error(d.WRONG_TYPE, f"emit must be {', '.join(EMIT_RULES)} or a list of indexes, got {_show(v)}",
                   b.span, hint)
        raise _Invalid

    def indexes(self, values: tuple, spans: list[Span | None], what: str) -> tuple[int, ...]:
        """Whole numbers (whether each is an output that can be named depends on the layer count)."""
        out = []
        for x, span in zip(values, spans):
            if isinstance(x, bool) or not isinstance(x, Fraction):
                self.error(d.WRONG_TYPE, f"{what} must be indexes of outputs (whole numbers), got {_show(x)}",
                           span, "x0 is the block's input, xj the output of layer j")
                raise _Invalid
            if x.denominator != 1:
                self.error(d.NOT_INTEGER, f"{what} must be whole numbers, got {_show(x)}", span,
                           "x0 is the block's input, xj the output of layer j")
                raise _Invalid
            out.append(int(x))
        return tuple(out)

    @staticmethod
    def item_spans(e: ast.Expr, count: int, whole: Span | None = None) -> list[Span | None]:
        """Each element's span in a list literal; the whole value's for a list from a parameter."""
        if isinstance(e, ast.ListExpr):
            return [x.span for x in e.items]
        return [whole or e.span] * count

    def width_factor(self, b: _Bound) -> float:
        v = self.number(b.expr)
        if not 0 < v <= _MAX_WIDTH_FACTOR:
            self.error(d.OUT_OF_RANGE, f"width_factor must be positive (at most {_MAX_WIDTH_FACTOR}), "
                       f"got {self.derivation(b.expr)}", b.span,
                       "HarDNet's m multiplies the growth once per time 2 divides the layer's index: "
                       "width_factor=1.7")
            raise _Invalid
        return float(v)

    def layer_widths(self, b: _Bound) -> tuple[int, ...]:
        """`widths=[14, 24, 14, 40]`: one whole number ≥ 1 per layer."""
        v = self.eval(b.expr)
        if not isinstance(v, tuple):
            self.error(d.WRONG_TYPE, f"widths must be a list with one width per layer, got {_show(v)}", b.span,
                       "e.g. widths=[14, 24, 14, 40]; for the same width everywhere write growth=N")
            raise _Invalid
        return self.counts(v, self.item_spans(b.expr, len(v), b.span), lambda i: f"the width of layer {i + 1}",
                           "widths lists the channels each layer adds, e.g. widths=[14, 24, 14, 40]")

    # --- against the layer count ------------------------------------------------------------

    def connectivity_fits(self, s: dict[str, _Bound], values: dict[str, Any]) -> None:
        """The explicit table, emit list and widths, checked against the block's layers."""
        layers = values["layers"]
        links, emit, widths = values["links"], values["emit"], values["widths"]
        failed = False
        if values["width_factor"] is not None and widths is not None:
            self.error(d.CONFLICT, "a dense block takes widths or width_factor, not both", s["widths"].span,
                       "width_factor=m derives HarDNet's widths from growth; widths=[…] lists them: keep one",
                       ((s["width_factor"].span, "width_factor given here"),) if s["width_factor"].span else ())
            failed = True
        if widths is not None and len(widths) != layers:
            self.error(d.WRONG_COUNT, f"widths lists {len(widths)} width{'s' if len(widths) != 1 else ''} "
                       f"for a block of {layers} layers", s["widths"].span, "give one width per layer")
            failed = True
        for p in problems(links if isinstance(links, tuple) else None,
                          emit if isinstance(emit, tuple) else None, layers):
            self.error(_CODES[p.kind], p.message, self.problem_span(p, s), self.problem_hint(p, layers))
            failed = True
        if failed:
            raise _Invalid

    def problem_span(self, p: Problem, s: dict[str, _Bound]) -> Span | None:
        b = s["emit" if p.emit else "links"]
        e = b.expr
        if p.emit:
            return self.item_spans(e, p.item + 1, b.span)[p.item] if p.item is not None else b.span
        if p.layer is None or not isinstance(e, ast.ListExpr):
            return b.span
        row = e.items[p.layer - 1]
        return self.item_spans(row, p.item + 1)[p.item] if p.item is not None else row.span

    @staticmethod
    def problem_hint(p: Problem, layers: int) -> str:
        if p.kind == "count":
            return f"write one list per layer ({layers}), or a rule: links=log"
        if p.emit:
            return f"emit names outputs x0 (the block's input) … x{layers}, each once, in order"
        return f"layer {p.layer} reads x0 (the block's input) … x{(p.layer or 1) - 1}, each once, in order"
