"""`densedsl lsp`: the language server, on pygls 2, over stdio.

The server keeps one `Snapshot` per open document. Parsing, resolving and analysing run on one
worker thread, so the event loop keeps answering (completion needs no analysis) while a large
network is analysed; requests that need the figures wait for the snapshot of the current text.
Diagnostics are published after the edits pause for `debounce` seconds, so a burst of
keystrokes costs one analysis, and only for the version they describe.

The stdio stream is read by `framing.Frames`, not pygls' reader: a bad frame (an absurd or
missing Content-Length, a body that is not JSON) is logged and skipped, and a request pygls
cannot read (a position on line -1) gets an error response, so the server never stops answering.

Options (LSP `initializationOptions`, or the `densedsl` section of `workspace/didChangeConfiguration`):
`inlayHints` (true), `debounce` (seconds, 0.15) and `docsUrl` (where docs/errors.md is; the
checkout's copy when there is one).
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidRequest
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from .. import __version__
from ..core.source import Source
from . import features, framing
from .document import AnalysisCache, Snapshot, analyze_text, parse_text

_ERRORS_MD = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
logger = logging.getLogger(__name__)

# How long a message may stay half-received before the server says, once, that it is waiting.
STALL_SECONDS = 5.0
_READ_CHUNK = 64 * 1024


class DenseLanguageServer(LanguageServer):
    def __init__(self) -> None:
        # Full sync: the client sends the whole text on each change. Specs are small, and it
        # keeps our line numbering (only \n, \r\n, \r break lines) the client's, which pygls'
        # incremental patching (str.splitlines, which also breaks at \f and \u2028) does not.
        super().__init__("densedsl", __version__,
                         text_document_sync_kind=types.TextDocumentSyncKind.Full)
        self.cache = AnalysisCache()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="densedsl-analysis")
        self.snapshots: dict[str, Snapshot] = {}
        self.running: dict[str, tuple[str, asyncio.Future]] = {}
        self.pending: dict[str, asyncio.Task] = {}
        self.debounce = 0.15
        self.show_inlay_hints = True
        self.docs_url: str | None = _ERRORS_MD.as_uri() if _ERRORS_MD.is_file() else None

    def configure(self, options: Any) -> None:
        if not isinstance(options, dict):
            return
        if isinstance(options.get("inlayHints"), bool):
            self.show_inlay_hints = options["inlayHints"]
        if isinstance(options.get("debounce"), (int, float)) and 0 <= options["debounce"] <= 10:
            self.debounce = float(options["debounce"])
        if isinstance(options.get("docsUrl"), str):
            self.docs_url = options["docsUrl"] or None

    # --- the stream ----------------------------------------------------------------------------

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """pygls' stdio server, reading through `framing.Frames` instead of pygls' reader (which
        trusts every Content-Length: see framing.py). `stdin` must have `read1` (a buffered
        stream: sys.stdin.buffer, a pipe's, BytesIO)."""
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            # the cast: typeshed types sys.stdin.buffer as BinaryIO, but it is a BufferedReader,
            # which has read1 (a read that returns what has arrived instead of waiting for more)
            asyncio.run(self._read(cast(io.BufferedIOBase, stdin or sys.stdin.buffer)))
        except BrokenPipeError:
            logger.error("the connection to the client is lost; shutting down")
        except (KeyboardInterrupt, SystemExit):  # `exit` ends the loop by sys.exit, as in pygls
            pass
        finally:
            self.shutdown()

    async def _read(self, stdin: io.BufferedIOBase) -> None:
        assert self._stop_event is not None  # start_io sets it before it runs this loop
        loop = asyncio.get_running_loop()
        frames = framing.Frames()
        reading: asyncio.Future | None = None
        warned = False
        while not self._stop_event.is_set():
            if reading is None:
                reading = loop.run_in_executor(self.thread_pool, stdin.read1, _READ_CHUNK)
            half = frames.incomplete()
            done, _ = await asyncio.wait({reading}, timeout=STALL_SECONDS if half and not warned else None)
            if not done:
                assert half is not None  # only a half-received message sets a timeout
                warned = True
                self.report(f"waiting for the rest of a message: {half[0]:,} bytes received, its "
                            f"header declares {half[1]:,} (a Content-Length larger than the message "
                            "stalls the connection until more arrives)")
                continue
            data, reading, warned = reading.result(), None, False
            if not data:
                return  # the client closed stdin
            frames.feed(data)
            while (item := frames.next()) is not None:
                if isinstance(item, framing.Problem):
                    self.report(item.message)
                else:
                    self.dispatch(item)

    def dispatch(self, raw: Any) -> None:
        """Hand one parsed message to pygls; answer a request pygls cannot read with an error."""
        if not isinstance(raw, dict) or raw.get("jsonrpc") != "2.0":
            self.report("skipped a message that is not a JSON-RPC 2.0 object")
            return
        try:
            message = self.protocol.structure_message(raw)
        except JsonRpcException as e:
            # pygls only logs this: a request with a bad parameter (a position on line -1) would
            # never be answered, and a client that awaits it waits for ever
            msg_id = raw.get("id")
            if "method" in raw and isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool):
                self.protocol._send_response(msg_id, error=e.to_response_error())
            self.report(f"could not read a {raw.get('method', 'message')!r} message: {e.message}")
            return
        self.protocol.handle_message(message)

    def report(self, text: str) -> None:
        """A problem with what the client sent: to stderr and the client's log."""
        logger.warning("densedsl lsp: %s", text)
        self.window_log_message(types.LogMessageParams(type=types.MessageType.Warning,
                                                       message=f"densedsl lsp: {text}"))

    # --- snapshots ----------------------------------------------------------------------------

    async def snapshot(self, uri: str) -> Snapshot:
        """The analysis of the document's current text (computed now if it is not yet)."""
        while True:
            doc = self.workspace.text_documents.get(uri)
            if doc is None:  # never opened, or closed: nothing to read (and no disk to touch)
                return Snapshot(Source.from_text("", uri))
            text = doc.source
            known = self.snapshots.get(uri)
            if known is not None and known.source.text == text:
                return known
            running = self.running.get(uri)
            if running is None or running[0] != text:
                future = asyncio.get_running_loop().run_in_executor(
                    self.worker, self._analyze_if_current, uri, text)
                running = self.running[uri] = (text, future)
            # shielded: a cancelled publication must not cancel the analysis a hover also awaits
            snap = await asyncio.shield(running[1])
            if self.running.get(uri) is running:
                del self.running[uri]
            if snap is not None:
                self.snapshots[uri] = snap
                return snap
            # superseded by an edit while it waited for the worker: analyse the newer text

    def _analyze_if_current(self, uri: str, text: str) -> Snapshot | None:
        """On the worker thread: analyse `text` unless an edit has replaced it meanwhile, so a
        burst of edits queues at most one stale analysis, not one per keystroke."""
        doc = self.workspace.text_documents.get(uri)
        if doc is None or doc.source != text:
            return None
        return analyze_text(text, to_fs_path(uri) or uri, self.cache, self.snapshots.get(uri))

    def parsed(self, uri: str) -> Snapshot:
        """The analysed snapshot when it is current, else a parse of the current text."""
        doc = self.workspace.text_documents.get(uri)
        text = doc.source if doc is not None else ""
        known = self.snapshots.get(uri)
        if known is not None and known.source.text == text:
            return known
        return parse_text(text, to_fs_path(uri) or uri)

    def positions(self, snap: Snapshot) -> features.Positions:
        return features.Positions(snap.source, self.workspace.position_codec.client_num_units)

    def schedule(self, uri: str, delay: float) -> None:
        """Publish diagnostics once the edits pause; a newer edit cancels the older wait."""
        old = self.pending.pop(uri, None)
        if old is not None:
            old.cancel()
        self.pending[uri] = asyncio.get_running_loop().create_task(self._publish_later(uri, delay))

    async def _publish_later(self, uri: str, delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            if uri not in self.workspace.text_documents:
                return
            version = self.workspace.text_documents[uri].version
            snap = await self.snapshot(uri)
            doc = self.workspace.text_documents.get(uri)
            if doc is None or doc.version != version:
                return  # a newer edit has its own publication coming
            pos = self.positions(snap)
            self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
                uri=uri, version=version,
                diagnostics=[features.to_lsp_diagnostic(x, pos, uri, self.docs_url)
                             for x in snap.diagnostics]))
        except asyncio.CancelledError:
            raise
        except Exception:  # the server's one catch-all, like cli.main's: a bug, not the user's spec
            self.window_log_message(types.LogMessageParams(type=types.MessageType.Error,
                                                           message=traceback.format_exc()))
            self.window_show_message(types.ShowMessageParams(
                type=types.MessageType.Error,
                message="densedsl: internal error while checking this file; this is a bug in "
                        "densedsl, please report it with the file and the server's log"))
        finally:
            if self.pending.get(uri) is asyncio.current_task():
                del self.pending[uri]

    def forget(self, uri: str) -> None:
        task = self.pending.pop(uri, None)
        if task is not None:
            task.cancel()
        self.snapshots.pop(uri, None)
        self.running.pop(uri, None)


