"""Typed settings: an expression read as an integer, per-axis window, ratio, flag or choice."""

from __future__ import annotations

from fractions import Fraction

from ...core import diagnostics as d
from .. import ast
from .. import network as n
from .base import _Bound, _did_you_mean, _Invalid, _show
from .expressions import Expressions
from .vocabulary import _BOOL_WORDS, _INT_MAX


class Values(Expressions):
    # --- typed settings ---------------------------------------------------------------------

    def integer(self, b: _Bound, lo: int, hi: int = _INT_MAX, what: str | None = None) -> int:
        what = what or b.name
        self.no_shape(b, what)
        v = self.number(b.expr)
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

    def no_shape(self, b: _Bound, what: str) -> None:
        # the annotation of _Bound.expr leaves shapes out, but a setting's value may be one
        e: ast.Expr | ast.ShapeLit | ast.Dims = b.expr
        if isinstance(e, (ast.ShapeLit, ast.Dims)):
            self.refuse_shape(e, what)

    def axes(self, b: _Bound, lo: int, hi: int = _INT_MAX, what: str | None = None) -> n.Axes:
        """A window's kernel, stride or padding: one number (the same along every axis) or one
        per spatial axis, written as a shape (`kernel=1x7`, `padding=0 x k//2`). Equal numbers
        collapse to one, so `3x3` is `3` and a square spec's network is unchanged."""
        what = what or b.name
        # a window setting may hold a shape (the grammar's setting: expr | SHAPE | dims), which
        # _Bound.expr's annotation leaves out
        e: ast.Expr | ast.ShapeLit | ast.Dims = b.expr
        if not isinstance(e, (ast.ShapeLit, ast.Dims)):
            return self.integer(b, lo, hi, what)
        if isinstance(e, ast.ShapeLit):
            items = [_Bound(ast.Number(value=Fraction(x), text=str(x), span=e.span), e.span, what) for x in e.dims]
        else:
            items = [_Bound(x, x.span, what) for x in e.dims]
        values = tuple(self.integer(item, lo, hi, f"{what} along axis {i}") for i, item in enumerate(items, 1))
        spatial = len(self.input_shape) - 1 if self.input_shape is not None else None
        if spatial is not None and len(values) != spatial:
            assert self.input_shape is not None  # spatial is its rank
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
        self.no_shape(b, what or b.name)
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

    def counts(self, items: tuple, spans: list, what, hint: str) -> tuple[int, ...]:
        """A list of whole numbers ≥ 1 (widths of layers), each element located: `what(i)`
        names element i (0-based) in the message."""
        out = []
        for i, (x, span) in enumerate(zip(items, spans)):
            if isinstance(x, bool) or not isinstance(x, Fraction) or x.denominator != 1 or not 1 <= x <= _INT_MAX:
                self.error(d.OUT_OF_RANGE if isinstance(x, Fraction) else d.WRONG_TYPE,
                           f"{what(i)} must be a whole number of at least 1, got {_show(x)}", span, hint)
                raise _Invalid
            out.append(int(x))
        return tuple(out)
