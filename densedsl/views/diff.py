"""What differs between two dense blocks' connectivity tables: `diff`'s part for DenseNet's
relatives (`links=`, `emit=`, `width_factor=`, `widths=`).

Two specs that differ only in their tables can have the same layers, growth and output shape,
so the stage figures alone would hide the difference; this compares the tables themselves, layer
by layer over the layers both blocks have (a change in the layer count is the row's own change),
and words it compactly: each differing layer while there are few, a count and the first one
otherwise. Lists of output indexes are written with runs shortened (`0…23`), so DenseNet's reads
of a 24-layer block fit on one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.units import index_list as indexes
from ..ir.connectivity import Table

DETAIL = 3      # differing layers worded one by one; more are counted, with the first as example


@dataclass(frozen=True, slots=True)
class LayerChange:
    layer: int                               # 1-based, in both blocks
    old: tuple[int, ...] | int               # reads (indexes into x0 … x(layer−1)) or a width
    new: tuple[int, ...] | int

    def as_json(self) -> dict[str, Any]:
        def value(v: tuple[int, ...] | int) -> list[int] | int:
            return list(v) if isinstance(v, tuple) else v
        return {"layer": self.layer, "old": value(self.old), "new": value(self.new)}


@dataclass(frozen=True, slots=True)
class TableDiff:
    layers: int                              # layers compared: those both blocks have
    reads: tuple[LayerChange, ...]           # layers whose reads (or their order) differ
    widths: tuple[LayerChange, ...]          # layers whose width differs, where a table sets widths
    emits: tuple[tuple[int, ...], tuple[int, ...]] | None  # old and new emit lists, when they differ

    def changes(self) -> list[str]:
        """The differences as `diff` words them, in its row: reads, widths, emits."""
        out = []
        if len(self.reads) <= DETAIL:
            out += [f"layer {c.layer} reads [{indexes(_seq(c.old))}] → [{indexes(_seq(c.new))}]"
                    for c in self.reads]
        else:
            first = self.reads[0]
            out.append(f"reads differ in {len(self.reads)} of {self.layers} layers "
                       f"({indexes([c.layer for c in self.reads])}; layer {first.layer}: "
                       f"[{indexes(_seq(first.old))}] → [{indexes(_seq(first.new))}])")
        if len(self.widths) <= DETAIL:
            out += [f"layer {c.layer} width {c.old} → {c.new}" for c in self.widths]
        else:
            first = self.widths[0]
            out.append(f"widths differ in {len(self.widths)} of {self.layers} layers "
                       f"({indexes([c.layer for c in self.widths])}; "
                       f"layer {first.layer}: {first.old} → {first.new})")
        if self.emits is not None:
            old, new = self.emits
            out.append(f"emits {indexes(old, 'x', 'maps')} → {indexes(new, 'x', 'maps')}")
        return out

    def as_json(self) -> dict[str, Any]:
        return {"layers_compared": self.layers,
                "reads": [c.as_json() for c in self.reads],
                "widths": [c.as_json() for c in self.widths],
                "emits": None if self.emits is None else {"old": list(self.emits[0]),
                                                          "new": list(self.emits[1])}}


def _seq(value: tuple[int, ...] | int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def compare(old: Table, new: Table, old_growth: int, new_growth: int) -> TableDiff:
    """The two tables layer by layer. Widths are compared only where a table sets its own (a
    changed growth alone is the row's `growth` change); emits only where one block does not
    emit everything (emitting x0 … xL is what a change in layers changes anyway)."""
    common = min(old.layers, new.layers)
    reads: tuple[LayerChange, ...] = ()
    if not (old.prefix and new.prefix):  # both DenseNet's: equal on every common layer
        reads = tuple(LayerChange(j, a, b) for j in range(1, common + 1)
                      if (a := old.reads_of(j)) != (b := new.reads_of(j)))
    widths: tuple[LayerChange, ...] = ()
    if old.widths != (old_growth,) * old.layers or new.widths != (new_growth,) * new.layers:
        widths = tuple(LayerChange(j, a, b) for j, (a, b) in enumerate(zip(old.widths, new.widths), start=1)
                       if a != b)
    everything = (old.emits == tuple(range(old.layers + 1)) and new.emits == tuple(range(new.layers + 1)))
    emits = None if everything or old.emits == new.emits else (old.emits, new.emits)
    return TableDiff(common, reads, widths, emits)
