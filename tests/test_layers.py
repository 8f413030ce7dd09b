"""The layering holds: import-linter's contracts (pyproject.toml) are kept, and imports of
slimstep inside functions, which hide how far a module reaches, are few and say why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "slimstep"
#: the most function-level slimstep imports the package may hold (issue 23)
MAX_INNER = 10


def _inner_imports() -> list[tuple[Path, int, str]]:
    """(file, line, source line) of every ``import slimstep...`` / ``from slimstep... import``
    inside a function, each counted once."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for fn in ast.walk(ast.parse(source)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if any(n == "slimstep" or n.startswith("slimstep.") for n in names):
                    found.add((path, node.lineno, lines[node.lineno - 1]))
    return sorted(found)


def test_few_function_level_imports_each_saying_why():
    inner = _inner_imports()
    where = "\n".join(f"{p.relative_to(ROOT)}:{n}: {text.strip()}" for p, n, text in inner)
    assert len(inner) <= MAX_INNER, f"{len(inner)} slimstep imports inside functions:\n{where}"
    for path, n, text in inner:
        above = path.read_text().splitlines()[n - 2].strip()
        assert "#" in text or above.startswith("#"), f"{path.relative_to(ROOT)}:{n}: say why it is inside"


def test_import_contracts_are_kept():
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
