"""The `densedsl` command: argparse, printing and exit codes live here and nowhere else.

Exit codes: 0 success; 1 invalid input (a spec error, a failed expectation, `fmt --check` that
would change a file); 2 usage error (argparse); 3 internal error (a bug in densedsl: please
report it, with the output of `--traceback`).

Adding a command: write `_add_NAME(sub)` that creates the subparser and sets `func=_cmd_NAME`,
write `_cmd_NAME(args) -> int`, and list `_add_NAME` in `_COMMANDS`
(`spec.py`: commands that read a spec and report; `run.py`: commands that run a model or a
server; `common.py`: the options and option types they share). Commands import heavy
modules (torch, graphviz) inside `_cmd_NAME`, never at the top: `check`, `fmt`, `summary` start fast.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Sequence

from ..core.diagnostics import SpecError
from .common import EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, EXIT_USAGE, _print_diagnostics
from .run import _add_eval, _add_lsp, _add_predict, _add_train
from .spec import (
    _add_check,
    _add_compile,
    _add_diff,
    _add_explain,
    _add_fmt,
    _add_render,
    _add_summary,
    _add_sweep,
)

__all__ = ["EXIT_INTERNAL", "EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]


# --- main ------------------------------------------------------------------------------------

_COMMANDS: tuple[Callable, ...] = (
    _add_check,
    _add_fmt,
    _add_compile,
    _add_summary,
    _add_diff,
    _add_explain,
    _add_sweep,
    _add_render,
    _add_train,
    _add_eval,
    _add_predict,
    _add_lsp,
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
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
    from ..training.threads import default_wait_policy
    default_wait_policy()  # before any command imports torch: OpenMP then reads it (issue 14)
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..analysis.budget import overridden
    try:
        with overridden(getattr(args, "memory_limit", None)):
            status = args.func(args)
        if not sys.stdout.closed:  # the language server closes it when its client exits
            sys.stdout.flush()  # here, where a full disk under stdout is reported, not at exit
        return status
    except SpecError as e:
        _print_diagnostics(e.diagnostics)
        return EXIT_INVALID
    except (ModuleNotFoundError, OSError) as e:  # a missing extra; a closed pipe or a full disk
        from ..core.files import output_failure
        from ..core.optional import missing_package
        error = missing_package(e) if isinstance(e, ModuleNotFoundError) else output_failure(e)
        if error is None:
            return EXIT_OK if isinstance(e, BrokenPipeError) else _internal_error(args)
        _print_diagnostics(error.diagnostics)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # the one catch-all: a bug in densedsl, never the user's fault
        return _internal_error(args)


def _internal_error(args: argparse.Namespace) -> int:
    """Called inside an `except` block: the exception being handled is the bug."""
    print("densedsl: internal error: this is a bug in densedsl, not in your spec.\n"
          "Please report it with the command you ran"
          + (" and the traceback below." if args.traceback else
             " and the output of the same command with --traceback."), file=sys.stderr)
    if args.traceback:
        traceback.print_exc()
    return EXIT_INTERNAL

