"""Everything densedsl promises on a GPU, checked in one short run that records a JSON file.

    python bench/gpu_check.py --out gpu_check.json            # on a CUDA machine: < 8 minutes
    python bench/gpu_check.py --dry-run --out /tmp/check.json # CPU only, tiny models: CI runs this

CUDA is rare on the machines densedsl is developed on, so this script must not rot between GPU
sessions: `--dry-run` walks every section on the CPU with a tiny network (fp16 and the NCCL
backend, which need CUDA, are recorded as skipped with the reason) and CI runs it. Sections:

- parity:      the compiled model (inference engine and plain training modules) against the
               straightforward torchvision-layout reference (2-D) or MONAI's DenseNet (3-D volume)
               loaded with the same weights, on the device and against the CPU; one training
               step's gradients, standard and efficient;
- amp:         bf16 and fp16 autocast in channels_last: finite, and how far from fp32;
- memory:      peak allocated memory of one training step, standard against efficient (and
               against torchvision's memory_efficient=True, or MONAI's DenseNet for the volume,
               which has no memory-efficient option), beside the analysis' prediction;
- ddp:         `torchrun --nproc_per_node 1 -m densedsl train …` (NCCL on CUDA, gloo otherwise);
- speed:       inference and training steps per second against the reference, interleaved rounds;
- compile:     torch.compile in training and inference, loss equal to eager, and its speed
               (2-D networks: compiling two 3-D networks would double the run).

The 3-D network is specs/densenet121_3d.dense at MONAI's typical 1x96^3 (batch 4), against
`monai.networks.nets.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)` whose weights
`load_weights` reads; the dry run has a tiny 3-D network and a tiny MONAI DenseNet of the same
layers. Without MONAI installed the 3-D network is left out and the record says why
(`models_left_out`).

Each section is recorded with `status` ok/failed/skipped and its figures; a failing section does
not stop the others, and the file is rewritten after each section so a run cut short keeps what it
measured. The exit code is 1 when any section failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import densedsl  # noqa: E402
from densedsl.analysis.figures import analyze  # noqa: E402
from densedsl.nn.build import build_model  # noqa: E402
from densedsl.nn.weights import load_weights, normalised_weights  # noqa: E402

import bench_compiler as bc  # noqa: E402  (the reference DenseNet and the timing helpers)

TINY = """
network tiny_check {
    input 3x16x16
    defaults growth=4 bottleneck=4 compression=0.5
    stem {
        conv 8
    }
    dense layers=2
    transition
    dense layers=2
    head classes=10
}
"""


# MONAI's DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
# block_config=(2, 2)): the same layers, so MONAI's weights load into it
TINY_3D = """
network tiny_check_3d {
    input 1x16x16x16
    defaults growth=4 bottleneck=4 compression=0.5 bias=false
    stem {
        conv 8 kernel=7 stride=2 padding=3
        norm
        relu
        maxpool kernel=3 stride=2 padding=1
    }
    dense layers=2
    transition
    dense layers=2
    head classes=2
}
"""


def _tiny_reference(memory_efficient: bool = False) -> torch.nn.Module:
    return bc.RefDenseNet([("conv0", torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False))], 8, (2, 2), 4, classes=10,
                          memory_efficient=memory_efficient)


def _monai_reference(tiny: bool) -> torch.nn.Module:
    from monai.networks.nets import DenseNet, DenseNet121
    if tiny:
        return DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4,
                        block_config=(2, 2))
    return DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)


def _volume_models(dry_run: bool) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The 3-D network against MONAI's, or why it is left out."""
    try:
        import monai.networks.nets  # noqa: F401
    except ImportError as e:
        return {}, {"volume": f"MONAI is not installed ({e}): pip install monai"}
    name = "tiny_3d" if dry_run else "densenet121_3d"
    spec = ROOT / "specs" / "densenet121_3d.dense"
    net = densedsl.parse(TINY_3D).network if dry_run else densedsl.load(spec).network
    return {name: dict(net=net, batch=2 if dry_run else 4, reference=lambda: _monai_reference(dry_run),
                       convention="monai")}, {}


