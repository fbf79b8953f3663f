"""Test helpers shared by every test module."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip locally when a prerequisite is missing, but FAIL in CI: nothing skips silently there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def ensure_apt(binary: str, package: str) -> str:
    """Path of ``binary``; installs the Debian ``package`` (we are root) when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            check=False,
            capture_output=True,
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    found = shutil.which(binary)
    require(found is not None, f"{binary} (Debian package {package}) is not installed")
    assert found is not None
    return found


def wait_ready(client: Any, timeout_s: float = 120.0) -> None:
    """Wait until an in-process API (a TestClient) says ready; fail, with its /ready body, when it
    never does (a test must not go on against a service without a model). The model comes
    through a child process that imports MLflow (core/fetch.py): seconds, tens of them when
    the machine is loaded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"service never became ready: {client.get('/ready').json()}")
