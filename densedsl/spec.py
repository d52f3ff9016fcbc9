"""`Spec`: a parsed and resolved network, plus the entry points that make one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from . import ast
from .files import read_source
from .network import Network
from .resolve import resolve
from .source import Source
from .syntax import parse_source


@dataclass(frozen=True, slots=True)
class Spec:
    """One network of a spec file: the text it came from, the file's AST and the resolved network."""

    source: Source = field(repr=False)
    file: ast.SpecFile = field(repr=False)
    network: Network
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.network.name

    @property
    def text(self) -> str:
        return self.source.text

    def with_params(self, **params: Any) -> "Spec":
        """The same spec with parameters overridden (on top of earlier overrides)."""
        merged = dict(self.overrides)
        merged.update(params)
        network = resolve(self.file, self.name, merged)
        return Spec(self.source, self.file, network, tuple(merged.items()))

    def _repr_svg_(self) -> str | None:
        """Jupyter shows a spec as its overview diagram (no picture without Graphviz)."""
        from .analysis import analyze
        return analyze(self.network)._repr_svg_()


def parse(text: str, source: str = "<string>", *, network: str | None = None, **params: Any) -> Spec:
    """Parse and resolve spec text; raises SpecError listing every problem found."""
    src = Source.from_text(text, source)
    return _spec(src, parse_source(src), network, params)


def load(path: str | os.PathLike, network: str | None = None, **params: Any) -> Spec:
    """Read, parse and resolve a spec file; raises SpecError listing every problem found."""
    src = read_source(path)
    return _spec(src, parse_source(src), network, params)


def load_all(path: str | os.PathLike, network: str | None = None, **params: Any) -> list[Spec]:
    """Every network of a file (or only `network`), each resolved with `params`."""
    src = read_source(path)
    file = parse_source(src)
    if network is not None:
        return [_spec(src, file, network, params)]
    from .resolve import resolve_all
    return [Spec(src, file, net, tuple(params.items())) for net in resolve_all(file, params, src)]


def as_spec(spec: "Spec | str | os.PathLike", network: str | None = None, **params: Any) -> Spec:
    """Accept a Spec, a path to a .dense file, or spec text."""
    if isinstance(spec, Spec):
        if network is not None and network != spec.name:
            return _spec(spec.source, spec.file, network, {**dict(spec.overrides), **params})
        return spec.with_params(**params) if params else spec
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and "{" not in spec and "\n" not in spec):
        return load(spec, network=network, **params)
    if isinstance(spec, str):
        return parse(spec, network=network, **params)
    raise TypeError(f"expected a Spec, a path or spec text, not {type(spec).__name__}")


def _spec(src: Source, file: ast.SpecFile, network: str | None, params: dict[str, Any]) -> Spec:
    return Spec(src, file, resolve(file, network, params, src), tuple(params.items()))
