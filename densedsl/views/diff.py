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

from dataclasses import dataclass, field
from typing import Any

from ..core.units import index_list as indexes
from ..ir.connectivity import Table

DETAIL = 3      # differing layers worded one by one; more are counted, with the first as example


@dataclass(frozen=True, slots=True)
class TableDiff:
    old: Table = field(repr=False)
    new: Table = field(repr=False)
    layers: int                              # layers compared: those both blocks have
    reads: tuple[int, ...]                   # layers whose reads (or their order) differ
    widths: tuple[int, ...]                  # layers whose width differs, where a table sets widths
    emits: bool                              # whether the emit lists differ (worth stating)

    def changes(self) -> list[str]:
        """The differences as `diff` words them, in its row: reads, widths, emits."""
        out = []
        o, n = self.old, self.new
        if len(self.reads) <= DETAIL:
            out += [f"layer {j} reads [{indexes(o.reads_of(j))}] → [{indexes(n.reads_of(j))}]"
                    for j in self.reads]
        else:
            j = self.reads[0]
            out.append(f"reads differ in {len(self.reads)} of {self.layers} layers ({indexes(self.reads)}; "
                       f"layer {j}: [{indexes(o.reads_of(j))}] → [{indexes(n.reads_of(j))}])")
        if len(self.widths) <= DETAIL:
            out += [f"layer {j} width {o.widths[j - 1]} → {n.widths[j - 1]}" for j in self.widths]
        else:
            j = self.widths[0]
            out.append(f"widths differ in {len(self.widths)} of {self.layers} layers "
                       f"({indexes(self.widths)}; layer {j}: {o.widths[j - 1]} → {n.widths[j - 1]})")
        if self.emits:
            out.append(f"emits {indexes(o.emits, 'x', 'maps')} → {indexes(n.emits, 'x', 'maps')}")
        return out

    def as_json(self) -> dict[str, Any]:
        """Every differing layer in full (DenseNet's reads materialised only for those)."""
        o, n = self.old, self.new
        return {"layers_compared": self.layers,
                "reads": [{"layer": j, "old": list(o.reads_of(j)), "new": list(n.reads_of(j))}
                          for j in self.reads],
                "widths": [{"layer": j, "old": o.widths[j - 1], "new": n.widths[j - 1]} for j in self.widths],
                "emits": {"old": list(o.emits), "new": list(n.emits)} if self.emits else None}


def _same_reads(old: Table, new: Table, j: int) -> bool:
    # DenseNet's row j is 0 … j−1: a row of another length differs without being built, so a
    # DenseNet block against a sparse one costs the sparse one's reads, not L(L+1)/2
    for a, b in ((old, new), (new, old)):
        if a.prefix and not b.prefix and len(b.reads_of(j)) != j:
            return False
    return old.reads_of(j) == new.reads_of(j)


def compare(old: Table, new: Table, old_growth: int, new_growth: int) -> TableDiff:
    """The two tables layer by layer. Widths are compared only where a table sets its own (a
    changed growth alone is the row's `growth` change); emits only where one block does not
    emit everything (emitting x0 … xL is what a change in layers changes anyway)."""
    common = min(old.layers, new.layers)
    reads: tuple[int, ...] = ()
    if not (old.prefix and new.prefix):  # both DenseNet's: equal on every common layer
        reads = tuple(j for j in range(1, common + 1) if not _same_reads(old, new, j))
    widths: tuple[int, ...] = ()
    if old.widths != (old_growth,) * old.layers or new.widths != (new_growth,) * new.layers:
        widths = tuple(j for j, (a, b) in enumerate(zip(old.widths, new.widths), start=1) if a != b)
    everything = old.emits == tuple(range(old.layers + 1)) and new.emits == tuple(range(new.layers + 1))
    return TableDiff(old, new, common, reads, widths, not everything and old.emits != new.emits)
