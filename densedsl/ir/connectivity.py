"""Who reads whom inside a dense block: the rule a spec writes (`links=`, `emit=`, widths),
expanded once into a `Table` that every later stage reads.

A block of L layers has outputs x0 (its input) … xL. Layer j (1-based) concatenates the outputs
`reads[j-1]` (indexes into x0 … x(j−1), in concatenation order) and adds `widths[j-1]` channels;
the block emits the outputs `emits` (indexes into x0 … xL, in order). DenseNet is the default
table: layer j reads x0 … x(j−1) ascending, every layer adds `growth`, the block emits x0 … xL,
so every DenseNet figure, state_dict and golden number is what it was before tables existed.

The rules, as their papers' reference code computes them (`../shared/reference/connectivity.md`):

- `all` — DenseNet (Huang et al. 2017): x0 … x(j−1), ascending (torchvision's order);
- `log` — SparseNet / Log-DenseNet: x(j−1), x(j−2), x(j−4), … while the offset is ≤ j, nearest
  first (pytorchcv's `sparsenet_exponential_fetch`); `emit=log` is what a layer L+1 would read;
- `harmonic` — HarDNet: x(j−2^n) for every 2^n dividing j, nearest first (its `get_link`);
  `emit=odd` is the odd layers and the last one, ascending, without x0 (`keepBase=False`);
- `chain` — VoVNet's one-shot aggregation: x(j−1) only;
- `RandomLinks(p, seed)` — the seeds' proposal: x(j−1) always, each earlier output with
  probability p, ascending; a seed names one table.

Nothing here imports torch: `check`, `summary` and `render` read tables too. Invalid explicit
tables are refused by the resolver, where the spec's spans are (`language/links.py`).
"""

from __future__ import annotations

import functools
import random
from fractions import Fraction

from ..language.network import DenseBlock, RandomLinks


class Table:
    """A block's connectivity: per layer its reads and width, and what the block emits.

    DenseNet's reads are never materialised (a block of L layers has L(L+1)/2 of them, and the
    closed forms that bound a network before it is built must not pay for them): `prefix`
    tables answer from prefix sums of the widths."""

    __slots__ = ("layers", "widths", "emits", "prefix", "_reads", "_starts")

    def __init__(self, layers: int, widths: tuple[int, ...], emits: tuple[int, ...],
                 reads: tuple[tuple[int, ...], ...] | None = None) -> None:
        self.layers = layers
        self.widths = widths                  # channels layer j adds
        self.emits = emits                    # the block's output, indexes into x0 … xL
        self.prefix = reads is None or all(r == tuple(range(j)) for j, r in enumerate(reads, start=1))
        self._reads = None if self.prefix else reads
        starts = [0]                          # channels of x1 … x(j−1) together, per j
        for w in widths:
            starts.append(starts[-1] + w)
        self._starts = tuple(starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Table) and (self.widths, self.emits, self.reads) == (other.widths, other.emits,
                                                                                        other.reads)

    def __hash__(self) -> int:
        return hash((self.widths, self.emits, self.prefix))

    def __repr__(self) -> str:
        reads = "prefix" if self.prefix else self._reads
        return f"Table(layers={self.layers}, widths={self.widths}, emits={self.emits}, reads={reads})"

    @property
    def reads(self) -> tuple[tuple[int, ...], ...]:
        """Every layer's reads (materialised: O(connections))."""
        return tuple(self.reads_of(j) for j in range(1, self.layers + 1))

    def reads_of(self, layer: int) -> tuple[int, ...]:
        """Layer `layer`'s (1-based) inputs, indexes into x0 … x(layer−1), in concatenation order."""
        if self._reads is None:
            return tuple(range(layer))
        return self._reads[layer - 1]

    @property
    def dense(self) -> bool:
        """DenseNet's table: every layer reads all earlier outputs in order and the block emits
        them all. The shared-storage paths (one buffer per block, layers reading a prefix of it)
        need exactly this; every other table runs the general path."""
        return self.prefix and self.emits == tuple(range(self.layers + 1))

    @property
    def connections(self) -> int:
        """Dense connections, as the graph counts them (an edge into a layer's concatenation):
        DenseNet's L(L+1)/2, 15 for a harmonic block of 8 layers. The analysis reads its figure
        off the graph; this is the closed form that bounds a network before it is built."""
        if self._reads is None:
            return self.layers * (self.layers + 1) // 2
        return sum(len(r) for r in self._reads)

    def in_channels(self, k0: int, layer: int) -> int:
        """Channels entering layer `layer` (1-based) when the block's input has k0."""
        if self._reads is None:
            return k0 + self._starts[layer - 1]
        return sum(self.channels_of(k0, i) for i in self._reads[layer - 1])

    def out_channels(self, k0: int) -> int:
        """Channels the block emits when its input has k0."""
        if self.dense:
            return k0 + self._starts[-1]
        return sum(self.channels_of(k0, i) for i in self.emits)

    def channels_of(self, k0: int, output: int) -> int:
        """Channels of x_output: k0 for the block's input, else that layer's width."""
        return k0 if output == 0 else self.widths[output - 1]

    def readers(self) -> tuple[tuple[int, ...], ...]:
        """For each output x0 … xL, the layers that read it (L+1 stands for the block's emit)."""
        found: list[list[int]] = [[] for _ in range(self.layers + 1)]
        for j in range(1, self.layers + 1):
            for i in self.reads_of(j):
                found[i].append(j)
        for i in self.emits:
            found[i].append(self.layers + 1)
        return tuple(tuple(r) for r in found)


