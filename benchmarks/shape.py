"""The shape of the package, measured from its source with `ast`: modules, import edges between
them, the largest module and the longest function. `python benchmarks/shape.py [--json]`.

Counts every `.py` file under src/portfolio as a module (an `__init__.py` is its package); an
edge is one importing module -> one imported module of the package (deduplicated), resolved to a
module file when the import names one (``from portfolio.core import registry`` -> the
registry module), otherwise to the package's ``__init__``. Lines are physical lines; a function's
length runs from its ``def`` (decorators excluded) to its last line, nested functions included
in their parent.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "portfolio"


def module_name(path: Path) -> str:
    """Dotted name of a source file (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that one module imports."""
    found: set[str] = set()
    base = name if is_package else name.rpartition(".")[0]

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                origin = f"{anchor}.{origin}".rstrip(".") if origin else anchor
            targets = [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != PACKAGE:
                continue
            hit = resolve(target)
            if hit and hit != name:
                found.add(hit)
    return found


def measure() -> dict[str, object]:
    """Modules, edges, largest module and longest function of src/portfolio.

    Returns:
        A JSON-ready dict of the figures.
    """
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    modules = {module_name(path): path for path in files}
    names = set(modules)
    edges = 0
    largest = ("", 0)
    longest = ("", 0)
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        edges += len(imported(tree, name, path.name == "__init__.py", names))
        lines = len(text.splitlines())
        if lines > largest[1]:
            largest = (str(path.relative_to(SRC)), lines)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > longest[1]:
                    longest = (f"{path.relative_to(SRC)}:{node.name}", length)
    return {
        "modules": len(modules),
        "import_edges": edges,
        "largest_module": {"path": largest[0], "lines": largest[1]},
        "longest_function": {"name": longest[0], "lines": longest[1]},
    }


def main() -> None:
    """Print the figures (a line each, or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    figures = measure()
    if parser.parse_args().json:
        print(json.dumps(figures, indent=2))
        return
    print(f"modules {figures['modules']}, import edges {figures['import_edges']}")
    print(f"largest module {figures['largest_module']}")
    print(f"longest function {figures['longest_function']}")


if __name__ == "__main__":
    main()
