"""`dvc repro` runs the real pipeline (validate → train → evaluate) in a scratch copy of the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import ROOT

pytestmark = pytest.mark.integration


def test_dvc_repro_runs_the_bankchurn_stages(tmp_path: Path, data_dir: Path) -> None:
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for csv in data_dir.glob("*.csv"):
        shutil.copy2(csv, repo / "data" / "raw" / csv.name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "PORTFOLIO_HOME": str(repo),
        "PORTFOLIO_STATE_DIR": str(tmp_path / "state"),
        "PORTFOLIO_CV_FOLDS": "2",
        "PORTFOLIO_BOOTSTRAP_ROUNDS": "50",
        "PORTFOLIO_DVC_PULL": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        ["dvc", "repro", "evaluate@bankchurn"], cwd=repo, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in ("validate@bankchurn", "train@bankchurn", "evaluate@bankchurn"):
        assert stage in out.stdout
    validation = json.loads((repo / "reports" / "bankchurn" / "validation.json").read_text())
    assert validation["rows_used"] == 8500
    evaluation = json.loads((repo / "reports" / "bankchurn" / "evaluation.json").read_text())
    assert evaluation["metrics"]["roc_auc"]["value"] > 0.8
    assert (repo / "models" / "bankchurn" / "model_card.md").exists()
    assert "train@bankchurn" in (repo / "dvc.lock").read_text()
    # Nothing changed → nothing re-runs.
    again = subprocess.run(
        ["dvc", "repro", "evaluate@bankchurn"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout
