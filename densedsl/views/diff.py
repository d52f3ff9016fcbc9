"""What differs between two networks beyond their figures: dense blocks' connectivity tables
(`diff`'s part for DenseNet's relatives: `links=`, `emit=`, `width_factor=`, `widths=`) and every
stage's ops (`recipes`: an activation, a dropout rate, a separable or post-order layer, a pool).

Two specs that differ only in their tables can have the same layers, growth and output shape,
so the stage figures alone would hide the difference; this compares the tables themselves, layer
by layer over the layers both blocks have (a change in the layer count is the row's own change),
and words it compactly: each differing layer while there are few, a count and the first one
otherwise. Lists of output indexes are written with runs shortened (`0…23`), so DenseNet's reads
of a 24-layer block fit on one line. Ops are compared the same way, as recipe lines
(`BN-SiLU-Conv3x3`) without channel counts, which growth, bottleneck and widths already state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.units import index_list as indexes
from ..ir.connectivity import Table
from ..ir.ops import kind_of

if TYPE_CHECKING:
    from ..analysis.graph import ArchGraph

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


_CHANNELS = re.compile(r"\(\d+\)")  # `Conv3x3(32)`'s width: growth, bottleneck, widths state it


def recipes(g: ArchGraph) -> dict[str, tuple[str, ...]]:
    """Each stage's ops as recipe lines without channel counts, by stage name: a dense block's
    one per layer, any other stage's one (`BN-ReLU-Conv1x1-AvgPool2x2/2`)."""
    tokens: dict[tuple[str, str], list[str]] = {}
    for n, a in g.nodes(data=True):
        spec = kind_of(a["kind"])
        stage, _, rest = n.partition(".")
        if not rest or a["kind"] == "concat" or not spec.computes:
            continue
        layer = rest.partition(".")[0] if rest.startswith("denselayer") else ""
        tokens.setdefault((stage, layer), []).append(_CHANNELS.sub("", spec.token(a)))
    out: dict[str, list[str]] = {}
    for (stage, _), ops in tokens.items():  # graph order: layer 1 first
        out.setdefault(stage, []).append("-".join(ops))
    return {stage: tuple(lines) for stage, lines in out.items()}


def op_changes(old: tuple[str, ...], new: tuple[str, ...]) -> list[str]:
    """A stage's recipe lines compared, over the layers both have: `ops A → B` when every line
    changed alike, else the differing layers counted, with the first as example."""
    common = min(len(old), len(new))
    differ = [j for j in range(common) if old[j] != new[j]]
    if not differ:
        return []
    j = differ[0]
    if len(differ) == common and len(set(old[:common])) == 1 and len(set(new[:common])) == 1:
        return [f"ops {old[j]} → {new[j]}"]
    return [f"ops differ in {len(differ)} of {common} layers ({indexes([k + 1 for k in differ])}; "
            f"layer {j + 1}: {old[j]} → {new[j]})"]
