"""The prediction log: one JSON line per scored record, ids as documented, written by a background
thread (rotation, sampling, a full queue counted), every answered record present after SIGTERM of
a real server, and the CLI's batch predictions logged behind --log-predictions."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from portfolio.bankchurn.spec import SPEC as BANK
from portfolio.cli import app as cli_app
from portfolio.core.monitoring import predictions
from portfolio.core.monitoring.predictions import PredictionLog, read_log
from portfolio.core.serving.api import create_app
from portfolio.core.settings import Settings
from tests.support import synthetic
from tests.support.helpers import wait_ready
from tests.support.live import live_api, state_env

RECORD: dict[str, Any] = {f.name: f.example for f in synthetic.CLASSIFIER.fields}
BANK_RECORD: dict[str, Any] = {f.name: f.example for f in BANK.fields}


def _counter(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "portfolio_prediction_log_records_total", {"model_service": "svc", "outcome": outcome}
    )
    return value or 0.0


def test_records_are_lines_with_ids_rotated_by_size(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    plog = PredictionLog(tmp_path, "svc", max_bytes=2000, registry=reg)
    inputs: dict[str, list[Any]] = {"a": list(range(30)), "b": ["x"] * 30}
    outputs = [{"score": i / 30} for i in range(30)]
    plog.submit("r1", "3", "compiled", inputs, outputs, batch=True)
    plog.submit("r2", "3", "compiled", {"a": [7], "b": [None]}, [{"score": 0.5}], batch=False)
    plog.close()
    files = sorted((tmp_path / "svc").glob("*.jsonl"))
    # Rotation happens between writes (one request's lines stay together): r1's 30 lines pass
    # 2,000 bytes, so r2 starts the next file.
    assert len(files) == 2 and len(files[0].read_text().splitlines()) == 30
    plog = PredictionLog(tmp_path, "svc", max_bytes=2000, registry=CollectorRegistry())
    for i in range(5):
        plog.submit(f"q{i}", "3", "compiled", inputs, outputs, batch=True)
    plog.close()
    assert len(list((tmp_path / "svc").glob("*.jsonl"))) == 2 + 5  # each write passes 2,000 bytes
    rows = list(read_log(tmp_path, "svc"))
    assert len(rows) == 31 + 150
    first = rows[0]
    assert first["request_id"] == "r1:0" and rows[29]["request_id"] == "r1:29"
    assert rows[30]["request_id"] == "r2" and rows[30]["inputs"] == {"a": 7, "b": None}
    assert first["service"] == "svc" and first["model_version"] == "3" and first["inference"] == "compiled"
    assert first["inputs"] == {"a": 0, "b": "x"} and first["outputs"] == {"score": 0.0}
    assert _counter(reg, "written") == 31


def test_sampling_logs_a_share_and_counts_the_rest(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    plog = PredictionLog(tmp_path, "svc", sample=0.3, registry=reg)
    plog.submit("r", "1", "compiled", {"a": list(range(2000))}, [{"s": 1}] * 2000, batch=True)
    plog.close()
    written = len(list(read_log(tmp_path, "svc")))
    assert written == _counter(reg, "written")
    assert written + _counter(reg, "sampled_out") == 2000
    assert 450 < written < 750  # binomial(2000, 0.3): mean 600, sd 20
    off = PredictionLog(tmp_path / "off", "svc", sample=0.0, registry=CollectorRegistry())
    off.submit("r", "1", "compiled", {"a": [1]}, [{"s": 1}], batch=False)
    off.close()
    assert not (tmp_path / "off").exists()


class _StalledLog(PredictionLog):
    """A writer that cannot keep up (held until released), to fill the queue."""

    release = threading.Event()

    def _write(self, item: tuple[Any, ...]) -> None:
        self.release.wait(30)
        super()._write(item)


def test_a_full_queue_drops_records_and_counts_them(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    plog = _StalledLog(tmp_path, "svc", queue_size=5, registry=reg)
    for i in range(6):  # 2 records each: r0 (being written) and r1 fit in 5, r2-r5 are dropped
        plog.submit(f"r{i}", "1", "compiled", {"a": [1, 2]}, [{"s": 1}, {"s": 2}], batch=True)
    assert _counter(reg, "dropped_queue_full") == 8
    plog.release.set()
    plog.close()
    assert [r["request_id"] for r in read_log(tmp_path, "svc")] == ["r0:0", "r0:1", "r1:0", "r1:1"]
    assert _counter(reg, "written") == 4
    # Nothing waits any more: a request larger than the whole queue is still taken.
    big = PredictionLog(tmp_path / "big", "svc", queue_size=5, registry=CollectorRegistry())
    big.submit("b", "1", "compiled", {"a": list(range(50))}, [{"s": 1}] * 50, batch=True)
    big.close()
    assert len(list(read_log(tmp_path / "big", "svc"))) == 50


def test_the_api_logs_what_it_answered(synth_trained: Settings, tmp_path: Path) -> None:
    settings = synth_trained.model_copy(update={"prediction_log_dir": tmp_path})
    with TestClient(create_app(synthetic.CLASSIFIER, settings)) as c:
        wait_ready(c)
        one = c.post("/predict", json=RECORD, headers={"X-Request-ID": "abc-1"})
        generated = c.post("/predict", json=RECORD)
        batch = c.post("/predict/batch", json={"records": [RECORD, RECORD | {"x1": 2.0}]},
                       headers={"X-Request-ID": "b7"})  # fmt: skip
        assert one.status_code == generated.status_code == batch.status_code == 200
        assert c.post("/predict", json=RECORD | {"x1": "oops"}).status_code == 422  # not scored
        inference = c.get("/model").json()["inference"]
    rows = {r["request_id"]: r for r in read_log(tmp_path, synthetic.CLASSIFIER.name)}
    assert set(rows) == {"abc-1", generated.headers["x-request-id"], "b7:0", "b7:1"}
    assert rows["abc-1"]["outputs"] == one.json()
    assert [rows["b7:0"]["outputs"], rows["b7:1"]["outputs"]] == batch.json()["predictions"]
    assert rows["b7:1"]["inputs"]["x1"] == 2.0
    assert rows["abc-1"]["inference"] == inference
    assert rows["abc-1"]["model_version"] == one.json()["model_version"]


def test_the_apps_shutdown_drains_a_writer_that_is_behind(
    synth_trained: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API writes its log from its event loop (``PredictionLog.attach``). Its writes are
    held off (the next one an hour away) while requests are answered; leaving the app
    (uvicorn's shutdown on SIGTERM runs the same lifespan) still writes every record, in order."""
    monkeypatch.setattr(predictions, "FLUSH_INTERVAL_S", 3600.0)
    settings = synth_trained.model_copy(update={"prediction_log_dir": tmp_path})
    app = create_app(synthetic.CLASSIFIER, settings)
    plog = app.state.prediction_log
    with TestClient(app) as c:
        wait_ready(c)
        for i in range(20):
            assert c.post("/predict", json=RECORD, headers={"X-Request-ID": f"h{i}"}).status_code == 200
        batch = c.post("/predict/batch", json={"records": [RECORD] * 3}, headers={"X-Request-ID": "hb"})
        assert batch.status_code == 200
        assert plog._loop is not None and plog._thread is None  # the loop writes, no thread
        assert list(read_log(tmp_path, synthetic.CLASSIFIER.name)) == []  # all still queued
    rows = [r["request_id"] for r in read_log(tmp_path, synthetic.CLASSIFIER.name)]
    assert rows == [f"h{i}" for i in range(20)] + ["hb:0", "hb:1", "hb:2"]


