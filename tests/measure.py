"""What autograd keeps for backward, measured on a real model: the one measure every memory
promise of the analysis (`Analysis.memory`) is checked against."""

from __future__ import annotations


def saved_bytes(model, x, *, weights: bool = False, buffers: bool = False) -> int:
    """Bytes of the distinct storages autograd's saved-tensor hooks see in one forward of
    `model` on `x` (a view and its base count once). The model's parameters are left out unless
    `weights` is true; `buffers=True` leaves its buffers out as well (BN's backward holds its
    running statistics, which exist anyway)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    left_out = set() if weights else {p.untyped_storage().data_ptr() for p in model.parameters()}
    if buffers:
        left_out |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    return sum(v for k, v in seen.items() if k not in left_out)


def saved_bytes_of(network, batch: int = 2) -> int:
    """`saved_bytes` of `network` compiled and in training mode, on a random batch."""
    import torch

    from densedsl.nn.build import build_model

    return saved_bytes(build_model(network).train(), torch.randn(batch, *network.input))


def kept_bytes(model, x) -> int:
    """Bytes of the distinct storages backward reads back (unpacks) on `model`'s output: what
    `saved_bytes` sees, less what ops whose output reaches nothing saved (a layer no later layer
    reads and its block does not emit), which autograd frees with their graph as soon as the
    forward drops them. Parameters and buffers are left out."""
    import torch

    used: dict[int, int] = {}

    def unpack(t):
        used[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
        y = model(x)
    if not y.requires_grad:  # no weight on the output's path: backward has nothing to read
        return 0
    y.float().sum().backward()
    left_out = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    return sum(v for k, v in used.items() if k not in left_out)


def held_bytes(model, x) -> int:
    """Bytes of the distinct storages the forward of `model` on `x` made (the input's copy
    included) that are still alive when only the output is held: what the autograd graph keeps
    for backward. Saved-tensor hooks (`saved_bytes`) cannot see inside a checkpointed region,
    whose own hooks pack its tensors (efficient mode's stem and transitions); this sees what such
    a region keeps too (its input, the conv outputs its selective policy stores). Parameters,
    buffers and the output are left out."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    made: dict[int, tuple[StorageWeakRef, int]] = {}

    class Made(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    made[s.data_ptr()] = (StorageWeakRef(s), s.nbytes())
            return out

    with Made():
        x = x.clone()  # the model's input, held by nothing but what the forward keeps
        y = model(x)
    del x
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), y)}
    return sum(n for k, (ref, n) in made.items() if not ref.expired() and k not in own)
