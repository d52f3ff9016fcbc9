"""The other forms a compiled model takes, for tests that check they compute the same function:
the `.py` export run as a user runs it, and the model without its inference engine."""

from __future__ import annotations


def exported_twin(network, model, filename: str = "exported.py"):
    """`compile -o model.py`'s source for `network`, executed as its own module and built, with
    `model`'s weights loaded (strictly: the export keeps the model's state_dict names)."""
    from densedsl.nn.export import python_source

    namespace: dict = {"__name__": "exported"}
    exec(compile(python_source(network), filename, "exec"), namespace)
    exported = namespace["build"]()
    exported.load_state_dict(model.state_dict())
    return exported.eval()


def without_engine(model):
    """`model` with every inference engine detached (in place), so it runs the modules as built;
    the caller checks the engine was attached first where that matters."""
    for m in model.modules():
        if getattr(m, "engine", None) is not None:
            m.engine = None
    return model


def weighted_loss(y):
    """Every value of every output matters, each with its own weight (a dict: every map)."""
    import torch

    maps = list(y.values()) if isinstance(y, dict) else [y]
    return sum((m * torch.linspace(-1, 1, m.numel(), dtype=m.dtype).view_as(m)).sum() for m in maps)


def forward_backward(model, x, plain: bool, monkeypatch) -> tuple:
    """One forward and backward on the plain training path (`DENSEDSL_TRAINING_PATH=plain`) or
    the fast one: (output, input gradient, parameter gradients by name, torch.compile's
    `_orig_mod.` prefix removed)."""
    if plain:
        monkeypatch.setenv("DENSEDSL_TRAINING_PATH", "plain")
    else:
        monkeypatch.delenv("DENSEDSL_TRAINING_PATH", raising=False)
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    y = model(x)
    weighted_loss(y).backward()
    out = {k: v.detach() for k, v in y.items()} if isinstance(y, dict) else y.detach()
    return out, x.grad, {k.removeprefix("_orig_mod."): p.grad for k, p in model.named_parameters()}
