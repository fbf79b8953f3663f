"""The Makefile's own logic, run by `make` in a scratch copy of the project layout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import ROOT, require


def _scratch(tmp_path: Path, dvc_exit: int) -> Path:
    """A scratch tree: the real Makefile, an installed-looking .venv whose `dvc` exits with
    ``dvc_exit`` (and records that it ran), one raw file missing and, last in the loop, one present."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.lock", "pyproject.toml"):
        (tmp_path / name).write_text("")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    dvc = bin_dir / "dvc"
    dvc.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/dvc.calls"\nexit {dvc_exit}\n')
    dvc.chmod(0o755)
    (tmp_path / ".venv" / ".installed").write_text("")
    for name in ("requirements.lock", "pyproject.toml"):  # older than the stamp: no reinstall
        os.utime(tmp_path / name, (1_000_000_000, 1_000_000_000))
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    for name in ("a_missing.csv", "z_present.csv"):
        (raw / f"{name}.dvc").write_text("outs: []\n")
    (raw / "z_present.csv").write_text("x\n1\n")
    return tmp_path


@pytest.mark.parametrize(("dvc_exit", "make_ok"), [(1, False), (0, True)])
def test_make_data_fails_on_a_failed_pull(tmp_path: Path, dvc_exit: int, make_ok: bool) -> None:
    """A failed `dvc pull` fails `make data`, even when a later file of the loop is present."""
    make = shutil.which("make")
    require(make is not None, "make is not installed")
    assert make is not None
    root = _scratch(tmp_path, dvc_exit)
    result = subprocess.run([make, "-s", "data"], cwd=root, capture_output=True, text=True, timeout=60)
    assert (root / "dvc.calls").read_text().split() == ["pull", "-q"]  # one pull, for the missing file
    assert (result.returncode == 0) is make_ok, (result.returncode, result.stdout, result.stderr)
