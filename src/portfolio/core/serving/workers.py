"""Several API worker processes on one port, each with its own listening socket (SO_REUSEPORT).

Why not uvicorn's own ``--workers``: its workers share one listening socket, and whichever
worker wakes first accepts every connection waiting (asyncio accepts up to the backlog per
wake-up). Clients that keep their connections open (wrk, nginx's upstream keep-alive, any HTTP
client with a pool) then all land on one worker: measured with 8 keep-alive connections,
CarVision answered 1,966 req/s with one worker and 1,935 with two, one worker at 100% CPU and
the other at 3%. With a socket per worker the kernel spreads new connections across the workers
by a hash of their addresses (CarVision, two workers: ~3,100 req/s).

Each worker binds its socket but only listens once the app has started (uvicorn calls
``listen`` after the lifespan startup), so connections go only to workers that can take them.
The parent only supervises: it restarts a worker that dies, stops (exit 1) when one cannot
start (the port is taken) or keeps dying within seconds of its start (the app does not import),
and on SIGTERM/SIGINT asks every worker to shut down gracefully (in-flight requests complete),
then exits 0."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

# uvicorn's exit code for a worker that failed before it served (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3


def reuse_port_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) in the port's SO_REUSEPORT group, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(config: dict[str, Any]) -> None:
    """One worker process: its own socket, then a uvicorn server on it."""
    from portfolio.core.processes import keep_pyarrow_out

    keep_pyarrow_out()  # a new interpreter (spawn): before the app imports pandas
    import uvicorn

    try:
        sock = bound_socket(config["host"], config["port"])
    except OSError as exc:
        print(f"worker cannot bind {config['host']}:{config['port']}: {exc}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
    uvicorn.Server(uvicorn.Config(**config)).run(sockets=[sock])


class Supervisor:
    """Runs ``workers`` processes of ``_worker(config)`` until SIGTERM/SIGINT (see the module)."""

    # A worker that exits sooner than this after its start, this many times in a row, is not
    # restarted again: it would fail the same way each time.
    MIN_UPTIME_S, MAX_QUICK_EXITS = 10.0, 3

    def __init__(
        self, config: dict[str, Any], workers: int, poll_s: float = 0.2, stop_timeout_s: float = 20.0
    ):
        self.config, self.workers = config, workers
        self.poll_s, self.stop_timeout_s = poll_s, stop_timeout_s
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._procs: list[BaseProcess] = []
        self._started: list[float] = []
        self._quick_exits: list[int] = []
        self._stopping = False

    def _spawn(self) -> BaseProcess:
        proc = self._ctx.Process(target=_worker, args=(self.config,), name="api-worker")
        proc.start()
        return proc

    def _replace(self, i: int) -> bool:
        """Start another worker in slot ``i``; False when the slot's worker cannot start."""
        proc = self._procs[i]
        if proc.exitcode == STARTUP_FAILURE:
            log.error("worker %s could not start (see its message above); stopping", proc.pid)
            return False
        quick = time.monotonic() - self._started[i] < self.MIN_UPTIME_S
        self._quick_exits[i] = self._quick_exits[i] + 1 if quick else 0
        if self._quick_exits[i] >= self.MAX_QUICK_EXITS:
            log.error("worker %s exited with %s, %d times within %.0f s of starting; stopping",
                      proc.pid, proc.exitcode, self._quick_exits[i], self.MIN_UPTIME_S)  # fmt: skip
            return False
        log.warning("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
        self._procs[i], self._started[i] = self._spawn(), time.monotonic()
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    def run(self) -> int:
        """0 after a requested stop; 1 when a worker could not start."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self) -> int:
        self._procs = [self._spawn() for _ in range(self.workers)]
        self._started = [time.monotonic()] * self.workers
        self._quick_exits = [0] * self.workers
        log.info("started %d workers on %s:%s", self.workers, self.config["host"], self.config["port"])
        code = 0
        while not self._stopping:
            time.sleep(self.poll_s)
            for i, proc in enumerate(self._procs):
                if proc.exitcode is not None and not self._stopping and not self._replace(i):
                    self._stopping, code = True, 1
        self._stop_all()
        return code

    def _stop_all(self) -> None:
        for proc in self._procs:
            if proc.exitcode is None and proc.pid is not None:
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(5)


def serve_workers(config: dict[str, Any], workers: int) -> int:
    """Serve uvicorn ``config`` (keyword arguments of ``uvicorn.Config``; ``host`` and ``port``
    required) with ``workers`` processes; returns the exit code."""
    return Supervisor(config, workers).run()
