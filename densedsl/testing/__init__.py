"""Helpers for property-testing densedsl and tools built on it.

- `spec_text`, `family_text` (`densedsl.testing.printer`): a `Network` written back as spec text.
- `assert_dense_invariants` (`densedsl.testing.invariants`): the paper's counting rules, checked
  on an analysis graph.
- `networks`, `spec_texts`, `family_texts` (`densedsl.testing.strategies`): hypothesis strategies.

The printer and the invariants need nothing beyond densedsl. The strategies need hypothesis, an
optional extra (`pip install "densedsl[test]"`): they are imported on first use, so
`from densedsl.testing import spec_text` works without it, and `from densedsl.testing import
networks` raises an ImportError that says what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .invariants import assert_dense_invariants
from .printer import family_text, spec_text

if TYPE_CHECKING:
    from .strategies import family_texts, networks, spec_texts

_STRATEGIES = ("family_texts", "networks", "spec_texts")


def __getattr__(name: str) -> Any:
    # PEP 562: only a strategy's name reaches here, so hypothesis is imported when one is asked for
    if name in _STRATEGIES:
        from . import strategies
        return getattr(strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["assert_dense_invariants", "family_text", "family_texts", "networks", "spec_text", "spec_texts"]
