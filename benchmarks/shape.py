"""The shape of the package, measured from its source with `ast`: modules, import edges between
them (and those from the core up to the rest of the package), the largest modules, the longest
function and the task-name comparisons. `python benchmarks/shape.py [--json] [--src DIR]`
(``--src``: another checkout's src/, e.g. an older commit's ``git archive``).

Counts every `.py` file under src/portfolio as a module (an `__init__.py` is its package); an
edge is one importing module -> one imported module of the package (deduplicated), resolved to a
module file when the import names one (``from portfolio.core import registry`` -> the
registry module), otherwise to the package's ``__init__``. Lines are physical lines; a function's
length runs from its ``def`` (decorators excluded) to its last line, nested functions included
in their parent. A task branch is a comparison of a name or attribute called ``task`` with a
string (``spec.task == "classification"``).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "portfolio"
CORE = f"{PACKAGE}.core"


def module_name(path: Path, src: Path = SRC) -> str:
    """Dotted name of a source file (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
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


def in_core(name: str) -> bool:
    """Whether a module belongs to the core package."""
    return name == CORE or name.startswith(CORE + ".")


def task_branch(node: ast.AST) -> bool:
    """Whether a node compares something called ``task`` with a string."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    named = any(
        (isinstance(side, ast.Name) and side.id == "task")
        or (isinstance(side, ast.Attribute) and side.attr == "task")
        for side in sides
    )
    return named and any(isinstance(side, ast.Constant) and isinstance(side.value, str) for side in sides)


def measure(src: Path = SRC) -> dict[str, object]:
    """Modules, edges, largest modules, longest function and task branches of ``src``/portfolio.

    Args:
        src: The ``src`` folder measured (by default this checkout's).

    Returns:
        A JSON-ready dict of the figures.
    """
    files = sorted((src / PACKAGE).rglob("*.py"))
    modules = {module_name(path, src): path for path in files}
    names = set(modules)
    edges = 0
    core_up: list[str] = []
    sizes: list[tuple[str, int]] = []
    longest = ("", 0)
    branches: list[str] = []
    for name, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        targets = imported(tree, name, path.name == "__init__.py", names)
        edges += len(targets)
        if in_core(name):
            core_up += [f"{name} -> {t}" for t in sorted(targets) if not in_core(t)]
        sizes.append((str(path.relative_to(src)), len(text.splitlines())))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > longest[1]:
                    longest = (f"{path.relative_to(src)}:{node.name}", length)
            if task_branch(node):
                branches.append(f"{path.relative_to(src)}:{getattr(node, 'lineno', 0)}")
    sizes.sort(key=lambda item: -item[1])
    return {
        "modules": len(modules),
        "lines": sum(lines for _, lines in sizes),
        "import_edges": edges,
        "core_to_outside_edges": core_up,
        "largest_modules": [{"path": path, "lines": lines} for path, lines in sizes[:5]],
        "longest_function": {"name": longest[0], "lines": longest[1]},
        "task_branches": {"count": len(branches), "files": len({b.rsplit(":", 1)[0] for b in branches})},
    }


def main() -> None:
    """Print the figures (a line each, or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--src", type=Path, default=SRC, help="the src/ folder to measure")
    args = parser.parse_args()
    figures = measure(args.src.resolve())
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"modules {figures['modules']} ({figures['lines']} lines), import edges {figures['import_edges']}")
    print(f"core -> outside the core: {figures['core_to_outside_edges'] or 'none'}")
    print(f"largest modules {figures['largest_modules']}")
    print(f"longest function {figures['longest_function']}")
    print(f"task branches {figures['task_branches']}")


if __name__ == "__main__":
    main()
