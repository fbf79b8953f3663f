"""What a training run logs for monitoring and explanations later: the drift reference profile
next to the model, and the global explanation importance (JSON and plot).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from portfolio.core.monitoring.reference import REFERENCE_ARTIFACT, DriftReference
from portfolio.core.spec import ServiceSpec

EXPLANATION_IMPORTANCE_ARTIFACT = "explanation_importance.json"


def log_training_insights(
    spec: ServiceSpec,
    model: Any,
    X_train: pd.DataFrame,
    X_test: pd.DataFrame,
    out_dir: Path,
    seed: int,
    source: str = "training split",
) -> DriftReference:
    """Log to the active MLflow run what monitoring and explanations need later:
    ``drift_reference.json`` (the training profile, next to the model) and the global
    explanation importance (mean |contribution| per field on hold-out rows, JSON + plot).
    ``model`` is the served model and ``X_train`` the rows it was fitted on (``source`` names them)."""
    import mlflow

    from portfolio.core.explain.shapley import TREE_SHAP, explain_frame, global_importance

    scores = spec.strategy.scores(model, X_train)
    threshold = getattr(model, "threshold", None)
    ref = DriftReference.from_frame(
        spec,
        X_train,
        scores=scores,
        threshold=None if threshold is None else float(threshold),
        source=source,
        seed=seed,
    )
    mlflow.log_dict(ref.to_dict(), REFERENCE_ARTIFACT)

    rows = X_test[spec.feature_names].sample(min(len(X_test), 1000), random_state=seed)
    background = ref.sample_frame(spec)
    try:
        exp = explain_frame(spec.strategy, model, rows, method=TREE_SHAP)
    except ValueError:  # sampling: ~700 model rows per explained row, so fewer rows
        exp = explain_frame(spec.strategy, model, rows.head(40), background=background, n_pairs=32, seed=seed)
    importance = global_importance(exp)
    mlflow.log_dict(
        {"method": exp.method, "rows": len(exp.values), "output": exp.output, "importance": importance},
        EXPLANATION_IMPORTANCE_ARTIFACT,
    )
    mlflow.log_artifact(
        str(_importance_plot(importance, exp, out_dir / "explanation_importance.png", spec)), "plots"
    )
    return ref


def _importance_plot(importance: Mapping[str, float], exp: Any, path: Path, spec: ServiceSpec) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(importance.items(), key=lambda kv: kv[1])[-20:]
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(items))))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#2980b9")
    unit = "log-odds" if exp.output == "log_odds" else spec.target
    ax.set_xlabel(f"mean |contribution| ({unit})")
    ax.set_title(
        f"{spec.title}\n{exp.method.replace('_', ' ')} importance ({len(exp.values)} hold-out rows)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
