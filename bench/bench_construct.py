"""Construction and scale: `densedsl.compile` against torch's own module construction (issue 15).

Part 1 (compile overhead): for DenseNet-121 and DenseNet-264, each round builds, interleaved,
- the reference: bench_compiler's `RefDenseNet` (torchvision's DenseNet written straightforwardly)
  followed by torchvision's weight init (the "official init" loop its constructor runs). Every
  conv weight is filled twice: nn.Conv2d's constructor draws kaiming_uniform_, the loop then
  draws kaiming_normal_ over it;
- the same reference filled once: built on the meta device, given storage as densedsl does
  (`modules._materialise`), then each tensor set once to the same distributions. compile minus
  this one is densedsl's own overhead (parsing, checks, the engine), the RNG saving left out;
- `densedsl.compile(spec text)`: parse, resolve, analyse (every check) and build, init included
  (densedsl builds on meta and fills each tensor once, as above),
and reports the median and range of each and of the paired per-round differences (the goal,
<= 20 ms for DenseNet-264, is on compile minus the reference as torch builds it). Times are CPU
seconds of this process (wall time on a shared machine mostly measures the other processes),
one torch thread.

Part 2 (scale): one dense block of L layers (growth 12, bottleneck 4, 3x32x32 input, a 24-channel
stem conv, 10 classes) for L = 16 ... 1,024: `analyze` (no torch) against the reference's
constructor for the same network, interleaved, median of the rounds, and the exponents of
least-squares fits of log time on log L over L >= 64.

    python bench/bench_construct.py [--rounds 7] [--scale-rounds 3] [--write]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import densedsl  # noqa: E402
from bench_compiler import RefDenseNet  # noqa: E402
from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.nn.model import _materialise  # noqa: E402

MODELS = {"densenet121": (6, 12, 24, 16), "densenet264": (6, 12, 64, 48)}
SCALE_LAYERS = (16, 32, 64, 128, 256, 512, 1024)
COMPILE_GOAL_MS = 20


def torchvision_init(model: nn.Module) -> None:
    """torchvision.models.densenet.DenseNet.__init__'s "Official init from torch repo"."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0)


