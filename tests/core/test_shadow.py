"""Shadow challenger: with PORTFOLIO_SHADOW the API scores @challenger off the request path and logs
its outputs as shadow lines (same ids, the challenger's version) while the answers stay those of
the champion; a full queue drops and counts; the challenger follows its alias; `performance`
compares both on the same labelled rows and `promote --if-better` acts by the gate's rule;
old prediction log files are deleted after the retention period."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sklearn import metrics as skm

from portfolio.core import registry
from portfolio.core.monitoring.feedback import record_feedback
from portfolio.core.monitoring.performance import performance_report
from portfolio.core.monitoring.predictions import PredictionLog, prune_log, read_log
from portfolio.core.monitoring.shadow import ChallengerHolder, ShadowScorer
from portfolio.core.serving.api import create_app
from portfolio.core.serving.inference import load_predictor
from portfolio.core.settings import Settings
from portfolio.core.training.retrain import promote_if_better
from portfolio.core.training.train import train_service
from tests.conftest import make_settings
from tests.support import synthetic
from tests.support.helpers import wait_ready

SPEC = synthetic.CLASSIFIER


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A synthetic classifier with v1 @champion and a weaker v2 (noise and x2 only) that the gate
    made @challenger."""
    root = tmp_path_factory.mktemp("shadow")
    (root / "data").mkdir()
    synthetic.write_csv(root / "data" / "synth.csv", n=600)
    settings = make_settings(root / "state", data_dir=root / "data", cv_folds=2)
    assert train_service(SPEC, settings, params={}).alias == "champion"
    weak = {"candidates": {"logistic": {"features": ["noise", "x2"]}}}
    outcome = train_service(SPEC, settings, params=weak)
    assert (outcome.version, outcome.alias) == ("2", "challenger")
    return settings


def _records(n: int, seed: int) -> list[dict[str, Any]]:
    frame = synthetic.make_frame(n, seed=seed)
    return json.loads(frame[SPEC.feature_names].to_json(orient="records"))


def _serve(settings: Settings, records: list[dict[str, Any]]) -> tuple[list[Any], str]:
    """The API on ``settings``: a batch and single requests; (answers, /metrics text)."""
    answers: list[Any] = []
    with TestClient(create_app(SPEC, settings)) as c:
        wait_ready(c)
        shadow = c.app.state.shadow  # type: ignore[attr-defined]
        if shadow is not None:
            deadline = time.monotonic() + 30
            while shadow.holder.predictor is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert shadow.holder.version == "2", shadow.holder.error
        answers.append(
            c.post("/predict/batch", json={"records": records[:50]}, headers={"X-Request-ID": "b"}).json()
        )
        for i, rec in enumerate(records[50:]):
            answers.append(c.post("/predict", json=rec, headers={"X-Request-ID": f"s{i}"}).json())
        if shadow is not None:
            shadow.close()  # everything queued is scored (the shutdown does the same)
        metrics = c.get("/metrics").text
    return answers, metrics


def test_shadow_lines_carry_the_challengers_outputs_and_answers_are_unchanged(
    pair: Settings, tmp_path: Path
) -> None:
    records = _records(60, seed=5)
    off = pair.model_copy(update={"prediction_log_dir": tmp_path / "off", "shadow": False})
    on = pair.model_copy(update={"prediction_log_dir": tmp_path / "on", "shadow": True})
    answers_off, _ = _serve(off, records)
    answers_on, metrics = _serve(on, records)
    assert answers_on == answers_off  # byte for byte the champion's answers
    assert all(a["model_version"] == "1" for a in answers_on[1:])
    assert not any(r["shadow"] for r in read_log(tmp_path / "off", SPEC.name))
    lines = list(read_log(tmp_path / "on", SPEC.name))
    served = {r["request_id"]: r for r in lines if not r["shadow"]}
    shadow = {r["request_id"]: r for r in lines if r["shadow"]}
    ids = [f"b:{i}" for i in range(50)] + [f"s{i}" for i in range(10)]
    assert list(served) == ids and set(shadow) == set(ids)
    assert {r["model_version"] for r in shadow.values()} == {"2"}
    assert all(shadow[i]["inputs"] == served[i]["inputs"] for i in ids)
    # The challenger's own outputs on those records (explanations off: none for this service).
    v2 = load_predictor(SPEC, pair, "2").predict_records(records, explain=False)
    got = np.array([shadow[i]["outputs"]["probability"] for i in ids])
    assert np.allclose(got, [o["probability"] for o in v2], atol=1e-12)
    champion = np.array([served[i]["outputs"]["probability"] for i in ids])
    assert not np.allclose(got, champion)  # really another model
    assert 'portfolio_shadow_records_total{model_service="synthclf",outcome="scored"} 60.0' in metrics


