"""What the user wrote: frozen dataclasses with source spans.

Spans are excluded from equality, so `parse(fmt(x)) == parse(x)` compares meaning, not layout.
Statements are generic (`keyword arg? setting* body?`): `resolve` decides what each keyword
means, so unknown words get a did-you-mean instead of a syntax error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Union

from ..core.source import Span

# Every number a spec holds or computes (literals, parameters, intermediate results) has at most
# this many digits in its numerator and in its denominator. Exact arithmetic on larger values is
# what let `p1=p0*p0, p2=p1*p1, ...` run for minutes; no network size needs more than a dozen.
MAX_DIGITS = 400
_MAX_BITS = 1329  # 2**1329 < 10**400 < 2**1330: a bound on bit_length, which costs nothing


def fits(value: Fraction) -> bool:
    """Whether numerator and denominator both stay within MAX_DIGITS digits."""
    return value.numerator.bit_length() <= _MAX_BITS and value.denominator.bit_length() <= _MAX_BITS


def _span():
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Number:
    value: Fraction
    text: str = field(compare=False)  # as written: `5.668G`, `7_978_856`
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Name:
    id: str
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class BinOp:
    op: str  # + - * / // %
    left: "Expr"
    right: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class UnaryOp:
    op: str  # - +
    operand: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    span: Span | None = _span()
    func_span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class ListExpr:
    """`[6, 12, 24, 16]`: a list value (of numbers or keywords; lists do not nest)."""

    items: tuple["Expr", ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Index:
    """`rates[i]`: one element of a list, counted from 0."""

    target: "Expr"
    index: "Expr"
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Dims:
    """`3 x size x size`: an input shape whose dimensions are expressions."""

    dims: tuple["Expr", ...]
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class ShapeLit:
    dims: tuple[int, ...]
    span: Span | None = _span()


Expr = Union[Number, Name, BinOp, UnaryOp, Call, ListExpr, Index]


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    name: str
    value: Expr
    span: Span | None = _span()
    name_span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """Also a `for` loop: keyword "for", `names` its variables (index first when there are two),
    `arg` the list it walks, `body` written once per element and `between` between elements."""

    keyword: str
    arg: Expr | ShapeLit | Dims | None = None
    settings: tuple[Setting, ...] = ()
    body: tuple["Statement", ...] | None = None  # None: no braces; (): empty braces
    names: tuple[str, ...] = ()
    between: tuple["Statement", ...] | None = None
    span: Span | None = _span()
    keyword_span: Span | None = _span()
    name_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)
    between_span: Span | None = _span()  # the `between` keyword


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    name: str
    default: Expr
    span: Span | None = _span()
    name_span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkDef:
    name: str
    params: tuple[Param, ...] = ()
    body: tuple[Statement, ...] = ()
    span: Span | None = _span()
    name_span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Comment:
    text: str  # from '#' to the end of the line, trailing blanks removed
    span: Span | None = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecFile:
    networks: tuple[NetworkDef, ...] = ()
    comments: tuple[Comment, ...] = ()
    span: Span | None = _span()
