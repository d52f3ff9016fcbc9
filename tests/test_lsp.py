"""`densedsl lsp` end to end: a real LSP client (pytest-lsp) drives the server over stdio.

One server serves the whole module (starting one costs a second or two, mostly importing
lsprotocol); each test opens its own document URI. The server runs under a small wrapper that
records, at exit, whether torch was ever imported: the fixture's teardown asserts it was not,
after every feature below has run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("pygls.lsp.server")  # pygls 2: the 1.x API lives elsewhere
pytest_lsp = pytest.importorskip("pytest_lsp")

from lsprotocol import types  # noqa: E402
from pygls.protocol import default_converter  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities  # noqa: E402
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features  # noqa: E402

import densedsl  # noqa: E402
from densedsl.core.source import Source  # noqa: E402
from densedsl.language import resolve  # noqa: E402
from densedsl.language.fmt import format_spec  # noqa: E402
from densedsl.language.syntax import parse_source  # noqa: E402
from densedsl.lsp import features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# where the server writes whether it imported torch; see the fixture
TORCH_MARKER = Path(tempfile.gettempdir()) / f"densedsl-lsp-torch-{os.getpid()}"

# The server as `densedsl lsp` runs it, plus an exit hook that writes whether torch was loaded.
_SERVER = (
    "import atexit, sys\n"
    "marker = sys.argv[1]\n"
    "atexit.register(lambda: open(marker, 'w').write(str('torch' in sys.modules)))\n"
    "from densedsl.cli import main\n"
    "sys.exit(main(['lsp']))\n"
)


def _recording_client() -> LanguageClient:
    """pytest-lsp's client, but keeping every publishDiagnostics with its version."""
    client = LanguageClient(converter_factory=default_converter)
    client.published = []

    def record(client: LanguageClient, params: types.PublishDiagnosticsParams) -> None:
        client.published.append(params)
        client.diagnostics[params.uri] = params.diagnostics

    register_lsp_features(client, {**DEFAULT_CLIENT_FEATURES,
                                   types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS: record})
    return client


@pytest_lsp.fixture(
    scope="module",
    config=ClientServerConfig(server_command=[sys.executable, "-c", _SERVER, str(TORCH_MARKER)],
                              client_factory=_recording_client),
)
async def client(lsp_client: LanguageClient):
    TORCH_MARKER.unlink(missing_ok=True)
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        initialization_options={"debounce": 0.02},
    ))
    yield
    await lsp_client.shutdown_session()
    loaded = TORCH_MARKER.read_text()
    TORCH_MARKER.unlink()
    assert loaded == "False", "the language server imported torch"


in_session = pytest.mark.asyncio(loop_scope="module")  # the tests that talk to the server

_versions: dict[str, int] = {}


def _open(client: LanguageClient, name: str, text: str) -> str:
    uri = (ROOT / "tests" / f"lsp-{name}.dense").as_uri()
    _versions[uri] = 1
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="densedsl", version=1, text=text)))
    return uri


def _change(client: LanguageClient, uri: str, text: str) -> int:
    _versions[uri] += 1
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=_versions[uri]),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))
    return _versions[uri]


async def _diagnostics(client: LanguageClient, uri: str, version: int = 1) -> list[types.Diagnostic]:
    """The diagnostics published for `version` of the document (waits up to 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for p in client.published:
            if p.uri == uri and p.version == version:
                return list(p.diagnostics)
        await asyncio.sleep(0.01)
    raise AssertionError(f"no diagnostics published for {uri} version {version}")


def _doc(uri: str) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri=uri)


def _apply(text: str, edits: list[types.TextEdit]) -> str:
    """Apply LSP edits (ASCII text: code units are characters)."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def offset(p: types.Position) -> int:
        return len(text) if p.line >= len(starts) else starts[p.line] + p.character

    for e in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[:offset(e.range.start)] + e.new_text + text[offset(e.range.end):]
    return text


DN121 = (ROOT / "specs" / "densenet121.dense").read_text()
TYPO = DN121.replace("dense layers=12", "dense layers=12 grwoth=32")
FAMILY = """\
network family(depth=40, growth=12) {
    input 3x32x32
    defaults growth=growth bottleneck=off dropout=0.1
    repeat 2 {
        dense layers=(depth-4)/6
        transition
    }
    dense layers=(depth-4)/6
    head classes=10
}
"""


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.split("\n")) if needle in line)


# --- diagnostics ----------------------------------------------------------------------------------

