"""d2l_flux_mlp (the seeds' DenseNet-MLP) on scikit-learn's diabetes data against a plain
least-squares linear regression on the same split: a benchmark, not a test.

Both see exactly the same rows: the MLP through `densedsl train --data diabetes` (the fixed
80/20 split of `densedsl.training.tabular.split_indices`, 354 training and 88 test rows, features
standardised with the training rows' statistics), the linear model fitted with scikit-learn's
`LinearRegression` on the same encoded training rows. Test RMSE in the target's units (disease
progression one year after baseline), and d2l's log RMSE. The MLP is trained with each seed in
`--seeds` (its initialisation and dropout vary; the split does not); the table gives each run,
and the mean.

    python bench/bench_tabular.py [--seeds 0 1 2] [--write]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "d2l_flux_mlp.dense"

# (label, train() settings): densedsl's tabular defaults (AdamW, lr 1e-3, 100 epochs, batch 64,
# lr ×0.1 at 50% and 75%), a shorter run and a longer cosine one.
CONFIGS = [
    ("AdamW lr 1e-3, 30 epochs, step", {"epochs": 30}),
    ("defaults: AdamW lr 1e-3, 100 epochs, step", {}),
    ("AdamW lr 1e-3, 300 epochs, cosine", {"epochs": 300, "schedule": "cosine"}),
]


def linear_regression() -> tuple[float, float, float]:
    """(test RMSE, test log RMSE, seconds) of ordinary least squares on densedsl's encoded split."""
    import torch
    from sklearn.linear_model import LinearRegression
    from densedsl.training import datasets
    start = time.perf_counter()
    data = datasets.load("diabetes", shape=(10,), classes=1, task="regression")
    p = data.pipeline

    def units(targets: torch.Tensor) -> torch.Tensor:
        return targets.double() * p.target_std + p.target_mean

    model = LinearRegression().fit(data.train.features.double().numpy(), units(data.train.targets).numpy())
    predicted = torch.from_numpy(model.predict(data.test.features.double().numpy()))
    actual = units(data.test.targets)
    rmse = float((predicted - actual).square().mean().sqrt())
    log_rmse = float((predicted.clamp_min(p.target_floor).log() - actual.log()).square().mean().sqrt())
    return rmse, log_rmse, time.perf_counter() - start


def mlp(settings: dict, seed: int) -> tuple[float, float, float]:
    from densedsl.training.train import train
    result = train(str(SPEC), data="diabetes", features=10, classes=1, seed=seed, threads=1,
                   progress=False, **settings)
    last = result.metrics[-1]
    return last["test_rmse"], last["test_log_rmse"], result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--write", action="store_true", help="replace its section of BENCHMARKS.md")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    rows = []
    rmse, log_rmse, seconds = linear_regression()
    rows.append(("scikit-learn LinearRegression (least squares)", "—", rmse, log_rmse, seconds))
    print(f"{rows[-1]}", flush=True)
    means = []
    for label, settings in CONFIGS:
        runs = []
        for seed in args.seeds:
            runs.append(mlp(settings, seed))
            rows.append((f"d2l_flux_mlp, {label}", str(seed), *runs[-1]))
            print(rows[-1], flush=True)
        means.append((f"d2l_flux_mlp, {label}: mean of {len(runs)} seeds",
                      statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs),
                      statistics.mean(r[2] for r in runs)))

    seeds = " ".join(map(str, args.seeds))
    text = "\n".join([
        "## Tabular regression: d2l_flux_mlp on diabetes vs linear regression",
        "",
        "Written by `bench/bench_tabular.py`: test RMSE on scikit-learn's diabetes data (442 rows, "
        "10 features; target: disease progression, mean 152, std 77), the same fixed split for "
        "both (354 training, 88 test rows) and the same standardised features. The MLP is "
        "`specs/d2l_flux_mlp.dense --set features=10 classes=1` (559,873 parameters), batch 64, "
        "weight decay 1e-4, on the CPU with one thread; seconds are each run's wall time.",
        "",
        f"- command: `python bench/bench_tabular.py --seeds {seeds} --write`",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load:.2f} at start",
        "",
        "| model | seed | test RMSE | test log RMSE | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {seed} | {r:.2f} | {lr:.4f} | {s:.1f} |" for name, seed, r, lr, s in rows],
        *[f"| {name} | | {r:.2f} | {lr:.4f} | {s:.1f} |" for name, r, lr, s in means],
    ])
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import write_section
        write_section(ROOT / "BENCHMARKS.md", "tabular", text)
    return 0 if all(math.isfinite(r[2]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