def test_a_full_queue_drops_and_counts(pair: Settings, tmp_path: Path) -> None:
    reg = CollectorRegistry()
    plog = PredictionLog(tmp_path, SPEC.name, registry=reg)
    holder = ChallengerHolder(SPEC, pair)
    holder.refresh()
    settings = pair.model_copy(update={"shadow_queue": 3})
    scorer = ShadowScorer(SPEC, settings, plog, reg, holder=holder)
    values = {n: [r[n] for r in _records(2, seed=1)] for n in SPEC.feature_names}
    # Not started: nothing is taken off the queue, so the second request does not fit.
    scorer.submit("a", "1", values, 2, batch=True)
    scorer.submit("b", "1", values, 2, batch=True)
    scorer.submit("c", "2", values, 1, batch=False)  # fits: 2 + 1 <= 3; answered by v2 itself
    scorer._thread = None
    scorer.start()
    scorer.close()
    plog.close()

    def count(outcome: str) -> float:
        return (
            reg.get_sample_value(
                "portfolio_shadow_records_total", {"model_service": SPEC.name, "outcome": outcome}
            )
            or 0.0
        )

    assert (count("scored"), count("dropped_queue_full"), count("skipped")) == (2, 2, 1)
    assert [r["request_id"] for r in read_log(tmp_path, SPEC.name)] == ["a:0", "a:1"]


def test_the_challenger_follows_its_alias(pair: Settings) -> None:
    holder = ChallengerHolder(SPEC, pair)
    assert holder.refresh() and holder.version == "2"
    assert not holder.refresh()  # unchanged
    try:
        registry.set_alias(SPEC.name, registry.CHALLENGER, "1")
        assert holder.refresh() and holder.version == "1"
        registry.delete_alias(SPEC.name, registry.CHALLENGER)
        assert holder.refresh() and holder.predictor is None
    finally:
        registry.set_alias(SPEC.name, registry.CHALLENGER, "2")


def _logged_pair(
    log_dir: Path, n: int, champion: np.ndarray, challenger: np.ndarray, y: np.ndarray, label: bool = True
) -> None:
    plog = PredictionLog(log_dir, SPEC.name)
    for i in range(n):
        plog.submit(
            f"r{i}", "1", "compiled", {"x1": [0.0]}, [{"probability": champion[i], "threshold": 0.5}], False
        )
        plog.submit(
            f"r{i}",
            "2",
            "compiled",
            {"x1": [0.0]},
            [{"probability": challenger[i], "threshold": 0.4}],
            False,
            shadow=True,
        )
    plog.close()
    if label:
        text = "request_id,label\n" + "".join(f"r{i},{int(y[i])}\n" for i in range(n))
        (log_dir / "labels.csv").write_text(text)
        record_feedback(SPEC, log_dir, log_dir / "labels.csv")


def _scores(rng: np.random.Generator, y: np.ndarray, signal: float) -> np.ndarray:
    return np.clip(signal * y + (1 - signal) * rng.random(len(y)), 0, 1)


def test_performance_compares_champion_and_challenger_on_the_same_rows(
    pair: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(int)
    champ, chal = _scores(rng, y, 0.2), _scores(rng, y, 0.4)
    _logged_pair(tmp_path, 300, champ, chal, y)
    registry.configure(pair)
    report = performance_report(SPEC, tmp_path, rounds=200)
    # The served figures ignore the shadow lines.
    assert report["rows"] == 300 and list(report["versions"]) == ["1"]
    assert report["metrics"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, champ), abs=1e-12)
    (comp,) = report["comparisons"]
    assert (comp["champion_version"], comp["challenger_version"], comp["rows"]) == ("1", "2", 300)
    assert comp["champion"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, champ), abs=1e-12)
    assert comp["challenger"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, chal), abs=1e-12)
    assert comp["challenger"]["f1"]["value"] == pytest.approx(skm.f1_score(y, chal >= 0.4), abs=1e-12)
    d = comp["difference"]
    assert d["value"] == pytest.approx(skm.roc_auc_score(y, chal) - skm.roc_auc_score(y, champ), abs=1e-12)
    assert d["ci_low"] <= d["value"] <= d["ci_high"]
    assert comp["challenger_wins"] is True and "not worse than" in comp["reason"]
    for m in ("champion", "challenger"):
        assert comp[m]["roc_auc"]["ci_low"] < comp[m]["roc_auc"]["ci_high"]


