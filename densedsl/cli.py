"""The `densedsl` command: argparse, printing and exit codes live here and nowhere else.

Exit codes: 0 success; 1 invalid input (a spec error, a failed expectation, `fmt --check` that
would change a file); 2 usage error (argparse); 3 internal error (a bug in densedsl: please
report it, with the output of `--traceback`).

Adding a command: write `_add_NAME(sub)` that creates the subparser and sets `func=_cmd_NAME`,
write `_cmd_NAME(args) -> int`, and list `_add_NAME` in `_COMMANDS`. Commands import heavy
modules (torch, graphviz) inside `_cmd_NAME`, never at the top: `check`, `fmt`, `summary` start fast.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from typing import Callable, Sequence

from .core import diagnostics as d
from .core.diagnostics import SpecError
from .core.diagnostics import printable_line as _line
from .core.units import parse_quantity

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
    from .language.spec import load
    return load(path, network=getattr(args, "network", None), **_overrides(args))


# --- check -----------------------------------------------------------------------------------

def _add_check(sub) -> None:
    p = sub.add_parser("check", help="parse, validate and analyse spec files",
                       description="Parse and validate spec files; one line per valid network.")
    _add_spec_options(p, many=True)
    _add_limit_options(p)
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from .analysis.figures import analyze
    from .language.spec import load_all
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
            print(f"{_line(path)}: {a.check_line()}")
    return status


def _limits(args: argparse.Namespace) -> dict:
    """--max-params / --max-memory, for the commands that analyse (absent: the defaults)."""
    return {k: getattr(args, k) for k in ("max_params", "max_memory") if getattr(args, k, None) is not None}


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
    from .core.files import atomic_write, read_source
    from .language.fmt import format_spec
    from .language.syntax import parse_source
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
                print(f"{_line(path)}: would reformat", file=sys.stderr)
                status = EXIT_INVALID
        elif args.write:
            if formatted != source.text:
                try:
                    atomic_write(path, formatted)
                except SpecError as e:
                    _print_diagnostics(e.diagnostics)
                    status = EXIT_INVALID
                    continue
                print(f"{_line(path)}: reformatted", file=sys.stderr)
        else:
            sys.stdout.write(formatted)
    return status


# --- compile ---------------------------------------------------------------------------------

def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="build the PyTorch model and write it as .pt, .py or .onnx",
                       description="Build the PyTorch model of a spec (after the same checks as "
                                   "`check`) and write it: OUT.pt the weights (freshly initialised, "
                                   "or those of --weights; a state_dict for "
                                   "torch.load(weights_only=True)), OUT.py standalone PyTorch source "
                                   "with the same state_dict keys, OUT.onnx an ONNX graph with a "
                                   "dynamic batch size.")
    _add_spec_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.pt, OUT.py or OUT.onnx")
    p.add_argument("--weights", metavar="CHECKPOINT",
                   help="export trained weights: a densedsl checkpoint (or its run directory), or a "
                        "state_dict / torchvision, timm, MONAI, pytorchcv DenseNet, timm VoVNet, pytorchcv "
                        "SparseNet/HarDNet checkpoint (.pt/.pth); every tensor must fit the spec")
    p.add_argument("--memory", choices=("standard", "efficient"), default="standard",
                   help="efficient: recompute concat, BN and ReLU in backward, keep conv outputs (memory linear in depth)")
    _add_memory_limit_option(p)
    p.set_defaults(func=_cmd_compile)


def _run_dir(path: str) -> bool:
    """A run directory of densedsl train: it holds its spec as trained, weights and preprocessing."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "checkpoint.pt"))


def _refuse_with_run(args: argparse.Namespace, options: tuple[str, ...]) -> None:
    if given := [f"--{o.replace('_', '-')}" for o in options if getattr(args, o, None)]:
        raise SpecError([d.Diagnostic(d.CONFLICT, f"{' and '.join(given)} with a run directory: it holds the spec "
                                      "as trained, its --set values and its weights", None, "leave them out, or "
                                      "pass a spec file", file=args.file)])


