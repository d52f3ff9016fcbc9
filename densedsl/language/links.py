"""The rules an explicit connectivity table obeys (`links=[[0], [1, 0]]`, `emit=[1, 3]`).

They live in the language layer because the resolver is what refuses a bad table, with the
spec's spans; the lowering (`ir/connectivity.py`) reads only tables that passed them. Each
problem names the layer and the position in that layer's list (or in the emit list) it is
about, so the resolver can point at the offending element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What is wrong: an index that is not an earlier output (or not an output of the block, for
# emit), a layer reading nothing (or an empty emit), an index written twice, a table whose
# length is not the block's layer count
ProblemKind = Literal["not-earlier", "empty", "duplicate", "count"]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    message: str
    layer: int | None  # 1-based layer of the links table; None: the emit list, or the whole table
    item: int | None   # position in that layer's list (or in the emit list); None: the list itself
    emit: bool = False


def problems(reads: tuple[tuple[int, ...], ...] | None, emits: tuple[int, ...] | None,
             layers: int) -> list[Problem]:
    """What is wrong with an explicit table for a block of `layers` layers. A layer reads at
    least one earlier output (x0 … x(j−1)), each once; the emit list names at least one output of
    the block (x0 … xL), each once; the table has one list per layer."""
    found: list[Problem] = []
    if reads is not None:
        if len(reads) != layers:
            found.append(Problem("count", f"links lists {len(reads)} layer{'s' if len(reads) != 1 else ''} "
                                 f"for a block of {layers}", None, None))
        for j, r in enumerate(reads[:layers], start=1):
            found.extend(_list_problems(r, j, j - 1, f"layer {j}", "reads"))
    if emits is not None:
        found.extend(_list_problems(emits, None, layers, "the block", "emits"))
    return found


def _list_problems(items: tuple[int, ...], layer: int | None, last: int, who: str, verb: str
                   ) -> list[Problem]:
    emit = layer is None
    if not items:
        return [Problem("empty", f"{who} {verb} nothing", layer, None, emit)]
    found: list[Problem] = []
    seen: set[int] = set()
    for k, i in enumerate(items):
        if not 0 <= i <= last:
            what = "an output of the block" if emit else "an earlier output"
            found.append(Problem("not-earlier", f"{who} {verb} x{i}, which is not {what} (x0 … x{last})",
                                 layer, k, emit))
        elif i in seen:
            found.append(Problem("duplicate", f"{who} {verb} x{i} twice", layer, k, emit))
        seen.add(i)
    return found


def validate(reads: tuple[tuple[int, ...], ...] | None, emits: tuple[int, ...] | None,
             layers: int) -> list[tuple[str, int | None]]:
    """`problems` as (message, layer) pairs (layer None for the emit list or the table's length):
    the form `ir.connectivity.validate` had."""
    return [(p.message, p.layer) for p in problems(reads, emits, layers)]
