"""Start-up and analysis speed of the light commands (no torch): a benchmark, not a test.

Each command runs in a fresh interpreter, `--repeat` times; the table reports the median wall
time and the same for a bare `python -c pass` measured in the same run, so the difference is
densedsl's own work (imports, parsing, analysis), free of the machine's interpreter start-up.

    python bench/bench_startup.py [--repeat 7] [--write]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="replace its section of BENCHMARKS.md")
    args = parser.parse_args()
    py = sys.executable
    zoo = sorted(glob.glob(str(ROOT / "specs" / "*.dense")))
    cases = [
        ("python -c pass (baseline)", [py, "-c", "pass"]),
        ("python -c 'import torch' (for scale)", [py, "-c", "import torch"]),
        (f"densedsl check specs/*.dense ({len(zoo)} files)", [py, "-m", "densedsl", "check", *zoo]),
        ("densedsl summary specs/densenet121.dense", [py, "-m", "densedsl", "summary", "specs/densenet121.dense"]),
        ("densedsl check specs/densenet264.dense", [py, "-m", "densedsl", "check", "specs/densenet264.dense"]),
        ("densedsl fmt --check specs/*.dense", [py, "-m", "densedsl", "fmt", "--check", *zoo]),
    ]
    wall(cases[2][1], 1)  # warm lark's grammar cache and the file system
    rows = [(name, wall(argv, args.repeat)) for name, argv in cases]
    base = rows[0][1]
    lines = ["## Start-up of the light commands (no torch)", "",
             "Written by `bench/bench_startup.py`: median wall time of a fresh process per command; "
             "the last column subtracts a bare interpreter start measured in the same run.", "",
             f"- command: `python bench/bench_startup.py --repeat {args.repeat} --write`",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start", "",
             "| command | median wall (s) | minus `python -c pass` (s) |", "| --- | ---: | ---: |"]
    for name, t in rows:
        lines.append(f"| {name} | {t:.3f} | {t - base:+.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results import write_section  # bench/ is sys.path[0] when run as a script
        write_section(ROOT / "BENCHMARKS.md", "startup", text)


if __name__ == "__main__":
    main()
