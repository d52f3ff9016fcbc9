"""Source text and positions.

`Span` keeps lark's convention: 1-based line and column, `end_column` is the column just after
the last character, `start`/`end` are 0-based offsets into the text. Conversion to display
columns (tabs expanded) happens only in `diagnostics`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Source:
    """A named text and the offsets where its lines start."""

    name: str
    text: str
    line_starts: tuple[int, ...] = field(repr=False, compare=False, default=())

    @classmethod
    def from_text(cls, text: str, name: str = "<string>") -> "Source":
        starts = [0]
        find = text.find
        i = find("\n")
        while i != -1:
            starts.append(i + 1)
            i = find("\n", i + 1)
        return cls(name, text, tuple(starts))

    def line_text(self, line: int) -> str:
        """The text of 1-based `line`, without its line break."""
        if not 1 <= line <= len(self.line_starts):
            return ""
        start = self.line_starts[line - 1]
        end = self.line_starts[line] - 1 if line < len(self.line_starts) else len(self.text)
        return self.text[start:end].rstrip("\r")

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of a 0-based offset."""
        offset = max(0, min(offset, len(self.text)))
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return index + 1, offset - self.line_starts[index] + 1

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
        return Span(source, meta.line, meta.column, meta.end_line, meta.end_column, start, end)

    def to(self, other: "Span") -> "Span":
        """The span from the start of self to the end of other."""
        return Span(self.source, self.line, self.column, other.end_line, other.end_column,
                    self.start, other.end)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"
