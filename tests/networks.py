"""Hand-built `Network`s of the zoo, for tests that must not depend on the parser.

The golden tests load `specs/*.dense` when the zoo files exist; these builders state the same
architectures in Python so graph and analysis tests run on their own, and so a test can check
that a zoo file resolves to exactly the network the paper describes.
"""

from __future__ import annotations

from fractions import Fraction

from densedsl.language.network import Conv, DenseBlock, Head, Network, Norm, Pool, ReLU, Stem, Transition

HALF = Fraction(1, 2)


def _stages(layers, growth, *, bottleneck=4, compression=HALF, bias=False, order="pre",
            pool=None, dropout=0.0):
    stages = []
    for i, n in enumerate(layers, start=1):
        stages.append(DenseBlock(index=i, layers=n, growth=growth, bottleneck=bottleneck, bias=bias,
                                 order=order, dropout=dropout))
        if i < len(layers):
            stages.append(Transition(index=i, compression=compression, bias=bias, dropout=dropout,
                                     pool=pool or Pool()))
    return tuple(stages)


def imagenet_stem(channels: int, *, bias: bool = False) -> Stem:
    return Stem(ops=(Conv(out_channels=channels, kernel=7, stride=2, padding=3, bias=bias), Norm(),
                     ReLU(), Pool(mode="max", kernel=3, stride=2, padding=1)))


def torchvision(depth: int, *, input_size: int = 224, classes: int = 1000) -> Network:
    growth, stem, layers = {
        121: (32, 64, (6, 12, 24, 16)), 169: (32, 64, (6, 12, 32, 32)),
        201: (32, 64, (6, 12, 48, 32)), 264: (32, 64, (6, 12, 64, 48)),
        161: (48, 96, (6, 12, 36, 24)),
    }[depth]
    return Network(name=f"densenet{depth}", input=(3, input_size, input_size),
                   stem=imagenet_stem(stem), stages=_stages(layers, growth),
                   head=Head(classes=classes))


def cifar(depth: int, growth: int, *, bc: bool = False, classes: int = 10,
          dropout: float = 0.0) -> Network:
    n = (depth - 4) // (6 if bc else 3)
    stem = Stem(ops=(Conv(out_channels=2 * growth if bc else 16, kernel=3, stride=1, padding=1),))
    return Network(name=f"densenet{'_bc' if bc else ''}_{depth}_{growth}", input=(3, 32, 32),
                   stem=stem,
                   stages=_stages((n, n, n), growth, bottleneck=4 if bc else None,
                                  compression=HALF if bc else Fraction(1), dropout=dropout),
                   head=Head(classes=classes))


def d2l_fashion_mnist() -> Network:
    return Network(name="d2l_fashion_mnist", input=(1, 96, 96), stem=imagenet_stem(64, bias=True),
                   stages=_stages((4, 4, 4, 4), 32, bottleneck=None, bias=True),
                   head=Head(classes=10))


def d2l_flux() -> Network:
    """The seeds' Flux port: post-activation, biased convs, transitions pool with padding 1."""
    stem = Stem(ops=(Conv(out_channels=64, kernel=7, stride=2, padding=3, bias=True), Norm(), ReLU(),
                     Pool(mode="max", kernel=3, stride=2, padding=1)))
    return Network(name="d2l_flux", input=(1, 96, 96), stem=stem,
                   stages=_stages((4, 4, 4, 4), 32, bottleneck=None, bias=True, order="post",
                                  pool=Pool(mode="avg", kernel=2, stride=2, padding=1)),
                   head=Head(classes=10, norm=False))


def keras_assignment(*, filters: int = 12, layers: int = 12, classes: int = 10) -> Network:
    """The seeds' Keras course model: the head pools a 2x2 window and flattens."""
    growth = int(filters * 0.5)
    stages = []
    for i in range(1, 5):
        stages.append(DenseBlock(index=i, layers=layers, growth=growth, dropout=0.2))
        if i < 4:
            stages.append(Transition(index=i, channels=growth, dropout=0.2))
    return Network(name="keras_assignment", input=(3, 32, 32),
                   stem=Stem(ops=(Conv(out_channels=filters, kernel=3, padding=1),)),
                   stages=tuple(stages), head=Head(classes=classes, window=(2, 2)))


def tiny(*, input_size: int = 32, transitions: int = 1) -> Network:
    """The smallest interesting network: two blocks (bottleneck and plain) around a transition."""
    stages: list = [DenseBlock(index=1, layers=4, growth=12, bottleneck=4)]
    for j in range(1, transitions + 1):
        stages += [Transition(index=j, compression=HALF),
                   DenseBlock(index=j + 1, layers=3, growth=12)]
    return Network(name="n", input=(3, input_size, input_size),
                   stem=Stem(ops=(Conv(out_channels=16, kernel=3, padding=1),)),
                   stages=tuple(stages), head=Head(classes=10))


# every vector op: stem linear/norm/relu/dropout, a bottleneck, each norm, a post-activation
# block, two blocks in a row, a linear transition, a head with norm and a hidden layer
# (tests/test_mlp.py, tests/test_construction.py)
MLP_EVERY_OP = """network rich {
    input 12
    stem {
        linear 16
        norm
        relu
        dropout 0.1
    }
    dense layers=3 growth=8 bottleneck=2 norm=batch dropout=0.2
    transition compression=0.5 dropout=0.1
    dense layers=2 growth=4 norm=layer activation=gelu order=post
    dense layers=2 growth=4 norm=none activation=relu bias=false
    head classes=3 norm=true hidden=[8] dropout=0.2
}
"""


def randomise_every_tensor(model, seed: int = 1, *, negative_scales: bool = True):
    """Every floating tensor of the state_dict drawn at random, so no rewrite of the model can
    hide behind a value init leaves trivial: conv and linear biases (init zeroes them), norm
    scales of both signs (a trained γ can be negative; `negative_scales=False` keeps them
    positive, the case rewrites such as the engine's `maximum` form need), shifts, running means
    and variances.
    Weights keep their scale (uniform within ±|init| · 2), so activations stay in range."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
            if name.endswith("running_var"):
                t.copy_(r + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(r - 0.5)
            elif t.dim() == 1:  # a norm's scale γ: both signs, away from 0
                t.copy_(torch.where((r < 0.2) & negative_scales, -(r + 0.5), r + 0.5))
            else:
                bound = float(t.abs().max()) or 0.1
                t.copy_((r * 2 - 1) * bound)
    return model


def two_block_text(name: str, input_shape: str, *, growth_parameter: bool = False, classes: int = 3) -> str:
    """The small spec many file and training tests use: a conv stem, two dense blocks of two
    bottleneck layers and a transition, `classes` a parameter (and `growth` with
    `growth_parameter`, default 4)."""
    params = f"classes={classes}, growth=4" if growth_parameter else f"classes={classes}"
    growth = "growth" if growth_parameter else "4"
    return (f"network {name}({params}) {{\n    input {input_shape}\n"
            f"    defaults growth={growth} bottleneck=2 compression=0.5\n"
            "    stem {\n        conv 8 kernel=3 padding=1\n    }\n"
            "    dense layers=2\n    transition\n    dense layers=2\n    head classes=classes\n}\n")


def mlp_text(name: str, input_: str, params: str) -> str:
    """The small MLP the tabular and array tests use: a linear stem, one block of two linear
    layers without norms, a head of `classes`; `params` declares `classes` (and maybe more)."""
    return (f"network {name}({params}) {{\n    input {input_}\n    defaults growth=8 norm=none\n"
            "    stem {\n        linear 16\n        relu\n    }\n    dense layers=2\n    head classes=classes\n}\n")
