"""The registered model as a standard MLflow pyfunc: ``predict(DataFrame of raw fields)`` returns
the same columns and values as ``portfolio predict`` (probability, prediction and the service's
extra columns; price, price_low, price_high for regressors) plus ``error``.

What travels with the model, so that a consumer needs only MLflow and the declared requirements:
- ``artifacts/model.skops``: the fitted pipeline, loaded with skops and the allow-list kept in this
  code (``registry.trusted_types``), after its sha256 is checked against the one recorded at
  logging time (``model_config["sha256"]``);
- ``code/portfolio``: this package (``code_paths``), so the service's spec, validation and the
  compiled fast path are the ones the API runs;
- the model itself is "models from code" (``pyfunc_entry.py``), not a pickle: loading it does not
  need ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``.

Invalid rows behave as in the CLI: every input row gives one output row, in order; a row whose
values fail validation (range, category, missing required value) gets an ``error`` text and empty
predictions. A column whose type cannot match the signature (text in an integer field) is refused
by MLflow's schema enforcement for the whole call, with a message naming the column.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from portfolio.core.spec import ServiceSpec

# Names inside the logged model.
ARTIFACT_KEY = "model"
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")
# This project's distribution: never a requirement (its code travels as code_paths instead).
PROJECT_DISTRIBUTION = "ml-mlops-portfolio"


def spec_reference(spec: ServiceSpec) -> str:
    """``module:attribute`` of the loaded module that holds ``spec`` (the pyfunc imports it by
    name, so the core never imports a service)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "SPEC", None) is spec:  # the convention: <service>/spec.py's SPEC
            return f"{name}:SPEC"
    for name, module in list(sys.modules.items()):
        for attr, value in list(vars(module).items() if module is not None else ()):
            if value is spec:
                return f"{name}:{attr}"
    raise LookupError(f"no loaded module holds the spec of {spec.name!r}")


def load_spec(reference: str) -> ServiceSpec:
    module, _, attr = reference.partition(":")
    spec = getattr(importlib.import_module(module), attr)
    if not isinstance(spec, ServiceSpec):
        raise TypeError(f"{reference} is not a ServiceSpec")
    return spec


def input_schema(spec: ServiceSpec) -> Schema:
    """The fields as pandas reads them from the raw CSV: whole numbers as ``long``, decimals as
    ``double``, text as ``string``. A field that may be empty has no single pandas type (an int
    column with a gap reads as float64, an all-empty text column as float64, TotalCharges' blanks
    as text), so it is ``any`` and the model's own validation types it; optional fields may be
    left out."""
    cols: list[ColSpec | TensorSpec] = []
    for f in spec.fields:
        if f.allows_null:
            t: Any = AnyType()
        elif f.kind == "int":
            t = DataType.long
        elif f.kind == "float":
            t = DataType.double
        else:
            t = DataType.string
        cols.append(ColSpec(t, f.name, required=not f.optional))
    return Schema(cols)


def output_columns(spec: ServiceSpec) -> list[str]:
    return [*spec.strategy.output_columns(spec), "error"]


def output_schema(frame: pd.DataFrame) -> Schema:
    """Output columns with their types; every one may be empty (an invalid row, or
    ``top_factors`` without explanations)."""
    cols: list[ColSpec | TensorSpec] = []
    for name in frame.columns:
        dtype = frame[name].dtype
        if pd.api.types.is_bool_dtype(dtype):
            t = DataType.boolean
        elif pd.api.types.is_float_dtype(dtype):
            t = DataType.double
        elif pd.api.types.is_integer_dtype(dtype):
            t = DataType.long
        else:
            t = DataType.string
        cols.append(ColSpec(t, name, required=False))
    return Schema(cols)


class ServiceModel(PythonModel):
    """A service's champion behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from portfolio.core.registry import LoadedModel, load_artifact
        from portfolio.core.serving.inference import Predictor

        config = context.model_config
        self.spec = load_spec(config["spec"])
        model, sha = load_artifact(self.spec, Path(context.artifacts[ARTIFACT_KEY]), config["sha256"])
        loaded = LoadedModel(self.spec.name, str(config.get("version", "")), model, sha, None)
        self.predictor = Predictor(self.spec, loaded)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score raw rows: one output row per input row, same order and index.

        Args:
            context: MLflow's model context (unused after loading).
            model_input: raw field values, as pandas reads the service's CSV.
            params: ``{"explain": False}`` skips per-row explanations (TelecomAI's top_factors).

        Returns:
            The CLI's output columns plus ``error`` (None for valid rows).
        """
        from portfolio.core.serving.batch import BatchReport, score_chunk

        frame = pd.DataFrame(model_input)
        index = frame.index
        frame = frame.reset_index(drop=True)  # rows are matched by position, whatever the index
        missing = [f.name for f in self.spec.fields if f.optional and f.name not in frame.columns]
        if missing:  # optional fields may be left out; the model handles the gap
            frame = frame.assign(**dict.fromkeys(missing))
        explain = bool((params or {}).get("explain", True))
        out = score_chunk(self.predictor, frame, BatchReport(), explain=explain)[output_columns(self.spec)]
        # One missing-text value for every consumer: None (an invalid row's empty tariff may be NaN
        # after a lookup). MLflow's spark_udf turns text results into str, None as "None", NaN as "nan".
        for col in out.columns:
            if not pd.api.types.is_numeric_dtype(out[col]):
                out[col] = out[col].astype(object).where(out[col].notna(), None)
        return out.set_axis(index)


