from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
ZOO = sorted(SPECS.glob("*.dense"))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
