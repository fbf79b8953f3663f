"""Direct requirements of each kind of image role, read from pyproject.toml (the one list of them).

    python3 requirements.py --kind api|dashboard|mlflow     the kind's requirement lines (reads
                                                            ./pyproject.toml)
    python3 requirements.py --kind-of ROLE                  the kind of a role (PORTFOLIO_SERVICE)

Kinds: ``api`` (any service's API; also trains: ``portfolio train``) needs the base dependencies,
``dashboard`` adds the ``dashboard`` extra, ``mlflow`` (runs ``mlflow server`` only) needs just the
``tracking`` extra. The Dockerfile installs each kind with requirements.lock as constraints, so every
image has the lock's exact versions and only what its role imports.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

KINDS = ("api", "dashboard", "mlflow")


def kind_of(role: str) -> str:
    """The kind of image ``role`` needs.

    Args:
        role: the image's role: a service name, ``dashboard`` or ``mlflow``.

    Returns:
        ``api``, ``dashboard`` or ``mlflow``.

    Raises:
        SystemExit: when ``role`` is empty (the build must name its role).
    """
    if not role:
        raise SystemExit("SERVICE is not set: build with --build-arg SERVICE=<service>|dashboard|mlflow")
    return role if role in ("dashboard", "mlflow") else "api"


def requirements(kind: str, pyproject: Path) -> list[str]:
    """The direct requirements of ``kind``.

    Args:
        kind: one of KINDS.
        pyproject: path of pyproject.toml.

    Returns:
        Requirement strings, in pyproject's order.
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    if kind == "mlflow":
        return list(extras["tracking"])
    if kind == "dashboard":
        return [*project["dependencies"], *extras["dashboard"]]
    if kind == "api":
        return list(project["dependencies"])
    raise SystemExit(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")


def main(argv: list[str]) -> None:
    """Command line (see the module docstring)."""
    if len(argv) == 2 and argv[0] == "--kind":
        print("\n".join(requirements(argv[1], Path("pyproject.toml"))))
    elif len(argv) in (1, 2) and argv[0] == "--kind-of":
        print(kind_of(argv[1] if len(argv) == 2 else ""))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
