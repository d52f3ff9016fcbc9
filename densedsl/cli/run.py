"""The commands that run a model or a server: train, eval, predict, lsp."""


from __future__ import annotations

import argparse
import sys

from ..core import diagnostics as d
from ..core.diagnostics import SpecError
from ..core.diagnostics import printable_line as _line
from .common import (
    _MAX_BATCH,
    _SEED_RANGE,
    EXIT_OK,
    _add_memory_limit_option,
    _add_spec_options,
    _integer,
    _load,
    _real,
    _stage_name,
)

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
    from ..training.command import add_options
    add_options(p, _integer, _real)
    _add_memory_limit_option(p)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training.command import options
    from ..training.train import default_run_dir, train
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

    from ..training.train import evaluate
    r = evaluate(args.checkpoint, args.data, split=args.split, batch_size=args.batch_size,
                 device=args.device, amp=args.amp, workers=args.workers)
    if args.json:
        scores = ({"rmse": r.rmse, "log_rmse": r.log_rmse} if r.rmse is not None else
                  {"accuracy": r.accuracy, "correct": r.correct})
        print(json.dumps({"network": r.network, "epoch": r.epoch, "data": r.data, "split": args.split,
                          **scores, "loss": r.loss, "total": r.total}))
    elif r.rmse is not None:  # a regression: the loss is the MSE of the standardised target
        log = f", log RMSE {r.log_rmse:.4f}" if r.log_rmse is not None else ""
        from ..training.tabular import format_rmse
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
    from ..training.predict import run
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
        from ..lsp.server import serve
    except ModuleNotFoundError as e:
        package = (e.name or "").partition(".")[0]
        if package not in ("pygls", "lsprotocol"):
            raise
        raise SpecError([d.Diagnostic(d.MISSING_PACKAGE, f"the language server needs {package}, which "
                                      "is not installed", None, 'pip install "densedsl[lsp]"',
                                      file="densedsl lsp")]) from None
    serve()
    return EXIT_OK