@in_session
async def test_the_zoo_opens_without_diagnostics(client: LanguageClient):
    uri = _open(client, "dn121", DN121)
    assert await _diagnostics(client, uri) == []


@in_session
async def test_diagnostics_on_open_and_on_change(client: LanguageClient):
    uri = _open(client, "typo", TYPO)
    [diag] = await _diagnostics(client, uri)
    line = _line_of(TYPO, "grwoth")
    column = TYPO.split("\n")[line].index("grwoth")
    assert diag.code == "E102" and diag.severity == types.DiagnosticSeverity.Error
    assert diag.range == types.Range(start=types.Position(line=line, character=column),
                                     end=types.Position(line=line, character=column + 6))
    assert "unknown setting 'grwoth'" in diag.message and "hint: did you mean 'growth'?" in diag.message
    # run from the checkout, the server links the code's entry in docs/errors.md
    page, anchor = diag.code_description.href.split("#")
    assert anchor == "e102-unknown-setting" and page == (ROOT / "docs" / "errors.md").as_uri()
    assert "\n## E102 unknown-setting\n" in (ROOT / "docs" / "errors.md").read_text()

    assert await _diagnostics(client, uri, _change(client, uri, DN121)) == []

    # a broken line does not hide a line-local error elsewhere
    broken = TYPO.replace("    transition\n", "    transition (\n", 1)
    found = await _diagnostics(client, uri, _change(client, uri, broken))
    assert sorted(d.code for d in found) == ["E001", "E102"]


@in_session
async def test_an_analysis_error_has_its_figures(client: LanguageClient):
    uri = _open(client, "expect", DN121.replace("params=7_978_856", "params=7_978_857"))
    [diag] = await _diagnostics(client, uri)
    assert diag.code == "E303" and "7,978,856" in diag.message
    assert diag.range.start.line == _line_of(DN121, "expect params")
    # while `expect` lags behind an edit, the hovers still show the network's figures
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=diag.range.start.line, character=6)))
    assert "`params=7_978_857`: analysed 7,978,856" in hover.contents.value
    on_block = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=_line_of(DN121, "dense layers=6"), character=6)))
    assert "**denseblock1**" in on_block.contents.value


# --- hover, inlay hints, symbols ------------------------------------------------------------------

@in_session
async def test_hover_on_a_dense_line_shows_its_figures(client: LanguageClient):
    uri = _open(client, "hover", DN121)
    line = _line_of(DN121, "dense layers=12")
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=line, character=8)))
    text = hover.contents.value
    block = densedsl.analyze(DN121).stage("denseblock2")
    for figure in ("**denseblock2**", "12 layers · growth 32 · bottleneck 4 (1x1 conv to 128 channels)",
                   "78 dense connections", "channels 128 → 512", "128x28x28 → 512x28x28",
                   f"params {block.params:,}", "`growth=32` (defaults, line 7)"):
        assert figure in text, f"{figure!r} not in hover:\n{text}"
    assert hover.range.start == types.Position(line=line, character=4)


@in_session
async def test_the_readme_hover_transcript_is_what_the_server_sends(client: LanguageClient):
    readme = (ROOT / "README.md").read_text()
    transcript = readme.split("as the test client receives it", 1)[1].split("```\n")[1]
    uri = _open(client, "readme", DN121)
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=_line_of(DN121, "dense layers=24"), character=6)))
    assert "\n".join(line.rstrip() for line in hover.contents.value.split("\n")) + "\n" == transcript


@in_session
async def test_hover_shows_resolved_values_and_parameters(client: LanguageClient):
    uri = _open(client, "family", FAMILY)
    line = _line_of(FAMILY, "dense layers=(depth-4)/6")
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=line, character=10)))
    text = hover.contents.value
    assert "`layers=(depth-4)/6` → 6" in text
    assert "**denseblock1**" in text and "**denseblock2**" in text  # one statement, repeated
    on_param = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=line, character=24)))
    assert "**parameter `depth`** = 40" in on_param.contents.value
    assert "used on lines 5, 8" in on_param.contents.value
    on_default = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=2, character=14)))
    assert "`growth=growth`: inherited on lines 5, 8" in on_default.contents.value
    assert "`dropout=0.1` (defaults, line 3)" in text
    on_head = await client.text_document_hover_async(types.HoverParams(
        text_document=_doc(uri), position=types.Position(line=_line_of(FAMILY, "head"), character=5)))
    assert "`dropout=0`" in on_head.contents.value  # a head inherits nothing from defaults
    assert "(defaults" not in on_head.contents.value


