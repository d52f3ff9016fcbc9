"""Golden diagnostics (message, position, caret, hint) and the error-code registry."""

from __future__ import annotations

import re
from pathlib import Path

import golden
import pytest

from densedsl.core import diagnostics as d

CASES = sorted(golden.CASES.glob("*.dense"))
DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_golden_diagnostic(path: Path):
    spec, expected = golden.split(path)
    assert expected is not None, f"{path.name} has no '# output' section"
    assert golden.render(path, spec) == expected


def test_every_golden_case_names_its_code():
    for path in CASES:
        code = path.stem.split("_", 1)[0]
        _, expected = golden.split(path)
        assert f"[{code}]" in expected, path.name


def test_registry_and_docs_list_the_same_codes():
    documented = set(re.findall(r"^## ([EW]\d{3})\b", DOCS.read_text("utf-8"), re.M))
    assert documented == set(d.CODES)


def test_codes_are_grouped_by_stage():
    for code in d.CODES:
        assert re.fullmatch(r"[EW][0-39]\d\d", code), code


def test_a_code_cannot_be_registered_twice():
    with pytest.raises(ValueError):
        d.Code("E001", "again", "duplicate")


def test_spec_error_str_is_what_the_cli_prints():
    from densedsl.core.source import Source
    src = Source.from_text("network n {\n  dense layers=6\n}\n", "x.dense")
    diag = d.Diagnostic(d.UNKNOWN_SETTING, "msg", src.span(14, 19), "a hint")
    text = str(d.SpecError([diag]))
    assert text == "x.dense:2:3: error[E102]: msg\n      dense layers=6\n      ^^^^^\nhint: a hint"


def test_diagnostics_are_sorted_and_deduplicated():
    from densedsl.core.source import Source
    src = Source.from_text("ab\ncd\n", "f")
    a = d.Diagnostic(d.SYNTAX, "a", src.span(3, 4))
    b = d.Diagnostic(d.SYNTAX, "b", src.span(0, 1))
    assert d.SpecError([a, b, a]).diagnostics == (b, a)
