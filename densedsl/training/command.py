"""The `densedsl train` options of issue 23 (model selection, fine-tuning, tabular columns),
defined here so that the command line (`cli/`) stays within its size; cli passes in its argparse types. Plain
argparse: importing this module imports no torch."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def add_options(p: argparse.ArgumentParser, integer: Callable[..., Callable[[str], int]],
                real: Callable[..., Callable[[str], float]]) -> None:
    p.add_argument("--val-split", type=real(0, 1, above=True, below=True), metavar="F",
                   help="hold out this fraction of the training split for validation: epochs are scored on it, "
                        "and the test split once, at the end")
    p.add_argument("--keep", choices=("last", "best"),
                   help="the weights the run ends with: last (default) or best (the best validation epoch's; "
                        "needs --val-split), also kept as RUN_DIR/best.pt")
    p.add_argument("--patience", type=integer(1, 10**9), metavar="N",
                   help="stop after N epochs without a better validation score (needs --val-split)")
    p.add_argument("--normalize", metavar="HOW",
                   help="data (the training images' statistics), imagenet, none, or MEAN,STD; default: with "
                        "--init, the statistics the initial weights were trained with (ImageNet's for "
                        "torchvision, timm or MONAI weights), else data")
    p.add_argument("--drop", nargs="+", metavar="COLUMN",
                   help="tabular data: leave these columns out of the features (an identifier, say)")
    p.add_argument("--freeze-bn", action="store_true", default=None,
                   help="keep every batch norm's running statistics (frozen stages' always stay)")


def options(args: argparse.Namespace) -> dict[str, Any]:
    """What `add_options` read, as `train` keywords."""
    return {"val_split": args.val_split, "keep": args.keep, "patience": args.patience,
            "normalize": args.normalize, "freeze_bn": args.freeze_bn,
            "drop": tuple(args.drop) if args.drop else None}
