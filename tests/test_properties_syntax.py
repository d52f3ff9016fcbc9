"""Fuzzing the front end: nothing but SpecError may ever escape parse/resolve/fmt."""

from __future__ import annotations

import random

from conftest import ZOO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

import densedsl
from densedsl.core.source import Source
from densedsl.language.fmt import format_spec
from densedsl.language.syntax import parse_source, parser
from densedsl.testing.strategies import networks, spec_text

ZOO_TEXTS = [p.read_text("utf-8") for p in ZOO]


def run_front_end(text: str) -> None:
    """Parse, resolve, format: may raise SpecError and nothing else."""
    try:
        spec_file = parse_source(Source.from_text(text, "fuzz.dense"))
    except densedsl.SpecError as e:
        assert e.diagnostics, "a SpecError must carry diagnostics"
        str(e)  # rendering must not fail either
        return
    formatted = format_spec(spec_file)
    again = parse_source(Source.from_text(formatted, "fmt.dense"))
    assert again == spec_file, "fmt changed the meaning"
    assert format_spec(again) == formatted, "fmt is not idempotent"
    for net in spec_file.networks:
        try:
            densedsl.parse(text, network=net.name)
        except densedsl.SpecError as e:
            str(e)


# from_lark is slow to draw (~0.1 s an example on 2 cores); 60 still walks every rule
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(from_lark(parser(strict=True), start="start"))  # the cached parser has no .grammar
def test_grammar_generated_text_never_crashes(text):
    run_front_end(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("network {}()=,;#+-*/%\n\t x0123456789.eEKMGTabc_xdense")),
               max_size=200))
@example("network n {\n input 3x8x8\n dense layers=1e400 growth=1\n}\n")
@example("network n(a=1/0) {\n}\n")
@example("network n {\n}\n" * 3)
def test_arbitrary_text_never_crashes(text):
    run_front_end(text)


def _mutate(text: str, rng: random.Random) -> str:
    tokens = text.split(" ")
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(tokens))
        op = rng.choice(("delete", "duplicate", "swap", "digit"))
        if op == "delete":
            del tokens[i]
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        elif op == "swap":
            j = rng.randrange(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens[i] = tokens[i].replace(rng.choice("0123456789"), rng.choice(("0", "99999999999", "-1", ".")))
        if not tokens:
            tokens = [""]
    return " ".join(tokens)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ZOO_TEXTS), st.randoms(use_true_random=False))
def test_mutated_zoo_files_never_crash(text, rng):
    run_front_end(_mutate(text, rng))


@given(st.sampled_from(ZOO_TEXTS))
@settings(max_examples=len(ZOO_TEXTS), deadline=None)
def test_zoo_round_trips_through_fmt(text):
    run_front_end(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_generated_networks_survive_text_fmt_and_resolve(network):
    text = spec_text(network)
    assert densedsl.parse(text).network == network  # network → text → network is the identity
    formatted = format_spec(parse_source(Source.from_text(text)))
    assert format_spec(parse_source(Source.from_text(formatted))) == formatted
    assert densedsl.parse(formatted).network == network
