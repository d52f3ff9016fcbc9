"""Training speed under CPU load, one thread policy against another (issue 14's default threads).

On a loaded 2-core machine one digits run took 694 s with torch's default threads and 49.5 s
with `--threads 1`. This times one short fixed job, `densedsl train specs/tiny_digits.dense
--data digits --epochs 1 --max-steps S` (its epoch time, as the run prints it, and the job's
wall time), under each policy:

- torch's default: one thread per core, OpenMP's own wait (torch is imported before densedsl
  can set OMP_WAIT_POLICY, so the process runs as densedsl did before the change);
- `--threads 1`;
- one per core with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep);
- densedsl's default (`densedsl.training.threads`: passive wait, one thread per core less the busy ones);

each with and without an artificial load of one busy-loop process per core (killed on exit and
on Ctrl-C), in rounds that interleave the policies (rotated each round) and the two conditions.
Each policy has its own worker process, started once with its environment (OpenMP reads it when
torch loads) and warmed up by one unmeasured job; every job is `densedsl.cli.main(["train", …])`
in that worker with torch's default thread count restored first, as a fresh `densedsl train`
would see it. A fresh process per job measured the same ratios but spent 45 s of every run
importing under load, which put the benchmark far over its time. Ratios are paired within a
round (torch's default time / the policy's time), so the machine's own drift cancels; the table
gives their median and range.

    python bench/bench_threads.py [--rounds 3] [--max-steps 4] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
POLICIES = {  # name: (extra train arguments, environment changes, torch imported before densedsl)
    "torch default": (["--threads", str(CORES)], {}, True),
    "--threads 1": (["--threads", "1"], {}, False),
    "passive wait, one per core": (["--threads", str(CORES)], {"OMP_WAIT_POLICY": "PASSIVE"}, False),
    "densedsl default": ([], {}, False),
}
BASELINE = "torch default"
_EPOCH = re.compile(r"img/s\s+([0-9.]+)s\b")
_THREADS = re.compile(r"^\s+threads\s+(\d+)", re.M)


class Load:
    """`n` busy-loop processes while in the `with` block; always killed on the way out."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> "Load":
        # each loop also ends when its parent is gone (a SIGKILLed benchmark leaves none behind)
        spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def worker(policy: str) -> None:
    """Run each job read from stdin (a JSON argv) as `densedsl.cli.main(argv)`; answer one JSON line."""
    _, _, torch_first = POLICIES[policy]
    if not torch_first:
        from densedsl.training.threads import default_wait_policy
        default_wait_policy()  # what the CLI does before torch loads (a no-op when the env has one)
    import torch
    default = torch.get_num_threads()  # torch's own default, before any job changed it
    from densedsl import cli
    answer = sys.stdout
    for line in sys.stdin:
        torch.set_num_threads(default)  # each job starts where a fresh process would
        buf = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            rc = cli.main(json.loads(line))
        answer.write(json.dumps({"rc": rc, "stdout": buf.getvalue(), "wall": time.perf_counter() - start})
                     + "\n")
        answer.flush()


