"""Every enumerated choice (activations, norms, pool modes, link and emit rules, tasks, orders,
layer kinds) has one source of truth, the `Literal` types of densedsl/language/network.py (which
language/resolve/vocabulary.py reads); the op table, the TextMate grammar, the language server's
docs, docs/language.md and the README are checked against them here, so adding a word (say
`hardswish`) fails until every place says it.

After changing a Literal on purpose, rewrite the grammar's keyword-value pattern with
DENSEDSL_UPDATE_GRAMMAR=1 and review its diff.
"""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path

import pytest

from densedsl.ir import ops
from densedsl.language import network as n
from densedsl.language.resolve import vocabulary as v

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammars" / "densedsl.tmLanguage.json"
LANGUAGE_MD = ROOT / "docs" / "language.md"

# Literals of network.py whose words are not values of a setting: `expect params=…` names figures
NOT_CHOICES = {"ExpectKey"}


def _literals() -> dict[str, tuple[str, ...]]:
    """Every Literal alias of network.py, by name: found, not listed, so a new one is checked too."""
    found = {name: typing.get_args(value) for name, value in vars(n).items()
             if typing.get_origin(value) is typing.Literal and name not in NOT_CHOICES}
    assert {"ActivationFn", "NormKind", "PoolMode", "Order", "Task", "LinkRule", "EmitRule", "LayerKind"} <= set(found)
    return found


def _unique(words) -> tuple[str, ...]:
    return tuple(dict.fromkeys(words))


def keyword_values() -> tuple[str, ...]:
    """What the grammar colours as a keyword value: the yes/no words, then every choice."""
    return _unique([*v._BOOL_WORDS, *(w for words in _literals().values() for w in words)])


def test_the_vocabulary_reads_the_literals():
    assert v.ACTIVATIONS == typing.get_args(n.ActivationFn)
    assert v.NORMS == typing.get_args(n.NormKind)
    assert v.TASKS == typing.get_args(n.Task)
    assert v.LINK_RULES == typing.get_args(n.LinkRule)
    assert v.EMIT_RULES == typing.get_args(n.EmitRule)
    assert v.LAYER_KINDS == typing.get_args(n.LayerKind)


def test_the_op_table_has_a_module_for_every_activation_and_norm():
    # relu keeps its own op kind (in place; the engine folds it); none makes no op
    assert set(ops.ACTIVATIONS) == set(typing.get_args(n.ActivationFn)) - {"relu", "none"}
    # batch norm is its own op kind; the group-norm family shares one
    assert set(ops.GROUP_NORMS) == set(typing.get_args(n.NormKind)) - {"batch", "none"}


def test_completion_offers_every_choice():
    from densedsl.lsp import features
    offered = {w for keyword in features._BUILDS for setting in features.SETTINGS.get(keyword, ())
               for w in features.enumerated_values(keyword, setting)}
    choices = {w for words in _literals().values() for w in words}
    assert choices <= offered, sorted(choices - offered)


def _constant_pattern(grammar: dict) -> dict:
    [pattern] = [p for p in grammar["repository"]["value"]["patterns"] if p.get("name") == "constant.language.densedsl"]
    return pattern


def test_grammar_keyword_values_are_exactly_the_choices():
    text = GRAMMAR.read_text("utf-8")
    pattern = _constant_pattern(json.loads(text))["match"]
    written = tuple(re.fullmatch(r"\\b\(([a-z_0-9|]+)\)\\b", pattern).group(1).split("|"))
    wanted = keyword_values()
    if written != wanted and os.environ.get("DENSEDSL_UPDATE_GRAMMAR") == "1":
        old = json.dumps(pattern)[1:-1]  # as the file spells it, backslashes escaped
        new = old.replace("|".join(written), "|".join(wanted))
        assert text.count(old) == 1
        GRAMMAR.write_text(text.replace(old, new), "utf-8")
        written = tuple(re.fullmatch(r"\\b\(([a-z_0-9|]+)\)\\b",
                                     _constant_pattern(json.loads(GRAMMAR.read_text("utf-8")))["match"])
                        .group(1).split("|"))
    assert written == wanted, (f"missing {sorted(set(wanted) - set(written))}, stale "
                               f"{sorted(set(written) - set(wanted))}: rerun with DENSEDSL_UPDATE_GRAMMAR=1")


def _pipe_lists(doc: str) -> set[str]:
    return {w for run in re.findall(r"\b\w+(?:\|\w+)+\b", doc) for w in run.split("|")}


def test_lsp_docs_list_every_choice_of_each_setting_and_no_other():
    """A setting's doc writes its words a|b|c: those are exactly what the setting accepts."""
    from densedsl.lsp import features
    accepted: dict[str, set[str]] = {}
    for keyword in features._BUILDS:
        for setting in features.SETTINGS.get(keyword, ()):
            accepted.setdefault(setting, set()).update(features.enumerated_values(keyword, setting))
    for setting, doc in features.DOCS.items():
        assert _pipe_lists(doc) == accepted.get(setting, set()), (setting, doc)


def _without_notes(text: str) -> str:
    while True:  # innermost parentheses first: "(GroupNorm(G, C), G from `norm_groups`)"
        shorter = re.sub(r"\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


@pytest.mark.parametrize("row, words", [
    ("| `activation` | `dense`, `defaults` |", typing.get_args(n.ActivationFn)),
    ("| `norm` | `dense`, `defaults` |", typing.get_args(n.NormKind)),
    ("| `links` |", typing.get_args(n.LinkRule) + (v.RANDOM_LINKS,)),
    ("| `emit` |", typing.get_args(n.EmitRule)),
])
def test_language_md_tables_list_exactly_the_choices(row, words):
    [line] = [x for x in LANGUAGE_MD.read_text("utf-8").splitlines() if x.startswith(row)]
    values = _without_notes(line[len(row):].split(" | ")[0])
    assert tuple(re.findall(r"`(\w+)`", values)) == words, line


def test_language_md_mentions_every_order_pool_mode_and_task():
    text = LANGUAGE_MD.read_text("utf-8")
    for setting, literal in (("order", n.Order), ("pool", n.PoolMode), ("task", n.Task)):
        for word in typing.get_args(literal):
            assert f"`{setting}={word}`" in text or f"`{word}`" in text, (setting, word)


def test_language_md_quotes_the_resolvers_own_message_for_an_unknown_activation():
    import densedsl
    from densedsl.core.diagnostics import SpecError
    with pytest.raises(SpecError) as e:
        densedsl.load("network n {\n    input 3x8x8\n    dense layers=1 growth=2 activation=swish\n}\n")
    [line] = [x for x in LANGUAGE_MD.read_text("utf-8").splitlines() if x.startswith("| an unknown activation |")]
    assert f"`{e.value.diagnostics[0].message}`" in line


def test_readme_dense_row_names_every_activation_and_norm():
    [row] = [x for x in (ROOT / "README.md").read_text("utf-8").splitlines() if x.startswith("| `dense …` |")]
    for literal, setting in ((n.ActivationFn, "activation"), (n.NormKind, "norm")):
        written = re.search(rf"`{setting}=(\w+)` \([^)]*\) `((?:\\\|\w+)+)`", row)
        assert written, setting
        words = (written.group(1), *written.group(2).split("\\|")[1:])
        assert words == typing.get_args(literal), (setting, words)
