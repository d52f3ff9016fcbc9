"""AST → `Network`: choose the network, bind parameters, apply defaults, evaluate arithmetic,
unroll `repeat`, and check every value. Every independent problem becomes a diagnostic; the
stage raises one SpecError holding all of them.

Arithmetic is exact (`fractions.Fraction`): `(depth-4)/6` with depth=101 is 97/6, which is an
error where an integer is required, never a silent floor.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any, Mapping, cast

from ...core import diagnostics as d
from ...core.source import Source, Span
from .. import ast
from .. import network as n
from .base import _Budget, _did_you_mean, _Invalid, _listing, _plain, _top_level_comma
from .stages import Stages
from .vocabulary import (
    _FILE_MAX_LAYERS,
    _FILE_MAX_STAGES,
    _MAX_LAYERS,
    _MAX_STAGES,
    MAX_LIST,
    STAGE_STATEMENTS,
    STATEMENTS,
    Value,
)


def resolve(file: ast.SpecFile, network: str | None, params: Mapping[str, Any] | None = None,
            source: Source | None = None) -> n.Network:
    """Resolve one network of `file` (the only one when `network` is None)."""
    params = dict(params or {})
    chosen = _choose(file, network, source)
    return _Resolver(chosen, params, source, _Budget(_MAX_STAGES, _MAX_LAYERS)).run()


def resolve_all(file: ast.SpecFile, params: Mapping[str, Any] | None = None,
                source: Source | None = None) -> list[n.Network]:
    """Resolve every network of `file`; diagnostics from all of them are raised together."""
    _check_file(file, source)
    networks: list[n.Network] = []
    diags: list[d.Diagnostic] = []
    budget = _Budget(_FILE_MAX_STAGES, _FILE_MAX_LAYERS)  # shared: the file's networks together
    for net in file.networks:
        try:
            networks.append(_Resolver(net, dict(params or {}), source, budget).run())
        except d.SpecError as e:
            diags.extend(e.diagnostics)
        if budget.exhausted:
            break
    d.raise_if_errors(diags)
    return networks


def _check_file(file: ast.SpecFile, source: Source | None) -> None:
    name = source.name if source is not None else "<string>"
    if not file.networks:
        raise d.SpecError([d.Diagnostic(d.EMPTY, "the file holds no network", None,
                                        "a spec starts with: network NAME { input 3x32x32 ... }",
                                        file=name)])
    seen: dict[str, ast.NetworkDef] = {}
    diags: list[d.Diagnostic] = []
    for net in file.networks:
        if net.name in seen:
            diags.append(d.Diagnostic(d.DUPLICATE_DEFINITION, f"network '{net.name}' is defined twice",
                                      net.name_span, "rename one of them",
                                      # a parsed file gives every name a span
                                      ((cast(Span, seen[net.name].name_span), "first defined here"),)))
        seen.setdefault(net.name, net)
    d.raise_if_errors(diags)


def _choose(file: ast.SpecFile, network: str | None, source: Source | None) -> ast.NetworkDef:
    _check_file(file, source)
    names = [net.name for net in file.networks]
    name = source.name if source is not None else "<string>"
    if network is None:
        if len(names) == 1:
            return file.networks[0]
        raise d.SpecError([d.Diagnostic(
            d.UNKNOWN_NETWORK, f"the file holds {len(names)} networks ({', '.join(names)}) and none was chosen",
            None, f"choose one with --network (Python: network=...), e.g. --network {names[0]}", file=name)])
    for net in file.networks:
        if net.name == network:
            return net
    hint = _did_you_mean(network, names) or f"the file holds: {', '.join(names)}"
    raise d.SpecError([d.Diagnostic(d.UNKNOWN_NETWORK, f"no network named '{network}' in the file",
                                    None, hint, file=name)])


class _Resolver(Stages):
    # --- entry ------------------------------------------------------------------------------

    def run(self) -> n.Network:
        if not self.bind_parameters():
            raise d.SpecError(self.diags)  # later statements would only cascade from here
        body = self.net.body
        self.collect_defaults(body)
        input_shape = input_span = None
        stem: n.Stem | None = None
        stem_stmt = head_stmt = input_stmt = None
        head: n.Head | None = None
        stage_stmts: list[ast.Statement] = []
        expectations: list[n.Expectation] = []
        expect_seen: dict[str, ast.Setting] = {}
        for stmt in body:
            kw = stmt.keyword
            if kw == "defaults":
                self.no_arg(stmt)
                self.no_body(stmt)
            elif kw == "input":
                if input_stmt is not None:
                    self.duplicate(stmt, input_stmt, "input")
                    continue
                input_stmt = stmt
                input_shape, input_span = self.input(stmt)
                self.input_shape = input_shape
            elif kw == "stem":
                if stem_stmt is not None:
                    self.duplicate(stmt, stem_stmt, "stem")
                    continue
                stem_stmt = stmt
                if stage_stmts or head_stmt is not None:
                    self.error(d.MISPLACED, "the stem must come before the first dense block or transition",
                               stmt.keyword_span, "move `stem { ... }` up, after `input`")
                stem = self.stem(stmt)
            elif kw in STAGE_STATEMENTS:
                if head_stmt is not None:
                    self.error(d.MISPLACED, f"'{kw}' after the head", stmt.keyword_span,
                               "the head is the last stage; move it to the end")
                stage_stmts.append(stmt)
            elif kw == "head":
                if head_stmt is not None:
                    self.duplicate(stmt, head_stmt, "head")
                    continue
                head_stmt = stmt
            elif kw == "expect":
                expectations.extend(self.expect(stmt, expect_seen))
            else:
                self.unknown_statement(stmt, STATEMENTS)
        if input_stmt is None:
            self.error(d.MISSING, f"network '{self.net.name}' has no input shape", self.net.name_span,
                       "add a line such as `input 3x32x32` (channels x height x width)")
        stages = self.stages(stage_stmts)
        if head_stmt is not None:
            head = self.head(head_stmt)
        if d.has_errors(self.diags):
            raise d.SpecError(self.diags)
        assert input_shape is not None  # each way input() returns None reports an error
        return n.Network(name=self.net.name, input=input_shape, stem=stem or n.Stem(),
                         stages=tuple(stages), head=head, expectations=tuple(expectations),
                         parameters=tuple((k, _plain(v)) for k, v in self.env.items()),
                         span=self.net.span, input_span=input_span)

    # --- parameters -------------------------------------------------------------------------

    def bind_parameters(self) -> bool:
        """Bind every parameter; False when one has no value (its uses would all fail)."""
        declared: dict[str, ast.Param] = {}
        for p in self.net.params:
            if p.name in declared:
                self.error(d.DUPLICATE_DEFINITION, f"parameter '{p.name}' is declared twice", p.name_span,
                           "remove one of them", ((declared[p.name].name_span, "first declared here"),))
                continue
            declared[p.name] = p
        for name in self.overrides:
            if name not in declared:
                hint = self.suggest(name, declared) or (
                    f"'{self.net.name}' takes: {_listing(declared)}" if declared
                    else f"'{self.net.name}' declares no parameters; add them as network {self.net.name}(name=default)")
                self.error(d.UNKNOWN_PARAMETER, f"network '{self.net.name}' has no parameter '{name}'",
                           self.net.name_span, hint)
        ok = True
        defaults: dict[str, Value] = {}
        for name, p in declared.items():
            try:
                defaults[name] = self.eval(p.default, symbols=True)
                if name in self.overrides:
                    self.env[name] = self.override_value(name, self.overrides[name],
                                                         isinstance(p.default, ast.ListExpr))
                else:
                    self.env[name] = self.eval(p.default, symbols=True)
            except _Invalid:
                self.failed.add(name)
                ok = False
        # `expect params=769162` describes the network as written; with other parameter values
        # only expectations that are written in terms of the parameters still apply.
        self.overridden = any(defaults.get(k) != v for k, v in self.env.items())
        return ok

    def override_value(self, name: str, raw: Any, a_list: bool = False) -> Value:
        """A value passed from Python (`load(p, depth=100)`) or `--set` (a string to parse);
        `a_list`: the parameter's default is a list, so `--set blocks=6` means [6]."""
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, numbers.Rational):  # int, Fraction, numpy integers
            # int(): a numpy integer's numerator is itself, and a Fraction built on it keeps it,
            # with no bit_length() for the digit cap to measure
            value = Fraction(int(raw.numerator), int(raw.denominator))
            return self.override_fits(name, value)
        if isinstance(raw, numbers.Real):  # float, numpy floats
            real = float(raw)
            if not math.isfinite(real):
                self.error(d.OUT_OF_RANGE, f"parameter '{name}' must be finite, got {real}", self.net.name_span)
                raise _Invalid
            return self.override_fits(name, Fraction(repr(real)))  # 0.1 means 1/10, not 0.1000000000000000055…
        if isinstance(raw, (list, tuple)):
            if len(raw) > MAX_LIST:
                self.error(d.TOO_COMPLEX, f"the list given for parameter '{name}' has {len(raw):,} elements "
                           f"(at most {MAX_LIST})", self.net.name_span)
                raise _Invalid
            if any(isinstance(x, (list, tuple)) for x in raw):
                self.error(d.WRONG_TYPE, f"parameter '{name}' is a list of lists; lists do not nest",
                           self.net.name_span, "give a flat list, e.g. blocks=[6, 12, 24, 16]")
                raise _Invalid
            return tuple(self.override_value(name, x) for x in raw)
        if isinstance(raw, str):
            from ..syntax import parse_expression
            if _top_level_comma(raw) or (a_list and not raw.lstrip().startswith("[")):
                raw = f"[{raw}]"  # --set blocks=6,12,32,32, or blocks=6 for a list parameter
            try:
                expr = parse_expression(raw, f"--set {name}")
            except d.SpecError as e:
                self.diags.extend(e.diagnostics)
                raise _Invalid from None
            # names in an override are keywords (`order=post`), not references
            saved, self.env = self.env, {}
            try:
                return self.eval(expr, symbols=True)
            finally:
                self.env = saved
        self.error(d.WRONG_TYPE, f"parameter '{name}' must be a number, a bool, a keyword (str) or a list, "
                   f"not {type(raw).__name__}", self.net.name_span)
        raise _Invalid

    def override_fits(self, name: str, value: Fraction) -> Fraction:
        if ast.fits(value):
            return value
        self.error(d.TOO_COMPLEX, f"the value given for parameter '{name}' has more than {ast.MAX_DIGITS} digits",
                   self.net.name_span, "no network needs numbers this large or this precise")
        raise _Invalid