def _cmd_compile(args: argparse.Namespace) -> int:
    from .nn.export import check_output
    kind = check_output(args.output)  # a bad extension fails before torch is imported
    if _run_dir(args.file):
        _refuse_with_run(args, ("overrides", "network", "weights"))
        from .training.exported import export_run
        spec, a = export_run(args.file, args.output, memory=args.memory)
        print(f"{_line(args.output)}: {spec.network.name}, {a.params:,} parameters, weights and "
              f"preprocessing from {_line(args.file)}", file=sys.stderr)
        return EXIT_OK
    spec = _load(args.file, args)
    from .analysis.figures import analyze
    a = analyze(spec.network)
    if kind == ".py" and args.weights is None:
        # Source text only: nothing is built, so any network that passes the checks is written.
        from .core.files import atomic_write
        from .nn.export import python_source
        atomic_write(args.output, python_source(spec.network))
    else:
        from .analysis import budget
        budget.require(budget.for_onnx(a) if kind == ".onnx" else budget.for_weights_file(a, "writing the weights of"),
                       spec.network)
        from .nn.build import build_model
        from .nn.export import write_output
        from .nn.model import DenseNet
        model = build_model(spec.network, memory=args.memory)
        assert isinstance(model, DenseNet)  # features_only is not asked for
        record = None
        if args.weights is not None:  # every tensor must fit: nothing is written otherwise
            from .training.exported import record_for, write_with_record
            from .training.transfer import load_exactly
            load_exactly(model, args.weights)
            record = record_for(args.weights, spec)
        from .training.exported import write_pipeline  # with a table's pipeline: both files or neither
        write_pipeline(record, args.output, (lambda: write_with_record(model, record, args.output))
                       if record is not None and kind != ".py"  # a densedsl checkpoint: its preprocessing goes along
                       else lambda: write_output(model, spec.network, args.output))
    weights = f", weights from {_line(args.weights)}" if args.weights is not None else ""
    print(f"{_line(args.output)}: {spec.network.name}, {a.params:,} parameters{weights}", file=sys.stderr)
    if kind == ".py" and args.weights is not None:
        print(f"note: {_line(args.output)} is source only; the weights fit it and load with "
              f"model.load_state_dict (write them with -o OUT.pt)", file=sys.stderr)
    return EXIT_OK


# --- summary, diff, explain, sweep (report.py) -------------------------------------------------

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
    from .analysis.budget import parse_limit
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


def _analyze_file(path: str, args: argparse.Namespace):
    from .analysis.figures import analyze
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


def _add_summary(sub) -> None:
    p = sub.add_parser("summary", help="a table of stages (or layers) with shapes, params and MACs",
                       description="Analyse a spec and print a torchinfo-like table: one row per "
                                   "stage (--layers: per layer and op) with output shape, params "
                                   "and MACs, then totals, memory, minimum input size and receptive "
                                   "field. --json prints the same as JSON (schema 1, "
                                   "docs/analysis.md).")
    _add_spec_options(p)
    p.add_argument("--input", type=_shape, metavar="CxHxW", help="analyse at this input shape instead")
    _add_run_options(p)
    p.add_argument("--layers", action="store_true", help="one row per dense layer and op")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_limit_options(p)
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args: argparse.Namespace) -> int:
    from .views.report import summary
    a = _analyze_file(args.file, args)
    if not args.json:
        _print_diagnostics(a.diagnostics)
    _emit(summary(a, batch=args.batch, dtype=args.dtype, layers=args.layers), args)
    return EXIT_OK


def _add_diff(sub) -> None:
    p = sub.add_parser("diff", help="compare two networks stage by stage",
                       description="Compare OLD with NEW (default: OLD again) per stage and in "
                                   "total. --set overrides parameters of NEW, --old-set of OLD: "
                                   "`diff a.dense b.dense`, `diff a.dense --set depth=190`.")
    _add_spec_options(p)
    p.add_argument("new", nargs="?", metavar="NEW", help="the spec to compare with (default: FILE)")
    p.add_argument("--old-set", dest="old_overrides", nargs="+", default=[], action="extend",
                   metavar="NAME=VALUE", help="override parameters of FILE (the old side)")
    p.add_argument("--input", type=_shape, metavar="CxHxW", help="analyse both at this input shape")
    _add_run_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_limit_options(p)
    p.set_defaults(func=_cmd_diff)


