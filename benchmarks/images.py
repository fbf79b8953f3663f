"""Image sizes and cold starts (`make images`): builds every role's image from the Dockerfile as the
README says, trains through the API image against the MLflow container, then starts each role's
container and times container start → ready (/ready 200; the dashboard's and MLflow's /health), with
where an API's start goes: imports, registry fetch, fast-path build and warm-up (from its own log).
Prints a table and rewrites the images section of docs/benchmarks.md.

    python benchmarks/images.py [--before IMAGE ...]   also time older images (same MLflow, models)

Everything it starts (dockerd too, when it was not running) is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.images.engine import (  # noqa: E402
    LABEL,
    Container,
    Engine,
    build,
    ensure_base,
    image_name,
    image_size,
    run_role,
    start_engine,
    start_mlflow,
    train_all,
    wait_until,
)

from portfolio.core.processes import free_port  # noqa: E402
from portfolio.services import SERVICES  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- images:start -->", "<!-- images:end -->"
IMPORTS = (
    "import time; t = time.perf_counter(); import portfolio.app, portfolio.services, uvicorn; "
    "print(round(time.perf_counter() - t, 3))"
)


def api_cold_start(engine: Engine, image: str, role: str, tracking: str) -> dict[str, float]:
    """One container of ``image`` serving ``role``: seconds to /ready, and its logged phases."""
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": tracking, "PORTFOLIO_PORT": str(port), "PORTFOLIO_SERVICE": role}
    container = run_role(engine, role, env, port, image=image)
    try:
        ready = wait_until(f"{container.url}/ready", container)
        out = {"ready_s": ready}
        # The load line is written just after /ready turns 200: give it a moment (older images
        # do not write one).
        deadline = time.monotonic() + 5
        while "fetch_s" not in out and time.monotonic() < deadline:
            for line in container.logs().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "fetch_s" in record:
                    out["fetch_s"], out["warm_up_s"] = record["fetch_s"], record["warm_up_s"]
            time.sleep(0.2)
        return out
    finally:
        engine("rm", "-f", container.id, check=False)


def imports_s(engine: Engine, image: str) -> float:
    """Seconds a fresh container's Python takes to import the API (page cache warm)."""
    out = engine("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", IMPORTS)
    return float(out.stdout.strip().splitlines()[-1])


def role_ready(engine: Engine, role: str, env: dict[str, str], path: str, port: int) -> float:
    """Seconds from container start to ``path`` answering 200 for a non-API role."""
    container: Container = run_role(engine, role, env, port)
    try:
        return wait_until(f"{container.url}{path}", container)
    finally:
        engine("rm", "-f", container.id, check=False)


def main() -> None:
    """Build, measure, print, record (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", nargs="*", default=[], help="older API images to time too")
    args = parser.parse_args()
    engine = start_engine()
    rows: list[tuple[str, str, str, str]] = []
    volume = f"portfolio-bench-mlflow-{uuid.uuid4().hex[:8]}"
    try:
        engine.base, engine.base_kind = ensure_base(engine)
        roles = [*SERVICES, "dashboard", "mlflow"]
        for role in roles:
            build(engine, role)
        sizes = {role: image_size(engine, image_name(role)) for role in roles}
        mlflow, mlflow_ready = start_mlflow(engine, volume)
        train_all(engine, mlflow.url, image_name(next(iter(SERVICES))))
        for role in SERVICES:
            phases = api_cold_start(engine, image_name(role), role, mlflow.url)
            where = (
                f"imports {imports_s(engine, image_name(role)):.1f} s, registry fetch "
                f"{phases.get('fetch_s', float('nan')):.1f} s, fast path build + warm-up "
                f"{phases.get('warm_up_s', float('nan')):.1f} s"
            )
            rows.append((image_name(role), f"{sizes[role] / 1e6:,.0f}", f"{phases['ready_s']:.1f}", where))
        carvision = {}
        if "carvision" in SERVICES:
            cport = free_port()
            carvision = {"CARVISION_API_URL": f"http://127.0.0.1:{cport}"}
        dport = free_port()
        dash = role_ready(
            engine,
            "dashboard",
            {"PORTFOLIO_DASHBOARD_PORT": str(dport), **carvision},
            "/_stcore/health",
            dport,
        )
        rows.append(
            (image_name("dashboard"), f"{sizes['dashboard'] / 1e6:,.0f}", f"{dash:.1f}", "to /_stcore/health")
        )
        rows.append(
            (image_name("mlflow"), f"{sizes['mlflow'] / 1e6:,.0f}", f"{mlflow_ready:.1f}", "to /health")
        )
        for image, role in ((image, role) for image in args.before for role in SERVICES):
            try:
                phases = api_cold_start(engine, image, role, mlflow.url)
            except AssertionError:  # an older image without this service
                rows.append(
                    (f"{image} ({role})", "", "", "not ready within 240 s (or no such service in it)")
                )
                continue
            rows.append(
                (
                    f"{image} ({role})",
                    f"{image_size(engine, image) / 1e6:,.0f}",
                    f"{phases['ready_s']:.1f}",
                    "before",
                )
            )
    finally:
        ids = engine("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
        if ids:
            engine("rm", "-f", *ids, check=False)
        engine("volume", "rm", "-f", volume, check=False)
        engine.stop()
    lines = [
        START,
        "## Images: size and cold start",
        "",
        f"Generated by `make images` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"base image {engine.base} ({engine.base_kind}); {platform.machine()}, Docker "
        "(classic builder). Cold start: `docker run -d` returned → ready answered 200 (APIs: /ready, "
        "model fetched from the MLflow container and the fast path warmed up). One run each; the "
        "machine is shared, so expect ±20%.",
        "",
        "| image | size (MB) | cold start (s) | where it goes |",
        "|---|---:|---:|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        END,
    ]
    section = "\n".join(lines)
    print(section)
    text = DOC.read_text() if DOC.exists() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
