"""Benchmark: efficient mode's peak memory under both allocators, and its step time.

    python bench/bench_memory.py                        # memory, both models, both allocators
    python bench/bench_memory.py --speed --rounds 4     # and efficient vs standard step time
    python bench/bench_memory.py --models densenet_bc_100_12 --no-memory --speed
    python bench/bench_memory.py --no-memory --allocator-speed --rounds 3

Prints only (BENCHMARKS.md's training section is bench_train.py's). Memory is bench_train's
measure: the peak-RSS delta of one SGD step of a fresh process (`--child`), under glibc's default
allocator (what a user's own training loop has) and under MALLOC_MMAP_THRESHOLD_=65536 (RSS
follows live tensors), for the compiled model as users get it in standard ("densedsl") and
efficient mode; `--return-freed` also runs the default-allocator child with
`densedsl.training.train.return_freed_memory()` applied first (what `densedsl train --release-memory`
does). Speed: interleaved rounds (standard, efficient, standard, …), per-round ratio
efficient / standard, median and spread. Allocator speed (`--allocator-speed`): efficient mode's
step time in fresh processes, alternating glibc's default allocator and `return_freed_memory()`
(what `densedsl train --release-memory` applies on CPU), one process of each per round; each
process times `--steps` steps after a warm-up step and reports its median; the ratio is paired
per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compiler as bc  # noqa: E402
import bench_train as bt  # noqa: E402

from densedsl.analysis.figures import analyze  # noqa: E402

IMPLS = ("densedsl", "efficient")


def child(name: str, impl: str, return_freed: bool) -> dict:
    if return_freed:
        from densedsl.training.train import return_freed_memory
        if not return_freed_memory():
            raise RuntimeError("return_freed_memory() did not apply")
    return bt.memory_child(name, impl, "NCHW")


def timing_child(name: str, impl: str, return_freed: bool, steps: int) -> dict:
    if return_freed:
        from densedsl.training.train import return_freed_memory
        if not return_freed_memory():
            raise RuntimeError("return_freed_memory() did not apply")
    step = bt.steps_of(name, [impl], "NCHW")[impl]
    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"median": statistics.median(times)}


def allocator_speed_rows(name: str, rounds: int, steps: int) -> list[str]:
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for return_freed in ((False, True) if r % 2 == 0 else (True, False)):
            done = subprocess.run([sys.executable, __file__, "--timing-child",
                                   json.dumps([name, "efficient", return_freed, steps])],
                                  capture_output=True, text=True, env=bc.child_env("default"), timeout=900)
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            times[return_freed].append(json.loads(done.stdout.strip().splitlines()[-1])["median"])
    per_round = sorted(f / d for d, f in zip(times[False], times[True]))
    return [f"{name} efficient step time, return_freed_memory() / glibc default: "
            f"{statistics.median(per_round):.2f}× ({per_round[0]:.2f}–{per_round[-1]:.2f}) over {rounds} "
            f"rounds of fresh processes, {steps} steps each; default median "
            f"{statistics.median(times[False]):.3f} s, return_freed {statistics.median(times[True]):.3f} s"]


def measure(name: str, impl: str, allocator: str, return_freed: bool = False) -> int:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps([name, impl, return_freed])],
                          capture_output=True, text=True, env=bc.child_env(allocator), timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_delta"]


def memory_rows(name: str, return_freed: bool) -> list[str]:
    a = analyze(bc.network(name))
    batch = bc.MODELS[name]["batch"]
    allocators = list(bc.ALLOCATORS) + (["default+return_freed"] if return_freed else [])
    peaks: dict[str, dict[str, int]] = {}
    lines = []
    for impl in IMPLS:
        mode = bt.VARIANTS[impl][0]
        predicted = a.memory(batch, "float32", mode) + a.params * 4
        peaks[impl] = {"predicted": predicted}
        for allocator in allocators:
            base, _, extra = allocator.partition("+")
            peaks[impl][allocator] = measure(name, impl, base, bool(extra))
        lines.append(f"{name} {impl}: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in peaks[impl].items())
                     + " | measured/predicted " + ", ".join(
                         f"{k} {peaks[impl][k] / predicted:.2f}" for k in allocators))
    lines.append(f"{name} efficient/standard: " + ", ".join(
        f"{k} {peaks['efficient'][k] / peaks['densedsl'][k]:.2f}×" for k in allocators))
    return lines


def speed_rows(name: str, rounds: int) -> list[str]:
    times = bc.interleaved(bt.steps_of(name, list(IMPLS), "NCHW"), "cpu", rounds)
    per_round = sorted(e / s for s, e in zip(times["densedsl"], times["efficient"]))
    return [f"{name} efficient/standard step time: {statistics.median(per_round):.2f}× "
            f"({per_round[0]:.2f}–{per_round[-1]:.2f}) over {rounds} rounds; standard median "
            f"{statistics.median(times['densedsl']):.3f} s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(bc.MODELS), default=list(bc.MODELS))
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--return-freed", action="store_true",
                   help="also measure the default allocator with return_freed_memory() applied")
    p.add_argument("--speed", action="store_true")
    p.add_argument("--allocator-speed", action="store_true",
                   help="efficient step time under return_freed_memory() against glibc's default")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed steps per process (--allocator-speed)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--timing-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    if args.timing_child:
        print(json.dumps(timing_child(*json.loads(args.timing_child))))
        return 0
    started = time.perf_counter()
    print(f"load before {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    for name in args.models:
        rows = [] if args.no_memory else memory_rows(name, args.return_freed)
        if args.speed:
            rows += speed_rows(name, args.rounds)
        if args.allocator_speed:
            rows += allocator_speed_rows(name, args.rounds, args.steps)
        print("\n".join(rows), flush=True)
    print(f"load after {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"elapsed {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
