"""`Spec`: a parsed and resolved network, plus the entry points that make one.

Errors: anything wrong with a spec, a file or a parameter value raises `SpecError` (with
diagnostics). An argument of the wrong Python type (`parse(None)`, `parse(b"...")`,
`load(path, network=5)`, `load(3)`) raises `TypeError` naming the argument and the type
expected: that is a bug in the calling program, not in a spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..core import diagnostics as d
from ..core.files import read_source
from ..core.source import Source
from . import ast
from .network import Network
from .resolve import resolve
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

    @property
    def declared(self) -> frozenset[str]:
        """The names of the parameters the network declares (`network n(depth=100, …)`)."""
        return frozenset(p.name for n in self.file.networks if n.name == self.name for p in n.params)

    def with_params(self, **params: Any) -> "Spec":
        """The same spec with parameters overridden (on top of earlier overrides)."""
        merged = dict(self.overrides)
        merged.update(params)
        network = resolve(self.file, self.name, merged)
        return Spec(self.source, self.file, network, tuple(merged.items()))



def parse(text: str, source: str = "<string>", *, network: str | None = None, **params: Any) -> Spec:
    """Parse and resolve spec text; raises SpecError listing every problem found."""
    if isinstance(text, (bytes, bytearray)):
        raise TypeError("parse() takes spec text as str, not bytes; decode it first "
                        "(data.decode('utf-8')) or pass a path to densedsl.load()")
    if not isinstance(text, str):
        raise TypeError(f"parse() takes spec text as str, not {type(text).__name__}")
    if not isinstance(source, str):
        raise TypeError(f"parse(source=...) is the name shown in messages, a str, not {type(source).__name__}")
    _check_network(network)
    src = Source.from_text(text, source)
    return _spec(src, parse_source(src), network, params)


def load(path: str | os.PathLike, network: str | None = None, **params: Any) -> Spec:
    """Read, parse and resolve a spec file; raises SpecError listing every problem found."""
    _check_network(network)
    src = _read(path)
    return _spec(src, parse_source(src), network, params)


def load_all(path: str | os.PathLike, network: str | None = None, **params: Any) -> list[Spec]:
    """Every network of a file (or only `network`), each resolved with `params`."""
    _check_network(network)
    src = _read(path)
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


def _check_network(network: object) -> None:
    if network is not None and not isinstance(network, str):
        raise TypeError(f"network= names a network of the file (a str) or is None, not {type(network).__name__}")


def _read(path: object) -> Source:
    """read_source, with the path's type checked and every OS refusal as a SpecError: a name too
    long for the file system, or one holding a NUL byte, is the user's input, not our bug."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected the path of a spec file (str or os.PathLike), not {type(path).__name__}")
    try:
        return read_source(path)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise d.SpecError([d.Diagnostic(d.CANNOT_READ, f"cannot read the file: {reason}", None,
                                        "check the path", file=str(path))]) from None


def _spec(src: Source, file: ast.SpecFile, network: str | None, params: dict[str, Any]) -> Spec:
    _check_network(network)
    return Spec(src, file, resolve(file, network, params, src), tuple(params.items()))
