"""One typed settings object for the whole platform (12-factor: every field is an env var).

Environment variables use the ``PORTFOLIO_`` prefix (``PORTFOLIO_DATA_DIR``, ``PORTFOLIO_PORT``…),
except ``MLFLOW_TRACKING_URI``, which keeps MLflow's own standard name so that MLflow's tools and
ours always agree on where tracking state lives.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PORTFOLIO_", extra="ignore")

    home: Path = Field(
        default_factory=Path.cwd,
        description="Project root; relative defaults below resolve against it.",
    )
    data_dir: Path | None = Field(
        default=None, description="Folder with the raw CSVs (default: <home>/data/raw, via DVC)."
    )
    state_dir: Path | None = Field(
        default=None,
        description="Local state: MLflow SQLite db, artifacts, model cache (default: <home>/.portfolio).",
    )
    models_dir: Path | None = Field(
        default=None, description="Where generated model cards go (default: <home>/models)."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "PORTFOLIO_MLFLOW_TRACKING_URI"),
        description="Tracking + registry URI used as-is by every command "
        "(default: sqlite:///<state_dir>/mlflow.db).",
    )
    dvc_pull: bool = Field(default=True, description="Run `dvc pull` when a raw file is missing.")

    seed: int = Field(default=42, description="Random seed for splits, CV and models.")
    cv_folds: int = Field(default=5, ge=2, description="Cross-validation folds.")
    test_size: float = Field(default=0.2, gt=0, lt=1, description="Stratified hold-out share.")
    bootstrap_rounds: int = Field(default=1000, ge=50, description="Bootstrap resamples for 95% CIs.")

    host: str = Field(default="127.0.0.1", description="API bind address.")
    port: int = Field(default=8000, description="API port (`portfolio serve`).")
    workers: int = Field(
        default=1,
        ge=1,
        description="API worker processes, each with its own listening socket (core/serving/workers.py).",
    )
    max_batch_size: int = Field(default=1000, ge=1, description="Max records per /predict/batch.")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="Max request body size.")
    model_load_retries: int = Field(default=5, ge=0, description="Tracking-server retries at load.")
    model_load_backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles per retry (capped at 10 s)."
    )
    model_poll_interval_s: float = Field(
        default=30.0, ge=0, description="How often a running API checks for a new champion (0: never)."
    )
    cors_origins: str = Field(default="", description="Comma-separated CORS origins (closed when empty).")
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; when set, prediction endpoints require one.",
    )
    admin_api_keys: str = Field(
        default="", description="Comma-separated admin keys for /admin/* (admin is off when empty)."
    )
    log_level: str = Field(default="INFO", description="Log level.")
    prediction_log_dir: Path | None = Field(
        default=None,
        description="Prediction log folder, JSON lines per service (default: <state_dir>/predictions).",
    )
    prediction_log_sample: float = Field(
        default=1.0, ge=0, le=1, description="Share of scored records logged (0: no prediction log)."
    )
    prediction_log_max_bytes: int = Field(
        default=64 << 20, ge=1024, description="Prediction log: a new file once one is this large."
    )
    prediction_log_queue: int = Field(
        default=100_000, ge=1, description="Prediction log: records waiting for the writer at most."
    )
    prediction_log_retention_days: float = Field(
        default=0.0,
        ge=0,
        description="Prediction log: delete a service's log files older than this many days (0: keep all).",
    )
    numpy_walk_max_steps: int = Field(
        default=8192,
        ge=0,
        description="API workers: requests of at most this many rows x trees x depth steps walk the "
        "trees in numpy, larger ones with numba (core/fastpath/trees.py). The default keeps numba "
        "(~110 MB) out of a worker that answers single records; 0 walks everything with numba, "
        "faster per request (most for CarVision's 800-tree boosters) for that memory.",
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry (traces, metrics and logs to the globally "
        "configured providers). Off: the platform's metrics are Prometheus's (/metrics), and the "
        "check whether a provider is configured cost every request ~9 us (issue 33).",
    )
    shadow: bool = Field(
        default=False,
        description="Also score the registered @challenger off the request path and log its outputs "
        "as shadow lines (core/monitoring/shadow.py).",
    )
    shadow_queue: int = Field(
        default=10_000, ge=1, description="Shadow scoring: records waiting for the challenger at most."
    )
    batch_chunk_rows: int = Field(default=100_000, ge=1, description="CSV rows per chunk in predict.")

    mlflow_port: int = Field(default=5000, description="Port of the MLflow server `portfolio up` starts.")
    api_base_port: int = Field(
        default=8001, description="`portfolio up`: bankchurn on this port, the next services above it."
    )
    dashboard_port: int = Field(default=8501, description="Streamlit dashboard port.")
    carvision_api_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CARVISION_API_URL", "PORTFOLIO_CARVISION_API_URL"),
        description="Dashboard: call this CarVision API instead of the local champion.",
    )

    @property
    def resolved_data_dir(self) -> Path:
        return (self.data_dir or self.home / "data" / "raw").resolve()

    @property
    def resolved_state_dir(self) -> Path:
        return (self.state_dir or self.home / ".portfolio").resolve()

    @property
    def resolved_models_dir(self) -> Path:
        return (self.models_dir or self.home / "models").resolve()

    @property
    def resolved_prediction_log_dir(self) -> Path:
        return (self.prediction_log_dir or self.resolved_state_dir / "predictions").resolve()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.resolved_state_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Where locally created experiments keep their artifacts (SQLite mode)."""
        return self.resolved_state_dir / "mlartifacts"

    @property
    def model_cache_dir(self) -> Path:
        return self.resolved_state_dir / "model-cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
