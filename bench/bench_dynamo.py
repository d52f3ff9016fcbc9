"""Benchmark: torch.compile (inductor) of densedsl's model against torch.compile of the reference.

    python bench/bench_dynamo.py --models densenet_bc_100_12 --rounds 5   # prints only
    python bench/bench_dynamo.py --write                                   # both models, writes BENCHMARKS.md

The reference, the weights and the batches are bench_compiler's (torchvision's DenseNet written
out; DenseNet-121 at batch 8, 224 px and DenseNet-BC-100 at batch 64, 32 px). Every model is
`torch.compile(model)` with the default backend (inductor, which needs a C++ compiler on CPU).

Per model, training step (SGD, momentum 0.9) and inference (eval, no_grad):
- how dynamo sees each implementation: `torch._dynamo.explain(model)(x)`'s graph count, graph
  breaks and the break reasons, in train and in eval mode;
- the cold compile time: the first call of a fresh `torch.compile` wrapper (dynamo's caches
  reset first), i.e. tracing, AOT autograd and inductor's code generation and C++ builds;
- speed: after two warm-up calls each, every implementation runs once per round in turn (A B C
  … A B C …) and each ratio is taken per round against compiled torchvision, reported as the
  median over rounds with the spread (lowest–highest).

Implementations: the reference and densedsl, eager and compiled. In training, under dynamo
densedsl's blocks take their plain path (`modules.compiling()`: torch.cat per layer, as
torchvision), so its graph is torchvision's. In inference its engine runs eagerly behind one graph
break (`torch.compiler.disable` on the engine's entry points) and dynamo compiles the rest (the
head). `densedsl shared` is an experiment, training only: the blocks keep the shared-buffer
autograd Function (`concat.py`) under dynamo too (`DenseBlock._shareable_entries`:
the rule less its `compiling()` test, on the instances only), to measure whether inductor does
better with it. `densedsl plain`, inference only, is the model without its engine: the compiled
plain path (what a compiled eval model ran before the engine was kept under dynamo). `explain`
also records densedsl with every guard off ("guards off"): the training Function and the
inference engine traced by dynamo (`compiling()` false, the engine's `torch.compiler.disable`
unwrapped).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_compiler as bc  # noqa: E402
from bench_train import ratios  # noqa: E402  (per-round paired ratios, median and spread)

from densedsl.nn import engine as densedsl_engine  # noqa: E402
from densedsl.nn import model as densedsl_modules  # noqa: E402
from densedsl.nn.model import DenseBlock  # noqa: E402

# Several compiled instances of the same classes live in one process: give dynamo room.
torch._dynamo.config.recompile_limit = 64
torch._dynamo.config.accumulated_recompile_limit = 4096


def cold_caches() -> str:
    """Compile times as a user's first run sees them: inductor's on-disk caches in a fresh
    directory, and no whole-graph cache (densedsl's plain graph is torchvision's graph: it
    would hit the reference's entry). Kernels identical to ones built earlier in the run are
    still reused, so a later model's cold time can be lower; the reference compiles first."""
    import torch._functorch.config
    import torch._inductor.config
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_dynamo_")
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def make(name: str, impl: str, training: bool) -> torch.nn.Module:
    """'reference', 'densedsl', 'efficient', 'densedsl shared' or 'densedsl plain'; NCHW,
    bench_compiler's weights."""
    kind = {"reference": "reference", "densedsl": "standard", "efficient": "efficient",
            "densedsl shared": "standard", "densedsl plain": "standard"}[impl]
    model = bc.make(name, kind, "NCHW", "cpu").train(training)
    if impl == "densedsl shared":
        for m in model.modules():
            if isinstance(m, DenseBlock):
                m._shared_entries = m._shareable_entries  # the Function, traced by dynamo
    if impl == "densedsl plain":
        for m in model.modules():
            if hasattr(m, "engine"):
                m.engine = None
    return model


@contextlib.contextmanager
def guards_off():
    """densedsl as dynamo would see it without `modules.compiling()` and with the engine's entry
    points traced rather than disabled: the training Function and the engine in dynamo's graph."""
    engine = densedsl_engine.InferenceEngine
    entries = ("block", "features", "features_only")
    saved = densedsl_modules.compiling, {name: engine.__dict__[name] for name in entries}
    densedsl_modules.compiling = lambda: False
    for name in entries:
        setattr(engine, name, inspect.unwrap(saved[1][name]))
    try:
        yield
    finally:
        densedsl_modules.compiling = saved[0]
        for name in entries:
            setattr(engine, name, saved[1][name])


def explain(name: str, impl: str, training: bool) -> dict:
    model = make(name, "densedsl" if impl == "densedsl, guards off" else impl, training)
    x, _ = bc.batch_of(name, "cpu", "NCHW")
    torch._dynamo.reset()
    guard = guards_off() if impl == "densedsl, guards off" else contextlib.nullcontext()
    grad = contextlib.nullcontext() if training else torch.no_grad()
    with guard, grad:
        e = torch._dynamo.explain(model)(x)
    reasons: dict[str, int] = {}
    for b in e.break_reasons:
        first = str(b.reason).strip().splitlines()[0][:120]
        reasons[first] = reasons.get(first, 0) + 1
    return {"graphs": e.graph_count, "breaks": e.graph_break_count, "ops": e.op_count, "reasons": reasons}


def callables(name: str, impls: list[str], training: bool, backend: str, log) -> tuple[dict, dict]:
    """One step (training) or forward (inference) per implementation; compiled ones are called
    once here, cold, and that time is returned."""
    torch._dynamo.reset()  # once: a reset between the models would make the earlier ones recompile
    x, y = bc.batch_of(name, "cpu", "NCHW")
    fns, cold = {}, {}
    for impl in impls:
        base, compiled = impl.removesuffix(" compiled"), impl.endswith(" compiled")
        model = make(name, base, training)
        runner = torch.compile(model, backend=backend) if compiled else model
        if training:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            fn = (lambda r=runner, o=opt: bc.train_step(r, x, y, o))
        else:
            fn = (lambda r=runner: _infer(r, x))
        if compiled:
            t0 = time.perf_counter()
            fn()
            cold[impl] = time.perf_counter() - t0
            log(f"  {name} {'train' if training else 'eval'} {impl}: cold {cold[impl]:.1f} s")
        fns[impl] = fn
    return fns, cold


def _infer(model, x):
    with torch.no_grad():
        return model(x)


TRAIN = ["reference", "densedsl", "reference compiled", "densedsl compiled", "densedsl shared compiled"]
INFER = ["reference", "densedsl", "reference compiled", "densedsl compiled", "densedsl plain compiled"]
EXPLAIN_TRAIN = ["reference", "densedsl", "efficient", "densedsl, guards off"]
EXPLAIN_EVAL = ["reference", "densedsl", "densedsl, guards off"]


PARTS = ("explain", "train", "eval")


def bench_model(name: str, rounds: int, parts: list[str], log, backend: str = "inductor") -> dict:
    out: dict = {"batch": bc.MODELS[name]["batch"], "input": "x".join(map(str, bc.network(name).input)),
                 "explain": {}}
    for mode, impls in (("train", EXPLAIN_TRAIN), ("eval", EXPLAIN_EVAL)):
        for impl in impls if "explain" in parts else []:
            e = explain(name, impl, mode == "train")
            out["explain"][f"{impl} ({mode})"] = e
            log(f"  {name} explain {impl} ({mode}): {e['graphs']} graphs, {e['breaks']} breaks")
    for mode, impls in (("train", TRAIN), ("eval", INFER)):
        if mode not in parts:
            continue
        fns, cold = callables(name, impls, mode == "train", backend, log)
        times = bc.interleaved(fns, "cpu", rounds, warmup=2)
        out[mode] = {"ratios": ratios(times, "reference compiled"), "cold": cold}
        log(f"  {name} {mode}: " + ", ".join(f"{k} {v['median']:.2f}x" for k, v in out[mode]["ratios"].items()))
    return out


def _fmt(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['low']:.2f}–{r['high']:.2f})"


