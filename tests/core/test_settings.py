from __future__ import annotations

from pathlib import Path

import pytest

from portfolio.core.settings import Settings


def test_defaults_resolve_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = Settings(home=tmp_path)
    assert s.resolved_data_dir == tmp_path / "data" / "raw"
    assert s.resolved_state_dir == tmp_path / ".portfolio"
    assert s.tracking_uri == f"sqlite:///{tmp_path / '.portfolio' / 'mlflow.db'}"


def test_every_setting_is_an_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("PORTFOLIO_PORT", "9123")
    monkeypatch.setenv("PORTFOLIO_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("CARVISION_API_URL", "http://127.0.0.1:8002")
    s = Settings()
    assert s.resolved_data_dir == tmp_path / "d"
    assert s.port == 9123 and s.max_batch_size == 7
    assert s.tracking_uri == "http://127.0.0.1:5999"
    assert s.carvision_api_url == "http://127.0.0.1:8002"


def test_invalid_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTFOLIO_CV_FOLDS", "1")
    with pytest.raises(ValueError, match="cv_folds"):
        Settings()


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if alias is not None else f"PORTFOLIO_{name.upper()}"  # type: ignore[union-attr]
        assert f"`{env}`" in readme, f"{env} missing from the README settings table"
