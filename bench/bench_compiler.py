"""Benchmark: densedsl-compiled DenseNets against a straightforward reference implementation.

    python bench/bench_compiler.py            # full run (≤ ~10 minutes on 2 CPU cores), writes BENCHMARKS.md
    python bench/bench_compiler.py --quick    # fewer iterations, prints only (unless --write)

The reference is torchvision's DenseNet written out here (torch.cat in every layer, BN-ReLU-Conv
modules, F.relu + adaptive_avg_pool2d in the head), loaded with the compiled model's weights (the
state_dict keys are the same) and run in the same memory format as the model it is compared with.
Measured per model: inference and training-step images/s, peak memory of one training step (on
CPU the peak RSS delta of a fresh subprocess per configuration; on CUDA max_memory_allocated), the
analysis' static prediction, and achieved GFLOP/s against a large-3x3-conv ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import densedsl  # noqa: E402
from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402

MODELS = {
    "densenet121": dict(spec=ROOT / "specs" / "densenet121.dense", batch=8),
    "densenet_bc_100_12": dict(spec="""
network densenet_bc_100_12 {
    input 3x32x32
    defaults growth=12 bottleneck=4 compression=0.5
    stem {
        conv 24
    }
    dense layers=16
    transition
    dense layers=16
    transition
    dense layers=16
    head classes=10
}
""", batch=64),
}
FORMATS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


# --- the reference: torchvision's DenseNet, straightforward ---------------------------------------

class RefLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int, memory_efficient: bool = False):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.memory_efficient = memory_efficient

    def bn_function(self, features) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # torchvision's memory_efficient=True, as it is written there (`call_checkpoint_bottleneck`):
        # the concat-BN-ReLU-Conv1x1 is one non-reentrant checkpoint that keeps only the inputs and
        # recomputes all four in backward (BN's running statistics move again when it recomputes,
        # as they do in torchvision).
        if self.memory_efficient and any(t.requires_grad for t in features):
            x = checkpoint(lambda *inputs: self.bn_function(inputs), *features, use_reentrant=False)
        else:
            x = self.bn_function(features)
        return self.conv2(self.relu2(self.norm2(x)))


class RefBlock(nn.ModuleDict):
    def __init__(self, layers: int, cin: int, growth: int, bn_size: int, memory_efficient: bool = False):
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", RefLayer(cin + i * growth, growth, bn_size, memory_efficient))

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class RefTransition(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(cin))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(2, 2))


class RefDenseNet(nn.Module):
    def __init__(self, stem: list[tuple[str, nn.Module]], stem_channels: int, blocks: tuple[int, ...],
                 growth: int, bn_size: int = 4, classes: int = 1000, memory_efficient: bool = False):
        super().__init__()
        self.features = nn.Sequential()
        for name, module in stem:
            self.features.add_module(name, module)
        c = stem_channels
        for i, layers in enumerate(blocks, start=1):
            self.features.add_module(f"denseblock{i}", RefBlock(layers, c, growth, bn_size, memory_efficient))
            c += layers * growth
            if i < len(blocks):
                self.features.add_module(f"transition{i}", RefTransition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))  # torchvision: norm5 for any block count
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def reference(name: str, memory_efficient: bool = False) -> RefDenseNet:
    """torchvision's model for `name`; memory_efficient as torchvision's option of that name."""
    if name == "densenet121":
        stem = [("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(64)),
                ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]
        return RefDenseNet(stem, 64, (6, 12, 24, 16), 32, memory_efficient=memory_efficient)
    return RefDenseNet([("conv0", nn.Conv2d(3, 24, 3, 1, 1, bias=False))], 24, (16, 16, 16), 12, classes=10,
                       memory_efficient=memory_efficient)


def network(name: str):
    spec = MODELS[name]["spec"]
    return (densedsl.load(spec) if isinstance(spec, Path) else densedsl.parse(spec)).network


REFERENCES = {"reference": False, "reference_efficient": True}  # impl: torchvision's memory_efficient


def make(name: str, impl: str, fmt: str, device: str) -> nn.Module:
    """impl: 'reference', 'reference_efficient' (torchvision's memory_efficient=True), 'standard' or
    'efficient'; all share the seed-0 weights."""
    torch.manual_seed(0)
    compiled = build_model(network(name), memory="efficient" if impl == "efficient" else "standard")
    model = compiled
    if impl in REFERENCES:
        model = reference(name, memory_efficient=REFERENCES[impl])
        model.load_state_dict(compiled.state_dict())
    return model.to(device=device, memory_format=FORMATS[fmt])


def batch_of(name: str, device: str, fmt: str, batch: int | None = None):
    g = torch.Generator().manual_seed(1)
    n = batch or MODELS[name]["batch"]
    x = torch.randn(n, *network(name).input, generator=g).to(device).contiguous(memory_format=FORMATS[fmt])
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return x, y


# --- timing -----------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, iters: int, warmup: int = 1) -> float:
    """Median seconds of `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def interleaved(fns: dict, device: str, iters: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every call of each function, calling them in turn `iters` times."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def rounds(iters: int) -> int:
    return 2 if iters <= 2 else iters + 3


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def train_step(model: nn.Module, x, y, opt) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def conv_ceiling(device: str, iters: int) -> float:
    """GFLOP/s of a large 3x3 conv (256→256 channels, 8x56x56), best of the two formats."""
    best = 0.0
    for fmt in FORMATS.values():
        conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device=device, memory_format=fmt)
        x = torch.randn(8, 256, 56, 56, device=device).contiguous(memory_format=fmt)
        with torch.no_grad():
            t = timed(lambda: conv(x), device, iters)
        best = max(best, 2 * 8 * 256 * 256 * 9 * 56 * 56 / t / 1e9)
    return best


# --- peak memory in a fresh process ------------------------------------------------------------

def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, impl: str, fmt: str, device: str) -> dict:
    model = make(name, impl, fmt, device).train()
    x, y = batch_of(name, device, fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)  # stateless: the step allocates no buffers
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(model, x, y, opt)
        torch.cuda.synchronize()
        return {"peak_delta": torch.cuda.max_memory_allocated() - before}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    train_step(model, x, y, opt)
    return {"peak_delta": (_rss_kib("VmHWM") - before) * 1024}


ALLOCATORS = {
    # Large blocks straight from mmap, returned on free: RSS then follows live tensors.
    "mmap": {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"},
    # What users have: glibc's defaults (its mmap threshold adapts upwards as blocks are freed,
    # so freed activations can stay in the heap and count in RSS).
    "default": {},
}


def child_env(allocator: str) -> dict[str, str]:
    """The environment of a memory child under `allocator` (a key of ALLOCATORS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    return env


def measure_memory(name: str, impl: str, fmt: str, device: str, allocator: str = "mmap",
                   script: str = __file__) -> int:
    """Peak delta of one training step in a fresh process (`script --child`) under `allocator`."""
    done = subprocess.run([sys.executable, script, "--child", json.dumps([name, impl, fmt, device])],
                          capture_output=True, text=True, env=child_env(allocator), timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_delta"]


# --- the run ------------------------------------------------------------------------------------

def bench_model(name: str, device: str, iters: int, ceiling: float, log) -> dict:
    net = network(name)
    a = analyze(net)
    batch = MODELS[name]["batch"]
    flops = a.flops
    out = {"batch": batch, "input": "x".join(map(str, net.input)), "flops": flops, "rows": []}

    def row(kind, impl, fmt, rounds, extra=None):
        # The fastest round is the estimate: on a shared machine interference only ever adds
        # time (timeit's advice); the median is kept beside it to show the noise.
        seconds = min(rounds)
        ips = batch / seconds
        factor = 1 if kind.startswith("inference") else 3  # backward ≈ 2 forwards
        r = {"kind": kind, "impl": impl, "format": fmt, "images_per_s": ips,
             "median": batch / median(rounds),
             "gflops": ips * flops * factor / 1e9, "ceiling_fraction": ips * flops * factor / 1e9 / ceiling}
        r.update(extra or {})
        out["rows"].append(r)
        log(f"  {name} {kind:<22} {impl:<10} {fmt:<13} {ips:8.1f} img/s" +
            (f"  peak {r['peak_mib']:.0f} MiB" if "peak_mib" in r else ""))

    # Candidates and their reference are timed in alternation, one call each per round, so a
    # load change on the shared machine hits them alike.
    for fmt in FORMATS:
        x, _ = batch_of(name, device, fmt)
        models = {impl: make(name, impl, fmt, device).eval() for impl in ("reference", "standard")}
        if fmt == "NCHW":  # "as users run it": the model exactly as compile returns it, fed NCHW
            models["as compiled"] = build_model(net).to(device).eval()
            models["as compiled"].load_state_dict(models["standard"].state_dict())
        with torch.no_grad():
            expected = models["reference"](x[:2])
            for impl, model in models.items():
                torch.testing.assert_close(model(x[:2]), expected, rtol=1e-3, atol=1e-3)
            times = interleaved({impl: (lambda m=model: m(x)) for impl, model in models.items()}, device,
                                rounds(iters))
        for impl, t in times.items():
            if impl == "as compiled":
                row("inference (as compiled)", "standard", "NCHW input", t)
            else:
                row("inference", impl, fmt, t)

    for fmt in FORMATS:
        x, y = batch_of(name, device, fmt)
        steps = {}
        for impl in ("reference", "standard", "efficient"):
            model = make(name, impl, fmt, device).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            steps[impl] = lambda model=model, opt=opt: train_step(model, x, y, opt)
        times = interleaved(steps, device, rounds(iters))
        for impl, t in times.items():
            peak = measure_memory(name, impl, fmt, device)
            mode = "efficient" if impl == "efficient" else "standard"
            predicted = a.memory(batch, "float32", mode) + a.params * 4  # activations + gradients
            row("training step", impl, fmt, t, {"peak_mib": peak / 2**20, "predicted_mib": predicted / 2**20})
    return out


def _getter(rows: list[dict]):
    def get(kind, impl, fmt, key="images_per_s"):
        for r in rows:
            if r["kind"] == kind and r["impl"] == impl and r["format"] == fmt:
                return r[key]
        raise KeyError((kind, impl, fmt))
    return get


def targets(results: dict) -> list[str]:
    """The CPU targets of the compiler issue, each beside what this run measured."""
    lines = ["### Targets", "", "| model | target | measured | met |", "| --- | --- | ---: | :---: |"]
    for name, res in results.items():
        get = _getter(res["rows"])
        cl = "channels_last"
        checks = [
            ("inference channels_last ≥ 1.1× the channels_last reference",
             get("inference", "standard", cl) / get("inference", "reference", cl), 1.1, "x", True),
            ("inference as compiled, fed NCHW, ≥ 1.5× the NCHW reference",
             get("inference (as compiled)", "standard", "NCHW input") / get("inference", "reference", "NCHW"),
             1.5, "x", True),
        ]
        for fmt in FORMATS:
            ref_t = get("training step", "reference", fmt)
            checks += [
                (f"efficient training peak memory ≤ 0.5× the reference ({fmt})",
                 get("training step", "efficient", fmt, "peak_mib") / get("training step", "reference", fmt, "peak_mib"),
                 0.5, "x", False),
                (f"efficient training step time ≤ 1.3× the reference ({fmt})",
                 ref_t / get("training step", "efficient", fmt), 1.3, "x", False),
                (f"standard training ≥ 1.0× the reference's images/s ({fmt})",
                 get("training step", "standard", fmt) / ref_t, 1.0, "x", True),
            ]
            for impl in ("standard", "efficient"):
                ratio = get("training step", impl, fmt, "peak_mib") / get("training step", impl, fmt, "predicted_mib")
                checks.append((f"{impl} training: analysis memory prediction within 25% of the measured "
                               f"peak ({fmt})", ratio, None, "", None))
        for text, value, bound, unit, at_least in checks:
            if bound is None:
                met = abs(value - 1) <= 0.25
            else:
                met = value >= bound if at_least else value <= bound
            lines.append(f"| {name} | {text} | {value:.2f}{unit} | {'yes' if met else '**no**'} |")
    return lines + [""]


def ratio_lines(name: str, rows: list[dict]) -> list[str]:
    get = _getter(rows)

    lines = []
    for fmt in FORMATS:
        lines.append(f"| {name} | inference {fmt}: compiled / reference | "
                     f"{get('inference', 'standard', fmt) / get('inference', 'reference', fmt):.2f}x |")
    lines.append(f"| {name} | inference as compiled (NCHW input) / reference NCHW | "
                 f"{get('inference (as compiled)', 'standard', 'NCHW input') / get('inference', 'reference', 'NCHW'):.2f}x |")
    for fmt in FORMATS:
        ref_t, ref_m = get("training step", "reference", fmt), get("training step", "reference", fmt, "peak_mib")
        for impl in ("standard", "efficient"):
            lines.append(f"| {name} | training {impl} {fmt}: speed / reference | "
                         f"{get('training step', impl, fmt) / ref_t:.2f}x |")
        lines.append(f"| {name} | training efficient {fmt}: step time / reference | "
                     f"{ref_t / get('training step', 'efficient', fmt):.2f}x |")
        lines.append(f"| {name} | training efficient {fmt}: peak memory / reference | "
                     f"{get('training step', 'efficient', fmt, 'peak_mib') / ref_m:.2f}x |")
        for impl in ("standard", "efficient"):
            lines.append(f"| {name} | training {impl} {fmt}: measured peak / analysis prediction | "
                         f"{get('training step', impl, fmt, 'peak_mib') / get('training step', impl, fmt, 'predicted_mib'):.2f} |")
    return lines


def report(results: dict, meta: dict) -> str:
    lines = ["## Compiled models vs a straightforward implementation", "",
             "Written by `bench/bench_compiler.py`; numbers from one run, all ratios within that run.", "",
             f"- command: `{meta['command']}`",
             f"- machine: {meta['machine']}; {meta['threads']} torch threads; load average before the run "
             f"{meta['load_before']}, after {meta['load_after']} (other jobs share the cores)",
             f"- versions: Python {meta['python']}, torch {meta['torch']}, densedsl {densedsl.__version__}",
             f"- device: {meta['device']}; conv ceiling (3x3 conv 256→256, 8x56x56, best format): "
             f"{meta['ceiling']:.1f} GFLOP/s",
             f"- elapsed: {meta['elapsed']:.0f} s", "",
             "Reference: torchvision's DenseNet code (torch.cat in every layer), same weights, same memory "
             "format as the row. Training GFLOP/s assume backward = 2 forwards. Peak memory: peak RSS "
             "delta of one SGD step (model, batch and optimizer allocated before) in a fresh process; it "
             "includes the parameter gradients. Prediction: `analyze(net).memory(batch, 'float32', mode)` "
             "plus the gradients' bytes. Every implementation runs once per round, in turn, for "
             f"{meta['rounds']} rounds; images/s and every ratio use each one's fastest round "
             "(interference on a shared machine only ever adds time), and the median round is shown "
             "beside it as a measure of the noise.", "",
             "Standard training runs the reference's computation op for op, on purpose: it is what "
             "keeps the compiled model's FLOPs equal to the analysis (and to torchvision's figure). "
             "Its ratio to the reference is therefore 1.0 up to noise, and the target row can fall "
             "either side of 1.0 from one run to the next; compare the medians.", ""]
    lines += targets(results)
    for name, res in results.items():
        lines += [f"### {name} (batch {res['batch']}, input {res['input']}, {res['flops'] / 1e9:.3f} GFLOPs/image)", "",
                  "| measurement | implementation | format | images/s (best round) | images/s (median round) | GFLOP/s | of ceiling | peak MiB | predicted MiB |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in res["rows"]:
            peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else ""
            pred = f"{r['predicted_mib']:.0f}" if "predicted_mib" in r else ""
            lines.append(f"| {r['kind']} | {r['impl']} | {r['format']} | {r['images_per_s']:.1f} | "
                         f"{r['median']:.1f} | "
                         f"{r['gflops']:.1f} | {r['ceiling_fraction']:.0%} | {peak} | {pred} |")
        lines.append("")
    lines += ["### All ratios", "", "| model | ratio | value |", "| --- | --- | ---: |"]
    for name, res in results.items():
        lines += ratio_lines(name, res["rows"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations; print, do not write unless --write")
    p.add_argument("--write", action="store_true", help="write BENCHMARKS.md (default unless --quick)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(memory_child(*json.loads(args.child))))
        return 0
    iters = 2 if args.quick else 5
    started = time.perf_counter()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    ceiling = conv_ceiling(args.device, iters)
    print(f"conv ceiling: {ceiling:.1f} GFLOP/s", flush=True)
    results = {name: bench_model(name, args.device, iters, ceiling, lambda s: print(s, flush=True))
               for name in args.models}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {"command": "python " + " ".join([str(Path(__file__).relative_to(ROOT))] + (argv or sys.argv[1:])),
            "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
            "ceiling": ceiling, "load_before": load_before,
            "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "elapsed": time.perf_counter() - started, "rounds": rounds(iters)}
    text = report(results, meta)
    print(text)
    if args.write or not args.quick:
        from results import write_section
        write_section(args.output, "compiler", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
