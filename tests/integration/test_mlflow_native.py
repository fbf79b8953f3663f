"""Every service's registered model as MLflow's own consumers use it, against `portfolio predict`:
- ``mlflow.pyfunc.load_model(...).predict`` in a clean virtualenv holding only the model's declared
  requirements (never this project's package), on real rows and on invalid ones, and
  ``mlflow.pyfunc.spark_udf`` on local[2] in that same environment (plus pyspark);
- ``mlflow models serve -m models:/NAME@champion --env-manager local`` against ``/predict/batch``;
- ``portfolio predict ... --engine spark`` (``spark_udf`` on local[2]) on 10,000 rows, CSV and
  Parquet."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from portfolio.core import registry
from portfolio.core.data import read_raw_csv
from portfolio.core.mlflow_model import PROJECT_DISTRIBUTION, input_schema
from portfolio.core.processes import bin_path, free_port, start, stop, wait_http
from portfolio.core.schema import validate_frame
from portfolio.core.spec import ServiceSpec
from portfolio.services import SERVICES
from tests.support.helpers import ROOT, require
from tests.support.live import TrainedService, live_api, require_data, train_real

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module", params=sorted(SERVICES))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrainedService:
    return train_real(SERVICES[request.param], tmp_path_factory)


def _raw(spec: ServiceSpec) -> pd.DataFrame:
    return read_raw_csv(require_data(spec))


def _bad_rows(spec: ServiceSpec, base: pd.Series, typed_only: bool) -> pd.DataFrame:
    """Invalid copies of a real row: a value out of range, an unknown category, a required value
    missing. ``typed_only=False`` adds cells no signature type can hold (text in a number field, a
    missing whole number), which only the CSV readers (CLI, Spark) see."""
    types = {c.name: str(getattr(c.type, "name", "any")) for c in input_schema(spec).inputs}
    rows = []
    for f in spec.fields:
        row = base.copy()
        if f.max is not None and types[f.name] in ("long", "double", "any"):
            row[f.name] = int(f.max) + 1 if f.kind == "int" else f.max + 1
        elif f.categories is not None:
            row[f.name] = "no-such-value"
        elif not f.allows_null and types[f.name] in ("double", "string"):
            row[f.name] = None
        else:
            continue
        rows.append(row)
    if not typed_only:
        for f in spec.fields:
            if types[f.name] == "long":
                text, missing = base.copy(), base.copy()
                text[f.name], missing[f.name] = "abc", None
                rows += [text, missing]
                break
    return pd.DataFrame(rows)


def _cli_predict(trained: TrainedService, source: Path, out: Path, *extra: str) -> None:
    done = subprocess.run(
        [bin_path("portfolio"), "predict", trained.spec.name, str(source), "--output", str(out), *extra],
        env={**os.environ, **trained.env()},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _values(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """Column → values with every kind of missing as None (CSV, Parquet and JSON agree)."""
    return {c: [None if pd.isna(v) else v for v in frame[c].tolist()] for c in frame.columns}


def _read(path: Path) -> pd.DataFrame:
    if path.is_dir():
        parts = sorted(path.glob("part-*"))
        assert parts, f"no part files in {path}"
        if parts[0].suffix == ".parquet":
            return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        return pd.concat([read_raw_csv(p) for p in parts], ignore_index=True)
    return pd.read_parquet(path) if path.suffix == ".parquet" else read_raw_csv(path)


def _assert_same(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    want, got = _values(expected), _values(actual)
    for col in expected.columns:
        diff = [i for i, (a, b) in enumerate(zip(want[col], got[col], strict=True)) if a != b]
        assert not diff, f"{col}: {len(diff)} rows differ, first {diff[:3]}: " + str(
            [(want[col][i], got[col][i]) for i in diff[:3]]
        )


CONSUMER = """
import json, sys
import mlflow, pandas as pd
from mlflow.exceptions import MlflowException
uri, rows, out, refused = sys.argv[1:5]
model = mlflow.pyfunc.load_model(uri)
frame = pd.read_csv(rows, keep_default_na=False, na_values=[""])
model.predict(frame).to_parquet(out)
import portfolio
try:
    model.predict(pd.read_csv(refused, keep_default_na=False, na_values=[""]))
    refusal = None