@functools.lru_cache(maxsize=8)
def requirements(spec_ref: str) -> tuple[str, ...]:
    """Pinned PyPI requirements of the pyfunc: the distributions of every module that loading and
    scoring import (found in a fresh interpreter), less those MLflow itself brings, less this
    project (its code travels with the model)."""
    spec_module = spec_ref.partition(":")[0]
    # A spec outside the package (a test's synthetic service) is not shipped as a dependency:
    # its module's own imports (pytest) are the test environment's, not the model's.
    spec_import = (
        f"importlib.import_module({spec_module!r})\n" if spec_module.startswith("portfolio.") else ""
    )
    probe = (
        "import importlib, json, sys\n"
        # Tooling that libraries import only when it is there (scikit-learn's testing helpers,
        # MLflow's and pandera's Spark support): scoring does not need it, so a consumer must not
        # be asked to install it.
        f"sys.modules.update(dict.fromkeys({_NOT_NEEDED!r}))\n"
        "base = set(sys.modules)\n"
        "import mlflow\n"
        "with_mlflow = set(sys.modules)\n"
        "importlib.import_module('portfolio.core.mlflow_model')\n"
        "importlib.import_module('portfolio.core.serving.batch')\n"
        "importlib.import_module('portfolio.core.serving.inference')\n"
        f"{spec_import}"
        "import numba, skops.io  # the fast path's compiler, imported when the model is compiled\n"
        # pandera: imported on the first validated frame (kept off the API's import path), so
        # importing the modules above no longer shows it.
        "importlib.import_module('portfolio.core.schema')._pandera()\n"
        "roots = lambda names: sorted({m.split('.')[0] for m in names})\n"
        "print(json.dumps([roots(set(sys.modules) - base), roots(with_mlflow - base)]))\n"
    )
    # The parent's sys.path: the spec's module is importable there the same way.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"finding the model's requirements failed: {done.stderr.strip()[-2000:]}")
    scoring, by_mlflow = (_distributions(modules) for modules in json.loads(done.stdout))
    # Left to MLflow: what `import mlflow` loads AND installing MLflow brings. A package MLflow
    # imports only when it is there (orjson) stays declared, and so does everything scoring
    # imports beyond MLflow (scikit-learn, xgboost, skops...), pinned to this environment's version.
    mlflow_dist = _mlflow_distribution()
    dists = {mlflow_dist} | scoring - (by_mlflow & _required_closure(mlflow_dist))
    dists.discard(PROJECT_DISTRIBUTION)
    return tuple(sorted(f"{d}=={version(d)}" for d in dists))


def _mlflow_distribution() -> str:
    """``mlflow``, or ``mlflow-skinny`` where only the client is installed (the API image)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("mlflow")
    except PackageNotFoundError:
        return "mlflow-skinny"
    return "mlflow"


# Imported only when installed, never needed to score (see requirements()).
_NOT_NEEDED = ("pytest", "_pytest", "coverage", "pyspark", "py4j")


def _distributions(modules: list[str]) -> set[str]:
    """The installed distributions that provide these top-level modules (stdlib and the project's
    own package left out)."""
    owners = packages_distributions()
    dists: set[str] = set()
    for module in modules:
        if module in sys.stdlib_module_names or module.startswith("_") or module == "portfolio":
            continue
        dists.update(owners.get(module, ()))
    return dists


def _required_closure(dist: str) -> set[str]:
    """``dist`` and every distribution its installed metadata requires, transitively, without
    extras (names normalised as the metadata spells the installed distributions)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    installed: dict[str, str] = {canonicalize_name(d): d for d in _installed_names()}
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return {installed[k] for k in seen if k in installed}


def _installed_names() -> set[str]:
    from importlib.metadata import distributions

    return {d.metadata["Name"] for d in distributions()}


def log_model(
    spec: ServiceSpec,
    model_file: Path,
    sha256: str,
    example: pd.DataFrame,
    output_example: pd.DataFrame,
) -> Any:
    """Log the fitted pipeline (already dumped with skops at ``model_file``) as the service's
    pyfunc model in the active run.

    Args:
        spec: the service.
        model_file: the skops file of the fitted pipeline.
        sha256: its checksum, checked again whenever the model is loaded.
        example: a few raw rows (the input example).
        output_example: the pyfunc's output for ``example`` (gives the output schema).

    Returns:
        MLflow's ModelInfo.
    """
    import portfolio

    ref = spec_reference(spec)
    signature = ModelSignature(
        inputs=input_schema(spec),
        outputs=output_schema(output_example),
        params=ParamSchema([ParamSpec("explain", DataType.boolean, True)]),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(ENTRY_FILE),
        artifacts={ARTIFACT_KEY: str(model_file)},
        code_paths=[str(Path(portfolio.__file__).parent)],
        model_config={"spec": ref, "sha256": sha256},
        signature=signature,
        input_example=example,
        pip_requirements=list(requirements(ref)),
    )
