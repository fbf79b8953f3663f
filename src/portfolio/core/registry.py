"""MLflow tracking and model registry: configure, log + register, the champion/challenger gate,
and loading a registered version safely (checksum-verified, skops with an explicit allow-list).

Everything a command needs comes from one URI (``Settings.tracking_uri``): a local SQLite file by
default, or a real ``mlflow server`` when ``MLFLOW_TRACKING_URI`` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import skops.io as sio
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from portfolio.core.estimators import CORE_TRUSTED_TYPES
from portfolio.core.settings import Settings
from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_FILE = "model.skops"
T = TypeVar("T")

# scikit-learn/xgboost/imblearn types that appear inside our pipelines. skops trusts most of
# scikit-learn already; these are the extra names it asks about. The list lives in code, never in
# the artifact, so a tampered model cannot widen it.
BASE_TRUSTED_TYPES: tuple[str, ...] = (
    "xgboost.core.Booster",
    "xgboost.sklearn.XGBClassifier",
    "xgboost.sklearn.XGBRegressor",
    "sklearn.model_selection._classification_threshold.FixedThresholdClassifier",
    "sklearn.utils._bunch.Bunch",
    "numpy.dtype",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Int64DType",
    "numpy.dtypes.ObjectDType",
    "builtins.slice",
    *CORE_TRUSTED_TYPES,
)


class ModelIntegrityError(RuntimeError):
    """The artifact's checksum does not match the one recorded at registration."""


class NoChampionError(LookupError):
    pass


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


def trusted_types(spec: ServiceSpec) -> list[str]:
    return sorted({*BASE_TRUSTED_TYPES, *spec.trusted_types})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def with_retries(fn: Callable[[], T], settings: Settings, what: str, retries: int | None = None) -> T:
    """Call ``fn``, retrying transient failures with exponential backoff (bounded)."""
    attempts = (settings.model_load_retries if retries is None else retries) + 1
    delay = settings.model_load_backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (NoChampionError, ModelIntegrityError):
            raise
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning(
                "%s failed (attempt %d/%d): %s; retrying in %.1fs",
                what,
                attempt,
                attempts,
                exc,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


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


@dataclass
class LoadedModel:
    """A registered model version in memory, with what serving needs to describe it."""

    name: str
    version: str
    model: Any
    sha256: str
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    source: str = "registry"  # "registry" or "cache" (tracking server unreachable)

    @property
    def threshold(self) -> float | None:
        value = getattr(self.model, "threshold", None)
        return None if value is None else float(value)


def _cache_dir(settings: Settings, name: str, version: str) -> Path:
    return settings.model_cache_dir / name / f"v{version}"


def model_file_in(folder: Path) -> Path:
    """The skops file of a downloaded model folder: at its top (models logged before the pyfunc
    layout) or under ``artifacts/`` (pyfunc models); the latter path when neither exists."""
    top = folder / MODEL_FILE
    return top if top.exists() else folder / "artifacts" / MODEL_FILE


def cached_model_file(settings: Settings, name: str, version: str | int) -> Path:
    """Where the local cache keeps the skops file of ``name`` version ``version``."""
    return model_file_in(_cache_dir(settings, name, str(version)))


def load_artifact(spec: ServiceSpec, path: Path, expected_sha: str | None) -> tuple[Any, str]:
    """Check the skops file's sha256 (when expected), then load it with the code's allow-list.
    ``path`` is the file or a downloaded model folder (pyfunc models keep it under artifacts/)."""
    file = model_file_in(path) if path.is_dir() else path
    actual = sha256_file(file)
    if expected_sha and actual != expected_sha:
        raise ModelIntegrityError(
            f"{spec.name}: checksum mismatch for {file} (expected {expected_sha[:12]}…, "
            f"got {actual[:12]}…): artifact refused"
        )
    return sio.load(file, trusted=trusted_types(spec)), actual


def load_version(spec: ServiceSpec, settings: Settings, version: str | int) -> LoadedModel:
    """Download (once, into the local cache) and load one registered version."""
    client = MlflowClient()
    mv = client.get_model_version(spec.name, str(version))
    expected = (mv.tags or {}).get("sha256")
    if not expected:
        raise ModelIntegrityError(f"{spec.name} v{mv.version} has no sha256 tag: refused")
    target = _cache_dir(settings, spec.name, str(mv.version))
    model_file = model_file_in(target)
    if not model_file.exists() or sha256_file(model_file) != expected:
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{spec.name}/{mv.version}", dst_path=str(tmp)
        )
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    model, sha = load_artifact(spec, target, expected)
    metrics: dict[str, float] = {}
    if mv.run_id:
        metrics = dict(client.get_run(mv.run_id).data.metrics)
    loaded = LoadedModel(spec.name, str(mv.version), model, sha, mv.run_id, metrics)
    (target / "version.json").write_text(
        json.dumps({"version": loaded.version, "sha256": sha, "run_id": mv.run_id, "metrics": metrics})
    )
    return loaded


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
        _remember_champion(settings, spec.name, loaded.version)
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


def _remember_champion(settings: Settings, name: str, version: str) -> None:
    pointer = settings.model_cache_dir / name / "champion.json"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"version": version}))


def load_cached_champion(spec: ServiceSpec, settings: Settings) -> LoadedModel | None:
    pointer = settings.model_cache_dir / spec.name / "champion.json"
    if not pointer.exists():
        return None
    version = json.loads(pointer.read_text())["version"]
    target = _cache_dir(settings, spec.name, version)
    meta = json.loads((target / "version.json").read_text())
    model, sha = load_artifact(spec, target, meta["sha256"])
    return LoadedModel(
        spec.name, version, model, sha, meta.get("run_id"), meta.get("metrics", {}), source="cache"
    )
