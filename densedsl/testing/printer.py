"""The spec printer: a `Network` written back as spec text.

`spec_text(network)` writes every setting explicitly (so no `defaults` can change it, and
`parse(spec_text(n)).network == n`); `family_text(network)` writes a network whose transitions
are all the same as a family: list parameters and one `for … between` loop. Neither needs
hypothesis: `densedsl.testing.strategies` draws the networks they print.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any, assert_never

from ..core.units import axes_text
from ..language.network import (
    Activation,
    Conv,
    DenseBlock,
    Dropout,
    Head,
    Linear,
    Network,
    Norm,
    Pool,
    RandomLinks,
    ReLU,
    Stage,
    StemOp,
    Transition,
)


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _num(x) -> str:
    if isinstance(x, Fraction):
        return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _stem_op_text(op: StemOp) -> str:
    match op:
        case Conv():
            return (f"conv {op.out_channels} kernel={axes_text(op.kernel)} stride={axes_text(op.stride)} "
                    f"padding={axes_text(op.padding)} bias={_bool(op.bias)}"
                    + (f" groups={op.groups}" if op.groups != 1 else ""))
        case Pool():
            return (f"{op.mode}pool kernel={axes_text(op.kernel)} stride={axes_text(op.stride)} "
                    f"padding={axes_text(op.padding)}" + (" ceil=true" if op.ceil else ""))
        case Dropout():
            return f"dropout {_num(op.rate)}"
        case Norm():
            return "norm"
        case ReLU():
            return "relu"
        case Activation():
            return op.fn
        case Linear():
            return f"linear {op.out_features} bias={_bool(op.bias)}"
        case _:
            assert_never(op)


def _links_text(s: DenseBlock) -> str:
    """The block's connectivity settings as a spec writes them (nothing for DenseNet's)."""
    out = ""
    if isinstance(s.links, RandomLinks):
        out += f" links=random({_num(s.links.p)}, {s.links.seed})"
    elif isinstance(s.links, tuple):
        out += " links=[" + ", ".join("[" + ", ".join(map(str, r)) + "]" for r in s.links) + "]"
    elif s.links != "all":
        out += f" links={s.links}"
    if isinstance(s.emit, tuple):
        out += " emit=[" + ", ".join(map(str, s.emit)) + "]"
    elif s.emit != "all":
        out += f" emit={s.emit}"
    if s.width_factor is not None:
        out += f" width_factor={_num(s.width_factor)}"
    if s.widths is not None:
        out += " widths=[" + ", ".join(map(str, s.widths)) + "]"
    if s.separable:
        out += " separable=true"
    return out


def _stage_text(s: Stage, vector: bool = False) -> str:
    match s:
        case DenseBlock() if s.kind == "linear":
            return (f"dense layers={s.layers} growth={s.growth} "
                    f"bottleneck={s.bottleneck if s.bottleneck else 'off'} "
                    f"dropout={_num(s.dropout)} bias={_bool(s.bias)} order={s.order} "
                    f"activation={s.activation} kind=linear norm={s.norm}")
        case Transition() if vector:
            size = (f"compression={_num(s.compression)}" if s.channels is None
                    else f"channels={s.channels}")
            return f"transition {size} bias={_bool(s.bias)} dropout={_num(s.dropout)}"
        case DenseBlock():
            return (f"dense layers={s.layers} growth={s.growth} "
                    f"bottleneck={s.bottleneck if s.bottleneck else 'off'} "
                    f"dropout={_num(s.dropout)} bias={_bool(s.bias)} order={s.order} "
                    f"activation={s.activation} kernel={axes_text(s.kernel)} groups={s.groups} norm={s.norm}"
                    + (f" norm_groups={s.norm_groups}" if s.norm == "group" else "") + _links_text(s))
        case Transition():
            size = (f"compression={_num(s.compression)}" if s.channels is None
                    else f"channels={s.channels}")
            pool = (f"pool={s.pool.mode} kernel={axes_text(s.pool.kernel)} stride={axes_text(s.pool.stride)} "
                    f"padding={axes_text(s.pool.padding)}" + (" ceil=true" if s.pool.ceil else "")
                    if s.pool else f"pool=none stride={axes_text(s.stride)}")
            return (f"transition {size} bias={_bool(s.bias)} dropout={_num(s.dropout)} {pool} "
                    f"order={s.order} activation={s.activation}")
        case _:
            assert_never(s)


def spec_text(network: Network) -> str:
    """The network as spec text, every setting explicit (so no `defaults` can change it)."""
    lines = [f"network {network.name} {{", f"    input {'x'.join(map(str, network.input))}"]
    if network.stem.ops:
        lines.append("    stem {")
        lines += [f"        {_stem_op_text(op)}" for op in network.stem.ops]
        lines.append("    }")
    lines += [f"    {_stage_text(s, network.vector)}" for s in network.stages]
    if network.head is not None:
        lines.append(f"    {_head_text(network.head, network.vector)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def family_text(network: Network) -> str:
    """The network as a family spec: every per-block setting a list parameter, one
    `for i, n in layers { dense … } between { transition … }`, the input side a parameter.

    Needs a network whose transitions are all the same (`networks(same_transitions=True)`); its
    resolved form is `network` with these parameters.
    """
    blocks, transitions = network.blocks, network.transitions
    assert len({replace(t, index=1) for t in transitions}) <= 1, "transitions differ"
    lists: dict[str, list[Any]] = {
        "layers": [b.layers for b in blocks],
        "growths": [b.growth for b in blocks],
        "bottlenecks": [b.bottleneck or "off" for b in blocks],
        "dropouts": [_num(b.dropout) for b in blocks],
        "biases": [_bool(b.bias) for b in blocks],
        "orders": [b.order for b in blocks],
        "activations": [b.activation for b in blocks],
        "kernels": [b.kernel for b in blocks],
        "groups": [b.groups for b in blocks],
    }
    # an MLP's layers take a norm, not a kernel or groups; its input width is the parameter
    if network.vector:
        del lists["kernels"], lists["groups"]
    lists["norms"] = [b.norm for b in blocks]
    grouped = all(b.norm == "group" for b in blocks)  # norm_groups beside another norm is E116
    if grouped:
        lists["norm_groups"] = [b.norm_groups for b in blocks]
    separable = any(b.separable for b in blocks)  # written only where a block has it (HarDNet-DS)
    if separable:
        lists["separables"] = [_bool(b.separable) for b in blocks]
    side = network.input[-1]  # networks() draws the same side along every axis
    params = ", ".join([f"{k}=[{', '.join(map(str, v))}]" for k, v in lists.items()] + [f"side={side}"])
    shape = "side" if network.vector else " x ".join([str(network.input[0])] + ["side"] * (len(network.input) - 1))
    lines = [f"network {network.name}({params}) {{", f"    input {shape}"]
    if network.stem.ops:
        lines += ["    stem {"] + [f"        {_stem_op_text(op)}" for op in network.stem.ops] + ["    }"]
    lines += ["    for i, n in layers {",
              "        dense layers=n growth=growths[i] bottleneck=bottlenecks[i] dropout=dropouts[i] "
              "bias=biases[i] order=orders[i] activation=activations[i] "
              + ("norm=norms[i]" if network.vector else "kernel=kernels[i] groups=groups[i] norm=norms[i]")
              + (" norm_groups=norm_groups[i]" if grouped else "")
              + (" separable=separables[i]" if separable else "")]
    if transitions:
        lines += ["    } between {", f"        {_stage_text(transitions[0], network.vector)}"]
    lines.append("    }")
    if network.head is not None:
        lines.append(f"    {_head_text(network.head, network.vector)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _head_text(hd: Head, vector: bool = False) -> str:
    window = f" kernel={axes_text(hd.window[0])} stride={axes_text(hd.window[1])}" if hd.window else ""
    pool = "" if vector else f" pool={hd.pool}{window}"  # a vector is not pooled (E210)
    return (f"head classes={hd.classes} norm={_bool(hd.norm)}{pool} dropout={_num(hd.dropout)} "
            f"hidden=[{', '.join(map(str, hd.hidden))}] activation={hd.activation} task={hd.task}")


__all__ = ["family_text", "spec_text"]
