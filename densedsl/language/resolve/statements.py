"""Statements of a network body: settings, defaults, input, stem, and the unrolling of
`repeat` and `for` into stages."""

from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, cast

from ...core import diagnostics as d
from ...core.source import Span
from ...core.units import axes_text
from .. import ast
from .. import network as n
from .base import _Bound, _did_you_mean, _Invalid, _show, _source_text
from .values import Values
from .vocabulary import (
    _FILE_MAX_LAYERS,
    _FILE_MAX_STAGES,
    _INT_MAX,
    _MAX_LAYERS,
    _MAX_LOOP_STEPS,
    _MAX_STAGES,
    _OWNER,
    DEFAULT_SETTINGS,
    STAGE_STATEMENTS,
    STATEMENTS,
    STEM_OPS,
    STEM_SETTINGS,
    Value,
)


class Statements(Values):
    if TYPE_CHECKING:  # defined by Stages, the subclass that completes the resolver
        def try_all(self, **thunks: Callable[[], Any]) -> dict[str, Any]: ...
        def dense(self, stmt: ast.Statement, index: int) -> n.DenseBlock: ...
        def transition(self, stmt: ast.Statement, index: int) -> n.Transition: ...

    # --- statements -------------------------------------------------------------------------

    def settings(self, stmt: ast.Statement, allowed: tuple[str, ...], what: str,
                 inherit: tuple[str, ...] = ()) -> dict[str, _Bound]:
        """The statement's settings (checked for unknown and duplicate names) over inherited defaults."""
        bound: dict[str, _Bound] = {}
        for name in inherit:
            if name in self.defaults:
                s = self.defaults[name]
                bound[name] = _Bound(s.value, s.value.span, name)
        seen: dict[str, ast.Setting] = {}
        for s in stmt.settings:
            if s.name not in allowed:
                hint = _did_you_mean(s.name, allowed)
                if hint is None and s.name in _OWNER:
                    hint = f"'{s.name}' is a {_OWNER[s.name]} setting; {what} takes: {', '.join(allowed) or 'none'}"
                elif hint is None:
                    hint = f"{what} takes: {', '.join(allowed)}" if allowed else f"{what} takes no settings"
                self.error(d.UNKNOWN_SETTING, f"unknown setting '{s.name}' for {what}", s.name_span, hint)
                continue
            if s.name in seen:
                self.error(d.DUPLICATE_SETTING, f"'{s.name}' is set twice", s.name_span,
                           "remove one of them", ((seen[s.name].name_span, "first set here"),))
                continue
            seen[s.name] = s
            bound[s.name] = _Bound(s.value, s.value.span, s.name)
        return bound

    def collect_defaults(self, body: tuple[ast.Statement, ...]) -> None:
        for stmt in body:
            if stmt.keyword != "defaults":
                continue
            for s in stmt.settings:
                if s.name not in DEFAULT_SETTINGS:
                    self.error(d.UNKNOWN_SETTING, f"unknown setting '{s.name}' for defaults", s.name_span,
                               _did_you_mean(s.name, DEFAULT_SETTINGS)
                               or f"defaults takes: {', '.join(DEFAULT_SETTINGS)}")
                elif s.name in self.defaults:
                    self.error(d.DUPLICATE_SETTING, f"default '{s.name}' is set twice", s.name_span,
                               "remove one of them", ((self.defaults[s.name].name_span, "first set here"),))
                else:
                    self.defaults[s.name] = s

    def unknown_statement(self, stmt: ast.Statement, known: tuple[str, ...], where: str = "a network") -> None:
        hint = _did_you_mean(stmt.keyword, known)
        if stmt.keyword in STEM_OPS and "stem" in known:
            hint = f"'{stmt.keyword}' is a stem operation; put it inside stem {{ ... }}"
        elif stmt.keyword in STATEMENTS and "stem" not in known:
            hint = f"'{stmt.keyword}' cannot appear in {where}"
        self.error(d.UNKNOWN_STATEMENT, f"unknown statement '{stmt.keyword}' in {where}", stmt.keyword_span,
                   hint or f"{where} holds: {', '.join(known)}")

    def duplicate(self, stmt: ast.Statement, first: ast.Statement, what: str) -> None:
        self.error(d.DUPLICATE_DEFINITION, f"a second '{what}' statement", stmt.keyword_span,
                   f"a network has one {what}; merge them", ((first.keyword_span, "first given here"),))

    def no_arg(self, stmt: ast.Statement, hint: str = "write settings as name=value") -> None:
        if stmt.arg is not None:
            self.error(d.UNEXPECTED_ARGUMENT, f"'{stmt.keyword}' takes no value before its settings",
                       stmt.arg.span, hint)

    def no_body(self, stmt: ast.Statement) -> None:
        if stmt.body is not None:
            self.error(d.UNEXPECTED_ARGUMENT, f"'{stmt.keyword}' takes no {{ ... }} block", stmt.keyword_span)

    def input(self, stmt: ast.Statement) -> tuple[n.Shape | None, Span | None]:
        self.no_body(stmt)
        if stmt.settings:
            self.error(d.UNKNOWN_SETTING, f"unknown setting '{stmt.settings[0].name}' for input",
                       stmt.settings[0].name_span, "write the shape as CxHxW, e.g. input 3x32x32")
        if isinstance(stmt.arg, ast.Dims) and 2 <= len(stmt.arg.dims) <= 4:
            return self.input_dims(stmt.arg)
        if stmt.arg is not None and not isinstance(stmt.arg, (ast.ShapeLit, ast.Dims)):
            return self.input_features(stmt.arg)
        if not isinstance(stmt.arg, ast.ShapeLit) or not 2 <= len(stmt.arg.dims) <= 4:
            span = stmt.arg.span if stmt.arg is not None else stmt.keyword_span
            self.error(d.WRONG_TYPE, "input expects a shape: features (a vector), channels x length (a "
                       "signal), channels x height x width (an image) or channels x depth x height x "
                       "width (a volume)", span,
                       "write e.g. input 20, input 3x224x224, input 12x1000, input 1x64x64x64 or, with "
                       "parameters, input features or input 3 x size x size")
            return None, None
        dims = stmt.arg.dims
        if any(x < 1 for x in dims) or any(x > _INT_MAX for x in dims):
            self.error(d.OUT_OF_RANGE, f"every input dimension must lie in [1, {_INT_MAX:,}]", stmt.arg.span)
            return None, None
        return tuple(dims), stmt.arg.span

    def input_features(self, e: ast.Expr) -> tuple[n.Shape | None, Span | None]:
        """`input 20` or `input features`: a feature vector (an MLP's input), shape (F,)."""
        try:
            return (self.integer(_Bound(e, e.span, "input features"), 1),), e.span
        except _Invalid:
            return None, None

    def input_dims(self, dims: ast.Dims) -> tuple[n.Shape | None, Span | None]:
        """`input 3 x size x size`: each dimension a whole number in [1, _INT_MAX]."""
        names = ("channels",) + {2: ("length",), 3: ("height", "width"),
                                 4: ("depth", "height", "width")}[len(dims.dims)]
        shape = []
        for what, e in zip(names, dims.dims):
            try:
                shape.append(self.integer(_Bound(e, e.span, f"input {what}"), 1))
            except _Invalid:
                pass
        return (tuple(shape), dims.span) if len(shape) == len(dims.dims) else (None, None)

    def stem(self, stmt: ast.Statement) -> n.Stem:
        self.no_arg(stmt)
        if stmt.settings:
            self.error(d.UNKNOWN_SETTING, f"unknown setting '{stmt.settings[0].name}' for stem",
                       stmt.settings[0].name_span, "put operations inside stem { ... }, one per line")
        if stmt.body is None:
            self.error(d.MISSING, "stem needs a { ... } block of operations", stmt.keyword_span,
                       "e.g. stem { conv 16 kernel=3 }")
            return n.Stem(span=stmt.span)
        ops = []
        channels = self.map_channels()  # entering each op: a grouped conv's groups must divide them
        for op in stmt.body:
            try:
                built = self.stem_op(op)
            except _Invalid:
                channels = None  # unknown past an invalid op
                continue
            if isinstance(built, n.Conv):
                self.stem_groups_fit(op, built, channels)
                channels = built.out_channels
            elif isinstance(built, n.Linear):
                channels = None
            if built is not None:
                ops.append(built)
        return n.Stem(ops=tuple(ops), span=stmt.span)

    def map_channels(self) -> int | None:
        """The input map's channels, also when `input` follows the stem (read quietly there: its
        own statement reports its mistakes); None for a feature vector or an invalid input."""
        shape = self.input_shape
        if shape is None:
            stmt = next((x for x in self.net.body if x.keyword == "input"), None)
            if stmt is None:
                return None
            mark, reported = len(self.diags), set(self._reported)
            try:
                shape, _ = self.input(stmt)
            finally:
                del self.diags[mark:]
                self._reported = reported
        return shape[0] if shape is not None and len(shape) > 1 else None

    def stem_groups_fit(self, stmt: ast.Statement, conv: n.Conv, channels: int | None) -> None:
        """A grouped stem conv (`groups=C`, depthwise) needs groups dividing its output channels
        and the channels it reads (E209); the conv is kept, so later ops still resolve."""
        g = conv.groups
        bad = [(what, c) for what, c in (("input", channels), ("output", conv.out_channels))
               if c is not None and c % g]
        if bad:
            what, c = bad[0]
            span = next((x.span for x in stmt.settings if x.name == "groups"), stmt.span)
            self.error(d.BAD_GROUPS, f"conv groups={g} does not divide its {what} channels ({c})",
                       span, "groups must divide the conv's input and output channels; "
                       "groups equal to both makes it depthwise")

    def stem_op(self, op: ast.Statement):
        kw = op.keyword
        if kw not in STEM_SETTINGS:
            self.unknown_statement(op, STEM_OPS, "a stem")
            return None
        self.no_body(op)
        inherit = ("bias",) if kw in ("conv", "linear") else ()
        s = self.settings(op, STEM_SETTINGS[kw], kw, inherit)
        if kw == "conv":
            if op.arg is None:
                self.error(d.MISSING, "conv needs its number of output channels", op.keyword_span,
                           "e.g. conv 64 kernel=7 stride=2 padding=3")
                raise _Invalid
            v = self.try_all(
                out_channels=lambda: self.integer(self.positional(op), 1, what="conv channels"),
                kernel=lambda: self.axes(s["kernel"], 1) if "kernel" in s else 3,
                stride=lambda: self.axes(s["stride"], 1) if "stride" in s else 1,
                padding=lambda: self.axes(s["padding"], 0) if "padding" in s else None,
                bias=lambda: self.boolean(s["bias"]) if "bias" in s else False,
                groups=lambda: self.integer(s["groups"], 1, 1 << 16) if "groups" in s else 1,
            )
            if v["padding"] is None:  # 'same' for odd kernels
                k = v["kernel"]
                v["padding"] = tuple(x // 2 for x in k) if isinstance(k, tuple) else k // 2
            return n.Conv(span=op.span, **v)
        if kw == "linear":
            if op.arg is None:
                self.error(d.MISSING, "linear needs its number of output features", op.keyword_span,
                           "e.g. linear 64")
                raise _Invalid
            v = self.try_all(
                out_features=lambda: self.integer(self.positional(op), 1, what="linear features"),
                bias=lambda: self.boolean(s["bias"]) if "bias" in s else True,
            )
            return n.Linear(span=op.span, **v)
        if kw in ("maxpool", "avgpool"):
            self.no_arg(op)
            return self.pool(kw[:3], s, op.span)
        if kw == "dropout":
            if op.arg is not None and "rate" in s:
                self.error(d.DUPLICATE_SETTING, "the dropout rate is given twice", s["rate"].span)
                raise _Invalid
            b = self.positional(op, "rate") if op.arg is not None else s.get("rate")
            if b is None:
                self.error(d.MISSING, "dropout needs a rate", op.keyword_span, "e.g. dropout 0.2")
                raise _Invalid
            return n.Dropout(rate=float(self.real(b, Fraction(0), Fraction(1), False, True)), span=op.span)
        self.no_arg(op)
        if kw == "relu6":
            return n.Activation(fn="relu6", span=op.span)
        return n.Norm(span=op.span) if kw == "norm" else n.ReLU(span=op.span)

    def positional(self, stmt: ast.Statement, name: str | None = None) -> _Bound:
        if isinstance(stmt.arg, (ast.ShapeLit, ast.Dims)):
            self.error(d.WRONG_TYPE, f"{stmt.keyword} expects a number here, not a shape", stmt.arg.span)
            raise _Invalid
        assert stmt.arg is not None  # every caller reports a missing argument first
        return _Bound(stmt.arg, stmt.arg.span, name or stmt.keyword)

    def pool(self, mode: str, s: dict[str, _Bound], span: Span | None) -> n.Pool:
        kernel = self.axes(s["kernel"], 1) if "kernel" in s else 2
        stride = self.axes(s["stride"], 1) if "stride" in s else kernel
        padding = self.axes(s["padding"], 0) if "padding" in s else 0
        r = max(len(x) for x in (kernel, stride, padding) if isinstance(x, tuple)) if any(
            isinstance(x, tuple) for x in (kernel, stride, padding)) else 1
        if any(2 * p > k for k, p in zip(n.per_axis(kernel, r), n.per_axis(padding, r))):
            self.error(d.OUT_OF_RANGE, f"pooling padding {axes_text(padding)} is more than half the kernel "
                       f"{axes_text(kernel)}", s["padding"].span, "PyTorch allows padding up to kernel/2")
            raise _Invalid
        ceil = self.boolean(s["ceil"]) if "ceil" in s else False
        # avg or max: the stem passes its keyword's, a transition's pool=none took the poolless path
        return n.Pool(mode=cast(n.PoolMode, mode), kernel=kernel, stride=stride, padding=padding, ceil=ceil,
                      span=span)

    def stages(self, stmts: list[ast.Statement]) -> list[n.Stage]:
        flat = self.unroll(stmts, {})
        if len(flat) > self.budget.stages:  # only a file's earlier networks make this bind
            self.error(d.TOO_LARGE, f"this network's {len(flat):,} stages take the file's networks past "
                       f"{_FILE_MAX_STAGES:,} stages together", self.net.name_span,
                       "split the networks over several files")
            self.budget.exhausted = True
            return []
        self.budget.stages -= len(flat)
        stages: list[n.Stage] = []
        blocks = transitions = layers = 0
        for stmt, scope in flat:
            try:
                with self.scoped(scope):
                    if stmt.keyword == "dense":
                        blocks += 1
                        stages.append(self.dense(stmt, blocks))
                        layers += cast(n.DenseBlock, stages[-1]).layers  # appended just above
                        if layers > min(_MAX_LAYERS, self.budget.layers):
                            self.too_many_layers(stmt)
                            return stages
                    else:
                        transitions += 1
                        stages.append(self.transition(stmt, transitions))
            except _Invalid:
                continue
        self.budget.layers -= layers
        return stages

    def too_many_layers(self, stmt: ast.Statement) -> None:
        if self.budget.layers >= _MAX_LAYERS:
            self.error(d.TOO_LARGE, f"the network would have more than {_MAX_LAYERS:,} dense layers",
                       stmt.keyword_span, "DenseNet-264 has 130; densedsl analyses networks up to "
                       f"{_MAX_LAYERS:,} dense layers")
        else:
            self.error(d.TOO_LARGE, f"the file's networks would have more than {_FILE_MAX_LAYERS:,} dense "
                       "layers together", stmt.keyword_span, "split the networks over several files")
            self.budget.exhausted = True

    @contextmanager
    def scoped(self, scope: Mapping[str, Value]):
        """Evaluate with a `for` loop's variables bound (they never reach Network.parameters)."""
        if not scope:
            yield
            return
        saved = self.env
        self.env = {**saved, **scope}
        try:
            yield
        finally:
            self.env = saved

    def unroll(self, stmts: Iterable[ast.Statement], scope: Mapping[str, Value],
               where: str = "repeat") -> list[tuple[ast.Statement, Mapping[str, Value]]]:
        """Expand `repeat` and `for`: each dense block or transition with the loop variables it
        sees. Refuses to produce more than _MAX_STAGES stages."""
        out: list[tuple[ast.Statement, Mapping[str, Value]]] = []
        for stmt in stmts:
            if stmt.keyword in ("dense", "transition"):
                out.append((stmt, scope))
            elif stmt.keyword == "for" and stmt.names:
                out.extend(self.for_loop(stmt, scope, len(out)))
            elif stmt.keyword == "repeat":
                if stmt.arg is None:
                    self.error(d.MISSING, "repeat needs a count", stmt.keyword_span, "e.g. repeat 3 { ... }")
                    continue
                if stmt.body is None:
                    self.error(d.MISSING, "repeat needs a { ... } block", stmt.keyword_span,
                               "e.g. repeat 2 { dense layers=16; transition }")
                    continue
                if stmt.settings:
                    self.error(d.UNKNOWN_SETTING, f"unknown setting '{stmt.settings[0].name}' for repeat",
                               stmt.settings[0].name_span, "repeat takes only a count: repeat 3 { ... }")
                try:
                    with self.scoped(scope):
                        count = self.integer(self.positional(stmt, "repeat count"), 0, _MAX_STAGES)
                except _Invalid:
                    continue
                inner = self.unroll(stmt.body, scope)
                if len(out) + count * len(inner) > _MAX_STAGES:
                    self.error(d.TOO_LARGE, f"repeat {count} would make {count * len(inner):,} stages "
                               f"(at most {_MAX_STAGES:,})", stmt.keyword_span)
                    continue
                out.extend(inner * count)
            elif stmt.keyword in STATEMENTS:
                self.error(d.MISPLACED, f"'{stmt.keyword}' cannot appear inside {where}", stmt.keyword_span,
                           f"{where} holds dense, transition, repeat and for statements")
            else:
                self.unknown_statement(stmt, STAGE_STATEMENTS, f"a {where} block")
        return out

    def for_loop(self, stmt: ast.Statement, scope: Mapping[str, Value], before: int
                 ) -> list[tuple[ast.Statement, Mapping[str, Value]]]:
        """`for [i,] n in LIST { body } between { … }`: the body once per element, `between`
        after every element but the last (with that element's variables bound)."""
        clash = False
        for name, span in zip(stmt.names, stmt.name_spans or (None,) * len(stmt.names)):
            if name in self.env or name in scope or stmt.names.count(name) > 1:
                what = "a parameter" if name in self.env else "another loop variable"
                self.error(d.DUPLICATE_DEFINITION, f"loop variable '{name}' has the name of {what}",
                           span or stmt.keyword_span, "give the loop variable a name of its own, e.g. for n in blocks")
                clash = True
        # the grammar's for_loop takes an expr, never a shape
        assert stmt.arg is not None and not isinstance(stmt.arg, (ast.ShapeLit, ast.Dims))
        try:
            with self.scoped(scope):
                items = self.eval(stmt.arg)
        except _Invalid:
            return []
        if not isinstance(items, tuple):
            self.error(d.WRONG_TYPE, f"for walks a list, but {_source_text(stmt.arg)} is {_show(items)}",
                       stmt.arg.span, "write a list, e.g. for n in [6, 12, 24, 16] { ... }, or use "
                       "repeat N { ... } to write a block N times")
            return []
        if clash:
            return []
        out: list[tuple[ast.Statement, Mapping[str, Value]]] = []
        for i, item in enumerate(items):
            self._loop_steps += 1
            if self._unroll_failed:
                return []
            if self._loop_steps > _MAX_LOOP_STEPS:
                self.error(d.TOO_COMPLEX, f"the for loops take more than {_MAX_LOOP_STEPS:,} steps",
                           stmt.keyword_span, "nested loops multiply: loop over shorter lists")
                self._unroll_failed = True
                return []
            values = (Fraction(i), item) if len(stmt.names) == 2 else (item,)
            inner = {**scope, **dict(zip(stmt.names, values))}
            out.extend(self.unroll(stmt.body or (), inner, "for"))
            if stmt.between is not None and i < len(items) - 1:
                out.extend(self.unroll(stmt.between, inner, "for"))
            if before + len(out) > _MAX_STAGES:
                self.error(d.TOO_LARGE, f"this for loop makes more than {_MAX_STAGES:,} stages",
                           stmt.keyword_span, f"a network has at most {_MAX_STAGES:,} stages after unrolling")
                self._unroll_failed = True
                return []
        return out