@pytest.fixture
def aliases_restored(pair: Settings) -> Iterator[Settings]:
    yield pair
    registry.configure(pair)
    registry.set_alias(SPEC.name, registry.CHAMPION, "1")
    registry.set_alias(SPEC.name, registry.CHALLENGER, "2")


def test_promote_if_better_follows_the_gate_on_the_shared_rows(
    aliases_restored: Settings, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(300) < 0.4).astype(int)
    # Nothing to compare: no labels yet.
    none = aliases_restored.model_copy(update={"prediction_log_dir": tmp_path / "none"})
    _logged_pair(tmp_path / "none", 20, y * 1.0, y * 1.0, y, label=False)
    decision = promote_if_better(SPEC, none, rounds=100)
    assert decision.code == 2 and "no labelled record" in decision.reason
    # The challenger is worse on these rows: kept.
    worse = aliases_restored.model_copy(update={"prediction_log_dir": tmp_path / "worse"})
    _logged_pair(tmp_path / "worse", 300, _scores(rng, y, 0.5), _scores(rng, y, 0.1), y)
    decision = promote_if_better(SPEC, worse, rounds=100)
    assert (decision.code, decision.promoted) == (1, False) and "worse than" in decision.reason
    assert str(registry.champion_version(SPEC.name).version) == "1"  # type: ignore[union-attr]
    # Better: promoted, and the challenger alias is gone (it is the champion).
    better = aliases_restored.model_copy(update={"prediction_log_dir": tmp_path / "better"})
    _logged_pair(tmp_path / "better", 300, _scores(rng, y, 0.1), _scores(rng, y, 0.5), y)
    decision = promote_if_better(SPEC, better, rounds=100)
    assert (decision.code, decision.promoted) == (0, True), decision.reason
    assert str(registry.champion_version(SPEC.name).version) == "2"  # type: ignore[union-attr]
    assert registry.alias_version(SPEC.name, registry.CHALLENGER) is None
    again = promote_if_better(SPEC, better, rounds=100)
    assert again.code == 2 and "no @challenger" in again.reason


def test_sampling_keeps_a_records_champion_and_shadow_lines_together(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path, "svc", sample=0.5, registry=CollectorRegistry())
    ids = {"a": list(range(400))}
    plog.submit("r", "1", "compiled", ids, [{"s": 1}] * 400, batch=True)
    plog.submit("r", "2", "compiled", ids, [{"s": 2}] * 400, batch=True, shadow=True)
    plog.close()
    lines = list(read_log(tmp_path, "svc"))
    served = {r["request_id"] for r in lines if not r["shadow"]}
    shadow = {r["request_id"] for r in lines if r["shadow"]}
    assert served == shadow and 120 < len(served) < 280


def test_retention_deletes_only_old_log_files(tmp_path: Path) -> None:
    folder = tmp_path / "svc"
    folder.mkdir()
    now = time.time()
    old, recent = folder / "svc-1-0000.jsonl", folder / "svc-2-0000.jsonl"
    labels, report = folder / "labels.jsonl", folder / "performance.json"
    for path in (old, recent, labels, report):
        path.write_text("{}\n")
        os.utime(path, (now - 10 * 86400, now - 10 * 86400))
    os.utime(recent, (now - 86400, now - 86400))
    assert prune_log(tmp_path, "svc", 7, now=now) == [old]
    assert sorted(p.name for p in folder.iterdir()) == [
        "labels.jsonl",
        "performance.json",
        "svc-2-0000.jsonl",
    ]
    # The writer prunes when it opens a file (and hourly), never its own file.
    plog = PredictionLog(tmp_path, "svc", retention_days=0.5, registry=CollectorRegistry())
    plog.submit("r", "1", "compiled", {"a": [1]}, [{"s": 1}], batch=False)
    plog.close()
    names = sorted(p.name for p in folder.iterdir())
    assert "svc-2-0000.jsonl" not in names and len([n for n in names if n.endswith(".jsonl")]) == 2
