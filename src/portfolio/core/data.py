"""Locate, pull (DVC), load, hash and validate a service's raw data."""

from __future__ import annotations

import hashlib
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from portfolio.core.schema import ValidationResult, validate_frame
from portfolio.core.settings import Settings
from portfolio.core.spec import CleaningReport, ServiceSpec

log = logging.getLogger(__name__)


class DataUnavailableError(RuntimeError):
    pass


def raw_path(spec: ServiceSpec, settings: Settings) -> Path:
    """The service's raw CSV; runs ``dvc pull`` for it when it is missing (DVC-tracked data)."""
    path = settings.resolved_data_dir / spec.data_file
    if path.exists():
        return path
    pointer = settings.home / "data" / "raw" / f"{spec.data_file}.dvc"
    if settings.dvc_pull and settings.data_dir is None and pointer.exists():
        log.info("%s is missing: running `dvc pull %s`", path.name, pointer.name)
        subprocess.run(
            ["dvc", "pull", "-q", str(pointer.relative_to(settings.home))],
            cwd=settings.home,
            check=False,
        )
        if path.exists():
            return path
    raise DataUnavailableError(
        f"raw data file not found: {path}. Run `make data` (dvc pull) or set PORTFOLIO_DATA_DIR."
    )


def file_md5(path: Path) -> str:
    """MD5 as DVC computes it, so a run's logged hash can be matched to the .dvc pointer."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_raw_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """Read a raw CSV; only empty cells are missing ("NA" stays text). Types are inferred by
    pandas' C parser for speed; a column holding anything unparsable stays text, and the schema's
    coercion then turns each bad cell into a row error (see ``schema.coerce``)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""], **kwargs)


@dataclass
class Dataset:
    """Validated training data: features, target, and the accounting of every excluded row."""

    X: pd.DataFrame
    y: pd.Series
    path: Path
    md5: str
    validation: ValidationResult
    cleaning: CleaningReport | None
    target_invalid: int

    def report(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "md5": self.md5,
            "rows_in_file": len(self.validation.frame),
            "rows_used": len(self.X),
            "schema": self.validation.summary(),
            "target_invalid_rows": self.target_invalid,
            "cleaning": None
            if self.cleaning is None
            else {
                "excluded_by_rule": dict(self.cleaning.excluded_by_rule),
                "rows_in": self.cleaning.rows_in,
                "rows_out": self.cleaning.rows_out,
            },
        }


def parse_target(spec: ServiceSpec, raw: pd.Series) -> pd.Series:
    """The raw target column (e.g. ``Churn`` Yes/No) as the model's numeric target.

    Args:
        spec: The service (its ``encode_target`` and task).
        raw: Target values in the raw file's form.

    Returns:
        The numeric targets; NaN where a value is unusable (a classifier's label outside {0, 1}
        is unusable, not a third class).
    """
    return spec.strategy.usable_target(pd.to_numeric(spec.encode_target(raw), errors="coerce"))


def load_training_data(spec: ServiceSpec, settings: Settings, path: Path | None = None) -> Dataset:
    """Load + validate the raw file for training.

    Policy (explicit, reported, never silent): rows that fail the schema or have an unusable target
    are excluded from training, counted by reason, and logged with examples; the service's
    training-only cleaning rules then run and report their own counts.
    """
    path = path or raw_path(spec, settings)
    raw = read_raw_csv(path)
    if spec.target not in raw.columns:
        raise DataUnavailableError(f"{path.name} has no target column {spec.target!r}")
    result = validate_frame(raw, spec.fields)
    y_numeric = parse_target(spec, raw[spec.target])
    target_ok = y_numeric.notna()
    keep = result.valid_mask & target_ok
    X = result.frame.loc[keep]
    y = spec.strategy.typed_target(y_numeric.loc[keep])
    cleaning = None
    if spec.clean_training is not None:
        frame = X.assign(**{spec.target: y})
        frame, cleaning = spec.clean_training(frame)
        X, y = frame[spec.feature_names], frame[spec.target]
    if result.n_invalid or (~target_ok).sum():
        log.warning(
            "%s: %d rows excluded by the schema, %d by the target; reasons: %s",
            path.name,
            result.n_invalid,
            int((~target_ok).sum()),
            result.summary()["by_reason"],
        )
    return Dataset(
        X=X.reset_index(drop=True),
        y=y.reset_index(drop=True),
        path=path,
        md5=file_md5(path),
        validation=result,
        cleaning=cleaning,
        target_invalid=int((~target_ok).sum()),
    )
