"""Benchmark: training steps of densedsl-compiled DenseNets as users run them, against the reference.

    python bench/bench_train.py                 # full run (~8 minutes on 2 idle cores), writes BENCHMARKS.md
    python bench/bench_train.py --quick         # 2 rounds, BC-100 only, prints only (unless --write)

The reference, the models and the batches are bench_compiler's (torchvision's DenseNet written
out, torch.cat per layer, seed-0 weights shared with the compiled model). Every variant runs one
SGD step per round, in turn (A B C … A B C …), so a change of load on the shared machine hits all
alike; each ratio is taken per round (the reference's step time over the variant's, in the same
round) and reported as the median over rounds with the spread (lowest–highest) as its noise.

torchvision's `memory_efficient=True` (bench_compiler's `reference_efficient`: each layer's
concat-BN-ReLU-Conv1x1 in one non-reentrant checkpoint) runs in the same rounds, the comparison
for densedsl's efficient mode: its step time and peak memory beside efficient's.

Variants of the compiled model (`densedsl.compile(...)` in train mode, fed NCHW):
- plain: DENSEDSL_TRAINING_PATH=plain, i.e. torch.cat per layer, NCHW throughout;
- channels_last: step (a) alone, the input converted to channels_last inside the model;
- shared: steps (b)+(c) alone, the shared-storage concatenation with its fused BN-ReLU Function;
- densedsl: what users get, (a)+(b)+(c);
- efficient: what users get with memory="efficient".
Peak memory: bench_compiler's fresh-process peak-RSS delta of one step, under glibc's default
allocator (what users have) and under MALLOC_MMAP_THRESHOLD_=65536 (RSS follows live tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compiler as bc  # noqa: E402

from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.nn.model import DenseBlock  # noqa: E402

VARIANTS = {  # name: (memory mode, convert input to channels_last, shared storage)
    "plain": ("standard", False, False),
    "channels_last": ("standard", True, False),
    "shared": ("standard", False, True),
    "densedsl": ("standard", True, True),
    "efficient": ("efficient", True, True),
}


def make(name: str, impl: str, fmt: str) -> torch.nn.Module:
    """'reference', 'reference_efficient' (torchvision's memory_efficient=True) or a VARIANTS key, in
    train mode, weights and memory format as bench_compiler's."""
    if impl in bc.REFERENCES:
        return bc.make(name, impl, fmt, "cpu").train()
    memory, to_channels_last, shared = VARIANTS[impl]
    model = bc.make(name, memory, fmt, "cpu").train()
    model.train_channels_last = to_channels_last
    for m in model.modules():
        if isinstance(m, DenseBlock):
            m.shared_storage = shared
    return model


def steps_of(name: str, impls: list[str], fmt: str) -> dict:
    x, y = bc.batch_of(name, "cpu", fmt)
    steps = {}
    for impl in impls:
        model = make(name, impl, fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps[impl] = lambda model=model, opt=opt: bc.train_step(model, x, y, opt)
    return steps


def ratios(times: dict[str, list[float]], base: str) -> dict[str, dict]:
    """Per-round speed ratio base/variant: median and spread."""
    out = {}
    for impl, t in times.items():
        per_round = sorted(b / v for b, v in zip(times[base], t))
        out[impl] = {"median": statistics.median(per_round), "low": per_round[0], "high": per_round[-1],
                     "seconds_median": statistics.median(t)}
    return out


def memory_child(name: str, impl: str, fmt: str) -> dict:
    model = make(name, impl, fmt)
    x, y = bc.batch_of(name, "cpu", fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = bc._rss_kib("VmRSS")
    bc.train_step(model, x, y, opt)
    return {"peak_delta": (bc._rss_kib("VmHWM") - before) * 1024}


def bench_model(name: str, rounds: int, memory: bool, variants: list[str], log) -> dict:
    out: dict = {"batch": bc.MODELS[name]["batch"], "input": "x".join(map(str, bc.network(name).input))}
    nchw = ["reference", "reference_efficient"] + variants
    times = bc.interleaved(steps_of(name, nchw, "NCHW"), "cpu", rounds)
    out["nchw"] = ratios(times, "reference")
    out["efficient_vs_standard"] = ratios({k: times[k] for k in ("densedsl", "efficient")}, "densedsl")
    # densedsl's efficient mode against torchvision's memory_efficient=True, paired per round
    out["efficient_vs_torchvision"] = ratios({k: times[k] for k in ("reference_efficient", "efficient")},
                                             "reference_efficient")
    log(f"{name} NCHW: " + ", ".join(f"{k} {v['median']:.2f}x" for k, v in out["nchw"].items()))
    times = bc.interleaved(steps_of(name, ["reference", "densedsl"], "channels_last"), "cpu", rounds)
    out["channels_last"] = ratios(times, "reference")
    log(f"{name} channels_last: densedsl {out['channels_last']['densedsl']['median']:.2f}x")
    if memory:
        a = analyze(bc.network(name))
        out["memory"] = {}
        for impl in ("reference", "reference_efficient", "plain", "densedsl", "efficient"):
            mode = VARIANTS.get(impl, ("standard",))[0]
            # the analysis models densedsl's modes, not torchvision's checkpointing: no prediction
            predicted = (None if impl == "reference_efficient"
                         else a.memory(out["batch"], "float32", mode) + a.params * 4)
            row = {"predicted": predicted}
            for allocator in bc.ALLOCATORS:
                row[allocator] = bc.measure_memory(name, impl, "NCHW", "cpu", allocator, script=__file__)
            out["memory"][impl] = row
            log(f"{name} memory {impl}: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in row.items() if v))
    return out


def _fmt(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['low']:.2f}–{r['high']:.2f})"


def report(results: dict, meta: dict) -> str:
    lines = ["## Training as users run it (CPU)", "",
             "Written by `bench/bench_train.py`; ratios from interleaved rounds of one run.", "",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}; {meta['threads']} torch threads; load average before "
             f"{meta['load_before']}, after {meta['load_after']} (a shared machine: absolute times "
             "mean nothing, the spread over rounds says how far to trust a ratio)",
             f"- torch {torch.__version__}; {meta['rounds']} rounds after one warm-up step; elapsed "
             f"{meta['elapsed']:.0f} s", "",
             "Speed ratio = the reference's step time / the variant's, per round; shown as median "
             "(lowest–highest) over rounds. Memory: peak-RSS delta of one SGD step in a fresh process "
             "(includes the parameter gradients); prediction = `analyze(net).memory(batch, 'float32', "
             "mode)` + the gradients.", "",
             "| model | target / step | command | measured | met |", "| --- | --- | --- | ---: | :---: |"]
    cmd = f"`{meta['command']}`"
    for name, res in results.items():
        nchw, cl, eff = res["nchw"], res["channels_last"], res["efficient_vs_standard"]
        dd = nchw["densedsl"]
        lines.append(f"| {name} | 1. training as users run it (NCHW input) ≥ 1.25× the NCHW reference | {cmd} | "
                     f"{_fmt(dd)} | {'yes' if dd['median'] >= 1.25 else '**no**'} |")
        for step in ("plain", "channels_last", "shared"):
            if step in nchw:
                lines.append(f"| {name} | step: {step} alone / NCHW reference | {cmd} | {_fmt(nchw[step])} | — |")
        lines.append(f"| {name} | efficient / NCHW reference | {cmd} | {_fmt(nchw['efficient'])} | — |")
        lines.append(f"| {name} | torchvision memory_efficient=True / NCHW reference | {cmd} | "
                     f"{_fmt(nchw['reference_efficient'])} | — |")
        tv = res["efficient_vs_torchvision"]["efficient"]
        tv = {"median": 1 / tv["median"], "low": 1 / tv["high"], "high": 1 / tv["low"]}
        lines.append(f"| {name} | efficient step time / torchvision memory_efficient=True (NCHW) | {cmd} | "
                     f"{_fmt(tv)} | — |")
        slow = eff["efficient"]
        slow = {"median": 1 / slow["median"], "low": 1 / slow["high"], "high": 1 / slow["low"]}
        lines.append(f"| {name} | 2. efficient step time ≤ 1.10× standard (densedsl) | {cmd} | "
                     f"{_fmt(slow)} | {'yes' if slow['median'] <= 1.10 else '**no**'} |")
        c = cl["densedsl"]
        lines.append(f"| {name} | 3. same format (both channels_last) ≥ 1.10× | {cmd} | {_fmt(c)} | "
                     f"{'yes' if c['median'] >= 1.10 else '**no**'} |")
        if "memory" in res:
            mem = res["memory"]
            for allocator in bc.ALLOCATORS:
                ratio = mem["efficient"][allocator] / mem["densedsl"][allocator]
                lines.append(f"| {name} | 2. efficient peak ≤ 0.5× standard ({allocator} allocator) | {cmd} | "
                             f"{ratio:.2f}× | {'yes' if ratio <= 0.5 else '**no**'} |")
            for allocator in bc.ALLOCATORS:
                if "reference_efficient" in mem:
                    ratio = mem["efficient"][allocator] / mem["reference_efficient"][allocator]
                    lines.append(f"| {name} | efficient peak / torchvision memory_efficient=True ({allocator} "
                                 f"allocator) | {cmd} | {ratio:.2f}× | — |")
            for allocator in bc.ALLOCATORS:
                for impl in ("densedsl", "efficient"):
                    ratio = mem[impl][allocator] / mem[impl]["predicted"]
                    lines.append(f"| {name} | 4. measured / predicted peak, {impl} ({allocator} allocator), "
                                 f"within 25% | {cmd} | {ratio:.2f} | {'yes' if abs(ratio - 1) <= 0.25 else '**no**'} |")
    lines += ["", "| model | implementation | peak MiB (glibc default) | peak MiB (mmap threshold 64 KiB) | "
              "predicted MiB |", "| --- | --- | ---: | ---: | ---: |"]
    for name, res in results.items():
        for impl, row in res.get("memory", {}).items():
            predicted = "—" if row["predicted"] is None else f"{row['predicted'] / 2**20:.0f}"
            lines.append(f"| {name} | {impl} | {row['default'] / 2**20:.0f} | {row['mmap'] / 2**20:.0f} | "
                         f"{predicted} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 rounds, BC-100 only, no memory; print only")
    p.add_argument("--write", action="store_true", help="write BENCHMARKS.md (default unless --quick)")
    p.add_argument("--models", nargs="+", choices=list(bc.MODELS), default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--steps-for", nargs="*", default=["densenet_bc_100_12"],
                   help="models whose steps (a), (b)+(c) are timed alone too (the rest: densedsl, efficient)")
    p.add_argument("--output", default=str(bc.ROOT / "BENCHMARKS.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(*json.loads(args.child)[:3])))
        return 0
    models = args.models or (["densenet_bc_100_12"] if args.quick else list(bc.MODELS))
    rounds = args.rounds or (2 if args.quick else 3)
    started = time.perf_counter()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    results = {name: bench_model(name, rounds, not (args.quick or args.no_memory),
                                 list(VARIANTS) if name in args.steps_for else ["densedsl", "efficient"],
                                 lambda s: print(s, flush=True))
               for name in models}
    meta = {"command": "python " + " ".join(["bench/bench_train.py"] + (argv or sys.argv[1:])),
            "machine": f"{os.cpu_count()} cores", "threads": torch.get_num_threads(),
            "load_before": load_before, "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "elapsed": time.perf_counter() - started, "rounds": rounds}
    text = report(results, meta)
    print(text)
    print(json.dumps(results), file=sys.stderr)
    if args.write or not args.quick:
        from results import write_section
        write_section(args.output, "training", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
