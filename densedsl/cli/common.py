"""What the commands share: printing diagnostics, the spec options (`--network`, `--set`), the
option types that check a value as argparse reads it, and the run and limit options."""


from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Sequence

from ..core import diagnostics as d
from ..core.diagnostics import SpecError
from ..core.units import parse_quantity

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _color(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _print_diagnostics(diagnostics: Sequence[d.Diagnostic]) -> None:
    if diagnostics:
        print(d.format_diagnostics(diagnostics, color=_color(sys.stderr)), file=sys.stderr)


def _add_spec_options(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    """The options every command that reads a spec shares."""
    if many:
        p.add_argument("files", nargs="+", metavar="FILE", help="spec files (.dense)")
    else:
        p.add_argument("file", metavar="FILE", help="a spec file (.dense)")
    p.add_argument("--network", metavar="NAME", help="which network of the file (default: the only one)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="NAME=VALUE",
                   action="extend", help="override network parameters, e.g. --set depth=190 growth=40")


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """`--set a=1 b=2` as a dict of raw strings; the resolver parses and checks the values."""
    result: dict[str, str] = {}
    flag = getattr(args, "override_flag", "--set")
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpecError([d.Diagnostic(d.BAD_OVERRIDE, f"{flag} expects NAME=VALUE, got {item!r}",
                                          None, f"write e.g. {flag} depth=100", file=flag)])
        result[name.strip()] = value.strip()
    return result


def _load(path: str, args: argparse.Namespace):
    from ..language.spec import load
    return load(path, network=getattr(args, "network", None), **_overrides(args))


def _quantity(text: str) -> int:
    """argparse type for --max-params 1M, --max-memory 80GiB, --max-flops 5.6G."""
    try:
        return parse_quantity(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except OverflowError:  # 1e400 reads as float infinity
        raise argparse.ArgumentTypeError(f"{text!r} is too large (write e.g. 1M, 5.6G, 80GiB)") from None


_MAX_DIM = 2**31 - 1   # torch sizes are int64, but no input or batch is anywhere near this


def _shape(text: str) -> tuple[int, ...]:
    parts = text.lower().split("x")
    if not 1 <= len(parts) <= 4 or not all(p.isascii() and p.isdigit() and len(p) <= 10
                                           and 0 < int(p) <= _MAX_DIM for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW (or F, CxL, CxDxHxW) with positive integers up to "
                                         f"{_MAX_DIM}, e.g. 3x224x224, not {text!r:.60}")
    return tuple(int(p) for p in parts)


def _integer(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number in [low, high], else a usage error naming the range."""
    def parse(text: str) -> int:
        stripped = text.strip().replace("_", "")
        digits = stripped[1:] if stripped[:1] in "+-" else stripped
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 20 or not low <= int(stripped) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low:,} to {high:,}, "
                                             f"not {text!r:.60}")
        return int(stripped)
    parse.__name__ = "whole number"
    return parse


def _real(low: float, high: float = float("inf"), *, above: bool = False, below: bool = False,
          what: str = "") -> Callable[[str], float]:
    """argparse type: a finite number in the interval (open at `low` when `above`, at `high`
    when `below`); nan and infinity are refused, since they would train to NaN."""
    left, right = "(" if above else "[", ")" if below or high == float("inf") else "]"
    interval = f"{left}{low:g}, {'∞' if high == float('inf') else f'{high:g}'}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        inside = (value > low if above else value >= low) and (value < high if below else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"expected a finite number in {interval}{what}, not {text!r:.60}")
        return value
    parse.__name__ = "number"
    return parse


def _stage_name(text: str) -> str:
    """argparse type for --freeze: a module name (which exist is known once the model is built)."""
    if not (text.isascii() and text.isidentifier() and len(text) <= 100):
        raise argparse.ArgumentTypeError(f"expected a stage name such as features, stem or denseblock1, "
                                         f"not {text!r:.60}")
    return text


def _memory_limit(text: str) -> float:
    """argparse type for --memory-limit: a size (16GiB, 500M) or none."""
    from ..analysis.budget import parse_limit
    try:
        return parse_limit(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_memory_limit_option(p: argparse.ArgumentParser) -> None:
    """--memory-limit: what the E307 guard compares the predicted memory with (densedsl.analysis.budget)."""
    p.add_argument("--memory-limit", type=_memory_limit, metavar="SIZE",
                   help="memory this command may use (default: what the machine has free, or "
                        f"${ENV_MEMORY_LIMIT}); e.g. 64GiB, or none to skip the check")


ENV_MEMORY_LIMIT = "DENSEDSL_MEMORY_LIMIT"
_MAX_BATCH = _MAX_DIM
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}  # train --amp's names
_SEED_RANGE = (-(2**63), 2**63 - 1)   # what a checkpoint stores (int64) and torch.manual_seed takes


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """--max-params / --max-memory: the resource guards of `analyze` (E301, E302)."""
    p.add_argument("--max-params", type=_quantity, metavar="N",
                   help="refuse networks with more parameters (default 10G), e.g. 50M")
    p.add_argument("--max-memory", type=_quantity, metavar="BYTES",
                   help="refuse networks whose training activations at batch 1 exceed this "
                        "(default 80GiB), e.g. 16GiB")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=_integer(1, _MAX_BATCH), default=1, metavar="N",
                   help="batch size for memory (default 1)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16", "float64"),
                   type=lambda t: _DTYPES.get(t, t), help="element type for memory (default float32; bf16, fp16 "
                   "as train --amp writes them)")


def _limits(args: argparse.Namespace) -> dict:
    """--max-params / --max-memory, for the commands that analyse (absent: the defaults)."""
    return {k: getattr(args, k) for k in ("max_params", "max_memory") if getattr(args, k, None) is not None}


def _analyze_file(path: str, args: argparse.Namespace):
    from ..analysis.figures import analyze
    network = _load(path, args).network
    if getattr(args, "input", None) is not None:
        network = network.with_input(args.input)
    return analyze(network, **_limits(args))


def _emit(report, args: argparse.Namespace) -> None:
    if getattr(args, "json", False):
        import json
        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        print(d.printable(report.text()))  # a report quotes spec comments