@functools.lru_cache(maxsize=512)
def table(block: DenseBlock) -> Table:
    """The block's rule expanded into its table (cached: every stage asks for it)."""
    n = block.layers
    reads = None if block.links == "all" else tuple(reads_of(block, j) for j in range(1, n + 1))
    return Table(n, widths_of(block), emits_of(block), reads)


def reads_of(block: DenseBlock, j: int) -> tuple[int, ...]:
    """What layer j (1-based) of `block` reads, in concatenation order."""
    links = block.links
    if isinstance(links, tuple):
        return links[j - 1]
    if isinstance(links, RandomLinks):
        return _random_reads(links, j)
    match links:
        case "all":
            return tuple(range(j))
        case "log":
            return _exponential(j)
        case "harmonic":
            return tuple(j - 2**n for n in range(j.bit_length()) if j % 2**n == 0)
        case "chain":
            return (j - 1,)
    raise ValueError(f"unknown links rule {links!r}")


def emits_of(block: DenseBlock) -> tuple[int, ...]:
    """What the block emits, in order."""
    emit, n = block.emit, block.layers
    if isinstance(emit, tuple):
        return emit
    match emit:
        case "all":
            return tuple(range(n + 1))
        case "log":
            return _exponential(n + 1)
        case "odd":
            return tuple(i for i in range(1, n + 1) if i % 2 == 1 or i == n)
    raise ValueError(f"unknown emit rule {emit!r}")


def widths_of(block: DenseBlock) -> tuple[int, ...]:
    """Channels each layer adds: `growth`, HarDNet's `growth · m^(times 2 divides j)` rounded as
    its code rounds, or the explicit widths."""
    if block.widths is not None:
        return block.widths
    if block.width_factor is None:
        return (block.growth,) * block.layers
    return tuple(_harmonic_width(block.growth, block.width_factor, j) for j in range(1, block.layers + 1))


def _harmonic_width(growth: int, factor: float, j: int) -> int:
    # HarDNet's get_link: the float product, multiplied once per time 2 divides j, then
    # `int(int(out + 1) / 2) * 2` (the float division and both truncations are its own).
    out: float = growth
    n = 1
    while j % (2 * n) == 0:
        out *= factor
        n *= 2
    return int(int(out + 1) / 2) * 2


def _exponential(length: int) -> tuple[int, ...]:
    """SparseNet's fetch over `length` outputs x0 … x(length−1): offsets 1, 2, 4, … nearest first."""
    return tuple(length - 2**i for i in range(length.bit_length()) if 2**i <= length)


def _random_reads(rule: RandomLinks, j: int) -> tuple[int, ...]:
    # One generator per (seed, layer): a layer's reads do not depend on how many layers the
    # block has, so adding layers to a block keeps the earlier ones' links.
    rng = random.Random(f"densedsl-links:{rule.seed}:{j}")
    p = float(Fraction(rule.p))
    return tuple(i for i in range(j - 1) if rng.random() < p) + (j - 1,)
