from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
from pydantic.fields import FieldInfo

from portfolio.core.settings import Settings


def test_defaults_resolve_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    s = Settings(home=tmp_path)
    assert s.resolved_data_dir == tmp_path / "data" / "raw"
    assert s.resolved_state_dir == tmp_path / ".portfolio"
    assert s.tracking_uri == f"sqlite:///{tmp_path / '.portfolio' / 'mlflow.db'}"


def _env_name(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    return alias.choices[0] if alias is not None else f"PORTFOLIO_{name.upper()}"  # type: ignore[union-attr,return-value]


def _other_value(name: str, field: FieldInfo, tmp_path: Path) -> tuple[str, object]:
    """A valid value different from the default, as environment text and as the parsed value."""
    kinds = set(get_args(field.annotation)) - {type(None)} or {field.annotation}
    default = field.get_default(call_default_factory=True)
    if Path in kinds:
        return str(tmp_path / name), tmp_path / name
    if bool in kinds:
        return str(not default).lower(), not default
    if int in kinds:
        return str(default + 3), default + 3
    if float in kinds:
        return str(default / 2 + 0.125), default / 2 + 0.125  # inside (0, 1) for test_size too
    assert kinds == {str}, (name, kinds)
    return f"value-of-{name}", f"value-of-{name}"


def test_every_setting_is_an_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each field of the settings model, set through its environment variable, reaches the model."""
    expected: dict[str, object] = {}
    for name, field in Settings.model_fields.items():
        text, value = _other_value(name, field, tmp_path)
        monkeypatch.setenv(_env_name(name, field), text)
        expected[name] = value
    s = Settings()
    assert {name: getattr(s, name) for name in expected} == expected
    # The derived locations follow.
    assert s.resolved_data_dir == tmp_path / "data_dir"
    assert s.tracking_uri == "value-of-mlflow_tracking_uri"


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
