"""BENCHMARKS.md holds one section per benchmark script; each run replaces only its own."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = """# Benchmarks

Speed and memory goals live here, never in timed tests. Each section is written by the script
it names, from one run on one machine, and every ratio compares figures measured in that same
run (these machines are shared and noisy: absolute numbers move, ratios much less).
"""


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace the `<!-- bench:NAME -->` section of `path` (appended when new), atomically."""
    from densedsl.core.files import atomic_write
    path = Path(path)
    current = path.read_text("utf-8") if path.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{text.rstrip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current)
    else:
        updated = current.rstrip() + "\n\n" + block + "\n"
    atomic_write(path, updated if updated.endswith("\n") else updated + "\n")
