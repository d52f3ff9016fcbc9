"""`densedsl lsp` keeps answering (tracker issue 24): bad frames, bad requests, large specs.

The stream tests drive the real server process with raw bytes (pytest-lsp's client only writes
well-formed frames): after each broken frame, a valid request must still get its answer.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("pygls.lsp.server")

from lsprotocol import types

from densedsl.lsp import document, features
from densedsl.lsp.document import AnalysisCache, analyze_text, estimated_bytes
from densedsl.lsp.framing import MAX_MESSAGE_BYTES, Frames, Problem

ROOT = Path(__file__).resolve().parent.parent
DN121 = (ROOT / "specs" / "densenet121.dense").read_text()
WAIT = 60  # seconds an answer may take on a loaded machine (a missing answer fails, not a slow one)


def frame(message: dict | bytes, length: int | str | None = None, header: bytes | None = None) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    if header is None:
        header = f"Content-Length: {len(body) if length is None else length}\r\n\r\n".encode()
    return header + body


class RawClient:
    """The server as a subprocess, written to byte by byte; what it sends is parsed here."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from densedsl.cli import main; sys.exit(main(['lsp']))"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.messages: queue.Queue = queue.Queue()
        self.logs: list[str] = []
        self.published: list[dict] = []
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        self.next_id = 0

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := out.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line or length is None:
                self.messages.put(None)  # the server closed its output
                return
            self.messages.put(json.loads(out.read(length)))

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, method: str, params: dict, raw_id: object = None) -> dict:
        """Send a request; return its response (failing when none comes)."""
        self.next_id += 1
        msg_id = self.next_id if raw_id is None else raw_id
        self.send(frame({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}))
        return self.response(msg_id)

    def response(self, msg_id: object) -> dict:
        return self.wait(lambda m: m.get("id") == msg_id and "method" not in m, f"request {msg_id!r}")

    def diagnostics(self, version: int) -> list[dict]:
        """The diagnostics published for `version` of the document."""
        found = [p for p in self.published if p.get("version") == version]
        if not found:
            self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                      and m["params"].get("version") == version, f"diagnostics of version {version}")
            found = [p for p in self.published if p.get("version") == version]
        return found[-1]["diagnostics"]

    def wait(self, wanted, what: str) -> dict:
        while True:
            try:
                message = self.messages.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no answer: {what} (server alive: "
                                     f"{self.proc.poll() is None})") from None
            assert message is not None, (f"the server stopped (exit {self.proc.wait()}): "
                                         + b"".join(self.stderr).decode(errors="replace")[-2000:])
            if message.get("method") == "window/logMessage":
                self.logs.append(message["params"]["message"])
            if message.get("method") == "textDocument/publishDiagnostics":
                self.published.append(message["params"])
            if wanted(message):
                return message

    def notify(self, method: str, params: dict) -> None:
        self.send(frame({"jsonrpc": "2.0", "method": method, "params": params}))

    def initialize(self) -> None:
        reply = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {},
                                            "initializationOptions": {"debounce": 0}})
        assert "capabilities" in reply["result"]
        self.notify("initialized", {})

    def open(self, uri: str, text: str) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "densedsl", "version": 1, "text": text}})

    def change(self, uri: str, version: int, text: str) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"text": text}]})

    def hover(self, uri: str, line: object, character: object) -> dict:
        return self.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                   "position": {"line": line, "character": character}})

    def close(self) -> int:
        if self.proc.poll() is None:
            self.request("shutdown", None)
            self.notify("exit", None)
        code = self.proc.wait(timeout=WAIT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        return code


@pytest.fixture
def raw():
    client = RawClient()
    client.initialize()
    yield client
    client.close()


URI = (ROOT / "tests" / "lsp-raw.dense").as_uri()
LINE_24 = next(i for i, line in enumerate(DN121.split("\n")) if "dense layers=24" in line)


def _answers(raw: RawClient) -> None:
    """A valid hover after the damage is answered, with the figures of the line."""
    reply = raw.hover(URI, LINE_24, 6)
    assert "**denseblock3**" in reply["result"]["contents"]["value"]


BROKEN_FRAMES = {
    # a length past any message: pygls allocated it (MemoryError, the process died)
    "absurd length": frame({"jsonrpc": "2.0", "method": "x"}, 10**12),
    "no length": frame({"jsonrpc": "2.0", "method": "x"}, header=b"Content-Type: x\r\n\r\n"),
    "negative length": frame({"jsonrpc": "2.0", "method": "x"}, -5),
    "length too short": frame({"jsonrpc": "2.0", "id": 999, "method": "shutdown"}, 10),
    "length too long": frame({"jsonrpc": "2.0", "method": "x"}, 5000),
    "not a header": b"hello\r\nworld {{{\r\n\r\n",
    "not json": frame(b"\xff\xfe not json"),
    "json, not json-rpc": frame(b"[1, 2, 3]"),
    "json nested too deeply": frame(b"[" * 100_000 + b"]" * 100_000),
}


@pytest.mark.parametrize("damage", list(BROKEN_FRAMES), ids=list(BROKEN_FRAMES))
def test_a_broken_frame_is_skipped_and_later_requests_are_answered(raw: RawClient, damage: str):
    raw.open(URI, DN121)
    _answers(raw)
    raw.send(BROKEN_FRAMES[damage])
    _answers(raw)
    _answers(raw)
    assert any(log.startswith("densedsl lsp: skipped") for log in raw.logs), raw.logs
    assert b"Traceback" not in b"".join(raw.stderr) or damage in ("not json",)
    assert raw.close() == 0


def test_every_broken_frame_in_one_session(raw: RawClient):
    """One after another, each split across writes: the stream resynchronises every time."""
    raw.open(URI, DN121)
    for data in BROKEN_FRAMES.values():
        for i in range(0, len(data), 7):
            raw.send(data[i:i + 7])
        _answers(raw)
    assert raw.proc.poll() is None


@pytest.mark.parametrize("line, character", [(-1, 0), (2**31, 0), (0, -1), (1.5, 0), ("x", 0),
                                             (None, 0), (2**31 - 1, 2**31 - 1)])
def test_a_request_with_an_invalid_position_gets_a_response(raw: RawClient, line, character):
    raw.open(URI, DN121)
    reply = raw.hover(URI, line, character)
    if isinstance(line, int) and 0 <= line < 2**31 and 0 <= character < 2**31 or line == 1.5:
        assert "error" not in reply  # a position past the text, or a float the converter takes
    else:
        assert reply["error"]["code"] == -32602  # invalid params
    _answers(raw)


def test_a_request_with_unreadable_parameters_and_a_string_id_is_answered(raw: RawClient):
    reply = raw.request("textDocument/definition", {"textDocument": {"uri": URI}, "position": {}},
                        raw_id="abc")
    assert reply["error"]["code"] == -32602
    raw.open(URI, DN121)
    _answers(raw)


# --- an error keeps the figures of the last text without one ------------------------------------

def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n")) if needle in line)


def test_an_error_keeps_figures_on_the_lines_it_did_not_touch(raw: RawClient):
    """A misspelt setting: this text's figures without it (even with no earlier text to fall
    back on); an error that leaves nothing to analyse: the figures of the text before."""
    typo = DN121.replace("dense layers=12", "dense layers=12 grwoth=32")
    raw.open(URI, typo)
    reply = raw.hover(URI, LINE_24, 6)
    value = reply["result"]["contents"]["value"]
    assert "**denseblock3**" in value and features.PARTIAL_NOTE in value
    assert raw.hover(URI, _line(typo, "grwoth"), 6)["result"] is None  # the edited line: none
    hints = raw.request("textDocument/inlayHint", {"textDocument": {"uri": URI}, "range": {
        "start": {"line": 0, "character": 0}, "end": {"line": 99, "character": 0}}})["result"]
    shown = {h["position"]["line"]: h for h in hints}
    assert shown[LINE_24]["label"] == "→ 1024x14x14" and shown[LINE_24]["tooltip"] == features.PARTIAL_NOTE
    assert _line(typo, "grwoth") not in shown
    # the error is still published
    assert [d["code"] for d in raw.diagnostics(1)] == ["E102"]

    # an unknown statement: nothing of this text analyses, the figures of the one before stay
    unknown = DN121.replace("    dense layers=12", "    dens layers=12")
    raw.change(URI, 2, unknown)
    value = raw.hover(URI, LINE_24, 6)["result"]["contents"]["value"]
    assert "**denseblock3**" in value and features.STALE_NOTE in value
    assert [d["code"] for d in raw.diagnostics(2)] == ["E101"]

    # a syntax error (the file does not parse): the other lines keep theirs too
    broken = DN121.replace("    transition\n", "    transition (\n", 1)
    raw.change(URI, 3, broken)
    value = raw.hover(URI, LINE_24, 6)["result"]["contents"]["value"]
    assert "**denseblock3**" in value and features.STALE_NOTE in value
    # fixed: fresh figures, no note
    raw.change(URI, 4, DN121)
    value = raw.hover(URI, LINE_24, 6)["result"]["contents"]["value"]
    assert "**denseblock3**" in value and features.STALE_NOTE not in value


def test_stale_figures_follow_moved_lines_and_skip_inserted_ones():
    good = analyze_text(DN121, "a.dense")
    # two lines inserted above block 3, one an unknown statement: block 3's figures move down
    edited = DN121.replace("    dense layers=24", "    # a note\n    dens layers=2\n    dense layers=24", 1)
    snap = analyze_text(edited, "a.dense", previous=good)
    [state] = snap.networks
    assert state.stale and [d.code.code for d in snap.diagnostics] == ["E101"]
    pos = features.Positions(snap.source, len)
    moved = features.hover(snap, pos, types.Position(line=_line(edited, "dense layers=24"), character=6))
    assert "**denseblock3**" in moved.contents.value
    assert features.hover(snap, pos, types.Position(line=_line(edited, "dens layers=2"), character=6)) is None
    # a stale state lends the figures of its origin, not its own moved copy
    again = analyze_text(edited + "\n", "a.dense", previous=snap)
    assert again.networks[0].origin is good.networks[0]


def test_a_misspelt_setting_leaves_the_rest_of_the_text_analysed():
    typo = DN121.replace("dense layers=12", "dense layers=12 growth=32 grwoth=32").replace(
        "dense layers=24", "dense layers=24 bottleneck=4 dropot=0")
    snap = analyze_text(typo, "a.dense")
    [state] = snap.networks
    assert state.partial and not state.stale
    assert sorted(d.code.code for d in snap.diagnostics) == ["E102", "E102"]
    assert state.analysis.params == analyze_text(DN121, "a.dense").networks[0].analysis.params
    shown = {s.span.line for s in state.stages}
    assert _line(typo, "grwoth") + 1 not in shown and _line(typo, "dropot") + 1 not in shown
    assert _line(typo, "dense layers=16") + 1 in shown
    # an error outside a setting (an unknown statement) leaves nothing to analyse
    assert not analyze_text(typo.replace("    transition\n", "    transitio\n", 1), "a").networks[0].stages


# --- the frame parser itself --------------------------------------------------------------------

def _cut(data: bytes, chunk: int) -> list:
    frames, out = Frames(), []
    for i in range(0, len(data), chunk):
        frames.feed(data[i:i + chunk])
        while (item := frames.next()) is not None:
            out.append(item)
    return out


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize("damage", list(BROKEN_FRAMES), ids=list(BROKEN_FRAMES))
def test_frames_resynchronise_after_each_kind_of_damage(damage: str, chunk: int):
    good = [{"jsonrpc": "2.0", "id": i, "method": "m"} for i in range(3)]
    out = _cut(frame(good[0]) + BROKEN_FRAMES[damage] + frame(good[1]) + frame(good[2]), chunk)
    messages = [x for x in out if not isinstance(x, Problem)]
    problems = [x for x in out if isinstance(x, Problem)]
    if damage == "json, not json-rpc":
        assert messages == [good[0], [1, 2, 3], good[1], good[2]] and not problems
    else:
        assert messages == good
        assert len(problems) == 1  # one line in the log per bad frame, however it arrives


def test_frames_hold_no_more_than_the_limit():
    frames = Frames(limit=1000)
    frames.feed(b"Content-Length: 1001\r\n\r\n" + b"x" * 5000)
    assert isinstance(frames.next(), Problem)
    assert frames.next() is None
    assert len(frames.buffer) <= 64  # the skipped body is not kept
    assert MAX_MESSAGE_BYTES >= 64 * 2**20  # a 64 KiB document, JSON-escaped, fits many times


# --- large specs: hover and definition are lookups ----------------------------------------------

def chain(n: int) -> str:
    """`n` network parameters, each the previous plus one (3,000: 40 KB, the issue's spec)."""
    params = ", ".join(["p0=1"] + [f"p{i}=p{i - 1}+1" for i in range(1, n)])
    return f"network chain({params}) {{\n    input 3x32x32\n    dense layers=2 growth=p{n - 1}\n    head classes=10\n}}\n"


def test_hover_and_definition_walk_no_expression(monkeypatch):
    """The parameters are indexed once per snapshot: a request walks no expression (it walked
    every parameter's uses, for each parameter: 25 s on 3,000 chained parameters)."""
    text = chain(300)
    snap = analyze_text(text, "chain.dense")
    pos = features.Positions(snap.source, len)
    walked = []
    real = document.names
    monkeypatch.setattr(document, "names", lambda e: walked.append(e) or real(e))
    dense = types.Position(line=2, character=5)
    use = types.Position(line=2, character=text.split("\n")[2].index("p299") + 2)
    hover = features.hover(snap, pos, dense)
    assert "growth 300" in hover.contents.value
    where = features.definition(snap, pos, "file:///c", use)
    assert where.range.start.character == text.index("p299=")
    on_param = features.hover(snap, pos, use)
    assert "**parameter `p299`** = 300" in on_param.contents.value
    assert walked == []


def test_definition_and_references_on_chained_parameters_over_stdio(raw: RawClient):
    text = chain(3000)
    raw.open(URI, text)
    line0 = text.split("\n")[0]
    use = line0.index("p2999=") + len("p2999=")  # p2998 in p2999=p2998+1
    reply = raw.request("textDocument/definition", {"textDocument": {"uri": URI},
                                                    "position": {"line": 0, "character": use + 1}})
    assert reply["result"]["range"]["start"] == {"line": 0, "character": line0.index("p2998=")}
    refs = raw.request("textDocument/references", {
        "textDocument": {"uri": URI}, "position": {"line": 0, "character": use},
        "context": {"includeDeclaration": True}})
    assert len(refs["result"]) == 2
    touching = raw.hover(URI, 0, line0.index("p1=") + 2)  # end of `p1` touches `=`: the declaration
    assert "**parameter `p1`** = 2" in touching["result"]["contents"]["value"]


# --- the cache is bounded by bytes ---------------------------------------------------------------

def big(layers: int) -> str:
    return (f"network big{layers} {{\n    input 3x32x32\n    dense layers={layers} growth=1 "
            "bottleneck=off\n    head classes=10\n}\n")


def test_the_analysis_cache_is_bounded_by_estimated_bytes():
    one = estimated_bytes(AnalysisCache().analyze(analyze_text(big(200), "a").networks[0].network)[1])
    cache = AnalysisCache(max_bytes=int(one * 2.5))
    for layers in range(200, 205):  # five networks of about the same size: two and a half fit
        analyze_text(big(layers), "a", cache)
    assert len(cache.entries) == 2 and cache.bytes <= cache.max_bytes
    assert [n.name for n in cache.entries] == ["big203", "big204"]  # the newest stay
    huge = AnalysisCache(max_bytes=1)
    analyze_text(big(10), "a", huge)
    assert len(huge.entries) == 1  # the newest is kept whatever its size
    analyze_text(big(11), "a", huge)
    assert [n.name for n in huge.entries] == ["big11"]


def test_the_byte_estimate_follows_the_graph():
    small, large = (estimated_bytes(AnalysisCache().analyze(analyze_text(big(n), "a").networks[0].network)[1])
                    for n in (50, 400))
    # a block's edges grow with the square of its layers: so does what an analysis holds
    assert large > 30 * small
    assert document.MAX_CACHE_BYTES >= 64 * estimated_bytes(
        AnalysisCache().analyze(analyze_text(DN121, "a").networks[0].network)[1])


def test_the_server_exits_cleanly_after_shutdown_and_exit():
    """`densedsl lsp` closes stdout when its client exits; the CLI's final flush (which reports a
    full disk under stdout) must not turn that into an internal error (exit 3)."""
    client = RawClient()
    assert client.close() == 0
