"""MLflow tracking and model registry: configure, log + register, the champion/challenger gate,
and loading a registered version safely (checksum-verified, skops with an explicit allow-list).

Everything a command needs comes from one URI (``Settings.tracking_uri``): a local SQLite file by
default, or a real ``mlflow server`` when ``MLFLOW_TRACKING_URI`` says so.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# The MLflow-free half (local cache, safe loading) lives in model_cache, which API workers use
# alone; re-exported here for every other caller.
from portfolio.core.model_cache import (
    BASE_TRUSTED_TYPES,
    CHALLENGER,
    CHAMPION,
    MODEL_FILE,
    CachedVersion,
    LoadedModel,
    ModelIntegrityError,
    NoChampionError,
    cache_dir,
    cached_model_file,
    load_artifact,
    load_cached_champion,
    model_file_in,
    remember_champion,
    sha256_file,
    trusted_types,
    with_retries,
    write_version_meta,
)
from portfolio.core.settings import Settings

if TYPE_CHECKING:
    from portfolio.core.spec import ServiceSpec

__all__ = [
    "BASE_TRUSTED_TYPES",
    "CHALLENGER",
    "CHAMPION",
    "MODEL_FILE",
    "LoadedModel",
    "ModelIntegrityError",
    "NoChampionError",
    "cached_model_file",
    "load_artifact",
    "load_cached_champion",
    "model_file_in",
    "sha256_file",
    "trusted_types",
    "with_retries",
]

log = logging.getLogger(__name__)


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' URI (tracking and registry alike); create local folders."""
    # No phoning home: this platform runs on closed networks.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow's own HTTP retries default to ~7 with exponential backoff (minutes per call); keep
    # them short so our bounded backoff (PORTFOLIO_MODEL_LOAD_RETRIES) decides how long we wait.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not settings.mlflow_tracking_uri:
        settings.resolved_state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/", "postgresql:", "mysql:"))


