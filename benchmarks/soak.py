"""`make soak`: each service's real API (`portfolio serve`, one uvicorn worker) under concurrent
load for a while: zero errors (non-2xx, socket errors, timeouts), p99 latency reported, and the
server's resident memory (RSS, sampled every 0.5 s) may grow less than 10% from the first to the
last 10 s. Prints one table; exits 1 when a service misses.

Load: `wrk` (one thread; the other core serves) with SOAK_CONNECTIONS (default 32) connections
for SOAK_SECONDS (default 60) after a 5 s warm-up, POSTing /predict with 200 real records in turn.
SOAK_SERVICES (comma-separated) picks services. Champions come from the configured tracking store
(trained first when missing), like `make bench`.
"""

from __future__ import annotations

import os
import sys

from loadgen import RssSampler, ensure_champions, ensure_wrk, run_wrk, sample_records, serve_api

from portfolio.core import registry
from portfolio.core.processes import stop
from portfolio.core.settings import get_settings
from portfolio.services import SERVICES

SECONDS = int(os.environ.get("SOAK_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("SOAK_CONNECTIONS", "32"))
NAMES = [n for n in os.environ.get("SOAK_SERVICES", ",".join(SERVICES)).split(",") if n]
WARMUP_S = 5
MAX_GROWTH = 0.10


def soak(name: str) -> dict[str, float | str]:
    settings = get_settings()
    records = sample_records(SERVICES[name], settings, 200)
    proc, base = serve_api(name, settings)
    try:
        run_wrk(f"{base}/predict", records, CONNECTIONS, WARMUP_S)  # imports, caches, monitor window
        sampler = RssSampler(proc.pid)
        sampler.start()
        result = run_wrk(f"{base}/predict", records, CONNECTIONS, SECONDS)
        sampler.done.set()
        sampler.join()
        alive = proc.poll() is None
    finally:
        stop(proc)
    window = min(10.0, SECONDS / 3)
    first, last = sampler.window_mb(True, window), sampler.window_mb(False, window)
    growth = (last - first) / first
    errors = result["errors"] + result["socket_errors"]
    ok = alive and errors == 0 and result["requests"] > 0 and growth < MAX_GROWTH
    return {
        "service": name,
        "requests": result["requests"],
        "rps": result["rps"],
        "errors": errors,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "rss_first_mb": first,
        "rss_last_mb": last,
        "growth_pct": 100 * growth,
        "verdict": "PASS" if ok else "FAIL",
    }


def main() -> int:
    settings = get_settings()
    registry.configure(settings)
    ensure_wrk()
    ensure_champions(settings, NAMES)
    print(f"soak: {len(NAMES)} service(s), {CONNECTIONS} connections, {SECONDS} s each", flush=True)
    rows = []
    for name in NAMES:
        print(f"{name}: soaking …", flush=True)
        rows.append(soak(name))
    window = min(10.0, SECONDS / 3)
    header = (
        f"{'service':10s} {'requests':>9s} {'req/s':>7s} {'errors':>6s} {'p50 ms':>7s} {'p99 ms':>7s} "
        f"{f'RSS first {window:.0f}s':>14s} {f'RSS last {window:.0f}s':>13s} {'growth':>7s}  verdict"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['service']:10s} {r['requests']:9.0f} {r['rps']:7.0f} {r['errors']:6.0f} "
            f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['rss_first_mb']:11.1f} MB {r['rss_last_mb']:10.1f} MB "
            f"{r['growth_pct']:6.2f}%  {r['verdict']}"
        )
    print(
        f"\nPASS = zero errors (non-2xx, socket errors, timeouts) and RSS growth < {MAX_GROWTH:.0%} "
        f"(median RSS of the first vs the last {window:.0f} s, after a {WARMUP_S} s warm-up). "
        f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}."
    )
    return 0 if all(r["verdict"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
