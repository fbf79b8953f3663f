"""Registry reads for an API worker, in a short-lived subprocess.

A worker needs the registry for three things: which version an alias points to, that version's
artifact (into the local model cache, ``core/model_cache.py``) and its drift reference. The
MLflow client that does them costs every worker ~32 MB, and with the SQLite store SQLAlchemy and
Alembic ~51 MB more at the first call (issue 33), for the rest of its life. Here a child process
(``python -m portfolio.core.fetch``) does them and exits; the worker loads the artifact from the
cache (checksum-verified, skops allow-list) and never imports MLflow.

The child gets its request as JSON on stdin (the settings it needs, the model's name, the alias,
the version the worker already serves) and answers one JSON line on stdout; its logs go to the
worker's stderr. Retries with backoff happen inside it, so one call is one child. What stays the
worker's: falling back to the cached champion when the registry stays unreachable, and /ready's
``degraded`` while the last refresh could not resolve the alias.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portfolio.core.model_cache import (
    CHAMPION,
    CachedVersion,
    LoadedModel,
    ModelIntegrityError,
    NoChampionError,
    cache_dir,
    load_artifact,
    load_cached_champion,
    load_cached_version,
    remember_champion,
)
from portfolio.core.settings import Settings

if TYPE_CHECKING:
    from portfolio.core.spec import ServiceSpec

log = logging.getLogger(__name__)

# What the child needs of the worker's settings (the rest of its environment it inherits).
_SETTINGS_KEYS = ("home", "state_dir", "model_load_retries", "model_load_backoff_s", "log_level")
# A child that takes longer than this is stopped: every MLflow HTTP call is bounded (30 s, 2
# retries: core/registry.configure), this covers the calls of a fetch and our own backoff.
_CHILD_TIMEOUT_S = 600.0


class RegistryUnavailable(RuntimeError):
    """The registry could not be read. ``stage``: ``resolve`` (the alias: the tracking server is
    unreachable) or ``download`` (the version's artifact or metadata)."""

    def __init__(self, message: str, stage: str):
        super().__init__(message)
        self.stage = stage


def _request(settings: Settings, **fields: Any) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    chosen = {k: data[k] for k in _SETTINGS_KEYS}
    # The tracking URI keeps MLflow's own variable name as its alias (core/settings.py).
    chosen["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    return {"settings": chosen, **fields}


def _run_child(request: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "portfolio.core.fetch"],
        input=json.dumps(request).encode(),
        stdout=subprocess.PIPE,
        timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RegistryUnavailable(f"registry fetch exited with code {proc.returncode}", "resolve")
    return dict(json.loads(lines[-1]))


def resolve_and_fetch(
    settings: Settings, name: str, alias: str, known: str | None = None, retries: int | None = 0
) -> tuple[str | None, CachedVersion | None]:
    """The version ``alias`` points to, downloaded into the local cache unless it is ``known``
    (the version the caller serves), with its drift reference (best effort).

    Args:
        settings: Where the registry and the cache are.
        name: The registered model.
        alias: ``champion`` or ``challenger``.
        known: A version the caller already holds: not downloaded again.
        retries: Retries with backoff in the child (None: ``settings.model_load_retries``).

    Returns:
        (the alias's version or None when the alias does not exist, the fetched version or None
        when it is ``known`` or there is none). Raises ``RegistryUnavailable`` or
        ``ModelIntegrityError``.
    """
    if retries == 0:  # a poll: when the alias has not moved, no child
        told, version = _read_alias(settings, name, alias)
        if told and version == known:
            return version, None
    answer = _run_child(_request(settings, name=name, alias=alias, known=known, retries=retries))
    status = answer["status"]
    if status == "error":
        if answer["kind"] == "integrity":
            raise ModelIntegrityError(answer["error"])
        raise RegistryUnavailable(answer["error"], answer["stage"])
    if status == "no_alias":
        return None, None
    if status == "unchanged":
        return str(answer["version"]), None
    if answer.get("reference_error"):
        log.warning(
            "%s v%s: drift reference not fetched: %s", name, answer["version"], answer["reference_error"]
        )
    fetched = CachedVersion(
        name,
        str(answer["version"]),
        answer["sha256"],
        answer["run_id"],
        answer["metrics"],
        Path(answer["path"]),
    )
    return fetched.version, fetched


def _read_alias(settings: Settings, name: str, alias: str) -> tuple[bool, str | None]:
    """The alias's version read directly, without MLflow's client, for the common poll (every
    ``model_poll_interval_s``, default 30 s): a child importing MLflow takes ~2-5 s of CPU each
    time, this a few milliseconds. The SQLite store's ``registered_model_aliases`` table or the
    tracking server's REST API (its ``MLFLOW_TRACKING_TOKEN`` or user and password).

    Returns:
        (True, the version or None when the alias does not exist), or (False, None) when this
        cannot tell: another store, TLS or client-certificate settings, no answer, an unexpected
        one. The child then asks through MLflow, with its retries, and says what went wrong.
    """
    unknown: tuple[bool, str | None] = (False, None)
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        import sqlite3

        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                rows = db.execute(
                    "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", (name, alias)
                ).fetchall()
        except sqlite3.Error:
            return unknown
        if len(rows) > 1:  # one per workspace: which one is MLflow's to say
            return unknown
        return True, (str(rows[0][0]) if rows else None)
    if uri.startswith(("http://", "https://")):
        if any(
            os.environ.get(k)
            for k in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH")
        ):
            return unknown
        import httpx

        headers, auth = {}, None
        if os.environ.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
        try:
            answer = httpx.get(
                f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias",
                params={"name": name, "alias": alias},
                headers=headers,
                auth=auth,
                verify=verify,
                timeout=10,
            )
            body = answer.json()
        except (httpx.HTTPError, ValueError):
            return unknown
        if answer.status_code == 404 and body.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            return True, None
        version = body.get("model_version", {}).get("version") if answer.status_code == 200 else None
        return (True, str(version)) if version is not None else unknown
    return unknown


def fetch_reference(settings: Settings, name: str, run_id: str | None, version: str) -> None:
    """Download a version's drift reference into the local cache (``reference_cache_path``).
    Raises ``ReferenceUnavailable`` with the child's reason."""
    from portfolio.core.monitoring.reference import ReferenceUnavailable

    answer = _run_child(_request(settings, name=name, reference={"run_id": run_id, "version": version}))
    if answer["status"] == "error":
        raise ReferenceUnavailable(answer["error"])


def load_fetched(spec: ServiceSpec, fetched: CachedVersion) -> LoadedModel:
    """A fetched version loaded in this process (checksum-verified, skops allow-list)."""
    model, sha = load_artifact(spec, fetched.path, fetched.sha256)
    return LoadedModel(spec.name, fetched.version, model, sha, fetched.run_id, fetched.metrics)


def load_serving_champion(spec: ServiceSpec, settings: Settings) -> LoadedModel:
    """``registry.load_champion`` for an API worker: the registry read in a child, with retries;
    when the tracking server stays unreachable, the most recently cached champion
    (``source == "cache"``). Raises ``NoChampionError`` when there is no champion."""
    held = _champion_already_cached(spec, settings)
    if held is not None:
        return held
    try:
        version, fetched = resolve_and_fetch(settings, spec.name, CHAMPION, retries=None)
    except RegistryUnavailable as exc:
        cached = load_cached_champion(spec, settings)
        if cached is None:
            raise
        log.warning("tracking server unreachable (%s): serving cached %s v%s", exc, spec.name, cached.version)
        return cached
    if version is None or fetched is None:
        raise NoChampionError(f"no champion registered for {spec.name!r}: run `portfolio train {spec.name}`")
    loaded = load_fetched(spec, fetched)
    remember_champion(settings, spec.name, loaded.version)
    return loaded


def _champion_already_cached(spec: ServiceSpec, settings: Settings) -> LoadedModel | None:
    """The champion loaded straight from the local cache when the alias, read directly
    (``_read_alias``), points to a version a child already downloaded and verified: a restart, a
    second worker or a new replica on the same volume then costs no child (~2-5 s of CPU importing
    MLflow). The artifact is still checked against the sha256 the child recorded from the
    registry's tag (a registered version's artifact never changes). None when the alias cannot be
    read this way or the version is not cached or does not check out: the child then fetches it."""
    told, version = _read_alias(settings, spec.name, CHAMPION)
    if not told or version is None or not (cache_dir(settings, spec.name, version) / "version.json").exists():
        return None
    try:
        loaded = load_cached_version(spec, settings, version, source="registry")
    except (ModelIntegrityError, OSError, ValueError, KeyError) as exc:
        # A damaged or tampered cache entry: the child downloads it again and checks it against
        # the registry's checksum (a mismatch there is refused).
        log.warning("%s v%s: cached copy unusable (%s); fetching it again", spec.name, version, exc)
        return None
    remember_champion(settings, spec.name, loaded.version)
    return loaded


# ----------------------------------------------------------------------------------- the child
def _answer(request: dict[str, Any]) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from portfolio.core import registry

    def download_reference(name: str, settings: Settings, run_id: str | None, version: str) -> None:
        # Imported only when a version is downloaded: a poll that finds it unchanged stays light.
        from portfolio.core.monitoring.reference import download_reference

        download_reference(name, settings, run_id, version)

    settings = Settings(**request["settings"])
    registry.configure(settings)
    name = request["name"]
    if request.get("reference") is not None:
        ref = request["reference"]
        try:
            download_reference(name, settings, ref["run_id"], ref["version"])
        except Exception as exc:
            return {"status": "error", "kind": "reference", "stage": "download", "error": str(exc)}
        return {"status": "ok"}
    alias, known = request["alias"], request.get("known")
    stage = "resolve"

    def fetch() -> dict[str, Any]:
        nonlocal stage
        stage = "resolve"
        try:
            mv = registry.alias_version(name, alias)
        except MlflowException as exc:
            raise RuntimeError(str(exc)) from exc
        if mv is None:
            return {"status": "no_alias"}
        if str(mv.version) == known:
            return {"status": "unchanged", "version": str(mv.version)}
        stage = "download"
        cached = registry.download_version(name, settings, mv.version)
        reference_error = None
        try:
            download_reference(name, settings, cached.run_id, cached.version)
        except Exception as exc:  # a model without a reference is still served (no drift gauges)
            reference_error = str(exc)
        return {
            "status": "ok",
            "version": cached.version,
            "sha256": cached.sha256,
            "run_id": cached.run_id,
            "metrics": cached.metrics,
            "path": str(cached.path),
            "reference_error": reference_error,
        }

    try:
        return registry.with_retries(fetch, settings, f"fetching {name}@{alias}", request.get("retries"))
    except ModelIntegrityError as exc:
        return {"status": "error", "kind": "integrity", "stage": stage, "error": str(exc)}
    except Exception as exc:
        return {"status": "error", "kind": "unreachable", "stage": stage, "error": str(exc)}


def main() -> None:
    """The child: one request on stdin, one JSON line on stdout (everything else it prints goes
    to stderr, the worker's log)."""
    from portfolio.core.logs import setup_logging

    request = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a library's print must not corrupt the answer
    setup_logging(str(request["settings"].get("log_level") or "INFO"))
    out.write(json.dumps(_answer(request)) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
