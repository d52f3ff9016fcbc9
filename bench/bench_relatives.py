"""Benchmark: DenseNet's relatives compiled by densedsl against pytorchcv's and timm's models.

    python bench/bench_relatives.py                 # full run (~3 minutes on 2 CPU cores), writes BENCHMARKS.md
    python bench/bench_relatives.py --quick         # 3 rounds, prints only (unless --write)
    python bench/bench_relatives.py --threads 1     # one torch thread: steadier where others share the cores

Each spec runs as users run it (`densedsl.compile(path)`, `.eval()` under `torch.no_grad()` for
inference, `.train()` and one SGD step for training) against the reference its spec equals
(tests/test_relatives.py, tests/test_relatives_weights.py), with the reference's weights loaded
by `densedsl.load_weights`, the same NCHW batch for both: SparseNet-121 and HarDNet-68 against
pytorchcv, VoVNet-39 against timm's vovnet39a. Where timm cannot be imported (it needs a
torchvision whose operators load), VoVNet-39 is measured against pytorchcv's vovnet39, which has
the same convolutions plus a residual addition around four of its six blocks, and says so.
The two run in turn, A B A B, for a few rounds; each row gives the median round (and the best).
Ratios are densedsl's images/s over the reference's: above 1 densedsl is faster.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import densedsl  # noqa: E402
from bench_compiler import interleaved, median, train_step  # noqa: E402

SPECS = ROOT / "specs"
SIZE = 224
BATCH = 4


def _pytorchcv(module: str, name: str):
    return lambda: getattr(importlib.import_module(f"pytorchcv.models.{module}"), name)(pretrained=False)


def _timm_or_pytorchcv(timm_name: str, module: str, name: str):
    """timm's model where timm imports, else pytorchcv's (label, constructor)."""
    try:
        timm = importlib.import_module("timm")
    except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision whose operators do not load
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return (f"pytorchcv {name} (timm unavailable: {why}; pytorchcv adds 4 residual additions)",
                _pytorchcv(module, name), False)
    return f"timm {timm_name}", lambda: timm.create_model(timm_name, pretrained=False), True


def models() -> dict[str, tuple[Path, str, object, bool]]:
    """name -> (spec, reference label, reference constructor, whether its weights load)."""
    vov_label, vov_make, vov_loads = _timm_or_pytorchcv("vovnet39a", "vovnet", "vovnet39")
    return {
        "SparseNet-121": (SPECS / "sparsenet.dense", "pytorchcv sparsenet121", _pytorchcv("sparsenet", "sparsenet121"), True),
        "HarDNet-68": (SPECS / "hardnet68.dense", "pytorchcv hardnet68", _pytorchcv("hardnet", "hardnet68"), True),
        "VoVNet-39": (SPECS / "vovnet39.dense", vov_label, vov_make, vov_loads),
    }


def bench_one(name: str, spec: Path, make_ref, loads: bool, iters: int, batch: int, log) -> dict:
    torch.manual_seed(0)
    ref = make_ref()
    ours = densedsl.compile(spec)
    if loads:
        densedsl.load_weights(ours, ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    out: dict = {"batch": batch, "flops": densedsl.analyze(spec).flops}

    ref.eval()
    ours.eval()

    def infer(model):
        def run():
            with torch.no_grad():
                model(x)
        return run

    t = interleaved({"densedsl": infer(ours), "reference": infer(ref)}, "cpu", iters)
    out["inference"] = t
    log(f"{name} inference: " + _line(t, batch))

    ref.train()
    ours.train()
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in (("densedsl", ours), ("reference", ref))}
    t = interleaved({"densedsl": lambda: train_step(ours, x, y, opts["densedsl"]),
                     "reference": lambda: train_step(ref, x, y, opts["reference"])}, "cpu", iters)
    out["training"] = t
    log(f"{name} training step: " + _line(t, batch))
    return out


def _rate(times: list[float], batch: int) -> float:
    return batch / median(times)


def _line(t: dict[str, list[float]], batch: int) -> str:
    ours, ref = _rate(t["densedsl"], batch), _rate(t["reference"], batch)
    return f"densedsl {ours:.2f} img/s, reference {ref:.2f} img/s, ratio {ours / ref:.2f}"


def report(results: dict, labels: dict[str, str], meta: dict) -> str:
    lines = ["## DenseNet's relatives vs pytorchcv/timm", "",
             "Written by `bench/bench_relatives.py`; numbers from one run, all ratios within that run.", "",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}; {meta['threads']} torch threads; load average before the run "
             f"{meta['load_before']}, after {meta['load_after']} (other jobs share the cores)",
             f"- versions: Python {meta['python']}, torch {meta['torch']}, densedsl {densedsl.__version__}",
             f"- input {SIZE}x{SIZE}, batch {meta['batch']}, float32, NCHW; {meta['rounds']} rounds, "
             f"each implementation once per round in turn; elapsed {meta['elapsed']:.0f} s", "",
             "densedsl runs as `densedsl.compile(spec)` with the reference's weights loaded by "
             "`densedsl.load_weights`: `.eval()` under `torch.no_grad()` (its inference engine: folded "
             "BNs, channels_last) for inference, `.train()` and one SGD step (momentum 0.9) for "
             "training. Ratio: densedsl's images/s over the reference's, medians (above 1: densedsl "
             "is faster).", "",
             "| network | reference | measurement | densedsl img/s (median, best) | reference img/s (median, best) | ratio |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for name, res in results.items():
        b = res["batch"]
        for kind in ("inference", "training"):
            t = res[kind]
            ours, ref = _rate(t["densedsl"], b), _rate(t["reference"], b)
            lines.append(f"| {name} | {labels[name]} | {kind} | {ours:.2f} ({b / min(t['densedsl']):.2f}) | "
                         f"{ref:.2f} ({b / min(t['reference']):.2f}) | {ours / ref:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 rounds; print, do not write unless --write")
    p.add_argument("--write", action="store_true", help="write BENCHMARKS.md (default unless --quick)")
    p.add_argument("--models", nargs="+", choices=["SparseNet-121", "HarDNet-68", "VoVNet-39"])
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = p.parse_args(argv)
    if args.threads:
        # a multi-threaded op waits for its slowest thread: on cores other jobs share, one thread
        # per process gives steadier ratios
        torch.set_num_threads(args.threads)
    iters = 3 if args.quick else 5
    started = time.perf_counter()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    table = models()
    chosen = args.models or list(table)
    results = {}
    for name in chosen:
        spec, label, make, loads = table[name]
        print(f"{name}: {spec.relative_to(ROOT)} vs {label}", flush=True)
        results[name] = bench_one(name, spec, make, loads, iters, args.batch, lambda s: print(s, flush=True))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {"command": "python " + " ".join([str(Path(__file__).resolve().relative_to(ROOT))] + (argv or sys.argv[1:])),
            "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "load_before": load_before, "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "elapsed": time.perf_counter() - started, "rounds": iters, "batch": args.batch}
    text = report(results, {n: table[n][1] for n in chosen}, meta)
    print(text)
    if args.write or not args.quick:
        from results import write_section
        write_section(args.output, "relatives", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
