"""Time and peak memory of the data-side bounds (issue 24): CSV reading, fitting and encoding by
column count and by file size, and `densedsl sweep` over a grid of large blocks. A benchmark,
not a test: each case runs in a fresh process, which reports its wall time and its peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, less the same process's RSS after imports).

    python bench/bench_data_limits.py --columns 5000 10000 20000 100000
    python bench/bench_data_limits.py --big-mib 1000          # a ~1000 MiB CSV (written to --dir)
    python bench/bench_data_limits.py --sweep-points 12        # a grid over a 1,4xx-layer block

Run it with PYTHONPATH pointing at the checkout to measure (e.g. an older commit unpacked
elsewhere, for a before/after pair).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
kind, arg = sys.argv[1], sys.argv[2]
import torch  # noqa: F401  (imports are not what is measured)
from densedsl.training import datasets, tabular
from densedsl.views import report
import densedsl
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if kind == "csv":
    from dataclasses import replace
    data = tabular.load(replace(datasets.describe("csv:" + arg), target="y"), task="regression")
    what = f"{data.shape[0]} features"
else:
    spec = densedsl.load(arg)
    layers = [str(1413 - i) for i in range(int(sys.argv[3]))]
    s = report.sweep(lambda v: spec.with_params(**v).network, {"layers": layers})
    what = f"{sum(r.ok for r in s.rows)} points"
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"what": what, "seconds": seconds, "peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024}))
"""

SWEEP_SPEC = """network deep(layers=1413) {
    input 3x8x8
    defaults growth=4 bottleneck=none
    stem {
        conv 8 kernel=3 padding=1
    }
    dense layers=layers
    head classes=10
}
"""


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def wide_csv(path: Path, columns: int, rows: int = 50) -> None:
    rng = random.Random(0)
    with open(path, "w") as f:
        f.write(",".join(f"c{j}" for j in range(columns)) + ",y\n")
        for _ in range(rows):
            f.write(",".join(str(rng.randrange(10)) for _ in range(columns)) + f",{rng.random():.3f}\n")


def big_csv(path: Path, mib: int) -> None:
    """~mib MiB of 100 numeric columns, cells of 108 characters (numbers with many digits), so
    that 1000 MiB stays under the 10 M cell limit (9.6 M cells)."""
    rng = random.Random(0)
    with open(path, "w") as f:
        f.write(",".join(f"c{j}" for j in range(99)) + ",y\n")
        lines = [",".join(f"{rng.random():.106f}" for _ in range(100)) + "\n" for _ in range(16)]
        k = 0
        while f.tell() < mib * 2**20 - len(lines[0]):
            f.write(lines[k % 16])
            k += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, nargs="*", default=[])
    parser.add_argument("--big-mib", type=int, nargs="*", default=[])
    parser.add_argument("--sweep-points", type=int, nargs="*", default=[])
    parser.add_argument("--dir", default=None, help="where the CSV files go (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for columns in args.columns:
            path = Path(tmp) / f"wide{columns}.csv"
            wide_csv(path, columns)
            print(f"csv {columns:>7,} columns x 50 rows ({path.stat().st_size / 1e6:.1f} MB):", child("csv", str(path)),
                  flush=True)
            path.unlink()
        for mib in args.big_mib:
            path = Path(tmp) / f"big{mib}.csv"
            big_csv(path, mib)
            print(f"csv {path.stat().st_size / 2**20:.0f} MiB:", child("csv", str(path)), flush=True)
            path.unlink()
        for points in args.sweep_points:
            spec = Path(tmp) / "deep.dense"
            spec.write_text(SWEEP_SPEC)
            print(f"sweep {points} points of 1,4xx layers:", child("sweep", str(spec), str(points)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