def report(results: dict, meta: dict) -> str:
    cmd = f"`{meta['command']}`"
    lines = ["## torch.compile: densedsl against torchvision, both compiled (CPU)", "",
             "Written by `bench/bench_dynamo.py`; ratios from interleaved rounds of one run.", "",
             f"- command: {cmd}",
             f"- machine: {meta['machine']}; {meta['threads']} torch threads; load average before "
             f"{meta['load_before']}, after {meta['load_after']} (a shared machine: absolute times mean "
             "nothing, the spread over rounds says how far to trust a ratio)",
             f"- torch {torch.__version__}, backend {meta['backend']}, C++ compiler `{meta['cxx']}`; {meta['rounds']} "
             f"rounds after two warm-up calls; elapsed {meta['elapsed']:.0f} s", "",
             "Speed ratio = compiled torchvision's time / the implementation's, per round; median "
             "(lowest–highest) over rounds. Cold = the first call of a fresh `torch.compile` wrapper "
             "(training: forward and backward).", ""]
    if any(mode in res for res in results.values() for mode in ("train", "eval")):
        lines += ["| model | measurement | command | measured | met |", "| --- | --- | --- | ---: | :---: |"]
    for name, res in results.items():
        for mode, label in (("train", "training step"), ("eval", "inference")):
            if mode not in res:
                continue
            r = res[mode]["ratios"]
            dd = r["densedsl compiled"]
            lines.append(f"| {name} | {label}: densedsl compiled / torchvision compiled ≥ 1.00× (a tie is the "
                         f"floor) | {cmd} | {_fmt(dd)} | {'yes' if dd['median'] >= 1.0 else '**no**'} |")
            lines.append(f"| {name} | {label}: densedsl compiled keeps densedsl eager's lead (≥ eager) | {cmd} | "
                         f"{dd['median'] / r['densedsl']['median']:.2f}× of eager | "
                         f"{'yes' if dd['median'] >= r['densedsl']['median'] else '**no**'} |")
            for impl in r:
                if impl not in ("reference compiled", "densedsl compiled"):
                    lines.append(f"| {name} | {label}: {impl} / torchvision compiled | {cmd} | {_fmt(r[impl])} | — |")
            for impl, seconds in res[mode]["cold"].items():
                lines.append(f"| {name} | {label}: cold compile, {impl} | {cmd} | {seconds:.0f} s | — |")
    if lines[-1]:
        lines.append("")
    lines += ["How dynamo sees each model (`torch._dynamo.explain(model)(x)`):", "",
              "| model | implementation (mode) | graphs | graph breaks | ops | break reasons (count) |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    for name, res in results.items():
        for impl, e in res["explain"].items():
            why = "; ".join(f"{k} ({v})" for k, v in e["reasons"].items()).replace("|", "\\|") or "—"
            lines.append(f"| {name} | {impl} | {e['graphs']} | {e['breaks']} | {e['ops']} | {why} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(bc.MODELS), default=list(bc.MODELS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="explain (dynamo's graphs), train and eval (timings); default all")
    p.add_argument("--write", action="store_true", help="write the dynamo section of BENCHMARKS.md")
    p.add_argument("--backend", default="inductor",
                   help="torch.compile's backend (default inductor; aot_eager checks the script without a C++ build)")
    p.add_argument("--output", default=str(bc.ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    cxx = next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)
    if cxx is None and args.backend == "inductor":
        print("bench_dynamo: inductor needs a C++ compiler on CPU and none was found (set CXX)", file=sys.stderr)
        return 1
    cache = cold_caches()
    started = time.perf_counter()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    results = {name: bench_model(name, args.rounds, args.parts, lambda s: print(s, flush=True), args.backend)
               for name in args.models}
    meta = {"command": "python " + " ".join(["bench/bench_dynamo.py"] + (argv or sys.argv[1:])),
            "machine": f"{os.cpu_count()} cores", "threads": torch.get_num_threads(), "cxx": cxx,
            "backend": args.backend,
            "load_before": load_before, "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "elapsed": time.perf_counter() - started, "rounds": args.rounds}
    text = report(results, meta)
    print(text)
    print(json.dumps(results), file=sys.stderr)
    shutil.rmtree(cache, ignore_errors=True)
    if args.write:
        from results import write_section
        write_section(args.output, "dynamo", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