def _cmd_diff(args: argparse.Namespace) -> int:
    from .views.report import diff
    new_path = args.new or args.file
    old_args = argparse.Namespace(**{**vars(args), "overrides": args.old_overrides, "override_flag": "--old-set"})
    old = _analyze_file(args.file, old_args)
    new = _analyze_file(new_path, args)

    def label(path: str, overrides: list[str]) -> str:
        return " ".join([path, *(f"--set {o}" for o in overrides)])

    _emit(diff(old, new, old_label=label(args.file, args.old_overrides),
               new_label=label(new_path, args.overrides), batch=args.batch, dtype=args.dtype), args)
    return EXIT_OK


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="which feature maps each layer of a block concatenates",
                       description="For each layer of dense block N (or only --layer L): the "
                                   "feature maps it concatenates, their channels, the op that "
                                   "made each and the spec line it comes from.")
    _add_spec_options(p)
    p.add_argument("--block", type=_integer(1, _MAX_DIM), required=True, metavar="N", help="dense block (1-based)")
    p.add_argument("--layer", type=_integer(1, _MAX_DIM), metavar="L", help="only layer L (1-based)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_limit_options(p)
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from .views.report import explain
    a = _analyze_file(args.file, args)
    try:
        report = explain(a, args.block, args.layer)
    except ValueError as e:
        print(f"densedsl explain: {_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    _emit(report, args)
    return EXIT_OK


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="analyse every combination of parameter values",
                       description="One row per point of the grid (params, FLOPs, training "
                                   "memory at --batch); invalid points appear with their error "
                                   "code; points over --max-params/--max-flops/--max-memory are "
                                   "left out. Example: sweep specs/densenet_bc_cifar.dense "
                                   "--grid growth=12,24,40 depth=100,190,250 --max-params 20M "
                                   "--sort params")
    _add_spec_options(p)
    p.add_argument("--grid", nargs="+", required=True, action="extend", metavar="NAME=V1,V2",
                   help="parameter values to combine")
    p.add_argument("--max-params", type=_quantity, metavar="N", help="leave out points above, e.g. 1M")
    p.add_argument("--max-flops", type=_quantity, metavar="N", help="leave out points above, e.g. 1G")
    p.add_argument("--max-memory", type=_quantity, metavar="BYTES",
                   help="leave out points whose training memory at --batch is above, e.g. 8GiB")
    p.add_argument("--sort", choices=("params", "flops", "macs", "memory", "depth"),
                   help="order valid rows by this figure")
    _add_run_options(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .views.report import parse_grid, sweep
    try:
        grid = parse_grid(args.grid)
    except ValueError as e:
        print(f"densedsl sweep: {_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    base = _load(args.file, args)  # fails early, once, on a broken file
    report = sweep(lambda values: base.with_params(**values).network, grid, batch=args.batch,
                   dtype=args.dtype, max_params=args.max_params, max_flops=args.max_flops,
                   max_memory=args.max_memory, sort=args.sort)
    _emit(report, args)
    return EXIT_OK if any(r.ok for r in report.rows) or not report.rows else EXIT_INVALID


# --- render (diagram.py) -----------------------------------------------------------------------

def _add_render(sub) -> None:
    p = sub.add_parser(
        "render", help="draw the network as SVG, PNG, PDF or Graphviz DOT",
        description="Draw the analysis graph. --detail overview: one node per stage; blocks: the "
                    "ops of stem, transitions and head, each dense block with its layer recipe; "
                    "layers: every dense layer and every dense connection. --expand N draws only "
                    "block N layer by layer (repeatable; works at any detail). OUT.dot needs no "
                    "Graphviz; .svg, .png and .pdf need its `dot` program. --heatmap --weights "
                    "CHECKPOINT draws instead how strongly each layer of the trained network uses "
                    "each earlier feature map (the paper's Figure 5; needs torch and matplotlib). "
                    "docs/diagrams.md explains the pictures.")
    _add_spec_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.svg, OUT.png, OUT.pdf or OUT.dot")
    p.add_argument("--detail", choices=("overview", "blocks", "layers", "matrix"), default="overview",
                   help="how much to draw (default overview)")
    p.add_argument("--expand", type=_integer(1, _MAX_DIM), action="append", metavar="N",
                   help="draw dense block N (1-based) layer by layer; repeat for several")
    p.add_argument("--rankdir", type=str.upper, choices=("TB", "LR"), default="TB",
                   help="TB: top to bottom (default); LR: left to right")
    p.add_argument("--heatmap", action="store_true",
                   help="draw the connection-strength heatmap of trained weights (OUT.png/.svg/.pdf)")
    p.add_argument("--weights", metavar="CHECKPOINT",
                   help="with --heatmap: a densedsl checkpoint or a state_dict .pt of this spec")
    _add_limit_options(p)
    _add_memory_limit_option(p)
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    if args.heatmap or args.weights:
        return _render_heatmap(args)
    from .views.diagram import output_format, to_digraph, write
    output_format(args.output)  # a bad extension (E907) fails before any work
    a = _analyze_file(args.file, args)
    _print_diagnostics(a.diagnostics)
    try:
        graph = to_digraph(a, args.detail, expand=args.expand, rankdir=args.rankdir)
    except ValueError as e:
        print(f"densedsl render: {_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    write(graph, args.output)
    print(f"{_line(args.output)}: {a.name}, {args.detail}", file=sys.stderr)
    return EXIT_OK


def _render_heatmap(args: argparse.Namespace) -> int:
    if not (args.heatmap and args.weights):
        print("densedsl render: --heatmap and --weights CHECKPOINT go together", file=sys.stderr)
        return EXIT_USAGE
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".png", ".svg", ".pdf"):
        raise SpecError([d.Diagnostic(d.BAD_OUTPUT, f"cannot write a heatmap with '{ext or 'no extension'}'",
                                      None, "name the output .png, .svg or .pdf", file=args.output)])
    if _run_dir(args.file):
        _refuse_with_run(args, ("overrides", "network"))
        from .training.exported import run_spec
        network = run_spec(args.file).network
    else:
        network = _load(args.file, args).network
    from .analysis import budget
    from .analysis.figures import analyze
    budget.require(budget.for_weights_file(analyze(network, **_limits(args)), "reading the weights of"), network)
    from .nn.build import build_model
    from .training.transfer import load_exactly
    from .views.heatmap import connection_strength, write_heatmap
    model = build_model(network)
    load_exactly(model, args.weights)  # a densedsl checkpoint, its run directory, or any state_dict
    write_heatmap([m.tolist() for m in connection_strength(model, network)], args.output, network=network)
    print(f"{_line(args.output)}: {network.name}, connection strength from {_line(args.weights)}", file=sys.stderr)
    return EXIT_OK


# --- train, eval (train.py) --------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a spec on an image data set (the paper's recipe by default)",
        description="Train the network of a spec file. Defaults follow the DenseNet paper: SGD "
                    "with Nesterov momentum 0.9, weight decay 1e-4, batch 64, lr 0.1 divided by 10 "
                    "at 50% and 75% of the epochs, crop+flip augmentation for CIFAR. Works "
                    "unchanged under torchrun (DistributedDataParallel). Data sets are read from "
                    "local files: digits, cifar10:DIR, cifar100:DIR, mnist:DIR, fashion-mnist:DIR, "
                    "folder:DIR, synthetic[:N], npz:FILE, npy:INPUTS,LABELS, nifti:DIR (volumes); tables: csv:FILE or csv:TRAIN,TEST with --target COLUMN, "
                    "diabetes (a regression when the spec's head has one output).")
    _add_spec_options(p)
    p.add_argument("--data", required=True, metavar="DATASET",
                   help="digits | cifar10:DIR | cifar100:DIR | mnist:DIR | fashion-mnist:DIR | "
                        "folder:DIR | synthetic[:N] | npz:FILE | npy:INPUTS,LABELS | nifti:DIR | csv:FILE or csv:TRAIN,TEST (with --target) | diabetes")
    p.add_argument("--target", metavar="COLUMN",
                   help="csv: data: the column to predict (a regression when the spec's head is one)")
    p.add_argument("--epochs", type=_integer(1, 10**9), metavar="N", help="default: 300 for CIFAR, else per data set")
    p.add_argument("--batch-size", type=_integer(1, _MAX_BATCH), metavar="B", help="per process (default 64)")
    p.add_argument("--lr", type=_real(0), metavar="LR", help="initial learning rate (default 0.1; 1e-3 for tabular data)")
    p.add_argument("--momentum", type=_real(0, 1, below=True), metavar="M",
                   help="Nesterov momentum (default 0.9; 0: plain SGD)")
    p.add_argument("--weight-decay", type=_real(0), metavar="WD", help="default 1e-4")
    p.add_argument("--milestones", type=_real(0, 1, above=True, what=" (a fraction of the epochs)"), nargs="+", metavar="F",
                   help="fractions of the epochs where the lr drops (default 0.5 0.75)")
    p.add_argument("--gamma", type=_real(0, 1, above=True), metavar="G",
                   help="lr factor at each milestone (default 0.1)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"),
                   help="sgd (default, the paper's: Nesterov momentum) or adamw (ignores --momentum; the default for tabular data)")
    p.add_argument("--schedule", choices=("step", "cosine"),
                   help="step (default: ×gamma at the milestones) or cosine (down to 0, after --warmup)")
    p.add_argument("--warmup", type=_integer(0, 10**9), metavar="E",
                   help="with --schedule cosine: epochs of linear warm-up (default 0)")
    p.add_argument("--label-smoothing", type=_real(0, 1, below=True), metavar="S",
                   help="of the training loss (default 0)")
    p.add_argument("--grad-clip", type=_real(0, above=True), metavar="NORM",
                   help="clip the gradients' total norm to NORM (default: no clipping)")
    p.add_argument("--freeze", type=_stage_name, nargs="+", metavar="STAGE",
                   help="do not train these stages: features (all but the classifier), stem, or "
                        "modules of features by name (denseblock1, transition1, norm5 …)")
    p.add_argument("--head-lr", type=_real(0), metavar="LR",
                   help="learning rate of the classifier (default: --lr); with --freeze features, "
                        "the usual recipe for small data sets")
    p.add_argument("--augment", choices=("none", "standard", "flip", "crop", "crop+flip", "resized-crop+flip"),
                   help="standard (the default) is the data set's own: the paper's crop+flip for CIFAR, "
                        "resized-crop+flip for folders, none for digits, MNIST and synthetic data")
    p.add_argument("--seed", type=_integer(*_SEED_RANGE), metavar="S", help="default 0")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="autocast precision (auto: bf16 or fp16 on CUDA, off on the CPU)")
    p.add_argument("--memory", choices=("standard", "efficient"), default="standard",
                   help="efficient: recompute concat, BN and ReLU in backward, keep conv outputs "
                   "(about half the activation memory; BENCHMARKS.md measures its speed)")
    p.add_argument("--release-memory", action="store_true",
                   help="CPU, glibc: return freed memory to the system at once (mallopt), so the "
                   "peak follows live tensors; costs speed (efficient steps measured 1.4x slower)")
    p.add_argument("--workers", type=_integer(0, 1024), metavar="N", help="DataLoader worker processes")
    p.add_argument("--threads", type=_integer(1, 4096), metavar="N",
                   help="CPU threads for torch (default: one per core, less the cores other "
                        "processes keep busy; docs/training.md)")
    p.add_argument("--sync-bn", action="store_true", help="under torchrun: synchronised batch norm")
    p.add_argument("--max-steps", type=_integer(1, 2**63 - 1), metavar="N",
                   help="stop after N optimizer steps (smoke test)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/NETWORK-DATA)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from these weights: a densedsl checkpoint (or run directory), a state_dict "
                        "or a torchvision/timm/MONAI/pytorchcv checkpoint of the same network; tensors of another shape (the "
                        "classifier) stay at their initialisation, and the run lists them")
    p.add_argument("--init-partial", action="store_true",
                   help="with --init: tensors the model or the weights lack are left at their "
                        "initialisation instead of an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, only a line per epoch")
    from .training.command import add_options
    add_options(p, _integer, _real)
    _add_memory_limit_option(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.command import options
    from .training.train import default_run_dir, train
    spec = _load(args.file, args)
    out = args.out if args.out is not None else default_run_dir(spec.name, args.data, resume=args.resume)
    train(spec, args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
          momentum=args.momentum, weight_decay=args.weight_decay,
          milestones=tuple(args.milestones) if args.milestones else None, gamma=args.gamma,
          augment=args.augment, seed=args.seed, device=args.device, amp=args.amp, memory=args.memory,
          release_memory=args.release_memory,
          workers=args.workers, threads=args.threads if args.threads is not None else "auto",
          sync_bn=args.sync_bn, max_steps=args.max_steps, out=out,
          resume=args.resume, log=lambda line: print(line, flush=True), progress=not args.no_progress,
          init=args.init, init_partial=args.init_partial, optimizer=args.optimizer, schedule=args.schedule,
          warmup=args.warmup, label_smoothing=args.label_smoothing, grad_clip=args.grad_clip,
          freeze=tuple(args.freeze) if args.freeze else None, head_lr=args.head_lr, target=args.target,
          **options(args))
    return EXIT_OK


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="measure a training checkpoint on a data set",
                       description="Rebuild the model from a checkpoint written by `densedsl train` "
                                   "(it holds the spec) and report its loss and accuracy.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN_DIR/checkpoint.pt or RUN_DIR")
    p.add_argument("--data", metavar="DATASET", help="default: the data set it was trained on")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--batch-size", type=_integer(1, _MAX_BATCH), default=256, metavar="B")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    p.add_argument("--workers", type=_integer(0, 1024), metavar="N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_memory_limit_option(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .training.train import evaluate
    r = evaluate(args.checkpoint, args.data, split=args.split, batch_size=args.batch_size,
                 device=args.device, amp=args.amp, workers=args.workers)
    if args.json:
        scores = ({"rmse": r.rmse, "log_rmse": r.log_rmse} if r.rmse is not None else
                  {"accuracy": r.accuracy, "correct": r.correct})
        print(json.dumps({"network": r.network, "epoch": r.epoch, "data": r.data, "split": args.split,
                          **scores, "loss": r.loss, "total": r.total}))
    elif r.rmse is not None:  # a regression: the loss is the MSE of the standardised target
        log = f", log RMSE {r.log_rmse:.4f}" if r.log_rmse is not None else ""
        from .training.tabular import format_rmse
        print(f"{_line(r.network)} (epoch {r.epoch}) on {_line(r.data)} {args.split}: RMSE "
              f"{format_rmse(r.rmse)}{log} ({r.total} rows), loss {r.loss:.4f} (MSE of the standardised target)")
    else:
        print(f"{_line(r.network)} (epoch {r.epoch}) on {_line(r.data)} {args.split}: accuracy "
              f"{100 * r.accuracy:.2f}% ({r.correct}/{r.total}), loss {r.loss:.4f}")
    return EXIT_OK


# --- predict ---------------------------------------------------------------------------------

def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict on new data with a trained model",
                       description="Predict with a run directory (or its checkpoint), or an OUT.pt/OUT.onnx "
                                   "written by `compile RUN_DIR`: one CSV row per input, with the class and "
                                   "its probability (or the top K), or the regression value in the target's "
                                   "units. Preprocessing comes with the model; no data set is read.")
    p.add_argument("model", metavar="MODEL", help="RUN_DIR, RUN_DIR/checkpoint.pt, OUT.pt or OUT.onnx")
    p.add_argument("--data", required=True, nargs="+", metavar="SOURCE",
                   help="a directory of images or image files, FILE.csv, FILE.npy, .nii/.nii.gz volumes or a folder of them")
    p.add_argument("-o", "--output", metavar="OUT.csv", help="write the predictions here (default: stdout)")
    p.add_argument("--top-k", type=_integer(1, 10**6), default=1, metavar="K", help="the K likeliest classes")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .training.predict import run
    predictor, text = run(args.model, args.data, output=args.output, top_k=args.top_k)
    print(f"{_line(args.output)}: {text.count(chr(10)) - 1} predictions of {_line(str(predictor.source))}",
          file=sys.stderr) \
        if args.output else sys.stdout.write(text)
    return EXIT_OK


