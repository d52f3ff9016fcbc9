"""Start-up and analysis speed of the light commands (no torch): a benchmark, not a test.

Each command runs in a fresh interpreter, `--repeat` times; the table reports the median wall
time and the same for a bare `python -c pass` measured in the same run, so the difference is
densedsl's own work (imports, parsing, analysis), free of the machine's interpreter start-up.
The median CPU time (user + system) of the children is shown beside it: on a shared machine it
moves much less than the wall time.

It measures what users see: the children run without `PYTHONDONTWRITEBYTECODE` (an installed
package has its .pyc files; without them every module is compiled from source in each process),
and each command runs once unmeasured first, which writes those caches and lark's grammar cache.

    python bench/bench_startup.py [--repeat 7] [--write]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What users' processes have: bytecode caches written and read (this machine may turn them off)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh process running `argv`."""
    cpu, t = children_cpu(), time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, children_cpu() - cpu


def timed(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median wall and median CPU seconds over `repeat` runs, after one unmeasured run (which
    writes the .pyc files and lark's grammar cache, as a user's first run does)."""
    run(argv)
    walls, cpus = zip(*(run(argv) for _ in range(repeat)))
    return statistics.median(walls), statistics.median(cpus)


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
        ("densedsl summary specs/densenet264.dense", [py, "-m", "densedsl", "summary", "specs/densenet264.dense"]),
        ("densedsl check specs/densenet264.dense", [py, "-m", "densedsl", "check", "specs/densenet264.dense"]),
        ("densedsl fmt --check specs/*.dense", [py, "-m", "densedsl", "fmt", "--check", *zoo]),
    ]
    rows = [(name, *timed(argv, args.repeat)) for name, argv in cases]
    base = rows[0][1]
    lines = ["## Start-up of the light commands (no torch)", "",
             "Written by `bench/bench_startup.py`: median wall time of a fresh process per command; "
             "the third column subtracts a bare interpreter start measured in the same run, the last "
             "is the median CPU time (user + system) of the process. As users run it: with bytecode "
             "caches (`PYTHONDONTWRITEBYTECODE` removed from the children's environment), each command "
             "run once unmeasured first to write them and lark's grammar cache.", "",
             f"- command: `python bench/bench_startup.py --repeat {args.repeat} --write`",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start", "",
             "| command | median wall (s) | minus `python -c pass` (s) | median CPU (s) |",
             "| --- | ---: | ---: | ---: |"]
    for name, t, cpu in rows:
        lines.append(f"| {name} | {t:.3f} | {t - base:+.3f} | {cpu:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results import write_section  # bench/ is sys.path[0] when run as a script
        write_section(ROOT / "BENCHMARKS.md", "startup", text)


if __name__ == "__main__":
    main()
