"""The memory guard: refuse (E307), before anything is allocated, to build, export, train or
evaluate a model whose predicted memory exceeds what this process can use.

The figures are the analysis' own (`Analysis.params`, `.buffers` and `.memory(batch, dtype,
mode)`, docs/analysis.md); this module only adds them up per command:

    building a model (library `compile`)   weights: (params + buffers) · 4 bytes
    compile OUT.pt, render --heatmap       weights twice (the model and its state_dict copy)
    compile OUT.onnx                       weights twice (model, ONNX graph) + inference at batch 2
    train                                  weights, gradients, the optimizer's state and the
                                           step's temporary (SGD: 3 copies of the parameters
                                           beside the weights, AdamW: 4; STEP_COPIES) + training
                                           activations at the batch size, in the memory mode
    eval                                   weights + inference activations at the batch size

All in float32, an upper bound under autocast. The limit, first that applies:
1. `memory_limit=` of `densedsl.compile` / `compiler.build_model` (bytes; math.inf: no check);
2. the CLI's `--memory-limit SIZE` (held in a context variable for the command's duration);
3. the environment variable DENSEDSL_MEMORY_LIMIT=SIZE (`none` turns the check off);
4. what the machine has free: the smallest of /proc/meminfo's MemAvailable and, under a cgroup
   (a container, a batch job), its limit minus its working set (usage less inactive page cache);
   under an address-space limit (`ulimit -v`, RLIMIT_AS), that limit less the process's size;
   elsewhere (macOS, BSD) the physical memory from sysconf. Where nothing can be measured the
   check is skipped. On a CUDA device the whole figure is checked against the GPU's free memory
   (torch.cuda.mem_get_info) and the weights against the host's, since the model is built there.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, cast

from ..core import diagnostics as d
from ..core.units import binary, parse_quantity

if TYPE_CHECKING:
    from ..language.network import Network
    from .figures import Analysis, MemoryMode

ENV = "DENSEDSL_MEMORY_LIMIT"
FLOAT32 = 4
NO_LIMIT_WORDS = ("none", "off", "unlimited", "inf")
# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_CGROUP_UNLIMITED = 2**60


@dataclass(frozen=True, slots=True)
class Limit:
    """How many bytes may be used (math.inf: no check) and where that figure comes from."""

    bytes: float
    source: str


@dataclass(frozen=True, slots=True)
class Need:
    """What a command would allocate: `what` reads "training tiny at batch 64 (standard memory)"."""

    what: str
    parts: tuple[tuple[str, int], ...]    # ("weights, gradients and momentum", bytes), ...
    advice: str = "use a smaller network or input"

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self.parts)


# --- the limit ---------------------------------------------------------------------------------

_override: contextvars.ContextVar[Limit | None] = contextvars.ContextVar("densedsl_memory_limit", default=None)


def parse_limit(text: str) -> float:
    """`16GiB` → 17179869184; `none` (or off, unlimited, inf) → math.inf; ValueError otherwise."""
    if text.strip().lower() in NO_LIMIT_WORDS:
        return math.inf
    try:
        value = parse_quantity(text)
    except (ValueError, OverflowError):
        raise ValueError(f"not a size: {text!r:.60} (write e.g. 16GiB, 500M, or none)") from None
    if value < 1:
        raise ValueError(f"a memory limit must be at least 1 byte, not {text!r}")
    return value


@contextlib.contextmanager
def overridden(limit_bytes: float | None, source: str = "--memory-limit") -> Iterator[None]:
    """Within the block, every guard uses `limit_bytes` (None: no override). The CLI wraps each
    command in it, so `--memory-limit` reaches the guards inside `train` and `evaluate` too."""
    token = _override.set(Limit(limit_bytes, source) if limit_bytes is not None else None)
    try:
        yield
    finally:
        _override.reset(token)


def _explicit_bytes(value: Any) -> float:
    """`memory_limit=`: bytes as a number (math.inf: no check) or a size text like "16GiB"."""
    if isinstance(value, str):
        return parse_limit(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"memory_limit must be a number of bytes or a size such as '16GiB', "
                        f"not {type(value).__name__}")
    if math.isnan(value) or value < 1:
        raise ValueError(f"memory_limit must be at least 1 byte (math.inf: no check), not {value!r}")
    return value


def limit(explicit: float | str | None = None, *, device: Any = None) -> Limit:
    """The limit that applies now, in the order of the module docstring; `device` "cuda" (or a
    torch.device of that type) measures the GPU's free memory instead of the host's."""
    if explicit is not None:
        return Limit(_explicit_bytes(explicit), "memory_limit=")
    override = _override.get()
    if override is not None:
        return override
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        try:
            return Limit(parse_limit(env), ENV)
        except ValueError as e:
            raise d.SpecError([d.Diagnostic(d.OUT_OF_MEMORY, f"the environment variable {ENV} holds {e}",
                                            None, "write a size such as 16GiB or 500M, or none to turn "
                                            "the check off", file=ENV)]) from None
    if _is_cuda(device):
        return _cuda_free(device)
    return available()


def available() -> Limit:
    """The memory this process can still use, with the source of the figure."""
    found = [f for f in (_meminfo_available(), *_cgroup_available(), _address_space_available())
             if f is not None]
    if found:
        return min(found, key=lambda f: f.bytes)
    total = _physical_memory()
    if total is not None:
        return total
    return Limit(math.inf, "unknown (no /proc/meminfo, cgroup or sysconf figure)")


def _meminfo_available(path: str = "/proc/meminfo") -> Limit | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return Limit(int(fields[1]) * 1024, "MemAvailable in /proc/meminfo")
    return None


def _address_space_available(statm: str = "/proc/self/statm") -> Limit | None:
    """An address-space limit (`ulimit -v`, RLIMIT_AS) less this process's virtual size: past
    it every allocation fails, however much memory the machine has free."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    try:
        virtual = int(Path(statm).read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        virtual = 0  # without /proc the limit alone still bounds what can be allocated
    return Limit(max(0, soft - virtual), "address-space limit (ulimit -v, RLIMIT_AS) less this "
                 "process's virtual size")


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_dirs(root: Path, controller_path: str) -> list[Path]:
    """The cgroup directory of this process and its ancestors (each one's limit applies); inside
    a container the mounted root is often the process's own cgroup, so the root is included."""
    dirs = []
    parts = [p for p in controller_path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        candidate = root.joinpath(*parts[:depth])
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def _cgroup_available(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> list[Limit]:
    """Limit minus working set (usage less inactive page cache, as kubelet counts it) of every
    cgroup above this process that has a limit; cgroup v2 (memory.max) and v1 (limit_in_bytes)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            layout = (Path(root), "memory.max", "memory.current", "inactive_file", "memory.max")
        elif "memory" in controllers.split(","):
            layout = (Path(root) / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
                      "total_inactive_file", "memory.limit_in_bytes")
        else:
            continue
        base, limit_file, usage_file, inactive_key, shown = layout
        for directory in _cgroup_dirs(base, path):
            cap = _read_number(directory / limit_file)   # "max" (v2) reads as None: no limit
            if cap is None or cap >= _CGROUP_UNLIMITED:
                continue
            usage = _read_number(directory / usage_file) or 0
            working = max(0, usage - _inactive_file(directory / "memory.stat", inactive_key))
            found.append(Limit(max(0, cap - working), f"cgroup limit {directory / shown} less its usage"))
    return found


def _physical_memory() -> Limit | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return Limit(pages * page_size, "physical memory (sysconf)")


def _is_cuda(device: Any) -> bool:
    if device is None:
        return False
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return kind == "cuda"


def _cuda_free(device: Any) -> Limit:
    import torch
    if not torch.cuda.is_available():
        return available()
    free, _total = torch.cuda.mem_get_info(torch.device(device) if isinstance(device, str) else device)
    return Limit(free, "free memory of the CUDA device (torch.cuda.mem_get_info)")


# --- what each command needs ---------------------------------------------------------------------

def weights_bytes(a: "Analysis") -> int:
    return (a.params + a.buffers) * FLOAT32


def for_model(a: "Analysis") -> Need:
    return Need(f"building {a.name}", (("weights", weights_bytes(a)),))


def for_weights_file(a: "Analysis", what: str) -> Need:
    """A model plus a state_dict of the same size beside it (writing or reading weights)."""
    return Need(f"{what} {a.name}", (("weights, twice (model and state_dict)", 2 * weights_bytes(a)),))


def for_onnx(a: "Analysis") -> Need:
    return Need(f"exporting {a.name} to ONNX", (
        ("weights, twice (model and ONNX graph)", 2 * weights_bytes(a)),
        ("activations of a batch of 2", a.memory(2, "float32", "inference"))))


# Copies of the parameters an optimizer step holds beside the weights, as torch allocates them
# (measured with a dispatch mode that tracks live tensors, tests/test_data_reliability.py, and as
# peak RSS, bench/bench_data_limits.py --optimizer-memory): the gradients; SGD's momentum
# buffers plus one temporary of the parameters' size (gradient + weight decay · weight, to which
# Nesterov adds the momentum; torch's foreach path makes it for all parameters at once); AdamW's
# two moment estimates plus one temporary (the square root of the second).
STEP_COPIES = {"sgd": 3, "adamw": 4}
STEP_LABELS = {"sgd": "weights, gradients, SGD momentum and the step's temporary",
               "adamw": "weights, gradients, AdamW's two moments and the step's temporary"}


def for_training(a: "Analysis", *, batch: int, mode: MemoryMode, optimizer: str | None = None) -> Need:
    """`optimizer` "sgd" or "adamw"; None (not known): the larger figure."""
    params = a.params * FLOAT32
    kind = optimizer if optimizer in STEP_COPIES else max(STEP_COPIES, key=STEP_COPIES.__getitem__)
    return Need(f"training {a.name} at batch {batch} ({mode} memory)", (
        (STEP_LABELS[kind], weights_bytes(a) + STEP_COPIES[kind] * params),
        ("activations", a.memory(batch, "float32", mode))),
        "use a smaller network, input or --batch-size" + (", or --memory efficient" if mode == "standard" else ""))


def for_evaluation(a: "Analysis", *, batch: int) -> Need:
    return Need(f"evaluating {a.name} at batch {batch}", (
        ("weights", weights_bytes(a)),
        ("activations", a.memory(batch, "float32", "inference"))), "use a smaller --batch-size")


# --- the check ---------------------------------------------------------------------------------

def require(need: Need, network: "Network | None" = None, *, within: Limit | None = None,
            library: bool = False) -> None:
    """Raise SpecError E307 when `need` exceeds the limit (default: `limit()`)."""
    cap = within if within is not None else limit()
    if need.bytes <= cap.bytes:
        return
    parts = ", ".join(f"{label} {binary(n)}" for label, n in need.parts if n)
    how = ("pass memory_limit=BYTES (math.inf: no check)" if library else
           "pass --memory-limit SIZE (e.g. 64GiB, or none)")
    raise d.SpecError([d.Diagnostic(
        d.OUT_OF_MEMORY,
        f"{need.what} needs about {binary(need.bytes)} ({parts}), more than the "
        f"{binary(cap.bytes)} this process can use ({cap.source})",
        network.span if network is not None else None,
        f"{need.advice}; if the machine really has the memory, {how} or set {ENV}=SIZE",
        file=None if network is not None else "memory")])


def check_training(network: "Network", *, batch: int, mode: str = "standard", device: Any = None,
                   optimizer: str | None = None) -> None:
    """Before a model is built for training: its weights on the host, everything on `device`."""
    # the cast: train passes --memory as a str, already limited to standard|efficient by
    # check_settings; any other word would still be refused (ValueError) by Analysis.memory
    memory = cast("MemoryMode", mode)
    _check_on(network, lambda a: for_training(a, batch=batch, mode=memory, optimizer=optimizer), device)


def check_evaluation(network: "Network", *, batch: int, device: Any = None) -> None:
    """Before a model is built for evaluation at `batch`."""
    _check_on(network, lambda a: for_evaluation(a, batch=batch), device)


def _check_on(network: "Network", need_of, device: Any) -> None:
    from .figures import analyze
    a = analyze(network)
    need = need_of(a)
    if _is_cuda(_resolved(device)):
        require(for_model(a), network, within=limit())   # built on the host, then moved
        require(need, network, within=limit(device=_resolved(device)))
    else:
        require(need, network)


def _resolved(device: Any) -> Any:
    """`"auto"` means CUDA when there is one (as train/evaluate decide); anything else as given."""
    if isinstance(device, str) and device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


__all__ = ["ENV", "Limit", "Need", "available", "check_evaluation", "check_training", "for_evaluation",
           "for_model", "for_onnx", "for_training", "for_weights_file", "limit", "overridden",
           "parse_limit", "require"]
