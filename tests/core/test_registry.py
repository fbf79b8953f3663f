"""The registry module on a real local MLflow (SQLite in tmp): registration tags, the champion
alias, the artifact checksum, and loading a given version or the champion."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from portfolio.core import registry
from portfolio.core.settings import Settings
from tests.conftest import make_settings
from tests.support import synthetic

SPEC = synthetic.CLASSIFIER
NAME = SPEC.name


def test_registration_tags_the_checksum_of_the_artifact(synth_versions: Settings, tmp_path: Path) -> None:
    registry.configure(synth_versions)
    loaded = registry.load_version(SPEC, synth_versions, 1)
    tags = registry.version_tags(NAME, 1)
    assert len(tags["sha256"]) == 64 and loaded.sha256 == tags["sha256"]
    model_file = registry.cached_model_file(synth_versions, NAME, "1")
    assert registry.sha256_file(model_file) == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert registry.sha256_file(model_file) == tags["sha256"]
    # The gate's evidence is on the version: split fit (no refit here) and its hold-out metric.
    assert not registry.is_refit(tags)
    assert registry.logged_holdout_metric(tags, SPEC.primary_metric) is None
    assert 0.5 < float(tags[registry.holdout_tag(SPEC.primary_metric)]) <= 1


def test_champion_lookup_and_promote_move_the_alias(synth_versions: Settings) -> None:
    registry.configure(synth_versions)
    assert str(registry.champion_version(NAME).version) == "1"  # type: ignore[union-attr]
    assert registry.champion_version("no-such-model") is None
    try:
        assert str(registry.promote(NAME, 2).version) == "2"
        assert str(registry.champion_version(NAME).version) == "2"  # type: ignore[union-attr]
        assert registry.load_champion(SPEC, synth_versions).version == "2"
        registry.set_alias(NAME, "challenger", 1)
        aliases = MlflowClient().get_registered_model(NAME).aliases
        assert {k: str(v) for k, v in aliases.items()} == {"champion": "2", "challenger": "1"}
    finally:
        registry.set_alias(NAME, registry.CHAMPION, 1)
        MlflowClient().delete_registered_model_alias(NAME, "challenger")
    assert registry.load_champion(SPEC, synth_versions).version == "1"


def test_load_version_loads_that_version_not_the_champion(synth_versions: Settings) -> None:
    registry.configure(synth_versions)
    v2 = registry.load_version(SPEC, synth_versions, "2")
    assert (v2.name, v2.version, v2.source) == (NAME, "2", "registry")
    assert v2.run_id and "test_roc_auc" in v2.metrics
    assert v2.threshold is not None and 0 < v2.threshold < 1
    champion = registry.load_champion(SPEC, synth_versions)
    assert champion.version == "1"
    # The champion pointer of the local cache follows the champion, not the last version loaded.
    assert registry.load_cached_champion(SPEC, synth_versions).version == "1"  # type: ignore[union-attr]


def test_a_tampered_cached_artifact_is_downloaded_again(synth_versions: Settings) -> None:
    registry.configure(synth_versions)
    model_file = registry.cached_model_file(synth_versions, NAME, "2")
    registry.load_version(SPEC, synth_versions, 2)
    good = model_file.read_bytes()
    model_file.write_bytes(good[:-10] + b"x" * 10)
    loaded = registry.load_version(SPEC, synth_versions, 2)
    assert model_file.read_bytes() == good and loaded.sha256 == registry.version_tags(NAME, 2)["sha256"]


def test_an_artifact_that_does_not_match_its_checksum_is_refused(synth_versions: Settings) -> None:
    registry.configure(synth_versions)
    client = MlflowClient()
    good = registry.version_tags(NAME, 2)["sha256"]
    try:
        client.set_model_version_tag(NAME, "2", "sha256", "0" * 64)
        with pytest.raises(registry.ModelIntegrityError, match=r"checksum mismatch .* artifact refused"):
            registry.load_version(SPEC, synth_versions, 2)
        client.delete_model_version_tag(NAME, "2", "sha256")
        with pytest.raises(registry.ModelIntegrityError, match="v2 has no sha256 tag: refused"):
            registry.load_version(SPEC, synth_versions, 2)
    finally:
        client.set_model_version_tag(NAME, "2", "sha256", good)
    assert registry.load_version(SPEC, synth_versions, 2).sha256 == good


def test_no_champion_is_a_clear_error_and_not_retried(synth_versions: Settings) -> None:
    settings = synth_versions.model_copy(update={"model_load_retries": 3, "model_load_backoff_s": 30})
    unknown = dataclasses.replace(SPEC, name="unregistered")
    with pytest.raises(registry.NoChampionError, match="no champion registered for 'unregistered'"):
        registry.load_champion(unknown, settings)  # a retry would sleep 30 s first
    assert registry.load_cached_champion(unknown, settings) is None


def test_with_retries_retries_transient_failures_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model_load_retries=2, model_load_backoff_s=0)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    assert registry.with_retries(flaky, settings, "flaky") == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionError):
        registry.with_retries(lambda: flaky() if len(calls) < 5 else "", settings, "flaky", retries=1)
    assert len(calls) == 2

    def refused() -> None:
        calls.append(1)
        raise registry.ModelIntegrityError("bad")

    calls.clear()
    with pytest.raises(registry.ModelIntegrityError):
        registry.with_retries(refused, settings, "refused")
    assert len(calls) == 1


def test_refit_versions_report_their_split_twins_holdout_metric() -> None:
    tags = {registry.REFIT_TAG: "true", registry.holdout_tag("roc_auc"): "0.81"}
    assert registry.is_refit(tags) and registry.logged_holdout_metric(tags, "roc_auc") == 0.81
    assert registry.logged_holdout_metric(tags, "f1") is None
    tags[registry.REFIT_TAG] = "false"
    assert registry.logged_holdout_metric(tags, "roc_auc") is None


def test_the_workers_direct_alias_read_agrees_with_mlflow(synth_versions: Settings) -> None:
    """A running API polls its aliases without MLflow's client (core/fetch.py ``_read_alias``):
    on the SQLite store it reads what the client reads, a missing alias included; a tracking
    server that does not answer leaves the answer to the child (no guess)."""
    from portfolio.core.fetch import _read_alias, resolve_and_fetch
    from portfolio.core.processes import free_port

    registry.configure(synth_versions)
    assert _read_alias(synth_versions, NAME, registry.CHAMPION) == (True, "1")
    assert _read_alias(synth_versions, NAME, registry.CHALLENGER) == (True, None)
    assert _read_alias(synth_versions, "no-such-model", registry.CHAMPION) == (True, None)
    try:
        registry.set_alias(NAME, registry.CHAMPION, 2)
        assert _read_alias(synth_versions, NAME, registry.CHAMPION) == (True, "2")
        # A poll that finds the alias moved fetches the new version through the child.
        version, fetched = resolve_and_fetch(synth_versions, NAME, registry.CHAMPION, known="1")
        assert version == "2" and fetched is not None and fetched.path.is_dir()
        assert fetched.sha256 == registry.version_tags(NAME, 2)["sha256"]
    finally:
        registry.set_alias(NAME, registry.CHAMPION, 1)
    dead = synth_versions.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    assert _read_alias(dead, NAME, registry.CHAMPION) == (False, None)


def test_a_worker_start_reuses_a_verified_cached_champion(
    synth_versions: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API worker's start (core/fetch.py ``load_serving_champion``) runs the registry child
    only when the champion is not in its cache yet: a restart on the same cache reads the alias
    and loads the cached copy (checksum-verified). A tampered copy, or an alias that moved, sends
    it back to the child, which downloads and checks against the registry."""
    from portfolio.core import fetch

    settings = synth_versions.model_copy(update={"state_dir": tmp_path / "worker"})  # an empty cache
    children: list[dict[str, object]] = []
    child = fetch._run_child
    monkeypatch.setattr(fetch, "_run_child", lambda request: children.append(request) or child(request))

    first = fetch.load_serving_champion(SPEC, settings)
    assert (first.version, len(children)) == ("1", 1)
    again = fetch.load_serving_champion(SPEC, settings)
    assert (again.version, again.sha256, again.source, len(children)) == ("1", first.sha256, "registry", 1)

    cached = registry.cached_model_file(settings, NAME, "1")
    cached.write_bytes(cached.read_bytes() + b"tampered")
    healed = fetch.load_serving_champion(SPEC, settings)
    assert (healed.sha256, len(children)) == (first.sha256, 2)
    assert registry.sha256_file(cached) == first.sha256

    registry.configure(synth_versions)
    try:
        registry.set_alias(NAME, registry.CHAMPION, 2)
        moved = fetch.load_serving_champion(SPEC, settings)
        assert (moved.version, len(children)) == ("2", 3)
    finally:
        registry.set_alias(NAME, registry.CHAMPION, 1)