def test_the_event_loop_writes_in_slices_and_wakes_when_half_full(tmp_path: Path) -> None:
    """Written from an event loop: every FLUSH_INTERVAL_S, a large backlog a slice at a time
    (other callbacks run between the slices), and at once when the queue passes half full."""
    import asyncio

    async def scenario() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        reg = CollectorRegistry()
        plog = PredictionLog(tmp_path, "svc", queue_size=200_000, registry=reg)
        plog.attach(loop)
        plog.submit("one", "1", "compiled", {"a": [1]}, [{"s": 1}], batch=False)
        await asyncio.sleep(predictions.FLUSH_INTERVAL_S * 4)
        after_tick = len(list(read_log(tmp_path, "svc")))  # written by the timer, file flushed
        ticks = 0

        def count() -> None:
            nonlocal ticks
            ticks += 1

        n = 60_000  # > 2 ms of serialising: more than one slice
        plog.submit("big", "1", "compiled", {"a": list(range(n))}, [{"s": 1}] * n, batch=True)
        plog.submit("big2", "1", "compiled", {"a": list(range(n))}, [{"s": 1}] * n, batch=True)
        plog._tick()  # the first slice now: big2 is left for later
        loop.call_soon(count)  # queued behind the rest of the backlog's first slice
        partial = len(list(read_log(tmp_path, "svc")))
        await asyncio.sleep(0)
        await asyncio.sleep(predictions.FLUSH_INTERVAL_S * 4)
        plog.close()
        return after_tick, partial, ticks

    after_tick, partial, ticks = asyncio.run(scenario())
    assert after_tick == 1
    assert 1 < partial < 1 + 120_000 and ticks == 1  # one slice written, the loop ran between
    rows = list(read_log(tmp_path, "svc"))
    assert len(rows) == 1 + 120_000 and rows[-1]["request_id"] == "big2:59999"

    # Half full wakes the writer before its interval.
    async def hurry() -> int:
        loop = asyncio.get_running_loop()
        plog = PredictionLog(tmp_path / "hurry", "svc", queue_size=10, registry=CollectorRegistry())
        plog.attach(loop)
        plog._timer.cancel()  # type: ignore[union-attr]  # no interval wake-up at all
        plog.submit("h", "1", "compiled", {"a": list(range(6))}, [{"s": 1}] * 6, batch=True)
        await asyncio.sleep(0.01)
        written = len(list(read_log(tmp_path / "hurry", "svc")))
        plog.close()
        return written

    assert asyncio.run(hurry()) == 6


