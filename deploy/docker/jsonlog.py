"""Run a command and print each line it writes as one JSON object (for roles whose server logs text).

    python jsonlog.py LOGGER -- COMMAND [ARG...]

The MLflow server (gunicorn/uvicorn inside `mlflow server`) and Streamlit print plain text lines;
in a container every line must be JSON for the log collector. Lines that already are JSON objects
pass through unchanged; any other line becomes {"ts", "level", "logger", "msg"} with the level read
from the line when it names one. SIGTERM/SIGINT go to the command, whose exit code this returns.
Standard library only: the MLflow image does not carry the portfolio package.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b")


def as_json(line: str, logger: str) -> str:
    """``line`` as one JSON log line.

    Args:
        line: a line the command printed (without its newline).
        logger: the ``logger`` field for text lines.

    Returns:
        The line itself when it is a JSON object, else a JSON object wrapping it.
    """
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            if isinstance(json.loads(stripped), dict):
                return stripped
        except ValueError:
            pass
    found = LEVEL.search(stripped)
    level = found.group(1) if found else "INFO"
    now = time.time()
    return json.dumps(
        {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "level": "WARNING" if level == "WARN" else level,
            "logger": logger,
            "msg": stripped,
        }
    )


def pump(stream: IO[bytes], out: IO[str], logger: str, lock: threading.Lock) -> None:
    """Copy ``stream`` to ``out`` line by line as JSON."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line.strip():
            with lock:
                out.write(as_json(line, logger) + "\n")
                out.flush()


def main(argv: list[str]) -> int:
    """Command line (see the module docstring); returns the command's exit code."""
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 64
    logger, command = argv[0], argv[2:]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    lock = threading.Lock()
    pumps = [
        threading.Thread(target=pump, args=(child.stdout, sys.stdout, logger, lock), daemon=True),
        threading.Thread(target=pump, args=(child.stderr, sys.stderr, logger, lock), daemon=True),
    ]
    for thread in pumps:
        thread.start()
    code = child.wait()
    for thread in pumps:
        thread.join(timeout=5)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
