"""Exact arithmetic over parameters: names, operators, lists, indexing and functions."""

from __future__ import annotations

from fractions import Fraction
from typing import NoReturn

from ...core import diagnostics as d
from .. import ast
from .base import (
    _LIST_HINT,
    ResolverBase,
    _did_you_mean,
    _Invalid,
    _listing,
    _operands,
    _show,
    _source_text,
    _walk,
)
from .vocabulary import _BOOL_WORDS, FUNCTIONS, RANDOM_LINKS, Value


class Expressions(ResolverBase):
    # --- expressions ------------------------------------------------------------------------

    def eval(self, e: ast.Expr, symbols: bool = False) -> Value:
        """Evaluate; a bare name that is not a parameter is a keyword when `symbols` is true.

        Iterative (an explicit stack, operands left to right), so no input depth can exhaust
        Python's stack; every value, intermediate ones included, is checked against
        `ast.MAX_DIGITS` as soon as it exists, so chained squaring stops within a few steps.
        """
        if isinstance(e, (ast.ShapeLit, ast.Dims)):
            self.refuse_shape(e)
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

    def refuse_shape(self, e: ast.ShapeLit | ast.Dims, what: str | None = None) -> NoReturn:
        """A setting's value may be a shape (the grammar's `setting: expr | SHAPE | dims`), and
        only a window's kernel, stride and padding take one; everywhere else it is a mistake."""
        message = (f"{what} must be a number, not a shape" if what is not None
                   else f"expected a value here, not the shape {_source_text(e)}")
        self.error(d.WRONG_TYPE, message, e.span,
                   "only kernel, stride and padding take one number per axis (kernel=1x7)")
        raise _Invalid

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
        spec = FUNCTIONS.get(e.func)
        if e.func == RANDOM_LINKS:
            self.error(d.BAD_CALL, "random(p, seed) is a links value, not a function of numbers", e.span,
                       "write it as the whole value of a block's links: dense layers=8 growth=12 "
                       "links=random(0.5, 1)")
            raise _Invalid
        if spec is None:
            self.error(d.BAD_CALL, f"unknown function '{e.func}'", e.func_span,
                       _did_you_mean(e.func, FUNCTIONS) or f"functions: {', '.join(FUNCTIONS)}")
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
        impl = FUNCTIONS[e.func][2]
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