@in_session
async def test_inlay_hints_and_symbols(client: LanguageClient):
    uri = _open(client, "symbols", DN121)
    hints = await client.text_document_inlay_hint_async(types.InlayHintParams(
        text_document=_doc(uri), range=types.Range(start=types.Position(line=0, character=0),
                                                    end=types.Position(line=99, character=0))))
    by_line = {h.position.line: h.label for h in hints}
    assert by_line[_line_of(DN121, "dense layers=6")] == "→ 256x56x56"
    assert by_line[_line_of(DN121, "head classes")] == "→ 1000"
    symbols = await client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=_doc(uri)))
    [network] = symbols
    assert network.name == "densenet121"
    assert [c.name for c in network.children][3:7] == ["denseblock1", "transition1", "denseblock2",
                                                        "transition2"]


# --- completion, formatting, rename, definitions, code actions --------------------------------------

@in_session
async def test_completion_after_dense_offers_its_settings(client: LanguageClient):
    text = "network n {\n    input 3x32x32\n    dense \n    transition pool=\n    stem {\n        \n    }\n}\n"
    uri = _open(client, "complete", text)

    async def labels(line: int, character: int) -> list[str]:
        result = await client.text_document_completion_async(types.CompletionParams(
            text_document=_doc(uri), position=types.Position(line=line, character=character)))
        return [item.label for item in result.items]

    assert await labels(2, 10) == list(resolve.DENSE_SETTINGS)
    assert await labels(3, 20) == ["avg", "max", "depthwise", "none"]
    assert await labels(5, 8) == list(resolve.STEM_OPS)
    assert await labels(2, 4) == list(resolve.STATEMENTS) + ["for"]


@in_session
async def test_completion_offers_loops_functions_and_the_new_choices(client: LanguageClient):
    text = ("network n(blocks=[2, 2]) {\n    input 3x32x32\n    for n in blocks {\n        \n"
            "    } \n    dense layers=2 growth=4 norm=\n    dense layers=\n}\n")
    uri = _open(client, "complete-loops", text)

    async def labels(line: int, character: int) -> list[str]:
        result = await client.text_document_completion_async(types.CompletionParams(
            text_document=_doc(uri), position=types.Position(line=line, character=character)))
        return [item.label for item in result.items]

    assert await labels(3, 8) == list(resolve.STAGE_STATEMENTS)  # inside the for body
    assert await labels(4, 6) == ["between"]
    assert (await labels(5, 33))[:5] == ["batch", "group", "instance", "layer", "none"]
    assert {"len", "sum", "min"} <= set(await labels(6, 17))


@in_session
async def test_formatting_applies_fmt(client: LanguageClient):
    messy = "network n {\n  input 3x32x32\n  dense layers=2*3   growth=12\n    head classes=10\n}"
    uri = _open(client, "fmt", messy)
    edits = await client.text_document_formatting_async(types.DocumentFormattingParams(
        text_document=_doc(uri), options=types.FormattingOptions(tab_size=4, insert_spaces=True)))
    expected = format_spec(parse_source(Source.from_text(messy)))
    assert _apply(messy, edits) == expected
    _change(client, uri, expected)
    unchanged = await client.text_document_formatting_async(types.DocumentFormattingParams(
        text_document=_doc(uri), options=types.FormattingOptions(tab_size=4, insert_spaces=True)))
    assert unchanged is not None and len(unchanged) == 0


@in_session
async def test_rename_definition_and_references_of_a_parameter(client: LanguageClient):
    uri = _open(client, "rename", FAMILY)
    use = types.Position(line=_line_of(FAMILY, "repeat 2") + 1, character=24)  # depth in (depth-4)/6
    definition = await client.text_document_definition_async(types.DefinitionParams(
        text_document=_doc(uri), position=use))
    assert definition.range.start == types.Position(line=0, character=15)
    refs = await client.text_document_references_async(types.ReferenceParams(
        text_document=_doc(uri), position=use, context=types.ReferenceContext(include_declaration=True)))
    assert len(refs) == 3
    edit = await client.text_document_rename_async(types.RenameParams(
        text_document=_doc(uri), position=use, new_name="d"))
    renamed = _apply(FAMILY, edit.changes[uri])
    assert renamed == FAMILY.replace("depth", "d")
    assert densedsl.analyze(renamed).params == densedsl.analyze(FAMILY).params
    with pytest.raises(Exception, match="already used"):
        await client.text_document_rename_async(types.RenameParams(
            text_document=_doc(uri), position=use, new_name="growth"))


