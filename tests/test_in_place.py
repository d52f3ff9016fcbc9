"""No model writes into its caller's input, on any path (issue 24): the stem's ReLU used to be
made in place whatever it read, so a stem opening with `relu` (or `dropout` then `relu`, in
eval) overwrote the tensor passed in. `lowering.in_place_where_safe` is the one rule the model,
the engine and the memory model read."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import densedsl  # noqa: E402
from densedsl.analysis import analyze  # noqa: E402
from densedsl.ir.lowering import LoweredStem  # noqa: E402

STEMS = {
    "relu": "relu",
    "dropout-relu": "dropout 0.2; relu",
    "norm-relu": "norm; relu",
    "pool-relu": "maxpool kernel=2 stride=2; relu",
}


def _spec(stem: str, input_: str = "3x16x16") -> str:
    return (f"network n {{\n    input {input_}\n    stem {{ {stem} }}\n"
            "    dense layers=2 growth=4\n    head classes=3\n}\n")


@pytest.mark.parametrize("memory", ["standard", "efficient"])
@pytest.mark.parametrize("input_", ["3x16x16", "3x64"])
@pytest.mark.parametrize("stem", sorted(STEMS))
def test_no_stem_writes_into_the_callers_tensor(stem, input_, memory):
    model = densedsl.compile(_spec(STEMS[stem], input_), memory=memory)
    shape = tuple(int(s) for s in input_.split("x"))
    x = torch.randn(2, *shape)
    before = x.clone()
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            model(x)
        torch.testing.assert_close(x, before, rtol=0, atol=0)
        model(x.clone().requires_grad_()).sum().backward()
    if len(shape) == 3:
        xc = x.contiguous(memory_format=torch.channels_last)
        model.eval()(xc)
        torch.testing.assert_close(xc, before, rtol=0, atol=0)


def test_a_relu_writes_in_place_only_where_nothing_else_reads_its_tensor():
    a = analyze(densedsl.load(_spec("dropout 0.2; relu; conv 8 kernel=3 padding=1; norm; relu")).network)
    stem = next(s for s in a.lowered if isinstance(s, LoweredStem))
    inplace = {op.name: dict(op.attrs).get("inplace", True) for op in stem.ops if op.kind == "relu"}
    assert inplace == {"relu0": False, "relu1": True}  # through the dropout: the caller's tensor
    # the memory model reads the same decision: the first ReLU owns its output
    assert a.arch.nodes["stem.relu0"].get("inplace", True) is False
