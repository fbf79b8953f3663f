"""The local model cache and safe loading of a registered version's artifact, without MLflow.

An API worker loads its models from here only: the registry itself is read by a short-lived
subprocess (``core/fetch.py``) that downloads into this cache, so a worker never imports the
MLflow client (and, with the SQLite store, SQLAlchemy and Alembic): ~80 MB per worker (issue 33).
``core/registry.py`` (tracking, registration, the gate) builds on it.

Layout: ``<state>/model-cache/<name>/v<version>/`` holds the downloaded model folder and
``version.json`` (sha256, run id, metrics); ``<name>/champion.json`` names the last champion
loaded, served when the tracking server is unreachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from portfolio.core.settings import Settings

if TYPE_CHECKING:
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
)


class ModelIntegrityError(RuntimeError):
    """The artifact's checksum does not match the one recorded at registration."""


class NoChampionError(LookupError):
    pass


def trusted_types(spec: ServiceSpec) -> list[str]:
    from portfolio.core.estimators import CORE_TRUSTED_TYPES

    return sorted({*BASE_TRUSTED_TYPES, *CORE_TRUSTED_TYPES, *spec.trusted_types})


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


def cache_dir(settings: Settings, name: str, version: str) -> Path:
    """The folder of ``name`` version ``version`` in the local cache."""
    return settings.model_cache_dir / name / f"v{version}"


def model_file_in(folder: Path) -> Path:
    """The skops file of a downloaded model folder: at its top (models logged before the pyfunc
    layout) or under ``artifacts/`` (pyfunc models); the latter path when neither exists."""
    top = folder / MODEL_FILE
    return top if top.exists() else folder / "artifacts" / MODEL_FILE


def cached_model_file(settings: Settings, name: str, version: str | int) -> Path:
    """Where the local cache keeps the skops file of ``name`` version ``version``."""
    return model_file_in(cache_dir(settings, name, str(version)))


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
    import skops.io as sio  # here: the registry child (core/fetch.py) never loads a model

    return sio.load(file, trusted=trusted_types(spec)), actual


def write_version_meta(
    target: Path, version: str, sha: str, run_id: str | None, metrics: dict[str, float]
) -> None:
    """``version.json`` of a cached version: what serving reports about it without the registry."""
    (target / "version.json").write_text(
        json.dumps({"version": version, "sha256": sha, "run_id": run_id, "metrics": metrics})
    )


def load_cached_version(spec: ServiceSpec, settings: Settings, version: str, source: str) -> LoadedModel:
    """A version the cache holds (with its ``version.json``), checksum-verified and loaded."""
    target = cache_dir(settings, spec.name, version)
    meta = json.loads((target / "version.json").read_text())
    model, sha = load_artifact(spec, target, meta["sha256"])
    return LoadedModel(
        spec.name, version, model, sha, meta.get("run_id"), meta.get("metrics", {}), source=source
    )


def remember_champion(settings: Settings, name: str, version: str) -> None:
    """Record ``version`` as the champion last loaded (served when the registry is unreachable)."""
    pointer = settings.model_cache_dir / name / "champion.json"
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"version": version}))


def load_cached_champion(spec: ServiceSpec, settings: Settings) -> LoadedModel | None:
    """The champion last loaded, from the cache (``source == "cache"``); None when there is none."""
    pointer = settings.model_cache_dir / spec.name / "champion.json"
    if not pointer.exists():
        return None
    version = json.loads(pointer.read_text())["version"]
    return load_cached_version(spec, settings, version, source="cache")


@dataclass(frozen=True)
class CachedVersion:
    """A registered version downloaded into the local cache (``model_cache.cache_dir``), with its
    ``version.json`` written: what a serving process needs to load it without the registry."""

    name: str
    version: str
    sha256: str
    run_id: str | None
    metrics: dict[str, float]
    path: Path
