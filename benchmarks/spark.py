"""`make bench` (second part): `portfolio predict --engine spark` on local[2] against the local
engine, on the same 1,000,000 rows (BENCH_CLI_ROWS) per service (BENCH_SPARK_SERVICES, default
all). Each figure is the median of BENCH_SPARK_RUNS runs (default 3) of the command's own timing
("… in 3.21 s": local = reading, validating, scoring, writing; spark = also starting the session,
and reading the written output back to count rows and errors) and of the whole process.
Writes docs/benchmarks-spark.md.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from loadgen import ensure_champions  # benchmarks/loadgen.py

from portfolio.core import registry
from portfolio.core.data import read_raw_csv
from portfolio.core.processes import bin_path
from portfolio.core.settings import get_settings
from portfolio.services import SERVICES

ROOT = Path(__file__).resolve().parents[1]
ROWS = int(os.environ.get("BENCH_CLI_ROWS", "1000000"))
RUNS = int(os.environ.get("BENCH_SPARK_RUNS", "3"))
NAMES = [n for n in os.environ.get("BENCH_SPARK_SERVICES", ",".join(SERVICES)).split(",") if n]
MASTER = "local[2]"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(the command's own seconds, wall seconds of the whole process)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = re.search(r"in ([0-9.]+) s \(", " ".join(proc.stdout.split()))
    assert found, proc.stdout[-2000:]
    return float(found.group(1)), wall


def median(values: list[tuple[float, float]]) -> tuple[float, float]:
    return sorted(values)[len(values) // 2]


def main() -> None:
    settings = get_settings()
    registry.configure(settings)
    ensure_champions(settings, NAMES)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    lines = []
    for name in NAMES:
        spec = SERVICES[name]
        raw = read_raw_csv(settings.resolved_data_dir / spec.data_file)
        big = raw.sample(ROWS, replace=True, random_state=0)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.csv"
            big.to_csv(src, index=False)
            local_out, spark_out = Path(tmp) / "local.csv", Path(tmp) / "spark-out"
            base = [bin_path("portfolio"), "predict", name, str(src)]
            local = median([timed([*base, "--output", str(local_out)], env) for _ in range(RUNS)])
            spark_cmd = [*base, "--output", str(spark_out), "--engine", "spark", "--spark-master", MASTER]
            spark = median([timed(spark_cmd, env) for _ in range(RUNS)])
            parts = sorted(spark_out.glob("part-*.csv"))
            spark_rows = sum(len(pd.read_csv(p, usecols=[0])) for p in parts)
            assert spark_rows == ROWS, spark_rows
            shutil.rmtree(spark_out, ignore_errors=True)
        row = (
            f"| {name} | {ROWS:,} | {ROWS / local[0]:,.0f} | {ROWS / local[1]:,.0f} | "
            f"{ROWS / spark[0]:,.0f} | {ROWS / spark[1]:,.0f} | {local[0] / spark[0]:.2f} |"
        )
        print(row, flush=True)
        lines.append(row)
    report = [
        "# Batch scoring: local engine vs Spark (local[2])",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `benchmarks/spark.py` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"pyspark {version('pyspark')}, mlflow {version('mlflow')}. Median of {RUNS} runs each; "
        "rows/s by the command's own timing and by the whole process (start-up, imports, "
        "model load, JVM).",
        "",
        "| service | rows | local rows/s | local rows/s (process) | spark rows/s | "
        "spark rows/s (process) | local/spark time |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
    ]
    (ROOT / "docs" / "benchmarks-spark.md").write_text("\n".join(report))


if __name__ == "__main__":
    main()
