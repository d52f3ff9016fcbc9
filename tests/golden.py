"""Golden diagnostic cases: tests/data/errors/*.dense hold the input, a `# output` line and the
exact text densedsl must print. `python tests/golden.py --update` rewrites the outputs (review
the diff before committing)."""

from __future__ import annotations

import sys
from pathlib import Path

CASES = Path(__file__).parent / "data" / "errors"
MARKER = "# output\n"


def split(path: Path) -> tuple[str, str | None]:
    text = path.read_text("utf-8")
    if MARKER in text:
        spec, expected = text.split(MARKER, 1)
        return spec, expected
    return text, None


def render(path: Path, spec: str) -> str:
    import densedsl
    try:
        densedsl.parse(spec, source=path.name)
    except densedsl.SpecError as e:
        return str(e) + "\n"
    return "no error\n"


if __name__ == "__main__":
    for path in sorted(CASES.glob("*.dense")):
        spec, _ = split(path)
        out = render(path, spec)
        if "--update" in sys.argv:
            path.write_text(spec + MARKER + out, "utf-8")
        print(f"=== {path.name}\n{out}")
