"""CPU threads for training: a default that does not collapse on a busy machine (issue 14).

torch runs its intra-op work on an OpenMP team of one thread per core whose idle threads spin
while they wait for the others. On a machine that other processes keep busy, a spinning thread
takes the core a straggler needs, and every parallel region waits for its slowest thread: on two
loaded cores a digits run took 694 s with torch's default against 49.5 s with one thread.
`bench/bench_threads.py` measures the policies under an artificial load (BENCHMARKS.md,
section `threads`); the default chosen from it, applied only where the user chose nothing:

- `OMP_WAIT_POLICY=PASSIVE` for the `densedsl` process, set before torch loads OpenMP (libgomp
  reads it once, at load), so waiting threads sleep instead of spinning;
- intra-op threads (`densedsl train` without `--threads` or OMP_NUM_THREADS): torch's default
  (one per core) less the cores other processes keep busy (the one-minute load average,
  rounded), and at least one.

Never imports torch: `default_wait_policy` must run before torch is imported.
"""

from __future__ import annotations

import os

WAIT_POLICY = "OMP_WAIT_POLICY"
THREADS_VARIABLE = "OMP_NUM_THREADS"  # set by the user: torch's default follows it, so does densedsl


def default_wait_policy() -> None:
    """Sleeping OpenMP waits for this process and its children, unless the user chose a policy.
    Takes effect only when torch is not imported yet (the CLI calls it first)."""
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def busy_cpus() -> float | None:
    """Cores other processes keep busy: the one-minute load average, None where it is unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def pick(torch_default: int, cpus: int, load: float | None) -> int:
    """Intra-op threads when the user gave no `--threads`: torch's default less the busy cores,
    at least 1 (a pure function of the figures, for tests)."""
    if load is None:
        return torch_default
    return max(1, min(torch_default, cpus - round(load)))


__all__ = ["THREADS_VARIABLE", "WAIT_POLICY", "busy_cpus", "default_wait_policy", "pick", "usable_cpus"]