def test_sigterm_flushes_every_answered_record(bank_state: Settings, tmp_path: Path) -> None:
    """A real `portfolio serve`: N records answered, SIGTERM, N lines, each the answer given."""
    logs = tmp_path / "predictions"
    env = state_env(bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(logs))
    answers: dict[str, Any] = {}
    with live_api("bankchurn", env, tmp_path) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        for i in range(150):
            r = http.post(
                "/predict", json=BANK_RECORD | {"Age": 20 + i % 60}, headers={"X-Request-ID": f"s{i}"}
            )
            answers[f"s{i}"] = r.json()
        # Batches of 1,000 right before the signal: the writer is still behind when it comes.
        for b in range(20):
            body = {"records": [BANK_RECORD | {"Age": 18 + (b + i) % 70} for i in range(1000)]}
            r = http.post("/predict/batch", json=body, headers={"X-Request-ID": f"b{b}"})
            for i, p in enumerate(r.json()["predictions"]):
                answers[f"b{b}:{i}"] = p
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(30) == 0
    rows = {r["request_id"]: r["outputs"] for r in read_log(logs, "bankchurn")}
    assert rows == answers


def test_a_killed_server_keeps_what_the_idle_writer_flushed(bank_state: Settings, tmp_path: Path) -> None:
    """SIGKILL (no shutdown at all) after the writer went idle: nothing answered is lost."""
    logs = tmp_path / "predictions"
    env = state_env(bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(logs))
    with live_api("bankchurn", env, tmp_path) as api, httpx.Client(base_url=api.url, timeout=30) as http:
        for i in range(40):
            assert (
                http.post("/predict", json=BANK_RECORD, headers={"X-Request-ID": f"k{i}"}).status_code == 200
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(list(read_log(logs, "bankchurn"))) < 40:
            time.sleep(0.05)
        os.kill(api.proc.pid, signal.SIGKILL)
        api.proc.wait(10)
    assert sorted(r["request_id"] for r in read_log(logs, "bankchurn")) == sorted(f"k{i}" for i in range(40))


def test_cli_predict_logs_behind_the_option(bank_state: Settings, data_dir: Path, tmp_path: Path) -> None:
    raw = pd.read_csv(data_dir / BANK.data_file, nrows=300)
    raw.loc[5, "Age"] = -3  # invalid: an error row, not logged
    src = tmp_path / "in.csv"
    raw.to_csv(src, index=False)
    logs = tmp_path / "predictions"
    env = state_env(bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(logs))
    runner = CliRunner()
    res = runner.invoke(cli_app, ["predict", "bankchurn", str(src), "-o", str(tmp_path / "a.csv")], env=env)
    assert res.exit_code == 0, res.output
    assert not logs.exists()  # off by default
    res = runner.invoke(
        cli_app,
        ["predict", "bankchurn", str(src), "-o", str(tmp_path / "b.csv"), "--log-predictions"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    scored = pd.read_csv(tmp_path / "b.csv")
    rows = list(read_log(logs, "bankchurn"))
    assert len(rows) == 299
    run = rows[0]["request_id"].rsplit(":", 1)[0]
    assert run in res.output and run.startswith("batch-")
    by_row = {int(r["request_id"].rsplit(":", 1)[1]): r for r in rows}
    assert 5 not in by_row and set(by_row) == set(range(300)) - {5}
    for i in (0, 6, 299):
        assert by_row[i]["outputs"]["probability"] == pytest.approx(scored.loc[i, "probability"], abs=1e-12)
        assert by_row[i]["inputs"]["CreditScore"] == raw.loc[i, "CreditScore"]


def test_cli_predict_log_keeps_the_retention(bank_state: Settings, data_dir: Path, tmp_path: Path) -> None:
    """A CLI run configured like the API (PORTFOLIO_PREDICTION_LOG_RETENTION_DAYS) prunes old files."""
    src = tmp_path / "in.csv"
    pd.read_csv(data_dir / BANK.data_file, nrows=20).to_csv(src, index=False)
    logs = tmp_path / "predictions"
    (logs / "bankchurn").mkdir(parents=True)
    old, recent = logs / "bankchurn" / "bankchurn-old.jsonl", logs / "bankchurn" / "bankchurn-recent.jsonl"
    for f in (old, recent):
        f.write_text("")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    env = state_env(
        bank_state, PORTFOLIO_PREDICTION_LOG_DIR=str(logs), PORTFOLIO_PREDICTION_LOG_RETENTION_DAYS="7"
    )
    res = CliRunner().invoke(
        cli_app,
        ["predict", "bankchurn", str(src), "-o", str(tmp_path / "o.csv"), "--log-predictions"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    assert not old.exists() and recent.exists()
    assert len(list(read_log(logs, "bankchurn"))) == 20
