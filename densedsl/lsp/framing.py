"""The LSP base protocol on a byte stream: `Content-Length` framing that survives a bad frame.

pygls 2 reads stdin a line at a time and trusts every header: `Content-Length: 10**12` makes it
allocate the body (a MemoryError that kills the server), and a header without a length, or
with a wrong or negative one, leaves its reader out of step with the frames for good (the
server stays up and answers nothing). `Frames` cuts the stream itself, refuses a length over
`MAX_MESSAGE_BYTES` and, after any bad frame, finds the next `Content-Length:` header and goes
on from there, so the client's later messages are answered.

Resynchronising is sound because the anchor it looks for, `Content-Length: <digits>` followed
by a raw CR LF, cannot occur inside a valid JSON body (a JSON string holds no raw CR, and the
words are no JSON outside one): when it shows up inside a frame, that frame is broken and the
anchor starts the next one. Nothing here imports pygls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# The largest message body accepted. The server analyses documents of at most 64 KiB
# (document.MAX_DOCUMENT_CHARS) but must still read the didOpen of a larger one to refuse it
# with a diagnostic; 64 MiB is far past any real message and small enough to buffer.
MAX_MESSAGE_BYTES = 64 * 2**20
# Headers are a line or two (`Content-Length`, maybe `Content-Type`); more is not a header.
MAX_HEADER_BYTES = 8 * 1024

_ANCHOR = re.compile(rb"Content-Length:[ \t]*\d+\r\n", re.IGNORECASE)
_HEADER_LINE = re.compile(rb"([!-9;-~]+):[ \t]*(.*)")   # a field name (no colon), then its value
_ANCHOR_MAX = 64   # longer than any anchor worth finding: kept when a skipped stretch is cut


@dataclass
class Problem:
    """A frame that could not be read: what was wrong, for the server's log."""

    message: str


@dataclass
class Frames:
    """Feed it bytes as they arrive; `next()` gives each message body parsed as JSON, a
    `Problem` when it starts skipping a bad stretch, or None when it needs more bytes."""

    limit: int = MAX_MESSAGE_BYTES
    buffer: bytearray = field(default_factory=bytearray)
    skipping: bool = False   # looking for the next anchor (a bad stretch is being dropped)
    declared: int | None = None   # the length of the message being received, once its header is in
    _searched: int = 0   # how far an incomplete body has been searched for an anchor

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def incomplete(self) -> tuple[int, int] | None:
        """(bytes received, bytes declared) of a message whose body is still arriving."""
        if self.skipping or self.declared is None:
            return None
        return len(self.buffer), self.declared

    def next(self) -> Any | Problem | None:
        self.declared = None
        if self.skipping:
            found = _ANCHOR.search(self.buffer)
            if found is None:
                del self.buffer[:max(0, len(self.buffer) - _ANCHOR_MAX)]
                return None
            del self.buffer[:found.start()]
            self.skipping = False
        line_end = self.buffer.find(b"\r\n")
        if line_end < 0:
            return self._skip(1, f"a header line longer than {MAX_HEADER_BYTES:,} bytes") \
                if len(self.buffer) > MAX_HEADER_BYTES else None
        if not _HEADER_LINE.fullmatch(self.buffer[:line_end]):
            return self._skip(0, f"bytes that are not an LSP header ({_shown(self.buffer[:line_end])})")
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return self._skip(1, f"a header longer than {MAX_HEADER_BYTES:,} bytes") \
                if len(self.buffer) > MAX_HEADER_BYTES else None
        length, problem = _content_length(bytes(self.buffer[:end]), self.limit)
        if problem is not None:
            return self._skip(end + 4, problem)
        start = end + 4
        if len(self.buffer) < start + length:
            # an anchor inside the partial body: the declared length is too long and the next
            # message has begun (waiting for the rest would swallow it, and all after it)
            found = _ANCHOR.search(self.buffer, max(start, self._searched - _ANCHOR_MAX))
            self._searched = len(self.buffer)
            if found is not None:
                return self._drop(found.start(), f"a message shorter than its Content-Length "
                                                 f"({length:,} bytes)")
            self.declared = length
            return None
        body = bytes(self.buffer[start:start + length])
        try:
            value = json.loads(body)
        except (ValueError, RecursionError) as e:   # JSONDecodeError, UnicodeDecodeError are ValueErrors
            found = _ANCHOR.search(body)
            if found is not None:
                return self._drop(start + found.start(), f"a message whose Content-Length "
                                                         f"({length:,}) runs into the next one")
            # a length too short leaves the rest of the body ahead: skip it, silently
            return self._skip(start + length, f"a message that is not JSON ({_reason(e)})")
        self._drop(start + length)
        return value

    def _drop(self, n: int, why: str = "") -> Problem | None:
        del self.buffer[:n]
        self._searched = 0
        return Problem(f"skipped {n:,} bytes: {why}") if why else None

    def _skip(self, n: int, why: str) -> Problem:
        """Drop `n` bytes, then everything up to the next anchor (as it arrives)."""
        del self.buffer[:n]
        self._searched = 0
        self.skipping = True
        return Problem(f"skipped {why}, up to the next Content-Length header")


def _content_length(header: bytes, limit: int) -> tuple[int, str | None]:
    """The body length a header block declares, or why it declares none that can be used."""
    length = None
    for line in header.split(b"\r\n"):
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            return 0, f"a header line that is not 'Name: value' ({_shown(line)})"
        if match.group(1).lower() != b"content-length" or length is not None:
            continue
        value = match.group(2).strip()
        if not value.isdigit():
            return 0, f"a Content-Length that is not a byte count ({_shown(value)})"
        length = int(value)
        if length > limit:
            return 0, (f"a Content-Length of {length:,} bytes, over the {limit:,} a message may "
                       "have")
    if length is None:
        return 0, "a header without a Content-Length"
    return length, None


def _shown(raw: bytes | bytearray) -> str:
    text = raw[:40].decode("utf-8", "replace")
    return repr(text + ("…" if len(raw) > 40 else ""))


def _reason(e: Exception) -> str:
    return "nested too deeply" if isinstance(e, RecursionError) else str(e).split("\n")[0][:80]
