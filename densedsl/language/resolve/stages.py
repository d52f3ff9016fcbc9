"""The stages a body unrolls to: dense blocks, transitions, the head, and `expect` lines."""

from __future__ import annotations

import difflib
from fractions import Fraction
from typing import Any, Callable, cast

from ...core import diagnostics as d
from ...core.source import Span
from ...core.units import axes_text
from .. import ast
from .. import network as n
from ..fmt import format_expr
from .base import _Bound, _did_you_mean, _Invalid, _source_text, _tolerance, _walk
from .connectivity import Connectivity
from .statements import Statements
from .vocabulary import (
    _MAX_FIGURE,
    ACTIVATIONS,
    DENSE_SETTINGS,
    EXPECT_KEYS,
    HEAD_SETTINGS,
    LAYER_KINDS,
    NORMS,
    TASKS,
    TRANSITION_POOLS,
    TRANSITION_SETTINGS,
    Value,
)


def _show_setting(value: Any) -> str:
    """A resolved setting as a spec writes it: bottleneck 4, order post."""
    return "off" if value is None else str(value)


class Stages(Statements, Connectivity):
    def dense(self, stmt: ast.Statement, index: int) -> n.DenseBlock:
        if stmt.arg is not None:
            shown = _source_text(stmt.arg) if not isinstance(stmt.arg, ast.ShapeLit) else "L"
            self.no_arg(stmt, f"write the number of layers as a setting: dense layers={shown}")
            raise _Invalid
        self.no_body(stmt)
        explicit = {x.name for x in stmt.settings}
        # widths written on the block replace an inherited width_factor, and the other way round
        sized = () if {"widths", "width_factor"} & explicit else ("width_factor", "widths")
        s = self.settings(stmt, DENSE_SETTINGS, "dense block",
                          ("growth", "layers", "bottleneck", "dropout", "bias", "order", "activation", "norm",
                           "norm_groups", "links", "emit", "separable") + sized)
        missing = [k for k in ("layers", "growth") if k not in s]
        misspelt = [x.name for x in stmt.settings if x.name not in DENSE_SETTINGS]
        for k in missing:
            if difflib.get_close_matches(k, misspelt, n=1):
                continue  # already reported as "unknown setting 'grwoth'… did you mean 'growth'?"
            self.error(d.MISSING, f"dense block {index} has no {k}", stmt.keyword_span,
                       f"write dense {k}=N, or set {k} in `defaults`")
        if missing:
            raise _Invalid
        values = self.try_all(
            layers=lambda: self.integer(s["layers"], 1),
            growth=lambda: self.integer(s["growth"], 1),
            bottleneck=lambda: self.bottleneck(s["bottleneck"]) if "bottleneck" in s else None,
            dropout=lambda: float(self.real(s["dropout"], Fraction(0), Fraction(1), False, True))
            if "dropout" in s else 0.0,
            bias=lambda: self.boolean(s["bias"]) if "bias" in s else False,
            order=lambda: self.choice(s["order"], ("pre", "post")) if "order" in s else "pre",
            activation=lambda: self.choice(s["activation"], ACTIVATIONS) if "activation" in s else "relu",
            kernel=lambda: self.odd_kernel(s["kernel"]) if "kernel" in s else 3,
            groups=lambda: self.integer(s["groups"], 1, 1 << 16) if "groups" in s else 1,
            kind=lambda: self.choice(s["kind"], LAYER_KINDS) if "kind" in s else self.default_kind(),
            norm=lambda: self.choice(s["norm"], NORMS) if "norm" in s else "batch",
            norm_groups=lambda: self.integer(s["norm_groups"], 1, 1 << 16) if "norm_groups" in s else 32,
            links=lambda: self.links(s["links"]) if "links" in s else "all",
            emit=lambda: self.emit(s["emit"]) if "emit" in s else "all",
            width_factor=lambda: self.width_factor(s["width_factor"]) if "width_factor" in s else None,
            widths=lambda: self.layer_widths(s["widths"]) if "widths" in s else None,
            separable=lambda: self.boolean(s["separable"]) if "separable" in s else False,
        )
        self.connectivity_fits(s, values)
        self.norm_fits(s, values, explicit)
        if values["kind"] == "linear":
            self.linear_only(stmt, s, index)
            values["bias"] = self.boolean(s["bias"]) if "bias" in s else True
        if values["separable"]:
            self.separable_fits(stmt, s, values, index)
        return n.DenseBlock(index=index, span=stmt.span, **values)

    def separable_fits(self, stmt: ast.Statement, s: dict[str, _Bound], values: dict[str, Any], index: int) -> None:
        """A separable layer is HarDNet-DS's: post-activation convs on maps, its 1x1 conv in place
        of a bottleneck and its depthwise conv's groups its width, so none of those may differ."""
        span = self.setting_span(stmt, s["separable"])
        if values["kind"] == "linear":
            self.error(d.WRONG_DATA_KIND, f"separable=true splits a conv, and denseblock{index}'s layers are "
                       "linear (fully connected)", span, "remove separable=…; a linear layer has no depthwise form")
            raise _Invalid
        clashes = [(name, hint) for name, bad, hint in (
            ("order", values["order"] != "post", "separable layers are post-activation (Conv-BN-act, then "
             "depthwise Conv-BN): write order=post"),
            ("bottleneck", values["bottleneck"] is not None, "a separable layer's 1x1 conv is its own; "
             "write bottleneck=off"),
            ("groups", values["groups"] != 1, "the depthwise conv's groups are the layer's width; "
             "remove groups=…"),
        ) if bad]
        for name, hint in clashes:
            self.error(d.CONFLICT, f"separable=true and {name}={_show_setting(values[name])} exclude each other",
                       self.setting_span(stmt, s[name]) if name in s else span, hint)
        if clashes:
            raise _Invalid

    def norm_fits(self, s: dict[str, _Bound], values: dict[str, Any], explicit: set[str]) -> None:
        """`norm_groups` belongs to `norm=group` (a default one is simply unused by other norms);
        group and instance norms need maps (channels)."""
        norm = values["norm"]
        if "norm_groups" in explicit and norm != "group":
            self.error(d.CONFLICT, f"norm_groups sets a group norm's groups, and this block has norm={norm}",
                       s["norm_groups"].span, "write norm=group norm_groups=G, or remove norm_groups")
            raise _Invalid
        if values["kind"] == "linear" and norm in ("group", "instance"):
            self.error(d.WRONG_DATA_KIND, f"norm={norm} normalises groups of a map's channels, and these "
                       "layers are linear (fully connected)", s["norm"].span,
                       "on a feature vector use norm=batch, norm=layer or norm=none")
            raise _Invalid
        if norm != "group":
            values["norm_groups"] = n.DenseBlock.__dataclass_fields__["norm_groups"].default  # unused

    def default_kind(self) -> n.LayerKind:
        """A dense block on a feature vector (`input F`) is made of linear layers, else of convs."""
        return "linear" if self.input_shape is not None and len(self.input_shape) == 1 else "conv"

    @staticmethod
    def setting_span(stmt: ast.Statement, b: _Bound) -> Span | None:
        """The whole `name=value` a statement writes (its value's span when inherited)."""
        return next((x.span for x in stmt.settings if x.name == b.name and x.span is not None), b.span)

    def linear_only(self, stmt: ast.Statement, s: dict[str, _Bound], index: int) -> None:
        """`kernel` and `groups` are a conv's: refused on a block of linear layers (E210)."""
        for name in ("kernel", "groups"):
            if name in s:
                self.error(d.WRONG_DATA_KIND, f"'{name}' is a conv setting, and denseblock{index}'s layers "
                           "are linear (fully connected)", self.setting_span(stmt, s[name]),
                           f"remove {name}=…; a linear layer sees every feature")
        if any(name in s for name in ("kernel", "groups")):
            raise _Invalid

    def widths(self, b: _Bound) -> tuple[int, ...]:
        """`hidden=[512, 256]` (or one width, `hidden=512`): whole numbers ≥ 1."""
        v = self.eval(b.expr)
        items = v if isinstance(v, tuple) else (v,)
        spans = [x.span for x in b.expr.items] if isinstance(b.expr, ast.ListExpr) else [b.span] * len(items)
        return self.counts(items, spans, lambda i: f"hidden width {i}" if isinstance(v, tuple) else "hidden width",
                           "hidden lists the widths of the layers before the classifier, e.g. hidden=[512, 256]")

    def odd_kernel(self, b: _Bound) -> n.Axes:
        k = self.axes(b, 1, 255, "kernel")
        even = [x for x in n.per_axis(k, 1) if x % 2 == 0]
        if even:
            x = even[0]
            self.error(d.OUT_OF_RANGE, f"a dense layer's kernel must be odd, got {axes_text(k)}", b.span,
                       f"padding k//2 keeps the map's size only for odd kernels: use {x - 1} or {x + 1}")
            raise _Invalid
        return k

    def try_all(self, **thunks: Callable[[], Any]) -> dict[str, Any]:
        """Evaluate every setting, so one run reports every bad value; then give up if any was bad."""
        values, failed = {}, False
        for key, thunk in thunks.items():
            try:
                values[key] = thunk()
            except _Invalid:
                failed = True
        if failed:
            raise _Invalid
        return values

    def transition(self, stmt: ast.Statement, index: int) -> n.Transition:
        self.no_arg(stmt)
        self.no_body(stmt)
        explicit = {x.name for x in stmt.settings}
        if {"compression", "channels"} <= explicit:
            self.error(d.CONFLICT, "a transition takes compression or channels, not both", stmt.keyword_span,
                       "channels=N sets the output count; compression=θ scales the input count")
            raise _Invalid
        inherit = ("bias", "dropout") + (() if "channels" in explicit else ("compression",))
        s = self.settings(stmt, TRANSITION_SETTINGS, "transition", inherit)
        if self.default_kind() == "linear":
            return self.vector_transition(stmt, index, s)
        if "pool" in s and self.eval_quietly(s["pool"]) == "none":
            return self.poolless_transition(stmt, index, s)
        values = self.try_all(
            **self.transition_values(s),
            pool=lambda: self.pool(self.choice(s["pool"], (*TRANSITION_POOLS, "none")) if "pool" in s else "avg",
                                   s, stmt.span),
        )
        if values["pool"].mode == "depthwise" and values["pool"].ceil:
            self.error(d.CONFLICT, "ceil=true rounds a pool's output up, and pool=depthwise is a conv",
                       s["ceil"].span, "remove ceil=…; a conv's output size rounds down")
            raise _Invalid
        return n.Transition(index=index, span=stmt.span, **self.default_compression(values))

    def transition_values(self, s: dict[str, _Bound]) -> dict[str, Callable[[], Any]]:
        """The settings every transition takes, pooled or not, as `try_all` thunks."""
        return dict(
            compression=lambda: self.real(s["compression"], Fraction(0), Fraction(1), True, False,
                                          "compression θ") if "compression" in s else None,
            channels=lambda: self.integer(s["channels"], 1) if "channels" in s else None,
            bias=lambda: self.boolean(s["bias"]) if "bias" in s else False,
            dropout=lambda: float(self.real(s["dropout"], Fraction(0), Fraction(1), False, True))
            if "dropout" in s else 0.0,
            # not inherited from `defaults`: `defaults order=post` makes post-activation layers
            # and keeps DenseNet's BN-ReLU-Conv transitions
            order=lambda: self.choice(s["order"], ("pre", "post")) if "order" in s else "pre",
            activation=lambda: self.choice(s["activation"], ACTIVATIONS) if "activation" in s else "relu",
        )

    @staticmethod
    def default_compression(values: dict[str, Any]) -> dict[str, Any]:
        """Neither compression nor channels: θ = 1 (the transition keeps every channel)."""
        if values["compression"] is None and values["channels"] is None:
            values["compression"] = Fraction(1)
        return values

    def eval_quietly(self, b: _Bound) -> Value | None:
        """The value, or None when it is invalid (the caller's own check reports it)."""
        mark, reported = len(self.diags), set(self._reported)
        try:
            return self.eval(b.expr, symbols=True)
        except _Invalid:
            return None
        finally:
            del self.diags[mark:]
            self._reported = reported

    def vector_transition(self, stmt: ast.Statement, index: int, s: dict[str, _Bound]) -> n.Transition:
        """On a feature vector (an MLP): BN-ReLU-Linear to ⌊θ·m⌋ features, no pool (E210 for a
        window setting)."""
        windowed = [name for name in ("pool", "kernel", "stride", "padding", "ceil") if name in s]
        for name in windowed:
            self.error(d.WRONG_DATA_KIND, f"the transition's '{name}' is a map's, and the input is a feature "
                       "vector", self.setting_span(stmt, s[name]), f"remove {name}=…; on a vector a transition is a linear "
                       "projection to ⌊θ·m⌋ features (compression=θ) or channels=N")
        if windowed:
            raise _Invalid
        values = self.try_all(**self.transition_values(s))
        return n.Transition(index=index, span=stmt.span, pool=None, **self.default_compression(values))

    def poolless_transition(self, stmt: ast.Statement, index: int, s: dict[str, _Bound]) -> n.Transition:
        """`pool=none`: BN-ReLU-Conv1x1 only; `stride` is the conv's (2 downsamples in the conv)."""
        for name in ("kernel", "padding", "ceil"):
            if name in s:
                self.error(d.CONFLICT, f"'{name}' sets the pooling window, and this transition has "
                           "pool=none", s[name].span,
                           "the transition's conv is 1x1; use stride=2 to downsample in the conv")
                raise _Invalid
        values = self.try_all(
            **self.transition_values(s),
            stride=lambda: self.axes(s["stride"], 1) if "stride" in s else 1,
        )
        return n.Transition(index=index, span=stmt.span, pool=None, **self.default_compression(values))

    def head(self, stmt: ast.Statement) -> n.Head | None:
        self.no_arg(stmt)
        self.no_body(stmt)
        s = self.settings(stmt, HEAD_SETTINGS, "head")
        if "classes" not in s:
            if difflib.get_close_matches("classes", [x.name for x in stmt.settings], n=1):
                return None  # reported as a misspelt setting
            self.error(d.MISSING, "the head has no classes", stmt.keyword_span, "e.g. head classes=10")
            return None
        vector = self.default_kind() == "linear"
        if vector and (windowed := [x for x in ("pool", "kernel", "stride") if x in s]):
            for name in windowed:
                self.error(d.WRONG_DATA_KIND, f"the head's '{name}' sets a pooling window, and the input is a "
                           "feature vector: there is no map to pool", self.setting_span(stmt, s[name]),
                           f"remove {name}=…; on a vector the head is (dropout) → linear layers")
            return None
        try:
            values = self.try_all(
                classes=lambda: self.integer(s["classes"], 1),
                norm=lambda: self.boolean(s["norm"]) if "norm" in s else not vector,
                pool=lambda: self.choice(s["pool"], ("avg", "max")) if "pool" in s else "avg",
                kernel=lambda: self.axes(s["kernel"], 1) if "kernel" in s else None,
                stride=lambda: self.axes(s["stride"], 1) if "stride" in s else None,
                dropout=lambda: float(self.real(s["dropout"], Fraction(0), Fraction(1), False, True))
                if "dropout" in s else 0.0,
                hidden=lambda: self.widths(s["hidden"]) if "hidden" in s else (),
                activation=lambda: self.choice(s["activation"], ACTIVATIONS) if "activation" in s else "relu",
                task=lambda: self.choice(s["task"], TASKS) if "task" in s else None,
            )
        except _Invalid:
            return None
        if values["task"] is None:  # one output is a regression: a one-class classifier learns nothing
            values["task"] = "regression" if values["classes"] == 1 else "classification"
        elif values["task"] == "classification" and values["classes"] == 1:
            self.error(d.OUT_OF_RANGE, "a classification head needs at least 2 classes, got classes=1",
                       s["task"].span, "a one-class classifier learns nothing (its softmax is always 1); "
                       "for one real-valued output write task=regression, or leave task out")
            return None
        kernel, stride = values.pop("kernel"), values.pop("stride")
        if stride is not None and kernel is None:
            self.error(d.MISSING, "a head stride needs a pooling kernel", s["stride"].span,
                       "add kernel=K for a fixed pooling window, or drop stride for a global pool")
            return None
        window = (kernel, stride or kernel) if kernel is not None else None
        return n.Head(window=window, span=stmt.span, **values)

    def expect(self, stmt: ast.Statement, seen: dict[str, ast.Setting]) -> list[n.Expectation]:
        self.no_arg(stmt)
        self.no_body(stmt)
        out = []
        for s in stmt.settings:
            if s.name not in EXPECT_KEYS:
                self.error(d.UNKNOWN_SETTING, f"unknown figure '{s.name}' for expect", s.name_span,
                           _did_you_mean(s.name, EXPECT_KEYS) or f"expect takes: {', '.join(EXPECT_KEYS)}")
                continue
            if s.name in seen:
                self.error(d.DUPLICATE_SETTING, f"'{s.name}' is expected twice", s.name_span,
                           "remove one of them", ((seen[s.name].name_span, "first expected here"),))
                continue
            seen[s.name] = s
            if self.overridden and not any(isinstance(x, ast.Name) and x.id in self.env
                                           for x in _walk(s.value)):
                continue
            try:
                value = self.real(_Bound(s.value, s.value.span, f"expected {s.name}"), Fraction(0),
                                  Fraction(_MAX_FIGURE), False, False)
            except _Invalid:
                continue
            out.append(n.Expectation(key=cast(n.ExpectKey, s.name), value=value,  # in EXPECT_KEYS
                                     tolerance=_tolerance(s.value),
                                     text=format_expr(s.value), span=s.span))
        return out