except MlflowException as exc:
    refusal = str(exc)
print(json.dumps({"portfolio": portfolio.__file__, "refusal": refusal}))
"""

# The same model through ``spark_udf`` on local[2], in the same clean environment (plus pyspark,
# the consumer's engine, not the model's requirement). The result type comes from the model's own
# output signature: text stays text, numbers travel as double (MLflow casts with numpy, which has
# no missing integer for an invalid row's empty prediction).
SPARK_CONSUMER = """
import sys
import mlflow, pandas as pd
from pyspark.sql import SparkSession, functions as F
uri, rows, out = sys.argv[1:4]
spark = (SparkSession.builder.master("local[2]").appName("consumer")
         .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
         .config("spark.ui.enabled", "false").getOrCreate())
kinds = {c.name: c.type.name for c in mlflow.models.get_model_info(uri).signature.outputs.inputs}
result_type = ", ".join(f"`{n}` {'string' if k == 'string' else 'double'}" for n, k in kinds.items())
udf = mlflow.pyfunc.spark_udf(spark, uri, result_type=result_type, env_manager="local")
frame = pd.read_csv(rows, keep_default_na=False, na_values=[""])
df = spark.createDataFrame(frame)
scored = df.select(udf(F.struct(*[F.col(f"`{c}`") for c in frame.columns])).alias("o")).select("o.*")
scored.toPandas().to_parquet(out)
spark.stop()
"""


class Consumers:
    """Clean virtualenvs of MLflow's consumers: exactly a model's declared requirements (and, for
    ``spark_udf``, pyspark and pyarrow, the engine's and not the model's). One per distinct
    requirements file and kind, shared by the services that declare the same requirements (three of
    four today): each new one cost a test ~15 s of creating and of first imports."""

    def __init__(self, root: Path):
        self.root = root
        self._made: dict[tuple[str, bool], Path] = {}

    def python(self, requirements: Path, spark: bool = False) -> Path:
        """The interpreter of the virtualenv for ``requirements`` (made on first use)."""
        key = (hashlib.sha256(requirements.read_bytes()).hexdigest()[:16], spark)
        if key not in self._made:
            venv = self.root / f"{key[0]}{'-spark' if spark else ''}"
            uv = bin_path("uv")
            subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=300)
            python = venv / "bin" / "python"
            packages = ["-r", str(requirements)]
            if spark:
                declared = {r.split("==")[0].lower() for r in requirements.read_text().split()}
                packages.append(f"pyspark=={_locked('pyspark')}")
                if "pyarrow" not in declared:  # Spark's pandas UDFs move batches as Arrow
                    packages.append(f"pyarrow=={_locked('pyarrow')}")
            done = subprocess.run(
                [uv, "pip", "install", "-q", "--python", str(python), *packages],
                capture_output=True,
                text=True,
                timeout=1200,
            )
            require(done.returncode == 0, f"installing {packages} failed: {done.stderr[-2000:]}")
            self._made[key] = python
        return self._made[key]


@pytest.fixture(scope="module")
def consumers(tmp_path_factory: pytest.TempPathFactory) -> Consumers:
    return Consumers(tmp_path_factory.mktemp("consumers"))


def test_pyfunc_in_a_clean_env_matches_the_cli(
    trained: TrainedService, consumers: Consumers, tmp_path: Path
) -> None:
    import mlflow

    spec = trained.spec
    uri = f"models:/{spec.name}@champion"
    registry.configure(trained.settings)  # tracking and registry: another test may have moved either
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model")))
    requirements = (model_dir / "requirements.txt").read_text().split()
    names = {r.split("==")[0].lower() for r in requirements}
    assert PROJECT_DISTRIBUTION not in names and "portfolio" not in names, requirements
    assert all("==" in r for r in requirements), requirements
    assert (model_dir / "code" / "portfolio" / "core" / "mlflow_model.py").exists()

    # The consumer: a new virtualenv with the model's declared requirements only, from PyPI.
    python = consumers.python(model_dir / "requirements.txt")
    installed = subprocess.run(
        [bin_path("uv"), "pip", "freeze", "--python", str(python)], capture_output=True, text=True
    )
    assert PROJECT_DISTRIBUTION not in installed.stdout.lower()

    raw = _raw(spec)
    valid = validate_frame(raw, spec.fields).valid_mask
    sample = pd.concat(
        [raw.head(2000), _bad_rows(spec, raw[valid].iloc[0], typed_only=True)], ignore_index=True
    )
    rows = tmp_path / "rows.csv"
    sample.to_csv(rows, index=False)
    refused = tmp_path / "refused.csv"
    long_fields = [c.name for c in input_schema(spec).inputs if getattr(c.type, "name", "") == "long"]
    bad = raw.head(3).copy()
    if long_fields:
        bad[long_fields[0]] = bad[long_fields[0]].astype(object)
        bad.loc[bad.index[0], long_fields[0]] = "abc"
    bad.to_csv(refused, index=False)

    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "MLFLOW_TRACKING_URI": trained.settings.tracking_uri,
        # The model is code + a skops file: nothing is unpickled, so this stays off.
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    out = tmp_path / "pyfunc.parquet"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    done = subprocess.run(
        [str(python), str(script), uri, str(rows), str(out), str(refused)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/portfolio/" in report["portfolio"]  # the model's own copy, not an installed package
    if long_fields:
        assert report["refusal"] and long_fields[0] in report["refusal"], report

    cli = tmp_path / "cli.csv"
    _cli_predict(trained, rows, cli)
    expected, actual = read_raw_csv(cli), pd.read_parquet(out)
    _assert_same(expected, actual)
    errors = actual["error"].tail(len(sample) - 2000)
    assert errors.notna().all() and (errors.str.len() > 0).all()
    assert actual[actual.columns[0]].tail(len(sample) - 2000).isna().all()
    assert actual["error"].head(2000).isna().sum() == valid.head(2000).sum()

    # spark_udf in the same environment plus the engine, on the same rows, against the pyfunc
    # (equal to the CLI).
    python = consumers.python(model_dir / "requirements.txt", spark=True)
    require(
        subprocess.run(["java", "-version"], capture_output=True).returncode == 0, "java is not installed"
    )
    spark_script, spark_out = tmp_path / "spark_consumer.py", tmp_path / "spark.parquet"
    spark_script.write_text(SPARK_CONSUMER)
    spark_env = {**env, "PYSPARK_PYTHON": str(python), "PYSPARK_DRIVER_PYTHON": str(python)}
    spark_env["PATH"] = f"{python.parent}:/usr/bin:/bin"
    spark_env["JAVA_HOME"] = os.environ.get("JAVA_HOME", "")
    if not spark_env["JAVA_HOME"]:
        del spark_env["JAVA_HOME"]
    done = subprocess.run(
        [str(python), str(spark_script), uri, str(rows), str(spark_out)],
        env=spark_env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_same_as_spark(actual, pd.read_parquet(spark_out))


def _locked(name: str) -> str:
    """The version of ``name`` pinned in the project's lock."""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==")[1].split()[0]
    raise AssertionError(f"{name} is not in requirements.lock")


