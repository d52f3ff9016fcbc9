"""How numbers, sizes and shapes are written for people: one rule each, read by every view.

The analysis, the diagrams, the reports, the diagnostics and the language server all print the
same figures; writing `7.98 M`, `1.5 GiB` or `3x224x224` in one place keeps them saying the same
thing (and a change of style is one edit).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

_PREFIXES = ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K"))


def si(value: int | float, unit: str = "", *, digits: int = 3) -> str:
    """`7978856` → `7.98 M`; `5668323328, "FLOPs"` → `5.67 GFLOPs`; small values stay exact."""
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            x = value / scale
            text = f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
            return f"{text} {prefix}{unit}"
    text = f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"
    return f"{text} {unit}" if unit else text


def binary(nbytes: int | float) -> str:
    """Bytes with binary prefixes: `1610612736` → `1.5 GiB`."""
    for power, prefix in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if nbytes >= 1024**power:
            return f"{nbytes / 1024**power:.3g} {prefix}"
    return f"{int(nbytes)} B"


def shape_text(shape: Sequence[int]) -> str:
    """`(3, 224, 224)` → `3x224x224`: a shape, or the spatial part of one, as a spec writes it."""
    return "x".join(map(str, shape))


def axes_text(value: int | Sequence[int]) -> str:
    """`2` → `2`; `(1, 7)` → `1x7`: a window value (kernel, stride, padding) as a spec writes it."""
    return shape_text(value) if isinstance(value, (tuple, list)) else str(value)


def dims_text(value: int | tuple[int, ...] | list[int], rank: int) -> str:
    """`3` in rank 2 → `3x3`; rank 1 → `3`; rank 3 → `3x3x3`; `(1, 7)` → `1x7`."""
    return axes_text(value) if isinstance(value, (tuple, list)) else shape_text([value] * max(rank, 1))


def size_text(side: int, rank: int) -> str:
    """A side repeated along every axis: `29x29`, or `29` for a signal."""
    return shape_text([side] * rank)


def float_text(x: Fraction | float | int) -> str:
    """A rate or factor, shortest form: `0.5`, `1e-05`, `1.7`."""
    return f"{float(x):g}"


def fraction_text(x: Fraction | float | int) -> str:
    """`Fraction(1, 100)` → `0.01` (as the user wrote it); `Fraction(1, 3)` stays `1/3`."""
    x = Fraction(x)
    d = x.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    return f"{float(x):g}" if d == 1 and len(f"{float(x):g}") < 12 else str(x)


def exact_text(x: Fraction) -> str:
    """An integer with thousands separators, or a fraction to six digits: `7,978,856`, `16.1667`."""
    if x.denominator == 1:
        return f"{x.numerator:,}"
    return f"{float(x):,.6g}"


def index_list(values: Sequence[int], prefix: str = "", noun: str = "indexes") -> str:
    """Indexes (a dense block's reads, emits, widths) as people read them: `[4, 3, 2, 1, 0]` →
    `4…0`, runs of three or more consecutive values (either direction) shortened; a list of more
    than eight parts cut to its ends with its length: `x1, x3, x5, x7, x9, x11, …, x15, x16
    (9 maps)` (`prefix` x, `noun` maps)."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        step = values[i + 1] - values[i] if i + 1 < len(values) else 0
        if step in (1, -1):
            while j + 1 < len(values) and values[j + 1] - values[j] == step:
                j += 1
        if j - i >= 2:
            parts.append(f"{prefix}{values[i]}…{prefix}{values[j]}")
            i = j + 1
        else:
            parts.append(f"{prefix}{values[i]}")
            i += 1
    if len(parts) > 8:
        parts = parts[:6] + ["…"] + parts[-2:]
        return ", ".join(parts) + f" ({len(values)} {noun})"
    return ", ".join(parts)


_QUANTITY = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?)\s*([KMGT]i?)?B?\s*$")
_SCALE = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_quantity(text: str) -> int:
    """`1M` → 10^6, `5.67G` → 5,670,000,000, `80GiB` → 80·2^30, `7_978_856` → 7978856."""
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r} (write e.g. 1M, 5.6G, 80GiB)")
    return int(float(m.group(1).replace("_", "")) * _SCALE[m.group(2)])
