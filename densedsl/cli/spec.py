"""The commands that read a spec and write a report, a file or a diagram: check, fmt, compile,
summary, diff, explain, sweep, render."""


from __future__ import annotations

import argparse
import os
import sys

from ..core import diagnostics as d
from ..core.diagnostics import SpecError
from ..core.diagnostics import printable_line as _line
from .common import (
    _MAX_DIM,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    _add_limit_options,
    _add_memory_limit_option,
    _add_run_options,
    _add_spec_options,
    _analyze_file,
    _emit,
    _integer,
    _limits,
    _load,
    _overrides,
    _print_diagnostics,
    _quantity,
    _shape,
)

# --- check -----------------------------------------------------------------------------------

def _add_check(sub) -> None:
    p = sub.add_parser("check", help="parse, validate and analyse spec files",
                       description="Parse and validate spec files; one line per valid network.")
    _add_spec_options(p, many=True)
    _add_limit_options(p)
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from ..analysis.figures import analyze
    from ..language.spec import load_all
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
    from ..core.files import atomic_write, read_source
    from ..language.fmt import format_spec
    from ..language.syntax import parse_source
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
    from ..nn.export import check_output
    kind = check_output(args.output)  # a bad extension fails before torch is imported
    if _run_dir(args.file):
        _refuse_with_run(args, ("overrides", "network", "weights"))
        from ..training.exported import export_run
        spec, a = export_run(args.file, args.output, memory=args.memory)
        print(f"{_line(args.output)}: {spec.network.name}, {a.params:,} parameters, weights and "
              f"preprocessing from {_line(args.file)}", file=sys.stderr)
        return EXIT_OK
    spec = _load(args.file, args)
    from ..analysis.figures import analyze
    a = analyze(spec.network)
    if kind == ".py" and args.weights is None:
        # Source text only: nothing is built, so any network that passes the checks is written.
        from ..core.files import atomic_write
        from ..nn.export import python_source
        atomic_write(args.output, python_source(spec.network))
    else:
        from ..analysis import budget
        budget.require(budget.for_onnx(a) if kind == ".onnx" else budget.for_weights_file(a, "writing the weights of"),
                       spec.network)
        from ..nn.build import build_model
        from ..nn.export import write_output
        from ..nn.model import DenseNet
        model = build_model(spec.network, memory=args.memory)
        assert isinstance(model, DenseNet)  # features_only is not asked for
        record = None
        if args.weights is not None:  # every tensor must fit: nothing is written otherwise
            from ..training.exported import record_for, write_with_record
            from ..training.transfer import load_exactly
            load_exactly(model, args.weights)
            record = record_for(args.weights, spec)
        from ..training.exported import write_pipeline  # with a table's pipeline: both files or neither
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
    from ..views.report import summary
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
    from ..views.report import diff
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
    from ..views.report import explain
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
    from ..views.report import parse_grid, sweep
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
    from ..views.diagram import output_format, to_digraph, write
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
        from ..training.exported import run_spec
        network = run_spec(args.file).network
    else:
        network = _load(args.file, args).network
    from ..analysis import budget
    from ..analysis.figures import analyze
    budget.require(budget.for_weights_file(analyze(network, **_limits(args)), "reading the weights of"), network)
    from ..nn.build import build_model
    from ..training.transfer import load_exactly
    from ..views.heatmap import connection_strength, write_heatmap
    model = build_model(network)
    load_exactly(model, args.weights)  # a densedsl checkpoint, its run directory, or any state_dict
    write_heatmap([m.tolist() for m in connection_strength(model, network)], args.output, network=network)
    print(f"{_line(args.output)}: {network.name}, connection strength from {_line(args.weights)}", file=sys.stderr)
    return EXIT_OK
