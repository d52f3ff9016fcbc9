"""The language's words and limits: statements, settings, functions and choices, each listed
once (the resolver, the language server's completion and hovers, and the docs read them)."""

from __future__ import annotations

import math
import typing
from fractions import Fraction
from typing import Callable

from .. import network as n

Value = Fraction | bool | str | tuple  # a number, a yes/no, a keyword such as `post`, or a list
# A list holds at most this many elements (a literal's elements count against syntax.MAX_OPERATORS,
# the same figure; a list from Python or --set against this): DenseNet-264 has 4 blocks.
MAX_LIST = 200
_INT_MAX = 2**31 - 1            # torch's sizes are int32-safe below this
# What one network, and one file's networks together, may unroll to: far above any real network
# (DenseNet-264: 7 stages, 130 dense layers), and small enough that analysing it all takes
# seconds (~0.5 ms a layer) rather than the minutes 256 networks of 1,000 stages would.
_MAX_STAGES = 1_000             # after unrolling `repeat`
_MAX_LAYERS = 4_000             # dense layers, summed over a network's blocks
_FILE_MAX_STAGES = 2_000
_FILE_MAX_LAYERS = 8_000
_MAX_FIGURE = 10**18            # an `expect` figure: counts, and DenseNet-264 has ~10**10 FLOPs
_MAX_SUGGESTIONS = 100          # did-you-mean searches among parameters, per network
# Elements `for` loops may visit in one network, nested ones included: nested loops over lists of
# 200 with empty bodies make no stage (so the stage cap never trips) yet would run 200**depth steps
_MAX_LOOP_STEPS = 10_000

_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}
FUNCTIONS: dict[str, tuple[int, int, Callable[..., Fraction]]] = {
    # name: (min args, max args, implementation) — exact on Fractions
    "floor": (1, 1, lambda x: Fraction(math.floor(x))),
    "ceil": (1, 1, lambda x: Fraction(math.ceil(x))),
    "round": (1, 1, lambda x: Fraction(round(x))),
    "int": (1, 1, lambda x: Fraction(int(x))),  # truncates toward zero, as Python and Keras code do
    "abs": (1, 1, abs),
    "min": (1, 64, lambda *xs: min(xs)),  # min(x) of one argument is x, not min() of an iterable
    "max": (1, 64, lambda *xs: max(xs)),
    # on a list (`len(blocks)`, `sum(blocks)`, `max(rates)`): see _Resolver.call
    "len": (1, 1, lambda xs: Fraction(len(xs))),
    "sum": (1, 1, lambda xs: sum(xs, Fraction(0))),
}
_LISTFUNCTIONS = ("len", "sum")

STATEMENTS = ("input", "defaults", "stem", "dense", "transition", "repeat", "head", "expect")
STAGE_STATEMENTS = ("dense", "transition", "repeat", "for")  # what repeat and for bodies hold
STEM_OPS = ("conv", "norm", "relu", "relu6", "maxpool", "avgpool", "dropout", "linear")
DENSE_SETTINGS = ("layers", "growth", "bottleneck", "dropout", "bias", "order", "activation", "kernel", "groups",
                  "kind", "norm", "norm_groups", "links", "emit", "width_factor", "widths", "separable")
# who a dense layer reads and what its block emits (DenseNet's relatives); `random(p, seed)` is a
# links value only, not an arithmetic function
LINK_RULES = typing.get_args(n.LinkRule)
EMIT_RULES = typing.get_args(n.EmitRule)
RANDOM_LINKS = "random"
ACTIVATIONS = typing.get_args(n.ActivationFn)
LAYER_KINDS = typing.get_args(n.LayerKind)
NORMS = typing.get_args(n.NormKind)
TASKS = typing.get_args(n.Task)
TRANSITION_POOLS = typing.get_args(n.TransitionPool)
TRANSITION_SETTINGS = ("compression", "channels", "bias", "dropout", "pool", "kernel", "stride", "padding",
                       "order", "activation", "ceil")
HEAD_SETTINGS = ("classes", "norm", "pool", "kernel", "stride", "dropout", "hidden", "activation", "task")
DEFAULT_SETTINGS = ("growth", "layers", "bottleneck", "compression", "bias", "dropout", "order", "activation",
                    "norm", "norm_groups", "links", "emit", "width_factor", "widths", "separable")
EXPECT_KEYS = ("params", "buffers", "macs", "flops", "channels", "connections", "depth")
STEM_SETTINGS = {
    "conv": ("kernel", "stride", "padding", "bias", "groups"),
    "maxpool": ("kernel", "stride", "padding", "ceil"),
    "avgpool": ("kernel", "stride", "padding", "ceil"),
    "dropout": ("rate",),
    "norm": (),
    "relu": (),
    "relu6": (),
    "linear": ("bias",),
}
_OWNER = {  # which statement a setting belongs to, for "'compression' is a transition setting"
    **{s: "dense" for s in DENSE_SETTINGS},
    **{s: "transition" for s in ("compression", "channels")},
    "classes": "head",
}
