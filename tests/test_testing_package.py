"""densedsl.testing: the printer and the invariants work without hypothesis (an optional extra);
the strategies say what to install when it is missing."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _without_hypothesis(code: str) -> subprocess.CompletedProcess:
    # None in sys.modules makes every `import hypothesis` fail as if it were not installed
    prelude = "import sys\nsys.modules['hypothesis'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_printer_and_invariants_need_no_hypothesis():
    result = _without_hypothesis("""
        import densedsl
        from densedsl.testing import assert_dense_invariants, family_text, spec_text
        a = densedsl.analyze("specs/densenet_bc_cifar.dense", depth=40, growth=12)
        assert_dense_invariants(a)
        back = densedsl.parse(spec_text(a.network)).network
        assert (back.input, back.stem, back.stages, back.head) == (a.network.input, a.network.stem,
                                                                    a.network.stages, a.network.head)
        assert "for i, n in layers" in family_text(a.network)
        assert "hypothesis" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_strategies_without_hypothesis_say_what_to_install():
    for statement in ("from densedsl.testing import networks", "import densedsl.testing.strategies",
                      "import densedsl.testing as t; t.spec_texts"):
        result = _without_hypothesis(f"""
            try:
                {statement}
            except ImportError as e:
                print(type(e).__name__, e.name, "|", e)
        """)
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r'ModuleNotFoundError hypothesis \| .*pip install "densedsl\[test\]" '
                            r"\(or pip install hypothesis\)\s*", result.stdout), (statement, result.stdout)


def test_importing_the_package_leaves_hypothesis_alone():
    """Only a strategy's name imports hypothesis, so a user of the printer does not pay for it."""
    result = subprocess.run([sys.executable, "-c", "import sys, densedsl.testing; print('hypothesis' in sys.modules)"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_the_package_offers_every_helper_under_its_old_paths_too():
    import densedsl.testing as testing
    from densedsl.testing import invariants, printer, strategies
    assert set(testing.__all__) == {"assert_dense_invariants", "family_text", "family_texts", "networks",
                                    "spec_text", "spec_texts"}
    for name in testing.__all__:
        assert getattr(testing, name) is getattr(strategies, name), name
    assert testing.spec_text is printer.spec_text and testing.family_text is printer.family_text
    assert testing.assert_dense_invariants is invariants.assert_dense_invariants


def test_readme_and_docs_import_from_paths_that_exist():
    import importlib
    texts = [(ROOT / "README.md").read_text("utf-8"), *(p.read_text("utf-8") for p in (ROOT / "docs").glob("*.md"))]
    imports = {m for t in texts for m in re.findall(r"from (densedsl\.testing[\w.]*) import", t)}
    assert imports, "the README's property-test example imports densedsl.testing"
    for module in imports:
        importlib.import_module(module)
