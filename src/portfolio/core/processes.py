"""Starting and stopping the platform's real processes (MLflow server, APIs, dashboard) and
waiting for them to answer: used by `portfolio up` and by the integration tests alike."""

from __future__ import annotations

import ctypes
import gc
import importlib.abc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


class _NoPyarrow(importlib.abc.MetaPathFinder):
    """An import finder that refuses pyarrow (``keep_pyarrow_out``)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of API workers)", name=name)
        return None


def keep_pyarrow_out() -> bool:
    """Keep pyarrow out of this process, an API worker's, when pandas is not imported yet; True
    when it did, False when pandas (and with it pyarrow) already was.

    Why: pandas imports pyarrow whenever it is installed, for Arrow-backed strings and Arrow
    interchange. An API worker uses neither: it reads JSON, writes JSON and JSON lines, and its
    request frames are a few rows. pyarrow cost every warm worker 36-40 MB resident (issue 33,
    measured: BankChurn 267 → 231 MB, CarVision 324 → 284 MB, the same answers). An import finder
    placed first makes ``import pyarrow`` fail as if it were not installed, which pandas and
    scikit-learn handle (pandas' default string dtype then stores Python strings, with the same
    values and the same missing-value marker, NaN). Not a None entry in ``sys.modules``: code that
    looks there (scikit-learn's ``is_pyarrow_data``) would take the name for the module. Training,
    batch files, Spark and the CLI keep pyarrow; only `portfolio serve` and its worker processes
    call this, before anything else."""
    if "pandas" in sys.modules or "pyarrow" in sys.modules:
        return False
    if not any(isinstance(f, _NoPyarrow) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPyarrow())
    return True


def keep_freed_memory(mmap_below: int = 32 << 20, trim_above: int = 256 << 20) -> bool:
    """Make glibc serve allocations below ``mmap_below`` bytes (32 MB, its maximum) from its heap,
    and keep up to ``trim_above`` bytes of freed heap for reuse instead of handing it back to the
    kernel. Each API worker calls this at start.

    Why: a 1,000-record TelecomAI batch allocates ~20 MB of short-lived arrays (kept tree walks,
    substituted rows). With glibc's adaptive defaults that memory was, in some processes, given
    back and faulted in again on every request: ~3,200 page faults and 11-15 ms of kernel time
    per request, against 0-2 faults with this (measured in-process, 20 requests each). The cost
    is that the process keeps its peak heap. False when the C library has no ``mallopt`` (not
    glibc) or refuses the values."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_below)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_above))


def freeze_heap() -> int:
    """Put every object alive now (the imports, the loaded model) in the collector's permanent
    generation, after collecting what is garbage; returns how many objects that is. An API
    calls this each time it swaps in a model. Frozen objects are still freed by reference
    counting; the old model's reference cycles are collected because each call first
    unfreezes.

    Why: a full collection walks every tracked object. A TelecomAI worker ran one 1-4 times in
    a 35-45 s benchmark run (wrk, then batches), each taking 171-286 ms, during which its
    request waited; with the heap frozen after load, 0.15 ms."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def release_freed_memory() -> bool:
    """Hand the heap memory freed so far back to the kernel, once (glibc's ``malloc_trim``). An
    API calls this after each model load, after ``freeze_heap``.

    Why: ``keep_freed_memory`` keeps up to 256 MB of freed heap for reuse, so a worker went on
    holding the peak of its model load: the skops file read, the boosters' JSON parsed by the
    fast-path compiler, the warm-up. CarVision's worker held ~35 MB of it (issue 33: 349 →
    315 MB in-process after this call). Requests after the load still keep what they free.
    False when the C library has no ``malloc_trim`` (not glibc)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    malloc_trim(0)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_http(
    url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None, ok: tuple[int, ...] = (200,)
) -> None:
    """Poll ``url`` until it answers one of ``ok``; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code in ok:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f}s ({last})")


def wait_all_workers_ready(
    base: str, timeout: float = 240.0, proc: subprocess.Popen[bytes] | None = None, in_a_row: int = 20
) -> None:
    """``base``/ready until it answers 200 ``in_a_row`` times in a row, each on a new connection:
    with several workers (a listening socket each, core/serving/workers.py) a new connection may reach
    any of them, and each loads its own model."""
    wait_http(f"{base}/ready", timeout=timeout, proc=proc)
    deadline, seen = time.monotonic() + timeout, 0
    while seen < in_a_row:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before every worker was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{base}: not every worker became ready in {timeout:.0f}s")
        try:
            ready = httpx.get(f"{base}/ready", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            ready = False
        seen = seen + 1 if ready else 0


def start(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (so stop() can end its workers too)."""
    full_env = {**os.environ, **(env or {})}
    stdout = log_file.open("ab") if log_file else subprocess.DEVNULL
    return subprocess.Popen(
        argv, env=full_env, stdout=stdout, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def bin_path(name: str) -> str:
    """A console script of this environment (mlflow, portfolio, streamlit…)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def mlflow_server_argv(
    backend_uri: str, artifacts_dir: Path, port: int, host: str = "127.0.0.1"
) -> list[str]:
    return [
        bin_path("mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