# --- lsp -------------------------------------------------------------------------------------

def _add_lsp(sub) -> None:
    p = sub.add_parser("lsp", help="run the language server (LSP over stdio) for editors",
                       description="Run the densedsl language server on stdin/stdout: diagnostics, "
                                   "hovers with figures, completion, formatting, rename. Editors "
                                   "start it; see docs/editors.md. Needs pip install \"densedsl[lsp]\".")
    p.add_argument("--stdio", action="store_true",
                   help="talk over stdin/stdout (the default and only transport; editors pass it)")
    p.set_defaults(func=_cmd_lsp)


def _cmd_lsp(args: argparse.Namespace) -> int:
    try:
        from .lsp.server import serve
    except ModuleNotFoundError as e:
        package = (e.name or "").partition(".")[0]
        if package not in ("pygls", "lsprotocol"):
            raise
        raise SpecError([d.Diagnostic(d.MISSING_PACKAGE, f"the language server needs {package}, which "
                                      "is not installed", None, 'pip install "densedsl[lsp]"',
                                      file="densedsl lsp")]) from None
    serve()
    return EXIT_OK


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
    from .training.threads import default_wait_policy
    default_wait_policy()  # before any command imports torch: OpenMP then reads it (issue 14)
    parser = build_parser()
    args = parser.parse_args(argv)
    from .analysis.budget import overridden
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
        from .core.files import output_failure
        from .core.optional import missing_package
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


if __name__ == "__main__":
    sys.exit(main())
