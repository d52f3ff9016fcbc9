"""Error codes, diagnostics and their text form.

Stages collect `Diagnostic`s and raise `SpecError(diagnostics)` at the end of the stage when any
of them is an error. Only `format_diagnostic` turns a diagnostic into text, and only the CLI
prints. Every code is registered here once and documented in docs/errors.md (a test checks both
list the same codes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal

from .source import Span

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True, eq=False)
class Code:
    code: str
    name: str
    summary: str

    def __post_init__(self) -> None:
        if self.code in CODES:
            raise ValueError(f"error code {self.code} registered twice")
        CODES[self.code] = self

    def __str__(self) -> str:
        return self.code

    def __eq__(self, other: object) -> bool:
        # `diagnostic.code == "E102"` is what library users write
        if isinstance(other, Code):
            return self.code == other.code
        if isinstance(other, str):
            return self.code == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.code)


CODES: dict[str, Code] = {}

# E0xx: syntax
SYNTAX = Code("E001", "syntax", "the text does not follow the grammar")
UNEXPECTED_EOF = Code("E002", "unexpected-eof", "the file ends in the middle of a construct")
BAD_CHARACTER = Code("E003", "bad-character", "a character that no token can start with")
TOO_DEEP = Code("E004", "too-deep", "brackets or blocks nested deeper than the parser allows")
BAD_NUMBER = Code("E005", "bad-number", "a number literal that is malformed or absurdly large")
TOO_COMPLEX = Code("E006", "too-complex", "a spec whose size, values or nesting exceed densedsl's limits")

# E1xx: names and values
UNKNOWN_STATEMENT = Code("E101", "unknown-statement", "a statement or operation densedsl does not know")
UNKNOWN_SETTING = Code("E102", "unknown-setting", "a setting the statement does not take")
DUPLICATE_SETTING = Code("E103", "duplicate-setting", "a setting given twice in one statement")
WRONG_TYPE = Code("E104", "wrong-type", "a value of the wrong kind (number, yes/no, keyword)")
OUT_OF_RANGE = Code("E105", "out-of-range", "a value outside the range the setting allows")
NOT_INTEGER = Code("E106", "not-integer", "a non-integral value where an integer is required")
UNKNOWN_PARAMETER = Code("E107", "unknown-parameter", "--set or a keyword names no parameter of the network")
UNKNOWN_NAME = Code("E108", "unknown-name", "an expression uses a name that is not a parameter")
UNKNOWN_NETWORK = Code("E109", "unknown-network", "no network of that name, or several and none chosen")
DUPLICATE_DEFINITION = Code("E110", "duplicate-definition", "a network, parameter or statement defined twice")
DIVISION_BY_ZERO = Code("E111", "division-by-zero", "an expression divides by zero")
MISSING = Code("E112", "missing", "a required statement, setting or argument is absent")
MISPLACED = Code("E113", "misplaced", "a statement where it cannot appear")
BAD_CALL = Code("E114", "bad-call", "an unknown function or a wrong number of arguments")
UNEXPECTED_ARGUMENT = Code("E115", "unexpected-argument", "a positional value the statement does not take")
CONFLICT = Code("E116", "conflicting-settings", "settings that exclude each other")
UNKNOWN_DATASET = Code("E117", "unknown-dataset", "a --data value that names no data set densedsl reads")
BAD_OVERRIDE = Code("E118", "bad-override", "a --set item that is not NAME=VALUE")
BAD_LINK = Code("E119", "bad-link", "a links or emit index that is not an output the layer or block can name")
NO_INPUT = Code("E120", "no-input", "a dense layer that reads nothing, or a block that emits nothing")
DUPLICATE_LINK = Code("E121", "duplicate-link", "a dense layer that reads an output twice, or an emit list naming one twice")
WRONG_COUNT = Code("E122", "wrong-count", "a links table or widths list whose length differs from the block's layers")

# E2xx: graph and shapes
NO_CHANNELS = Code("E201", "no-channels", "a layer would emit fewer than one channel")
TOO_SMALL = Code("E202", "too-small", "a feature map would shrink below 1x1")
KERNEL_TOO_LARGE = Code("E203", "kernel-too-large", "a kernel larger than its (padded) input")
UNEVEN_SIZE = Code("W204", "uneven-size", "a pooling or strided conv drops rows or columns")
INVARIANT = Code("E205", "invariant", "the graph breaks a dense-connectivity invariant (a bug)")
TRAIN_TOO_SMALL = Code("W206", "train-too-small", "a batch of one cannot be trained: the final map is 1x1")
DATA_MISMATCH = Code("E207", "data-mismatch", "the spec's input shape or classes differ from the data set's")
NO_DATA = Code("E208", "no-data", "a data set, or a split of it, with no examples")
BAD_GROUPS = Code("E209", "bad-groups", "a grouped convolution or group norm whose groups do not divide its channels")
WRONG_DATA_KIND = Code("E210", "wrong-data-kind", "an op for maps on a feature vector, or a linear layer on a map")
WRONG_RANK = Code("E211", "wrong-rank", "a kernel, stride or padding with more or fewer dimensions than the input has axes")

# E3xx: resources and expectations
TOO_MANY_PARAMS = Code("E301", "too-many-params", "the parameters (counted on the graph) exceed --max-params")
TOO_MUCH_MEMORY = Code("E302", "too-much-memory", "predicted activation memory exceeds --max-memory")
EXPECTATION = Code("E303", "expectation", "an `expect` figure differs from the analysed one")
TOO_LARGE = Code("E304", "too-large", "a block or network too large to analyse")
DIVERGED = Code("E305", "diverged", "training produced a non-finite loss")
NO_DEVICE = Code("E306", "no-device", "the requested device or precision is not available")
OUT_OF_MEMORY = Code("E307", "out-of-memory", "building or running the model would need more memory than is available")
TOO_BIG_TO_DRAW = Code("E308", "too-big-to-draw", "a diagram larger than Graphviz lays out in reasonable time")

# E9xx: files and I/O
FILE_NOT_FOUND = Code("E901", "file-not-found", "the file does not exist")
IS_DIRECTORY = Code("E902", "is-directory", "a directory where a file was expected")
NOT_UTF8 = Code("E903", "not-utf8", "the file is not UTF-8 text")
EMPTY = Code("E904", "empty", "the file holds no network")
CANNOT_WRITE = Code("E905", "cannot-write", "an output file could not be written")
DOT_MISSING = Code("E906", "dot-missing", "Graphviz's `dot` program is not installed")
BAD_OUTPUT = Code("E907", "bad-output", "an output path whose extension densedsl cannot write")
BAD_FILE = Code("E908", "bad-file", "an input file (weights, checkpoint, data) that cannot be used")
CANNOT_READ = Code("E909", "cannot-read", "a file that exists but cannot be read")
RUN_EXISTS = Code("E910", "run-exists", "the run directory holds another run, or a run is in progress there")
MISSING_PACKAGE = Code("E911", "missing-package", "an optional package the command needs is not installed")
NOT_REGULAR = Code("E912", "not-regular", "a FIFO, socket or device where a regular file was expected")
CORRUPT = Code("E913", "corrupt", "a checkpoint or weights file whose contents fail their checksum")
DOT_FAILED = Code("E914", "dot-failed", "Graphviz's `dot` program failed to draw the diagram")


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: Code
    message: str                # states the problem: lowercase, no final period
    span: Span | None           # None only for problems with no place in a spec
    hint: str | None = None     # the only place that says how to fix it
    notes: tuple[tuple[Span, str], ...] = ()
    file: str | None = field(default=None)  # the file; taken from the span when there is one

    def __post_init__(self) -> None:
        if self.span is not None and self.file is None:
            object.__setattr__(self, "file", self.span.file)

    @property
    def severity(self) -> Severity:
        return "warning" if self.code.code.startswith("W") else "error"

    @property
    def line(self) -> int | None:
        return self.span.line if self.span is not None else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span is not None else None

    def __str__(self) -> str:
        return format_diagnostic(self)


class SpecError(Exception):
    """Raised by a stage that found errors; carries every diagnostic it collected."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics: tuple[Diagnostic, ...] = tuple(sort_diagnostics(diagnostics))
        super().__init__(format_diagnostics(self.diagnostics))

    def __str__(self) -> str:
        return format_diagnostics(self.diagnostics)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def raise_if_errors(diagnostics: Iterable[Diagnostic]) -> None:
    diagnostics = tuple(diagnostics)
    if has_errors(diagnostics):
        raise SpecError(diagnostics)


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Sort by file and position and drop exact repeats, so output is stable (golden tests)."""
    seen: set[tuple] = set()
    unique = []
    for d in diagnostics:
        key = (d.code.code, d.message, d.file, d.span.start if d.span else -1)
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return sorted(unique, key=lambda d: (d.file or "", d.span.start if d.span else -1))


def _display_column(line_text: str, column: int) -> int:
    return len(line_text[: column - 1].expandtabs())


def format_diagnostic(d: Diagnostic, color: bool = False) -> str:
    red, yellow, blue, bold, reset = (
        ("\x1b[31m", "\x1b[33m", "\x1b[34m", "\x1b[1m", "\x1b[0m") if color else ("",) * 5
    )
    tint = red if d.severity == "error" else yellow
    where = f"{d.span}: " if d.span is not None else (f"{d.file}: " if d.file else "")
    where, message = _printable(printable_line(where)), _printable(d.message)  # names and paths come from users
    lines = [f"{bold}{where}{tint}{d.severity}[{d.code.code}]{reset}{bold}: {message}{reset}"]
    if d.span is not None:
        lines.extend(_excerpt(d.span, tint, reset))
    for span, note in d.notes:
        lines.append(f"{blue}note{reset}: {span}: {note}")
        lines.extend(_excerpt(span, blue, reset))
    if d.hint:
        lines.append(f"{blue}hint{reset}: {_printable(d.hint)}")
    return "\n".join(lines)


def printable(text: str) -> str:
    """User text (a report quoting spec comments, CSV values) made safe for a terminal: control
    characters as U+FFFD, tab and newline kept. Every success line prints user strings through
    this or `printable_line`, as every diagnostic does."""
    return _CONTROL.sub("\ufffd", text)


def printable_line(text: str) -> str:
    """One line of output holding user strings (a file name, a class value): newlines as U+FFFD
    too, so a value cannot start a line of its own."""
    return _LINE_CONTROL.sub("\ufffd", text)


def _printable(text: str, limit: int = 500) -> str:
    """Control characters as U+FFFD: user text must not drive the terminal (escape sequences).
    A line that quotes a megabyte-long name is cut in the middle; the lines of a listing stay
    whole, up to _MAX_LINES of them."""
    lines = text.split("\n")
    if len(lines) > _MAX_LINES:
        lines = lines[:_MAX_LINES - 1] + [f"… and {len(lines) - _MAX_LINES + 1} more lines"]
    return _CONTROL.sub("\ufffd", "\n".join(line if len(line) <= limit else line[: limit - 100] + " … " + line[-97:]
                                            for line in lines))


_MAX_LINES = 60  # of one message or hint


_EXCERPT_WIDTH = 200  # a longer line is cut to a window around the caret
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
_LINE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # all but tab


def _excerpt(span: Span, tint: str, reset: str) -> list[str]:
    """The span's line with a caret under it, if the text may be quoted.

    Which lines may be quoted (docs/errors.md): any text once it has parsed; before that
    (syntax and nesting errors) only text whose first token is the `network` keyword; text
    over a size limit never. So a file that is not a spec (`check /etc/shadow`) is never echoed.
    Binary and non-UTF-8 files never get this far (files.read_source refuses them). Control
    characters print as U+FFFD, so a spec cannot send escape sequences to the terminal.
    """
    if not span.source.quotable:
        return []
    text = span.source.line_text(span.line)
    if not text.strip():
        return []
    text = _CONTROL.sub("\ufffd", text).expandtabs()
    start = _display_column(span.source.line_text(span.line), span.column)
    if span.end_line == span.line:
        end = _display_column(span.source.line_text(span.line), max(span.end_column, span.column + 1))
    else:
        end = len(text)
    width = max(1, end - start)
    if len(text) > _EXCERPT_WIDTH:
        first = max(0, start - _EXCERPT_WIDTH // 3)
        shown = text[first:first + _EXCERPT_WIDTH]
        text = ("…" if first else "") + shown + ("…" if first + _EXCERPT_WIDTH < len(text) else "")
        start = start - first + (1 if first else 0)
        width = max(1, min(width, len(shown) - (start - (1 if first else 0))))
    return ["    " + text, "    " + " " * start + tint + "^" * width + reset]


MAX_SHOWN = 50  # like clang's -ferror-limit: after this many, say how many more there are


def format_diagnostics(diagnostics: Iterable[Diagnostic], color: bool = False) -> str:
    diagnostics = list(diagnostics)
    shown = [format_diagnostic(d, color) for d in diagnostics[:MAX_SHOWN]]
    hidden = diagnostics[MAX_SHOWN:]
    if hidden:
        errors = sum(d.severity == "error" for d in hidden)
        counts = [f"{n} more {kind}{'s' if n != 1 else ''}" for n, kind in
                  ((errors, "error"), (len(hidden) - errors, "warning")) if n]
        shown.append(f"... and {' and '.join(counts)} not shown")
    return "\n\n".join(shown)