server = DenseLanguageServer()


@server.feature(types.INITIALIZE)
def _initialize(ls: DenseLanguageServer, params: types.InitializeParams) -> None:
    ls.configure(params.initialization_options)


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
def _configuration(ls: DenseLanguageServer, params: types.DidChangeConfigurationParams) -> None:
    settings = params.settings
    ls.configure(settings.get("densedsl", settings) if isinstance(settings, dict) else None)


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def _did_open(ls: DenseLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, 0)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def _did_change(ls: DenseLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, ls.debounce)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def _did_save(ls: DenseLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.schedule(params.text_document.uri, 0)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def _did_close(ls: DenseLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.forget(uri)
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


@server.feature(types.TEXT_DOCUMENT_HOVER)
async def _hover(ls: DenseLanguageServer, params: types.HoverParams) -> types.Hover | None:
    snap = await ls.snapshot(params.text_document.uri)
    return features.hover(snap, ls.positions(snap), params.position)


@server.feature(types.TEXT_DOCUMENT_INLAY_HINT)
async def _inlay_hints(ls: DenseLanguageServer, params: types.InlayHintParams) -> list[types.InlayHint]:
    if not ls.show_inlay_hints:
        return []
    snap = await ls.snapshot(params.text_document.uri)
    return features.inlay_hints(snap, ls.positions(snap), params.range)


@server.feature(types.TEXT_DOCUMENT_COMPLETION,
                types.CompletionOptions(trigger_characters=[" ", "="]))
def _completion(ls: DenseLanguageServer, params: types.CompletionParams) -> types.CompletionList:
    snap = ls.parsed(params.text_document.uri)
    items = features.completion(snap, ls.positions(snap), params.position)
    return types.CompletionList(is_incomplete=False, items=items)


@server.feature(types.TEXT_DOCUMENT_FORMATTING)
async def _formatting(ls: DenseLanguageServer,
                      params: types.DocumentFormattingParams) -> list[types.TextEdit] | None:
    snap = await ls.snapshot(params.text_document.uri)
    return features.formatting(snap, ls.positions(snap))


@server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
async def _symbols(ls: DenseLanguageServer,
                   params: types.DocumentSymbolParams) -> list[types.DocumentSymbol]:
    snap = await ls.snapshot(params.text_document.uri)
    return features.document_symbols(snap, ls.positions(snap))


@server.feature(types.TEXT_DOCUMENT_DEFINITION)
async def _definition(ls: DenseLanguageServer, params: types.DefinitionParams) -> types.Location | None:
    snap = await ls.snapshot(params.text_document.uri)
    return features.definition(snap, ls.positions(snap), params.text_document.uri, params.position)


@server.feature(types.TEXT_DOCUMENT_REFERENCES)
async def _references(ls: DenseLanguageServer, params: types.ReferenceParams) -> list[types.Location]:
    snap = await ls.snapshot(params.text_document.uri)
    return features.references(snap, ls.positions(snap), params.text_document.uri, params.position,
                               params.context.include_declaration)


@server.feature(types.TEXT_DOCUMENT_PREPARE_RENAME)
async def _prepare_rename(ls: DenseLanguageServer,
                          params: types.PrepareRenameParams) -> types.Range | None:
    snap = await ls.snapshot(params.text_document.uri)
    return features.prepare_rename(snap, ls.positions(snap), params.position)


@server.feature(types.TEXT_DOCUMENT_RENAME)
async def _rename(ls: DenseLanguageServer, params: types.RenameParams) -> types.WorkspaceEdit | None:
    snap = await ls.snapshot(params.text_document.uri)
    try:
        return features.rename(snap, ls.positions(snap), params.text_document.uri, params.position,
                               params.new_name)
    except features.RenameRefused as e:
        raise JsonRpcInvalidRequest(str(e)) from None


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]))
async def _code_actions(ls: DenseLanguageServer,
                        params: types.CodeActionParams) -> list[types.CodeAction]:
    snap = await ls.snapshot(params.text_document.uri)
    return features.code_actions(snap, ls.positions(snap), params.text_document.uri, params.range,
                                 ls.docs_url)


def serve() -> None:
    """Talk LSP over stdin/stdout until the client says exit."""
    server.start_io()
