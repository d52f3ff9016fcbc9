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