def ensure_experiment(name: str, settings: Settings) -> str:
    """The experiment id for ``name``; with a local store its artifacts go under the state dir."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if is_local_store(settings.tracking_uri):
        location = (settings.artifact_root / name).as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def champion_version(name: str) -> ModelVersion | None:
    return alias_version(name, CHAMPION)


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to (None when the model or the alias does not exist)."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def delete_alias(name: str, alias: str) -> None:
    """Remove an alias (e.g. ``challenger`` once it became the champion)."""
    MlflowClient().delete_registered_model_alias(name, alias)


def set_alias(name: str, alias: str, version: str | int) -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


# Version tags written at registration. A version refit on all rows (train + hold-out) after its
# evaluation has seen the hold-out, so re-scoring it there would flatter it: the gate reads the
# hold-out metric of its split-fitted twin from ``holdout_<metric>`` instead.
REFIT_TAG = "refit_full"


def holdout_tag(metric: str) -> str:
    return f"holdout_{metric}"


def version_tags(name: str, version: str | int) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(name, str(version)).tags or {})


def is_refit(tags: Mapping[str, str]) -> bool:
    return tags.get(REFIT_TAG) == "true"


def logged_holdout_metric(tags: Mapping[str, str], metric: str) -> float | None:
    """The recorded hold-out ``metric`` of a refit version (its split-fitted twin's); None when the
    version was not refit or has no such tag."""
    value = tags.get(holdout_tag(metric))
    return float(value) if is_refit(tags) and value is not None else None


def run_provenance(run_id: str | None) -> dict[str, str]:
    """Data hash and split settings of a version's training run ({} when unavailable)."""
    if not run_id:
        return {}
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return {}
    params, tags = run.data.params, run.data.tags
    found = {
        "data_md5": tags.get("data_md5"),
        "test_size": params.get("test_size"),
        "seed": params.get("seed"),
    }
    return {k: v for k, v in found.items() if v is not None}


def champion_candidate(name: str) -> str | None:
    """The candidate the champion was trained as (its training run's ``model`` param).

    Args:
        name: The registered model (the service's name); the registry must be configured.

    Returns:
        The candidate's name, or None when there is no champion or its run is unreachable.
    """
    try:
        mv = champion_version(name)
        return MlflowClient().get_run(mv.run_id).data.params.get("model") if mv and mv.run_id else None
    except Exception:
        return None


def model_uri(name: str, version: str | None) -> str:
    """The ``models:/`` URI of a version, or of the champion alias when ``version`` is None.

    Args:
        name: The registered model (the service's name); the registry must be configured.
        version: A registered version, or None for the champion.

    Returns:
        The URI. Raises ``NoChampionError`` when the champion is asked for and there is none.
    """
    if version is None and champion_version(name) is None:
        raise NoChampionError(f"no champion registered for {name!r}: run `portfolio train {name}`")
    return f"models:/{name}/{version}" if version else f"models:/{name}@{CHAMPION}"


@dataclass(frozen=True)
class VersionRow:
    """One registered version as `portfolio models` lists it."""

    version: str
    aliases: tuple[str, ...]
    holdout: float | None  # the training run's ``test_<metric>``
    created_ms: int


def list_versions(name: str, metric: str) -> list[VersionRow]:
    """Every registered version of ``name``, newest first, with its aliases and hold-out ``metric``.

    Args:
        name: The registered model (the service's name); the registry must be configured.
        metric: The metric whose ``test_`` figure each version's training run logged.

    Returns:
        The rows; none when the model is not registered or the registry cannot be read.
    """
    client = MlflowClient()
    try:
        versions = list(client.search_model_versions(f"name='{name}'"))
        # The registered model holds the aliases (search results leave them out).
        aliases = client.get_registered_model(name).aliases
    except Exception:
        versions, aliases = [], {}
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        run = client.get_run(mv.run_id) if mv.run_id else None
        rows.append(
            VersionRow(
                version=str(mv.version),
                aliases=tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
                holdout=run.data.metrics.get(f"test_{metric}") if run else None,
                created_ms=int(mv.creation_timestamp),
            )
        )
    return rows


def promote(name: str, version: str | int) -> ModelVersion:
    """Move ``champion`` to ``version`` by hand (the gate is the automatic path)."""
    client = MlflowClient()
    mv = client.get_model_version(name, str(version))
    client.set_registered_model_alias(name, CHAMPION, str(mv.version))
    return mv


def download_version(name: str, settings: Settings, version: str | int) -> CachedVersion:
    """Download one registered version into the local cache once (a cached copy whose checksum
    matches the registered one is kept), with its metadata; the artifact is not loaded.

    Args:
        name: The registered model; the registry must be configured.
        settings: Where the model cache is.
        version: The registered version.

    Returns:
        The cached version. Raises ``ModelIntegrityError`` when the version has no sha256 tag or
        the downloaded file does not match it.
    """
    client = MlflowClient()
    mv = client.get_model_version(name, str(version))
    expected = (mv.tags or {}).get("sha256")
    if not expected:
        raise ModelIntegrityError(f"{name} v{mv.version} has no sha256 tag: refused")
    target = cache_dir(settings, name, str(mv.version))
    model_file = model_file_in(target)
    if not model_file.exists() or sha256_file(model_file) != expected:
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        actual = sha256_file(model_file_in(target))
        if actual != expected:
            raise ModelIntegrityError(
                f"{name}: checksum mismatch for {model_file_in(target)} (expected {expected[:12]}…, "
                f"got {actual[:12]}…): artifact refused"
            )
    metrics: dict[str, float] = {}
    if mv.run_id:
        metrics = dict(client.get_run(mv.run_id).data.metrics)
    write_version_meta(target, str(mv.version), expected, mv.run_id, metrics)
    return CachedVersion(name, str(mv.version), expected, mv.run_id, metrics, target)


def load_version(spec: ServiceSpec, settings: Settings, version: str | int) -> LoadedModel:
    """Download (once, into the local cache) and load one registered version."""
    cached = download_version(spec.name, settings, version)
    model, sha = load_artifact(spec, cached.path, cached.sha256)
    return LoadedModel(spec.name, cached.version, model, sha, cached.run_id, cached.metrics)


def load_champion(spec: ServiceSpec, settings: Settings) -> LoadedModel:
    """``models:/<name>@champion`` with retries; when the tracking server stays unreachable, the
    most recently cached champion is served instead (``source == "cache"``)."""
    configure(settings)

    def fetch() -> LoadedModel:
        mv = champion_version(spec.name)
        if mv is None:
            raise NoChampionError(
                f"no champion registered for {spec.name!r}: run `portfolio train {spec.name}`"
            )
        loaded = load_version(spec, settings, mv.version)
        remember_champion(settings, spec.name, loaded.version)
        return loaded

    try:
        return with_retries(fetch, settings, f"loading {spec.name}@champion")
    except (NoChampionError, ModelIntegrityError):
        raise
    except Exception as exc:
        cached = load_cached_champion(spec, settings)
        if cached is None:
            raise
        log.warning("tracking server unreachable (%s): serving cached %s v%s", exc, spec.name, cached.version)
        return cached
