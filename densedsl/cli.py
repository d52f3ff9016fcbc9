"""The `densedsl` command: argparse, printing and exit codes live here and nowhere else.

Exit codes: 0 success; 1 invalid input (a spec error, a failed expectation, `fmt --check` that
would change a file); 2 usage error (argparse); 3 internal error (a bug in densedsl: please
report it, with the output of `--traceback`).

Adding a command: write `_add_NAME(sub)` that creates the subparser and sets
`func=_cmd_NAME`, write `_cmd_NAME(args) -> int`, and list `_add_NAME` in `_COMMANDS`.
Commands import heavy modules (torch, graphviz) inside `_cmd_NAME`, never at the top, so
`check`, `fmt`, `summary` and `render` start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, Sequence

from . import diagnostics as d
from .diagnostics import SpecError

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
    for item in args.overrides:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SpecError([d.Diagnostic(d.UNKNOWN_PARAMETER, f"--set expects NAME=VALUE, got '{item}'",
                                          None, "write e.g. --set depth=100", file="--set")])
        result[name.strip()] = value.strip()
    return result


def _load(path: str, args: argparse.Namespace):
    from .spec import load
    return load(path, network=getattr(args, "network", None), **_overrides(args))


# --- check -----------------------------------------------------------------------------------

def _add_check(sub) -> None:
    p = sub.add_parser("check", help="parse, validate and analyse spec files",
                       description="Parse and validate spec files; one line per valid network.")
    _add_spec_options(p, many=True)
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .spec import load_all
    status = EXIT_OK
    overrides = _overrides(args)
    for path in args.files:
        try:
            specs = load_all(path, network=args.network, **overrides)
            analyses = [analyze(spec.network, **_limits(args)) for spec in specs]
        except SpecError as e:
            _print_diagnostics(e.diagnostics)
            status = EXIT_INVALID
            continue
        for a in analyses:
            _print_diagnostics(a.diagnostics)
            print(f"{path}: {a.check_line()}")
    return status


def _limits(args: argparse.Namespace) -> dict:
    """--max-params / --max-memory, for the commands that analyse (absent: the defaults)."""
    limits = {}
    if getattr(args, "max_params", None) is not None:
        limits["max_params"] = args.max_params
    if getattr(args, "max_memory", None) is not None:
        limits["max_memory"] = args.max_memory
    return limits


# --- fmt -------------------------------------------------------------------------------------

def _add_fmt(sub) -> None:
    p = sub.add_parser("fmt", help="print or rewrite spec files in canonical form",
                       description="Print the canonical form of spec files. --check exits 1 "
                                   "when a file is not formatted; --write rewrites it in place.")
    p.add_argument("files", nargs="+", metavar="FILE")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    mode.add_argument("--write", action="store_true", help="rewrite files in place (atomically)")
    p.set_defaults(func=_cmd_fmt)


def _cmd_fmt(args: argparse.Namespace) -> int:
    from .files import atomic_write, read_source
    from .fmt import format_spec
    from .syntax import parse_source
    status = EXIT_OK
    for path in args.files:
        try:
            source = read_source(path)
            formatted = format_spec(parse_source(source))
        except SpecError as e:
            _print_diagnostics(e.diagnostics)
            status = EXIT_INVALID
            continue
        if args.check:
            if formatted != source.text:
                print(f"{path}: would reformat", file=sys.stderr)
                status = EXIT_INVALID
        elif args.write:
            if formatted != source.text:
                try:
                    atomic_write(path, formatted)
                except SpecError as e:
                    _print_diagnostics(e.diagnostics)
                    status = EXIT_INVALID
                    continue
                print(f"{path}: reformatted", file=sys.stderr)
        else:
            sys.stdout.write(formatted)
    return status


# --- compile ---------------------------------------------------------------------------------

def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="build the PyTorch model and write it as .pt, .py or .onnx",
                       description="Build the PyTorch model of a spec (after the same checks as "
                                   "`check`) and write it: OUT.pt the freshly initialised weights "
                                   "(a state_dict for torch.load(weights_only=True)), OUT.py "
                                   "standalone PyTorch source with the same state_dict keys, "
                                   "OUT.onnx an ONNX graph with a dynamic batch size.")
    _add_spec_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.pt, OUT.py or OUT.onnx")
    p.add_argument("--memory", choices=("standard", "efficient"), default="standard",
                   help="efficient: recompute concat-BN-ReLU-conv1 in backward (memory linear in depth)")
    p.set_defaults(func=_cmd_compile)


def _cmd_compile(args: argparse.Namespace) -> int:
    from .export import check_output
    check_output(args.output)  # a bad extension fails before torch is imported
    spec = _load(args.file, args)
    from .compiler import build_model
    from .export import write_output
    model = build_model(spec.network, memory=args.memory)
    write_output(model, spec.network, args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.output}: {spec.network.name}, {params:,} parameters", file=sys.stderr)
    return EXIT_OK


# --- main ------------------------------------------------------------------------------------

_COMMANDS: tuple[Callable, ...] = (
    _add_check,
    _add_fmt,
    _add_compile,
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="densedsl",
        description="Check, analyse, compile, draw and train DenseNet-family architectures "
                    "written as .dense spec files.")
    parser.add_argument("--version", action="version", version=f"densedsl {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an internal error, print the Python traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SpecError as e:
        _print_diagnostics(e.diagnostics)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # the one catch-all: a bug in densedsl, never the user's fault
        print("densedsl: internal error: this is a bug in densedsl, not in your spec.\n"
              "Please report it with the command you ran"
              + (" and the traceback below." if args.traceback else
                 " and the output of the same command with --traceback."), file=sys.stderr)
        if args.traceback:
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