def reference_modules(blocks: tuple[int, ...], *, imagenet: bool = True) -> nn.Module:
    if imagenet:
        stem = [("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(64)),
                ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]
        return RefDenseNet(stem, 64, blocks, 32)
    return RefDenseNet([("conv0", nn.Conv2d(3, 24, 3, 1, 1, bias=False))], 24, blocks, 12, classes=10)


def reference(blocks: tuple[int, ...], *, imagenet: bool = True) -> nn.Module:
    model = reference_modules(blocks, imagenet=imagenet)
    torchvision_init(model)
    return model


def reference_one_fill(blocks: tuple[int, ...]) -> nn.Module:
    """The reference with each tensor filled once: modules on meta, storage, torchvision's init."""
    with torch.device("meta"):
        model = reference_modules(blocks)
    _materialise(model, torch.device("cpu"))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()  # BN: weight 1, bias 0, running statistics; Linear: torch's
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
    return model


def one_block(layers: int) -> str:
    return (f"network block{layers} {{\n    input 3x32x32\n    stem {{\n        conv 24\n    }}\n"
            f"    dense layers={layers} growth=12 bottleneck=4\n    head classes=10\n}}\n")


def cpu_seconds(fn) -> float:
    """CPU seconds of fn(); what it returns is freed after the clock stops, and garbage before
    it starts (freeing a 33M-parameter model is not construction)."""
    gc.collect()
    start = time.process_time()
    result = fn()
    elapsed = time.process_time() - start
    del result
    return elapsed


def spread(values: list[float], scale: float = 1000) -> str:
    return f"{statistics.median(values) * scale:,.1f} ({min(values) * scale:,.1f}–{max(values) * scale:,.1f})"


def compile_overhead(rounds: int) -> list[str]:
    lines = ["| network | reference + init, ms | reference, one fill, ms | densedsl.compile, ms | "
             "compile − reference, ms | compile − one-fill reference, ms | ratio | goal | met |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | :---: |"]
    for name, blocks in MODELS.items():
        text = (ROOT / "specs" / f"{name}.dense").read_text("utf-8")
        builders = {"reference": lambda: reference(blocks), "one fill": lambda: reference_one_fill(blocks),
                    "compile": lambda: densedsl.compile(text)}
        for build in builders.values():  # warm-up: imports, caches, allocator
            build()
        times: dict[str, list[float]] = {key: [] for key in builders}
        for i in range(rounds):  # the order alternates, so that none always runs first
            for key in (list(builders) if i % 2 else list(reversed(builders))):
                times[key].append(cpu_seconds(builders[key]))
        ref, single, ours = times["reference"], times["one fill"], times["compile"]
        diff = [b - a for a, b in zip(ref, ours)]
        own = [b - a for a, b in zip(single, ours)]
        ratio = statistics.median(ours) / statistics.median(ref)
        goal = f"≤ {COMPILE_GOAL_MS} ms" if name == "densenet264" else "—"
        met = ("yes" if statistics.median(diff) * 1000 <= COMPILE_GOAL_MS else "**no**") if name == "densenet264" else ""
        lines.append(f"| {name} | {spread(ref)} | {spread(single)} | {spread(ours)} | {spread(diff)} | "
                     f"{spread(own)} | {ratio:.2f} | {goal} | {met} |")
        print(lines[-1], flush=True)
    return lines


def steps(rounds: int) -> list[str]:
    """Where densedsl.compile's time goes for DenseNet-264, step by step (what build_model does,
    collector pause included), beside the reference's construction."""
    from densedsl.analysis import budget
    from densedsl.nn.build import _collector_paused
    from densedsl.nn.engine import accelerate
    from densedsl.nn.model import DenseNet
    text = (ROOT / "specs" / "densenet264.dense").read_text("utf-8")
    times: dict[str, list[float]] = {k: [] for k in ("parse and resolve", "analyze (every check)",
                                                        "memory budget check", "module construction and init",
                                                        "inference engine attached", "reference + init",
                                                        "reference, one fill")}
    for _ in range(rounds):
        gc.collect()
        with _collector_paused():
            clock = time.process_time()
            network = densedsl.parse(text).network
            marks = [time.process_time()]
            analysis = analyze(network)
            marks.append(time.process_time())
            budget.require(budget.for_model(analysis), network, within=budget.limit(None), library=True)
            marks.append(time.process_time())
            model = DenseNet(network, lowered=analysis.lowered)
            marks.append(time.process_time())
        accelerate(model)
        marks.append(time.process_time())
        for key, start, end in zip(times, [clock] + marks, marks):
            times[key].append(end - start)
        del model, analysis
        times["reference + init"].append(cpu_seconds(lambda: reference(MODELS["densenet264"])))
        times["reference, one fill"].append(cpu_seconds(lambda: reference_one_fill(MODELS["densenet264"])))
    lines = ["| DenseNet-264, step | CPU ms, median (range) |", "| --- | ---: |"]
    lines += [f"| {key} | {spread(values)} |" for key, values in times.items()]
    print("\n".join(lines), flush=True)
    return lines


def fit_exponent(xs: list[int], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.mean(lx), statistics.mean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def scaling(rounds: int) -> list[str]:
    lines = ["| layers in the block | dense connections | reference + init, ms | analyze, ms | analyze ÷ reference |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    ref_med, ours_med = [], []
    for layers in SCALE_LAYERS:
        network = densedsl.parse(one_block(layers)).network
        analyze(network)  # warm-up
        ref, ours = [], []
        for _ in range(rounds):
            ref.append(cpu_seconds(lambda: reference((layers,), imagenet=False)))
            ours.append(cpu_seconds(lambda: analyze(network)))
        ref_med.append(statistics.median(ref))
        ours_med.append(statistics.median(ours))
        lines.append(f"| {layers:,} | {layers * (layers + 1) // 2:,} | {spread(ref)} | {spread(ours)} | "
                     f"{ours_med[-1] / ref_med[-1]:.2f} |")
        print(lines[-1], flush=True)
    big = [i for i, layers in enumerate(SCALE_LAYERS) if layers >= 64]
    xs = [SCALE_LAYERS[i] for i in big]
    lines += ["", f"Fitted exponents (time ∝ L^k over L = {xs[0]} … {xs[-1]:,}): reference + init "
              f"k = {fit_exponent(xs, [ref_med[i] for i in big]):.2f}, analyze "
              f"k = {fit_exponent(xs, [ours_med[i] for i in big]):.2f}."]
    print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--no-scale", action="store_true", help="part 1 only")
    parser.add_argument("--write", action="store_true", help="replace its section of BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    lines = ["## Construction and scale (issue 15)", "",
             "Written by `bench/bench_construct.py`: CPU milliseconds of this process, one torch thread, "
             "rounds interleaved, in alternating order; each cell is the median (range) of the rounds. The reference is "
             "bench_compiler's `RefDenseNet` plus torchvision's weight init (what torchvision's "
             "constructor runs: every conv weight filled twice, kaiming_uniform_ by nn.Conv2d, then "
             "kaiming_normal_); `densedsl.compile` starts from the spec's text, so it includes parsing, "
             "resolving and every check, and fills each tensor once (modules built on the meta device, "
             "then given storage and initialised). The one-fill reference is built that way too, so "
             "compile minus it is densedsl's own overhead without the saving of the second fill. "
             "Differences are paired within each round.", "",
             f"- command: `python bench/bench_construct.py --rounds {args.rounds} "
             f"--scale-rounds {args.scale_rounds} --write`",
             f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, torch {torch.__version__}, load average {load:.2f} at start",
             "", "### compile against torch's own construction", ""]
    lines += compile_overhead(args.rounds)
    lines += ["", "Where the time goes (the same steps as `build_model`, timed one by one):", ""]
    lines += steps(args.rounds)
    if args.no_scale:
        return
    lines += ["", f"### Scale: one block of L layers, analysis against the reference's constructor "
              f"({args.scale_rounds} rounds)", ""]
    lines += scaling(args.scale_rounds)
    text = "\n".join(lines)
    print(text)
    if args.write:
        from results import write_section
        write_section(ROOT / "BENCHMARKS.md", "construct", text)


if __name__ == "__main__":
    main()
