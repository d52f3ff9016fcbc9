"""Benchmark: densedsl's DenseNet-121 on 1-D signals and 3-D volumes against MONAI's DenseNet121.

    python bench/bench_monai.py --write   # full run (≤ ~10 minutes on 2 CPU cores), writes BENCHMARKS.md
    python bench/bench_monai.py --quick   # one or two rounds, prints only

The MONAI section beside bench_compiler's torchvision one. Each network is built as its users build
it: `densedsl.compile(spec_text).eval()` from specs/densenet121_1d.dense or densenet121_3d.dense
(the specs tests/test_monai.py holds to MONAI's outputs; only the input line changes for 64^3),
and `monai.networks.nets.DenseNet121(spatial_dims=r, in_channels=1, out_channels=2).eval()`.
MONAI's seed-0 weights are loaded into the densedsl model (`densedsl.load_weights` reads MONAI's
keys), parameter counts are checked equal and outputs compared before anything is timed.

Measured per network, in one run, each implementation called in turn once per round (A B A B):
inference (densedsl under `torch.inference_mode`, as `densedsl.predict` runs it; MONAI under
`torch.no_grad`, as `monai.networks.eval_mode` and MONAI's evaluators run it), one SGD training
step (MONAI, densedsl standard, densedsl efficient: MONAI's DenseNet has no memory-efficient
option, so efficient mode is compared with densedsl standard as well), peak memory of each in a
fresh process (bench_compiler's child-process measure), the analysis' prediction of those peaks,
and the share of a conv ceiling that inference reaches: the throughput of one 3x3 conv of a
DenseNet layer's shape (block 1's first bottleneck, 128 → 32 channels, block 1's size, the
network's batch) in its best layout, in MACs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import densedsl  # noqa: E402
from densedsl.ir.lowering import LoweredBlock  # noqa: E402
from densedsl.ir.ops import Op  # noqa: E402

import bench_compiler as bc  # noqa: E402  (interleaved rounds, train_step, the memory child's plumbing)

SECTION = "monai"
HEADING = "## MONAI: 1-D and 3-D"
CLASSES = 2  # the specs' head and MONAI's out_channels
SPECS = ROOT / "specs"

# name: the spec, the input both models get, the batch, the rank (MONAI's spatial_dims)
CASES: dict[str, dict] = {
    "1-D 1x1024": dict(spec="densenet121_1d", input=(1, 1024), batch=16, rank=1),
    "3-D 1x64^3": dict(spec="densenet121_3d", input=(1, 64, 64, 64), batch=2, rank=3),
    "3-D 1x96^3": dict(spec="densenet121_3d", input=(1, 96, 96, 96), batch=2, rank=3),
}
# rounds per network: (inference, training); the 96^3 training step takes ~10 s per call on 2 cores
ROUNDS = {"full": {"1-D 1x1024": (8, 5), "3-D 1x64^3": (8, 5), "3-D 1x96^3": (5, 3)},
          "quick": {"1-D 1x1024": (2, 2), "3-D 1x64^3": (2, 2), "3-D 1x96^3": (2, 1)}}
TRAINING = ("monai", "standard", "efficient")  # MONAI has no memory-efficient DenseNet
INFERENCE = ("monai", "densedsl")
PARITY = 1e-3  # max |densedsl - MONAI| / max |MONAI|, eval outputs with MONAI's weights


# --- the two networks ---------------------------------------------------------------------------

def spec_text(case: str) -> str:
    """The spec users compile for `case`: the spec file, with the input line set to the case's
    input when it differs (and the `expect` line, whose figures hold at the file's input, off)."""
    c = CASES[case]
    text = (SPECS / f"{c['spec']}.dense").read_text()
    wanted = "x".join(map(str, c["input"]))
    written = re.search(r"^\s*input (\S+)", text, re.M)
    if written is None:
        raise RuntimeError(f"{c['spec']}.dense has no input line")
    if written.group(1) != wanted:
        text = text[:written.start(1)] + wanted + text[written.end(1):]
        text = re.sub(r"^(\s*)expect ", r"\1# expect ", text, flags=re.M)
    return text


def analysis(case: str) -> densedsl.Analysis:
    return densedsl.analyze(spec_text(case))


def monai_model(case: str) -> nn.Module:
    from monai.networks.nets import DenseNet121
    return DenseNet121(spatial_dims=CASES[case]["rank"], in_channels=1, out_channels=CLASSES)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make(case: str, impl: str, device: str = "cpu") -> nn.Module:
    """impl "monai", or densedsl's "densedsl"/"standard"/"efficient" (memory mode) with MONAI's
    seed-0 weights; train mode, on `device`. The parameter counts must agree."""
    torch.manual_seed(0)
    theirs = monai_model(case)
    if impl == "monai":
        return theirs.to(device)
    ours = densedsl.compile(spec_text(case), memory="efficient" if impl == "efficient" else "standard")
    if count(ours) != count(theirs):
        raise RuntimeError(f"{case}: densedsl has {count(ours):,} parameters, MONAI {count(theirs):,}")
    return densedsl.load_weights(ours, theirs.state_dict()).to(device)


def batch_of(case: str, device: str = "cpu", batch: int | None = None):
    g = torch.Generator().manual_seed(1)
    n = batch or CASES[case]["batch"]
    x = torch.randn(n, *CASES[case]["input"], generator=g)
    return x.to(device), torch.randint(0, CLASSES, (n,), generator=g).to(device)


def grad_mode(impl: str):
    """The grad mode each library's users infer under."""
    return torch.no_grad() if impl == "monai" else torch.inference_mode()


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# --- the conv ceiling ------------------------------------------------------------------------------

def ceiling_op(a) -> Op:
    """The 3x3 conv of block 1's first dense layer (bottleneck → growth, block 1's size)."""
    block = next(s for s in a.lowered if isinstance(s, LoweredBlock))
    return [op for op in block.layers[0] if op.kind == "conv"][-1]


def ceiling_layouts(op: Op, batch: int, device: str) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The ceiling conv and its input, one pair per layout, all computing the same conv on the
    same values: contiguous and channels_last; for a 1-D conv, the same conv as a 2-D one over a
    1xL map in channels_last (what an engine may run instead)."""
    attrs = dict(op.attrs)
    cin, cout, k, pad = attrs["in_channels"], attrs["out_channels"], attrs["kernel"], attrs["padding"]
    size = op.in_shape[1:]
    rank = len(size)
    g = torch.Generator().manual_seed(2)
    conv = getattr(nn, f"Conv{rank}d")(cin, cout, k, padding=pad, bias=False)
    x = torch.randn(batch, cin, *size, generator=g)
    layouts: dict[str, tuple[nn.Module, torch.Tensor]] = {"contiguous": (conv, x)}
    if rank == 1:
        flat = nn.Conv2d(cin, cout, (1, k), padding=(0, pad), bias=False)
        with torch.no_grad():
            flat.weight.copy_(conv.weight[:, :, None, :])
        layouts["as 2-D, channels_last"] = (flat.to(memory_format=torch.channels_last),  # type: ignore[call-overload]
                                            x[:, :, None, :].contiguous(memory_format=torch.channels_last))
    else:
        fmt = torch.channels_last if rank == 2 else torch.channels_last_3d
        copy = getattr(nn, f"Conv{rank}d")(cin, cout, k, padding=pad, bias=False)
        copy.load_state_dict(conv.state_dict())
        layouts["channels_last"] = (copy.to(memory_format=fmt), x.contiguous(memory_format=fmt))
    return {name: (module.to(device).eval(), inp.to(device)) for name, (module, inp) in layouts.items()}


def ceiling_calls(op: Op, batch: int, device: str) -> dict[str, Callable[[], torch.Tensor]]:
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    for name, (module, inp) in ceiling_layouts(op, batch, device).items():
        def call(module=module, inp=inp) -> torch.Tensor:
            with torch.no_grad():
                return module(inp)
        calls[f"ceiling {name}"] = call
    return calls


# --- peak memory in a fresh process --------------------------------------------------------------

def memory_child(case: str, impl: str, phase: str, device: str) -> dict:
    """Peak memory above what model and batch hold: of one SGD step (phase "training"; the
    first, so the gradients are allocated in it, as bench_compiler measures), or of one forward
    after a warm-up forward (phase "inference"; the engine makes its fold cache in the first)."""
    model = make(case, impl, device)
    x, y = batch_of(case, device)
    if phase == "inference":
        model.eval()
        with grad_mode(impl):
            model(x)

        def run() -> None:
            with grad_mode(impl):
                model(x)
    else:
        opt = torch.optim.SGD(model.train().parameters(), lr=0.01)  # stateless: allocates nothing

        def run() -> None:
            bc.train_step(model, x, y, opt)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return {"peak_delta": torch.cuda.max_memory_allocated() - before}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = bc._rss_kib("VmRSS")
    run()
    return {"peak_delta": (bc._rss_kib("VmHWM") - before) * 1024}


def measure_memory(case: str, impl: str, phase: str, device: str) -> int:
    """bench_compiler's fresh-process measure (mmap allocator: RSS follows live tensors), run
    on this script's child; the child's arguments are (case, impl, phase, device)."""
    return bc.measure_memory(case, impl, phase, device, script=__file__)


def predicted(a, case: str, impl: str, phase: str) -> int:
    """The analysis' figure for what memory_child measures: activations, and in training the
    parameter gradients (bench_compiler's prediction)."""
    batch = CASES[case]["batch"]
    if phase == "inference":
        return a.memory(batch, "float32", "inference")
    return a.memory(batch, "float32", "efficient" if impl == "efficient" else "standard") + a.params * 4


# --- the run ----------------------------------------------------------------------------------------

def paired(times: dict[str, list[float]], a: str, b: str) -> list[float]:
    """Per-round ratios a / b, sorted (the rounds ran a and b back to back)."""
    return sorted(x / y for x, y in zip(times[a], times[b]))


def check_parity(case: str, models: dict[str, nn.Module], x: torch.Tensor) -> float:
    with grad_mode("monai"):
        want = models["monai"](x)
    with grad_mode("densedsl"):
        got = models["densedsl"](x)
    error = max_rel(got, want)
    if error > PARITY:
        raise RuntimeError(f"{case}: densedsl's output differs from MONAI's by {error:.2e} (relative)")
    return error


def bench_case(case: str, device: str, rounds: tuple[int, int], log) -> dict:
    a = analysis(case)
    c = CASES[case]
    out: dict = {"batch": c["batch"], "input": "x".join(map(str, c["input"])), "macs": a.macs,
                 "params": a.params, "rounds": rounds}
    models = {impl: make(case, impl, device).eval() for impl in INFERENCE}
    if not count(models["monai"]) == count(models["densedsl"]) == a.params:
        raise RuntimeError(f"{case}: parameter counts differ from the analysis' {a.params:,}")
    x, y = batch_of(case, device)
    out["parity"] = check_parity(case, models, x[:1])
    op = ceiling_op(a)
    out["ceiling_conv"] = {"in": op.in_shape, "out": op.out_shape, "kernel": dict(op.attrs)["kernel"],
                           "macs": op.macs * c["batch"]}
    calls: dict[str, Callable] = {impl: (lambda m=m, impl=impl: _infer(m, impl, x))
                                  for impl, m in models.items()}
    ceiling = ceiling_calls(op, c["batch"], device)
    infer = bc.interleaved({**calls, **ceiling}, device, rounds[0])
    del models
    best = min(ceiling, key=lambda k: bc.median(infer[k]))
    out["ceiling_layout"] = best[len("ceiling "):]
    out["ceiling_macs_per_s"] = op.macs * c["batch"] / bc.median(infer[best])
    out["inference"] = {impl: infer[impl] for impl in INFERENCE}
    for impl in INFERENCE:
        rate = a.macs * c["batch"] / bc.median(infer[impl])
        out[f"{impl}_ceiling_share"] = rate / out["ceiling_macs_per_s"]
        log(f"  {case} inference {impl:<9} median {bc.median(infer[impl]):.3f} s  "
            f"{out[f'{impl}_ceiling_share']:.0%} of the ceiling")
    log(f"  {case} ceiling ({out['ceiling_layout']}): {out['ceiling_macs_per_s'] / 1e9:.1f} GMAC/s")

    steps = {}
    for impl in TRAINING:
        model = make(case, impl, device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps[impl] = lambda model=model, opt=opt: bc.train_step(model, x, y, opt)
    out["training"] = bc.interleaved(steps, device, rounds[1])
    del steps
    for impl in TRAINING:
        log(f"  {case} training  {impl:<9} median {bc.median(out['training'][impl]):.3f} s")

    out["memory"] = {}
    for phase, impls in (("inference", INFERENCE), ("training", TRAINING)):
        for impl in impls:
            peak = measure_memory(case, impl, phase, device)
            out["memory"][f"{phase}/{impl}"] = {"peak": peak, "predicted": predicted(a, case, impl, phase)}
            log(f"  {case} {phase:<9} {impl:<9} peak {peak / 2**20:.0f} MiB, "
                f"predicted {out['memory'][f'{phase}/{impl}']['predicted'] / 2**20:.0f} MiB")
    return out


def _infer(model: nn.Module, impl: str, x: torch.Tensor) -> torch.Tensor:
    with grad_mode(impl):
        return model(x)


# --- the report -------------------------------------------------------------------------------------

def _spread(ratios: list[float]) -> str:
    return f"{bc.median(ratios):.2f}× ({ratios[0]:.2f}–{ratios[-1]:.2f})"


def time_rows(case: str, res: dict) -> list[str]:
    inf, tr = res["inference"], res["training"]
    rows = [("inference: densedsl / MONAI", paired(inf, "densedsl", "monai")),
            ("training step: densedsl standard / MONAI", paired(tr, "standard", "monai")),
            ("training step: densedsl efficient / MONAI", paired(tr, "efficient", "monai")),
            ("training step: densedsl efficient / densedsl standard", paired(tr, "efficient", "standard"))]
    return [f"| {case} | {what} | {_spread(r)} |" for what, r in rows]


def memory_rows(case: str, res: dict) -> list[str]:
    m = res["memory"]
    rows = [("inference: densedsl / MONAI", "inference/densedsl", "inference/monai"),
            ("training step: densedsl standard / MONAI", "training/standard", "training/monai"),
            ("training step: densedsl efficient / MONAI", "training/efficient", "training/monai"),
            ("training step: densedsl efficient / densedsl standard", "training/efficient",
             "training/standard")]
    return [f"| {case} | {what} | {m[a]['peak'] / m[b]['peak']:.2f}× |" for what, a, b in rows]


def prediction_error(row: dict) -> float:
    """(predicted − measured) / measured."""
    return row["predicted"] / row["peak"] - 1


def report(results: dict, meta: dict) -> str:
    lines = [HEADING, "",
             "Written by `bench/bench_monai.py`; numbers from one run, every ratio within that run.", "",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}; {meta['threads']} torch threads; load average before the run "
             f"{meta['load_before']}, after {meta['load_after']} (other jobs share the cores)",
             f"- versions: Python {meta['python']}, torch {meta['torch']}, MONAI {meta['monai']}, "
             f"densedsl {densedsl.__version__}",
             f"- device: {meta['device']}; elapsed {meta['elapsed']:.0f} s", "",
             "densedsl: `densedsl.compile(spec_text).eval()` from specs/densenet121_1d.dense or "
             "specs/densenet121_3d.dense (input line set to the row's input), MONAI's weights loaded; "
             "MONAI: `DenseNet121(spatial_dims=r, in_channels=1, out_channels=2).eval()`. Parameter "
             "counts equal, eval outputs equal to the stated relative error, checked before timing. "
             "Inference: densedsl under `torch.inference_mode` (as `densedsl.predict`), MONAI under "
             "`torch.no_grad` (as `monai.networks.eval_mode`). Training: one SGD step (momentum 0.9), "
             "cross-entropy; MONAI's DenseNet has no memory-efficient option, so densedsl's efficient "
             "mode is compared with MONAI and with densedsl standard. Implementations run in turn, one "
             "call each per round (A B A B), after one warm-up call each; times are medians over "
             "rounds, ratios the median of per-round ratios (lowest–highest in brackets; < 1: densedsl "
             "faster or smaller). Peak memory: peak RSS delta (mmap allocator) in a fresh process, of "
             "one forward after a warm-up forward, and of the first SGD step (gradients included); "
             "prediction: `analyze(spec).memory(batch, 'float32', mode)`, plus the gradients in "
             "training. Ceiling: one 3x3 conv of block 1's first dense layer (128 → 32 channels, "
             "block 1's size, the row's batch), best layout, timed in the inference rounds; the share "
             "is the network's MACs/s (analysis MACs × batch / median time) over the conv's.", "",
             "### Networks", "",
             "| network | batch | parameters | GMACs/item | parity (rel.) | rounds (inference, training) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for case, res in results.items():
        lines.append(f"| {case} | {res['batch']} | {res['params']:,} | {res['macs'] / 1e9:.3f} | "
                     f"{res['parity']:.1e} | {res['rounds'][0]}, {res['rounds'][1]} |")
    lines += ["", "### Time", "",
              "| network | measurement | implementation | median s | best s | items/s (median) |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for case, res in results.items():
        for phase, impls in (("inference", INFERENCE), ("training", TRAINING)):
            for impl in impls:
                t = res[phase][impl]
                lines.append(f"| {case} | {phase} | {impl} | {bc.median(t):.3f} | {min(t):.3f} | "
                             f"{res['batch'] / bc.median(t):.1f} |")
    lines += ["", "### Ratios", "", "| network | time ratio | median (range) |", "| --- | --- | ---: |"]
    for case, res in results.items():
        lines += time_rows(case, res)
    lines += ["", "| network | peak memory ratio | value |", "| --- | --- | ---: |"]
    for case, res in results.items():
        lines += memory_rows(case, res)
    lines += ["", "### Share of a layer-shaped conv ceiling (inference)", "",
              "| network | ceiling conv (input → output, kernel) | best layout | ceiling GMAC/s | "
              "densedsl | MONAI |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for case, res in results.items():
        cc = res["ceiling_conv"]
        shape = (f"{res['batch']}x{'x'.join(map(str, cc['in']))} → {'x'.join(map(str, cc['out']))}, "
                 f"k{cc['kernel']}")
        lines.append(f"| {case} | {shape} | {res['ceiling_layout']} | "
                     f"{res['ceiling_macs_per_s'] / 1e9:.1f} | "
                     f"{res['densedsl_ceiling_share']:.0%} | {res['monai_ceiling_share']:.0%} |")
    lines += ["", "### Peak memory against the analysis' prediction (goal: within 25 %)", "",
              "| network | measurement | implementation | measured MiB | predicted MiB | error | "
              "within 25 % |",
              "| --- | --- | --- | ---: | ---: | ---: | :---: |"]
    for case, res in results.items():
        for key, row in res["memory"].items():
            phase, impl = key.split("/")
            err = prediction_error(row)
            goal = "—" if impl == "monai" else ("yes" if abs(err) <= 0.25 else "**no**")
            lines.append(f"| {case} | {phase} | {impl} | {row['peak'] / 2**20:.0f} | "
                         f"{row['predicted'] / 2**20:.0f} | {err:+.0%} | {goal} |")
    lines += ["", "MONAI's rows use densedsl's prediction for the same mode (standard in training): "
              "shown for comparison, not a goal."]
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write(path: str | Path, text: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (appended when new)."""
    from results import write_section
    write_section(path, SECTION, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one or two rounds; prints only unless --write")
    p.add_argument("--write", action="store_true", help="write the MONAI section of BENCHMARKS.md")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(*json.loads(args.child))))
        return 0
    import monai

    started = time.perf_counter()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    plan = ROUNDS["quick" if args.quick else "full"]
    results = {}
    for case in args.cases:
        t0 = time.perf_counter()
        results[case] = bench_case(case, args.device, plan[case], lambda s: print(s, flush=True))
        print(f"  {case}: {time.perf_counter() - t0:.0f} s", flush=True)
    meta = {"command": "python " + " ".join([str(Path(__file__).relative_to(ROOT))] +
                                             (argv if argv is not None else sys.argv[1:])),
            "machine": machine(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "monai": monai.__version__,
            "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
            "load_before": load_before, "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "elapsed": time.perf_counter() - started}
    text = report(results, meta)
    print(text)
    if args.write:
        write(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
