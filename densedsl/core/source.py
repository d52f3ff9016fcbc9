"""Source text and positions.

`Span` keeps lark's convention: 1-based line and column, `end_column` is the column just after
the last character, `start`/`end` are 0-based offsets into the text. Conversion to display
columns (tabs expanded) happens only in `diagnostics`.

Line starts are computed on first use: a hostile 16 MiB file of newlines is refused by the parser
before anyone needs its 16 million line starts (building them eagerly cost seconds and ~600 MB).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import cast


@dataclass(frozen=True, slots=True)
class Source:
    """A named text and the offsets where its lines start.

    `quotable` says whether diagnostics may print this text's lines: false for a file that has
    not been shown to be a spec (see `diagnostics` for the rule), so that `check /etc/shadow`
    never prints a line of /etc/shadow.
    """

    name: str
    text: str
    _starts: list = field(repr=False, compare=False, default_factory=list)  # [] until first use
    quotable: bool = field(repr=False, compare=False, default=True)

    @classmethod
    def from_text(cls, text: str, name: str = "<string>") -> "Source":
        return cls(name, text)

    @property
    def line_starts(self) -> tuple[int, ...] | list[int]:
        """0-based offsets at which each line starts (the first is always 0)."""
        if not self._starts:
            # str.split runs in C; a Python loop over find() took seconds on large inputs. One
            # slice assignment fills the table, so two threads racing here both store the same.
            self._starts[:] = [0, *accumulate(len(line) + 1 for line in self.text.split("\n")[:-1])]
        return self._starts

    def unquotable(self) -> "Source":
        """The same text, marked as not to be quoted (shares the line table)."""
        return self if not self.quotable else replace(self, quotable=False)

    def line_text(self, line: int) -> str:
        """The text of 1-based `line`, without its line break."""
        starts = self.line_starts
        if not 1 <= line <= len(starts):
            return ""
        start = starts[line - 1]
        end = starts[line] - 1 if line < len(starts) else len(self.text)
        return self.text[start:end].rstrip("\r")

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a 0-based offset."""
        starts = self.line_starts
        offset = max(0, min(offset, len(self.text)))
        index = bisect.bisect_right(starts, offset) - 1
        return index + 1, offset - starts[index] + 1

    def span(self, start: int, end: int) -> "Span":
        line, column = self.position(start)
        end_line, end_column = self.position(max(start, end))
        return Span(self, line, column, end_line, end_column, start, max(start, end))

    def end_span(self) -> "Span":
        """A one-character span at the end of the text, for "unexpected end of input"."""
        text = self.text.rstrip()
        end = len(text)
        return self.span(max(0, end - 1), end) if end else self.span(0, 0)


@dataclass(frozen=True, slots=True)
class Span:
    source: Source = field(repr=False, compare=False)
    line: int
    column: int
    end_line: int
    end_column: int
    start: int
    end: int

    @property
    def file(self) -> str:
        return self.source.name

    @classmethod
    def from_meta(cls, source: Source, meta) -> "Span":
        """Build from a lark `Meta` or `Token` (both carry the same position attributes)."""
        start = getattr(meta, "start_pos", None)
        end = getattr(meta, "end_pos", None)
        if start is None:
            return source.span(0, 0)
        # lark sets end_pos whenever it sets start_pos (Meta.empty has neither, a Token both)
        return Span(source, meta.line, meta.column, meta.end_line, meta.end_column, start, cast(int, end))

    def to(self, other: "Span") -> "Span":
        """The span from the start of self to the end of other."""
        return Span(self.source, self.line, self.column, other.end_line, other.end_column,
                    self.start, other.end)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"