def _assert_same_as_spark(pyfunc: pd.DataFrame, spark: pd.DataFrame) -> None:
    """Spark's struct result (text and double, "None" for a missing text) against the pyfunc's."""
    assert list(spark.columns) == list(pyfunc.columns)
    assert len(spark) == len(pyfunc)
    for col in pyfunc.columns:
        want = pyfunc[col]
        got = spark[col]
        if not pd.api.types.is_numeric_dtype(got):  # the result type: text, or double
            w = [None if pd.isna(v) else str(v) for v in want]
            g = [None if pd.isna(v) or v == "None" else v for v in got]
        else:
            w = [None if pd.isna(v) else float(v) for v in want]
            g = [None if pd.isna(v) else float(v) for v in got]
        diff = [i for i, (a, b) in enumerate(zip(w, g, strict=True)) if a != b]
        assert not diff, f"{col}: {len(diff)} rows differ, first {diff[:3]}: " + str(
            [(w[i], g[i]) for i in diff[:3]]
        )


def _records(spec: ServiceSpec, frame: pd.DataFrame) -> list[dict[str, Any]]:
    records = []
    for row in frame[spec.feature_names].to_dict(orient="records"):
        clean = {}
        for f in spec.fields:
            v = row[f.name]
            if v is None or (isinstance(v, float) and np.isnan(v)):
                clean[f.name] = None
            elif f.kind == "int":
                clean[f.name] = int(v)
            elif f.kind == "float":  # TotalCharges: text in the raw file (its blanks)
                clean[f.name] = float(v) if str(v).strip() else None
            elif isinstance(v, np.generic):
                clean[f.name] = v.item()
            else:
                clean[f.name] = v
        records.append(clean)
    return records