class Plan:
    """What to run: the full models on a GPU, a tiny one on the CPU for --dry-run."""

    def __init__(self, dry_run: bool, device: str):
        self.dry_run, self.device = dry_run, device
        self.iters = 1 if dry_run else 5
        self.models: dict[str, dict[str, Any]]
        if dry_run:
            self.models = {"tiny": dict(net=densedsl.parse(TINY).network, batch=4, reference=_tiny_reference,
                                        convention="torchvision")}
        else:
            self.models = {name: dict(net=bc.network(name), batch=64 if name == "densenet121" else 128,
                                      reference=lambda name=name, **kw: bc.reference(name, **kw),
                                      convention="torchvision")
                           for name in bc.MODELS}
        volumes, self.left_out = _volume_models(dry_run)
        self.models.update(volumes)

    def rank(self, name: str) -> int:
        return len(self.models[name]["net"].input) - 1

    def formats(self, name: str) -> dict[str, torch.memory_format]:
        """The contiguous and the channels-last layout of the network's rank, by name."""
        if self.rank(name) == 3:
            return {"NCDHW": torch.contiguous_format, "channels_last_3d": torch.channels_last_3d}
        return dict(bc.FORMATS)

    def channels_last(self, name: str) -> torch.memory_format:
        return list(self.formats(name).values())[1]

    def is_monai(self, name: str) -> bool:
        return self.models[name]["convention"] == "monai"

    def pair(self, name: str, memory: str = "standard"):
        """The compiled model and the reference, same seed-0 weights, on the device, train mode:
        torchvision's reference takes the compiled model's weights, the compiled model MONAI's."""
        torch.manual_seed(0)
        model = build_model(self.models[name]["net"], memory=memory)
        ref = self.models[name]["reference"]()
        if self.is_monai(name):
            load_weights(model, ref.state_dict())
        else:
            ref.load_state_dict(model.state_dict())
        return model.to(self.device), ref.to(self.device)

    def reference_grads(self, name: str, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference's gradients under the compiled model's parameter names."""
        return normalised_weights(grads, {})[0] if self.is_monai(name) else grads

    def batch(self, name: str, *, fmt=torch.contiguous_format):
        g = torch.Generator().manual_seed(1)
        net, n = self.models[name]["net"], self.models[name]["batch"]
        x = torch.randn(n, *net.input, generator=g)
        y = torch.randint(0, net.head.classes, (n,), generator=g)
        return x.to(self.device).contiguous(memory_format=fmt), y.to(self.device)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _grads(model: torch.nn.Module, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _worst(a: dict, b: dict) -> float:
    return max(_max_rel(a[k], b[k]) for k in a)


# --- sections -------------------------------------------------------------------------------------

def check_parity(plan: Plan) -> dict:
    out = {}
    for name in plan.models:
        model, ref = plan.pair(name)
        x, y = plan.batch(name)
        model.eval(), ref.eval()
        with torch.no_grad():
            got, want = model(x), ref(x)
            want_cpu = ref.cpu()(x.cpu())
        ref.to(plan.device).train()
        model.train()
        g_model, g_ref = _grads(model, x, y), plan.reference_grads(name, _grads(ref, x, y))
        eff, _ = plan.pair(name, memory="efficient")
        g_eff = _grads(eff.train(), x, y)
        row: dict = {"reference": "MONAI" if plan.is_monai(name) else "torchvision layout"}
        row |= {"inference_vs_reference": _max_rel(got, want),
                "reference_device_vs_cpu": _max_rel(want, want_cpu),
               "grads_vs_reference": _worst(g_model, g_ref), "grads_efficient_vs_standard": _worst(g_eff, g_model)}
        row["ok"] = all(v < 1e-3 for k, v in row.items() if k != "reference")
        out[name] = row
    out["status"] = "ok" if all(r["ok"] for r in out.values()) else "failed"
    out["tolerance"] = "max |a-b| / max |b| < 1e-3, fp32 with TF32 off"
    return out


def check_amp(plan: Plan) -> dict:
    out = {}
    for name in plan.models:
        for dtype in ("bf16", "fp16"):
            key = f"{name}/{dtype}"
            if dtype == "fp16" and plan.device != "cuda":
                out[key] = {"status": "skipped", "why": "fp16 autocast is checked on CUDA only"}
                continue
            model, _ = plan.pair(name)
            model = model.to(memory_format=plan.channels_last(name))
            x, y = plan.batch(name, fmt=plan.channels_last(name))
            with torch.no_grad():
                model.eval()
                fp32 = model(x)
            model.train()
            scaler = torch.amp.GradScaler(plan.device, enabled=dtype == "fp16")
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            with torch.autocast(plan.device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            finite = bool(torch.isfinite(loss)) and all(torch.isfinite(p).all() for p in model.parameters())
            model.eval()
            with torch.no_grad(), torch.autocast(plan.device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16):
                model.load_state_dict(plan.pair(name)[0].state_dict())
                low = model(x)
            rel = _max_rel(low, fp32)
            out[key] = {"status": "ok" if finite and rel < 0.1 else "failed", "finite": finite,
                        "logits_vs_fp32": rel, "channels_last": True}
    out["status"] = "failed" if any(v["status"] == "failed" for v in out.values()) else "ok"
    return out


def _cuda_step_peak(plan: Plan, name: str, model: torch.nn.Module) -> int:
    """Peak allocated bytes of one SGD step above what model and batch hold (CUDA)."""
    x, y = plan.batch(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    bc.train_step(model, x, y, opt)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del opt, x, y
    torch.cuda.empty_cache()
    return peak


def check_memory(plan: Plan) -> dict:
    out = {}
    for name in plan.models:
        net, batch = plan.models[name]["net"], plan.models[name]["batch"]
        a = analyze(net)
        row = {"batch": batch}
        for mode in ("standard", "efficient"):
            row[f"{mode}_predicted"] = a.memory(batch=batch, mode=mode)
            if plan.device != "cuda":
                continue
            model, _ = plan.pair(name, memory=mode)
            row[f"{mode}_measured"] = _cuda_step_peak(plan, name, model)
            del model
        if plan.device == "cuda" and plan.is_monai(name):
            # MONAI's DenseNet has no memory-efficient option: both modes against its one
            monai = plan.pair(name)[1]
            row["monai_measured"] = _cuda_step_peak(plan, name, monai)
            del monai
            row["efficient_over_monai"] = row["efficient_measured"] / row["monai_measured"]
            row["standard_over_monai"] = row["standard_measured"] / row["monai_measured"]
        elif plan.device == "cuda":
            # torchvision's memory_efficient=True (checkpointed concat-BN-ReLU-Conv1x1), the
            # comparison for densedsl's efficient mode
            ref = plan.pair(name)[1]
            torchvision_efficient = plan.models[name]["reference"](memory_efficient=True)
            torchvision_efficient.load_state_dict(ref.state_dict())
            del ref
            row["torchvision_memory_efficient_measured"] = _cuda_step_peak(
                plan, name, torchvision_efficient.to(plan.device))
            row["efficient_over_torchvision_memory_efficient"] = (
                row["efficient_measured"] / row["torchvision_memory_efficient_measured"])
        if plan.device == "cuda":
            row["efficient_over_standard"] = row["efficient_measured"] / row["standard_measured"]
            row["prediction_over_measured"] = {m: row[f"{m}_predicted"] / row[f"{m}_measured"]
                                               for m in ("standard", "efficient")}
        out[name] = row
    out["status"] = "ok" if plan.device == "cuda" else "skipped"
    if plan.device != "cuda":
        out["why"] = "max_memory_allocated needs CUDA; predictions recorded (CPU memory: bench_compiler.py)"
    return out


def check_ddp(plan: Plan) -> dict:
    spec = ROOT / "specs" / "tiny_digits.dense"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "densedsl", "train", str(spec), "--data", "synthetic:64", "--epochs", "1",
               "--device", plan.device, "--out", str(Path(tmp) / "run"), "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
        checkpoints = sorted(p.name for p in (Path(tmp) / "run").glob("*.pt"))
    ok = done.returncode == 0 and bool(checkpoints)
    return {"status": "ok" if ok else "failed", "backend": "nccl" if plan.device == "cuda" else "gloo",
            "command": " ".join(cmd[1:]), "returncode": done.returncode, "checkpoints": checkpoints,
            "output_tail": (done.stdout + done.stderr)[-2000:]}


def check_speed(plan: Plan) -> dict:
    out = {}
    rounds = bc.rounds(plan.iters)
    for name in plan.models:
        for fmt_name, fmt in plan.formats(name).items():
            model, ref = plan.pair(name)
            model, ref = model.to(memory_format=fmt), ref.to(memory_format=fmt)
            x, y = plan.batch(name, fmt=fmt)
            opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in (("densedsl", model), ("reference", ref))}
            train = bc.interleaved({k: (lambda m=m, k=k: bc.train_step(m, x, y, opts[k]))
                                    for k, m in (("densedsl", model), ("reference", ref))}, plan.device, rounds)
            model.eval(), ref.eval()
            with torch.no_grad():
                infer = bc.interleaved({"densedsl": lambda: model(x), "reference": lambda: ref(x)}, plan.device, rounds)
            n = plan.models[name]["batch"]
            out[f"{name}/{fmt_name}"] = {
                "train_images_per_s": {k: n / min(v) for k, v in train.items()},
                "infer_images_per_s": {k: n / min(v) for k, v in infer.items()},
                "train_ratio": min(train["reference"]) / min(train["densedsl"]),
                "infer_ratio": min(infer["reference"]) / min(infer["densedsl"]),
                "rounds": rounds, "batch": n}
    out["status"] = "ok"
    return out


def check_compile(plan: Plan) -> dict:
    # inductor on a GPU; aot_eager in the dry run (still dynamo's tracing, without a C++ toolchain)
    backend = "aot_eager" if plan.dry_run else "inductor"
    out: dict = {"backend": backend}
    names = [n for n in plan.models if plan.rank(n) == 2]
    out["not_compiled"] = {n: "3-D: left out to keep the run short" for n in plan.models if n not in names}
    for name in names:
        row = {}
        for impl in ("densedsl", "reference"):
            model, ref = plan.pair(name)
            eager = model if impl == "densedsl" else ref
            x, y = plan.batch(name)
            torch._dynamo.reset()
            compiled = torch.compile(eager, backend=backend)
            started = time.perf_counter()
            loss = F.cross_entropy(compiled(x), y)
            loss.backward()
            bc._sync(plan.device)
            first = time.perf_counter() - started
            eager_loss = F.cross_entropy(eager(x), y)
            opt = torch.optim.SGD(compiled.parameters(), lr=0.01)
            times = bc.interleaved({"step": lambda: bc.train_step(compiled, x, y, opt)}, plan.device,
                                   bc.rounds(plan.iters))["step"]
            compiled.eval()
            with torch.no_grad():
                infer = bc.interleaved({"infer": lambda: compiled(x)}, plan.device, bc.rounds(plan.iters))["infer"]
            row[impl] = {"first_step_s": first, "loss_vs_eager": abs(loss.item() - eager_loss.item()),
                         "train_step_s": min(times), "infer_s": min(infer)}
        row["train_ratio"] = row["reference"]["train_step_s"] / row["densedsl"]["train_step_s"]
        row["infer_ratio"] = row["reference"]["infer_s"] / row["densedsl"]["infer_s"]
        row["ok"] = all(row[i]["loss_vs_eager"] < 1e-3 for i in ("densedsl", "reference"))
        out[name] = row
    out["status"] = "ok" if all(out[n]["ok"] for n in names) else "failed"
    return out


SECTIONS = {"parity": check_parity, "amp": check_amp, "memory": check_memory, "ddp": check_ddp,
            "speed": check_speed, "compile": check_compile}


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "densedsl": densedsl.__version__,
           "device": device, "cuda": torch.version.cuda, "machine": platform.machine(),
           "cpu_count": os.cpu_count()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory"] = torch.cuda.get_device_properties(0).total_memory
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny network: checks that the script itself works")
    p.add_argument("--out", default="gpu_check.json", help="the JSON file to write (default gpu_check.json)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run on a CPU-only machine", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    # Parity is checked in true fp32: TF32 would make every comparison a tolerance guess.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    plan = Plan(args.dry_run, device)
    record = {"environment": environment(device), "dry_run": args.dry_run,
              "models": {n: "x".join(map(str, m["net"].input)) + f", batch {m['batch']}"
                         for n, m in plan.models.items()},
              "models_left_out": plan.left_out,
              "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    started = time.perf_counter()
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            result = SECTIONS[name](plan)
        except Exception as e:  # a failing section must not hide the others' results
            result = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        record[name] = result
        record["seconds"] = round(time.perf_counter() - started, 2)
        Path(args.out).write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"{name:8} {result['status']:8} {result['seconds']:7.1f} s", flush=True)
    failed = [n for n in args.sections if record[n]["status"] == "failed"]
    print(f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