@in_session
async def test_code_action_applies_the_did_you_mean_fix(client: LanguageClient):
    uri = _open(client, "fix", TYPO)
    [diag] = await _diagnostics(client, uri)
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=_doc(uri), range=diag.range,
        context=types.CodeActionContext(diagnostics=[diag])))
    [action] = actions
    assert action.title == "Change to 'growth'" and action.kind == types.CodeActionKind.QuickFix
    fixed = _apply(TYPO, action.edit.changes[uri])
    assert fixed == DN121.replace("dense layers=12", "dense layers=12 growth=32")
    assert await _diagnostics(client, uri, _change(client, uri, fixed)) == []


# --- robustness -----------------------------------------------------------------------------------

@in_session
async def test_malformed_and_huge_documents_get_diagnostics(client: LanguageClient):
    cases = {
        "garbage": "\x00\x01 {{{ ))) é 😋 ;;; =",
        "nesting": "network n { input 3x8x8\n dense layers=" + "(" * 500 + "1" + ")" * 500 + "\n}\n",
        "unclosed": "network n {\n    input 3x32x32\n    stem {\n",
        "empty": "",
    }
    for name, text in cases.items():
        uri = _open(client, name, text)
        assert await _diagnostics(client, uri), name
        hover = await client.text_document_hover_async(types.HoverParams(
            text_document=_doc(uri), position=types.Position(line=0, character=3)))
        assert hover is None or hover.contents.value
    huge = "network n {\n    input 3x32x32\n" + "    dense layers=1 growth=1\n" * 5000 + "}\n"
    uri = _open(client, "huge", huge)
    [diag] = await _diagnostics(client, uri)
    assert diag.code == "E006" and "characters" in diag.message


TINY = "network n {{\n    input 3x8x8\n    dense layers={} growth=2\n}}\n"


@in_session
async def test_rapid_edits_are_debounced_and_publish_the_last_version(client: LanguageClient):
    uri = _open(client, "rapid", TINY.format(1))
    await _diagnostics(client, uri)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"densedsl": {"debounce": 0.5}}))
    try:
        for layers in range(2, 30):
            _change(client, uri, TINY.format(layers))
            await asyncio.sleep(0.02)  # a fast typist: slower than a tiny analysis, inside the debounce
        last = _change(client, uri, TINY.format(5).replace("growth", "grwoth"))
        [diag] = await _diagnostics(client, uri, last)
    finally:
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"densedsl": {"debounce": 0.02}}))
    assert diag.code == "E102"
    # one publication on open, then (nearly) only the last version's
    assert sum(p.uri == uri for p in client.published) < 6


# --- in-process: the tables behind completion, and the missing-package error -----------------------

def test_every_name_the_resolver_knows_has_a_doc():
    known = {*resolve.STATEMENTS, *resolve.STEM_OPS, *(s for names in features.SETTINGS.values()
                                                       for s in names),
             *(w for words in features._BLOCK_CONTENTS.values() for w in words), "between"}
    assert set(features.DOCS) == known


def test_enumerated_values_come_from_the_network_types():
    assert features.enumerated_values("dense", "order") == ("pre", "post")
    assert features.enumerated_values("transition", "pool") == ("avg", "max", "depthwise", "none")
    assert features.enumerated_values("head", "norm") == ("true", "false")
    assert features.enumerated_values("dense", "layers") == ()


def test_lsp_without_pygls_is_a_missing_package_error(monkeypatch, capsys):
    from densedsl.cli import main
    for name in [m for m in sys.modules if m.startswith(("pygls.", "densedsl.lsp.server"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pygls", None)  # as if it were not installed
    assert main(["lsp"]) == 1
    assert 'error[E911]: the language server needs pygls' in capsys.readouterr().err


def test_a_cached_analysis_moves_its_spans_to_the_current_text():
    from densedsl.lsp.document import AnalysisCache, analyze_text
    cache = AnalysisCache()
    wrong = DN121.replace("params=7_978_856", "params=7_978_857")
    first = analyze_text(wrong, "a.dense", cache)
    shifted = "# three lines\n# of comments\n\n" + wrong  # the same network: a cache hit
    second = analyze_text(shifted, "a.dense", cache)
    assert len(cache.entries) == 1
    [before], [after] = first.diagnostics, second.diagnostics
    assert after.code == "E303" and after.line == before.line + 3
    assert after.span.source.text == shifted
    line = _line_of(shifted, "dense layers=12") + 1
    [block] = [s for s in second.networks[0].stages if s.name == "denseblock2"]
    assert block.span.line == line and second.networks[0].stages_at(block.span) == [block]
