"""Analysis speed: the figures tests/test_analysis.py used to assert as wall-clock limits.

Timed tests flake on shared machines, so the goals live here: `analyze` refuses a network too
large to analyse (E304) from its closed-form size in well under 0.5 s, before any graph exists,
and analyses DenseNet-264 in under 20 ms (issue 15; the earlier goal was 1 s). Each case runs `--repeat` times in this process (after
one warm-up run); the table shows the best and the median.

    python bench/bench_analysis.py [--repeat 7] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the tests' network builders

import networks as N  # noqa: E402

from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.core.diagnostics import SpecError  # noqa: E402
from densedsl.language.network import DenseBlock  # noqa: E402


def _refused(stages) -> None:
    try:
        analyze(dataclasses.replace(N.tiny(), stages=stages))
    except SpecError as e:
        assert [x.code.code for x in e.diagnostics] == ["E304"], e
    else:
        raise AssertionError("not refused")


CASES = [
    ("E304: one block of 10^6 layers", 0.5,
     lambda: _refused((DenseBlock(index=1, layers=10**6, growth=12),))),
    ("E304: growth 10^6 (10^14 parameters)", 0.5,
     lambda: _refused((DenseBlock(index=1, layers=100, growth=10**6, bottleneck=4),))),
    ("E304: 1,999 blocks of 40 layers", 0.5,
     lambda: _refused(tuple(DenseBlock(index=i, layers=40, growth=12) for i in range(1, 2000)))),
    ("analyze DenseNet-264", 0.02, lambda: analyze(N.torchvision(264))),  # issue 15's goal (was 1 s)
]


def timings(fn, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each repeat (CPU time moves far less on a shared, loaded machine)."""
    fn()  # warm-up: imports, caches
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="replace its section of BENCHMARKS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    lines = ["## Analysis speed (no torch)", "",
             "Written by `bench/bench_analysis.py`: the wall-clock goals tests/test_analysis.py used to "
             "assert (timed tests flake on shared machines). Best and median of the repeats, in one process "
             "after a warm-up run.", "",
             f"- command: `python bench/bench_analysis.py --repeat {args.repeat} --write`",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, load average {load:.2f} at start", "",
             "| case | goal (ms) | best (ms) | median (ms) | CPU best (ms) | CPU median (ms) | met |",
             "| --- | ---: | ---: | ---: | ---: | ---: | :---: |"]
    for name, goal, fn in CASES:
        t, cpu = timings(fn, args.repeat)
        best, median = min(t), statistics.median(t)
        lines.append(f"| {name} | < {goal * 1000:,.0f} | {best * 1000:,.2f} | {median * 1000:,.2f} | "
                     f"{min(cpu) * 1000:,.2f} | {statistics.median(cpu) * 1000:,.2f} | "
                     f"{'yes' if median < goal else '**no**'} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results import write_section
        write_section(ROOT / "BENCHMARKS.md", "analysis", text)


if __name__ == "__main__":
    main()