def test_mlflow_models_serve_answers_as_predict_batch(trained: TrainedService, tmp_path: Path) -> None:
    spec = trained.spec
    raw = _raw(spec)
    result = validate_frame(raw, spec.fields)
    records = _records(spec, raw[result.valid_mask].head(200))
    port = free_port()
    proc = start(
        [
            bin_path("mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{spec.name}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        # MLflow starts `uvicorn` by name: this environment's bin first on PATH.
        env={
            **os.environ,
            **trained.env(),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        log_file=tmp_path / "mlflow-serve.log",
        cwd=ROOT,
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", timeout=300, proc=proc)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {(tmp_path / 'mlflow-serve.log').read_text()[-3000:]}") from None
        served = httpx.post(
            f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": records}, timeout=120
        )
        assert served.status_code == 200, served.text[:2000]
        theirs = pd.DataFrame(served.json()["predictions"])
    finally:
        stop(proc)
    with live_api(spec.name, trained.env(), tmp_path) as api:
        ours = httpx.post(f"{api.url}/predict/batch", json={"records": records}, timeout=120)
    assert ours.status_code == 200, ours.text[:2000]
    body = ours.json()
    api_rows = pd.DataFrame(body["predictions"] if isinstance(body, dict) else body)
    columns = [c for c in theirs.columns if c != "error"]
    assert set(columns) <= set(api_rows.columns), (columns, list(api_rows.columns))
    assert theirs["error"].isna().all()
    _assert_same(api_rows[columns], theirs[columns])


@pytest.fixture(scope="module")
def spark_ready() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        require(False, "pyspark (the `spark` extra) is not installed")
    require(
        subprocess.run(["java", "-version"], capture_output=True).returncode == 0,
        "java is not installed (Spark needs a JRE)",
    )


def test_spark_engine_matches_the_cli_on_10000_rows(
    trained: TrainedService, spark_ready: None, tmp_path: Path
) -> None:
    spec = trained.spec
    raw = _raw(spec)
    rows = raw.sample(10_000, replace=len(raw) < 10_000, random_state=1).reset_index(drop=True)
    valid = validate_frame(raw, spec.fields).valid_mask
    bad = _bad_rows(spec, raw[valid].iloc[0], typed_only=False)
    sample = pd.concat([rows.iloc[:5000], bad, rows.iloc[5000:]], ignore_index=True)
    source = tmp_path / "rows.csv"
    sample.to_csv(source, index=False)
    cli = tmp_path / "cli.csv"
    _cli_predict(trained, source, cli)
    expected = read_raw_csv(cli)
    assert expected["error"].iloc[5000 : 5000 + len(bad)].notna().all()

    spark_env = ("--engine", "spark", "--spark-master", "local[2]")
    out = tmp_path / "spark.parquet"
    _cli_predict(trained, source, out, *spark_env)
    _assert_same(expected, _read(out))

    # Parquet in, CSV out: the same rows again (the typed Parquet columns take the other path).
    if spec.name == sorted(SERVICES)[0]:
        parquet_in = tmp_path / "rows.parquet"
        typed_rows = pd.concat(
            [rows.iloc[:5000], _bad_rows(spec, raw[valid].iloc[0], True)], ignore_index=True
        )
        typed_rows.to_parquet(parquet_in)
        typed_csv = tmp_path / "typed.csv"
        typed_rows.to_csv(typed_csv, index=False)
        _cli_predict(trained, typed_csv, tmp_path / "typed-cli.csv")
        _cli_predict(trained, parquet_in, tmp_path / "spark-csv", *spark_env)
        _assert_same(read_raw_csv(tmp_path / "typed-cli.csv"), _read(tmp_path / "spark-csv"))