class Workers:
    """One worker process per policy, each with its own environment; all closed on the way out."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "Workers":
        for policy, (_, env_changes, _) in POLICIES.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_"))}
            env.update(env_changes, PYTHONPATH=str(ROOT))
            self.procs[policy] = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", policy], env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs.values():
            p.kill()
            p.wait()

    def job(self, policy: str, max_steps: int, out: Path) -> dict:
        extra, _, _ = POLICIES[policy]
        argv = ["train", str(ROOT / "specs" / "tiny_digits.dense"), "--data", "digits", "--epochs", "1",
                "--max-steps", str(max_steps), "--device", "cpu", "--no-progress", "--out", str(out), *extra]
        proc = self.procs[policy]
        proc.stdin.write(json.dumps(argv) + "\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        if answer["rc"] != 0:
            raise RuntimeError(f"{policy}: exit {answer['rc']}\n{answer['stdout']}")
        epoch = _EPOCH.search(answer["stdout"])
        threads = _THREADS.search(answer["stdout"])
        return {"epoch": float(epoch.group(1)) if epoch else None, "wall": answer["wall"],
                "threads": int(threads.group(1)) if threads else None}


def measure(rounds: int, max_steps: int) -> dict:
    """{condition: {policy: [result per round]}}; policies rotate each round."""
    names = list(POLICIES)
    results: dict = {"loaded": {p: [] for p in names}, "no added load": {p: [] for p in names}}
    with TemporaryDirectory(prefix="densedsl-bench-threads-") as tmp, Workers() as workers:
        runs = iter(range(10**9))
        for policy in names:  # warm-up: imports, data set, first-call costs
            workers.job(policy, 1, Path(tmp) / f"run{next(runs)}")
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for condition in ("loaded", "no added load") if r % 2 == 0 else ("no added load", "loaded"):
                with Load(CORES if condition == "loaded" else 0):
                    for policy in order:
                        row = workers.job(policy, max_steps, Path(tmp) / f"run{next(runs)}")
                        results[condition][policy].append(row)
                        print(f"round {r + 1} {condition:>13}  {policy:<28} epoch {row['epoch']}s  "
                              f"wall {round(row['wall'], 2)}s  threads {row['threads']}", flush=True)
    return results


def _span(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})" if values else "—"


def table(results: dict) -> list[str]:
    lines = ["| condition | policy | threads | epoch s, median (range) | wall s, median (range) | "
             "ratio: torch default ÷ policy, epoch, median (range) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for condition, by_policy in results.items():
        base = by_policy[BASELINE]
        for policy, rows in by_policy.items():
            epochs = [r["epoch"] for r in rows if r["epoch"] is not None]
            walls = [r["wall"] for r in rows if r["wall"] is not None]
            ratios = [b["epoch"] / r["epoch"] for b, r in zip(base, rows)
                      if b["epoch"] is not None and r["epoch"] is not None]
            threads = sorted({r["threads"] for r in rows if r["threads"] is not None})
            lines.append(f"| {condition} | {policy} | {'/'.join(map(str, threads))} | {_span(epochs)} | "
                         f"{_span(walls)} | {_span(ratios)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one policy's process
    parser.add_argument("--write", action="store_true", help="replace its section of BENCHMARKS.md")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through Load: loops killed
    load = os.getloadavg()[0]
    started = time.perf_counter()
    results = measure(args.rounds, args.max_steps)
    took = time.perf_counter() - started
    lines = ["## Threads under load (issue 14)", "",
             "Written by `bench/bench_threads.py`: one short training job (`densedsl train "
             f"specs/tiny_digits.dense --data digits --epochs 1 --max-steps {args.max_steps}`) under each "
             "thread policy, with one busy-loop process per core (`loaded`) and without (`no added "
             "load`: the machine's own load only). Each policy runs in its own worker process, "
             "started once with its environment and warmed up; each job is `densedsl.cli.main` in "
             "it with torch's default thread count restored. Rounds interleave the policies and the "
             "conditions; the ratio is paired within each round (above 1: faster than torch's "
             "default). The epoch time is the one the run prints (training steps and the test pass); "
             "the wall time is the whole job (data, model, training, test) without the process start. "
             "The default chosen from these figures, and why: docs/training.md, Threads.",
             "",
             f"- command: `python bench/bench_threads.py --rounds {args.rounds} --max-steps {args.max_steps}"
             " --write`",
             f"- machine: {platform.processor() or platform.machine()}, {CORES} usable cores, "
             f"Python {platform.python_version()}, load average {load:.2f} at start; "
             f"{args.rounds} rounds in {took / 60:.1f} min", "", *table(results)]
    text = "\n".join(lines)
    print(text)
    if args.write:
        sys.path.insert(0, str(ROOT / "bench"))
        from results import write_section
        write_section(ROOT / "BENCHMARKS.md", "threads", text)


if __name__ == "__main__":
    main()
