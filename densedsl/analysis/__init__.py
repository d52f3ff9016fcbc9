"""Op lists → graph → every figure and check: `analyze(network)` returns an `Analysis`."""

from .figures import Analysis, analyze

__all__ = ["Analysis", "analyze"]
