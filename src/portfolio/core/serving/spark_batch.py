"""Batch scoring on Spark: the registered pyfunc (``mlflow_model``) applied with
``mlflow.pyfunc.spark_udf``, so a cluster gives the same columns and values as ``portfolio
predict`` on one machine.

- Input: CSV (header row, RFC 4180 quoting, empty cell = missing) or Parquet.
- Output: a Spark output folder (CSV with a header per part, or Parquet) with the local CLI's
  columns. There is no shuffle between reading and writing, so part files in name order hold the
  rows in input order (one input file; Spark orders the files of an input folder by size).
- Bad rows: the model gives range, category and missing-value errors itself. A cell that cannot
  become the signature's type (text in an integer field, a missing whole number) is replaced by
  the field's example before the model sees it, and its error is written as the CLI words it;
  the row's predictions stay empty.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portfolio.core.mlflow_model import input_schema, output_columns
from portfolio.core.spec import ServiceSpec

_PRE = "_portfolio_parse_error"  # parse errors: first, as in schema.validate_frame
_REQ = "_portfolio_value_error"  # missing/non-whole integers: among the model's own errors
_OUT = "_portfolio_out"


@dataclass
class SparkReport:
    rows: int
    failed: int


def session(master: str | None = None, app: str = "portfolio-predict") -> Any:
    """The active SparkSession, or a new one. Under spark-submit the master comes from there;
    otherwise ``master`` (default ``local[*]``). Local masters bind the driver to 127.0.0.1 and
    run this interpreter as the Python workers."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app)
    master = master or SparkConf().get("spark.master", None) or "local[*]"
    builder = builder.master(master)
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = (
            builder.config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "4")
        )
    return builder.getOrCreate()


def _is_parquet(path: str) -> bool:
    p = Path(path)
    return p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*.parquet")))


def read_input(spark: Any, path: str) -> Any:
    """CSV as text (the model and ``conform`` parse it, as the CLI does) or Parquet as typed."""
    if _is_parquet(path):
        return spark.read.parquet(path)
    return (
        spark.read.option("header", True)
        .option("escape", '"')
        .option("multiLine", False)
        .option("inferSchema", False)
        .option("mode", "FAILFAST")
        .csv(path)
    )


def conform(df: Any, spec: ServiceSpec) -> Any:
    """Give each field the signature's Spark type. Cells that cannot have it are replaced by the
    field's example and their error goes to ``_PRE`` (parse) or ``_REQ`` (missing/not whole)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType, StringType

    missing = [f.name for f in spec.fields if not f.optional and f.name not in df.columns]
    if missing:
        raise ValueError(
            f"missing required columns: {', '.join(missing)}. "
            f"Expected the {spec.name} columns: {', '.join(spec.feature_names)}"
        )
    types = {c.name: c.type for c in input_schema(spec).inputs}
    parse: list[Any] = []
    value: list[Any] = []
    cols: dict[str, Any] = {}
    for f in spec.fields:
        if f.name not in df.columns:
            continue
        col, dtype = F.col(f"`{f.name}`"), df.schema[f.name].dataType
        t = str(getattr(types[f.name], "name", "any"))
        if t not in ("long", "double"):
            cols[f.name] = col.cast("string") if isinstance(dtype, NumericType) and t == "string" else col
            continue
        if isinstance(dtype, StringType):
            text = F.trim(col)
            text = F.when(text != "", text)
            number = text.try_cast("double")
            bad = text.isNotNull() & number.isNull()
            parse.append(F.when(bad, F.concat(F.lit(f"{f.name}: not a number ('"), text, F.lit("')"))))
        else:
            number, bad = col.cast("double"), F.lit(False)
        if t == "long":
            unusable = bad | number.isNull() | (number != F.floor(number))
            value.append(F.when(~bad & number.isNull(), F.lit(f"{f.name}: is required (missing value)")))
            value.append(
                F.when(
                    number != F.floor(number),
                    F.concat(
                        F.lit(f"{f.name}: must be a whole number (got "), number.cast("string"), F.lit(")")
                    ),
                )
            )
            cols[f.name] = F.when(unusable, F.lit(int(f.example))).otherwise(number.cast("long"))
        else:
            cols[f.name] = F.when(bad, F.lit(float(f.example))).otherwise(number)
    return df.select(
        *[c.alias(n) for n, c in cols.items()],
        F.concat_ws("; ", *parse).alias(_PRE) if parse else F.lit("").alias(_PRE),
        F.concat_ws("; ", *value).alias(_REQ) if value else F.lit("").alias(_REQ),
    )


def _merge_errors(spec: ServiceSpec) -> Any:
    """The row's error as the CLI words it: parse errors first, then the others in field order
    (the order of the schema's checks); None for a valid row. Spark SQL only: no Python UDF."""
    from itertools import chain

    from pyspark.sql import functions as F

    order = F.create_map(*chain.from_iterable((F.lit(f.name), F.lit(i)) for i, f in enumerate(spec.fields)))

    def parts(col: Any) -> Any:
        return F.filter(F.split(F.coalesce(col, F.lit("")), "; "), lambda m: ~m.isin("", "None", "nan"))

    def position(m: Any) -> Any:
        return F.coalesce(F.element_at(order, F.substring_index(m, ":", 1)), F.lit(len(spec.fields)))

    others = F.array_sort(
        F.concat(parts(F.col(_REQ)), parts(F.col(f"{_OUT}.error"))),
        lambda a, b: position(a) - position(b),
    )
    merged = F.concat(parts(F.col(_PRE)), others)
    return F.when(F.size(merged) > 0, F.concat_ws("; ", merged))


def predict_spark(
    spark: Any,
    spec: ServiceSpec,
    model_uri: str,
    input_path: str,
    output_path: str,
    explain: bool = True,
) -> SparkReport:
    """Score ``input_path`` with the pyfunc at ``model_uri`` on ``spark`` into ``output_path``
    (Parquet when it ends with .parquet, else CSV).

    Args:
        spark: the session (``session()``).
        spec: the service.
        model_uri: e.g. ``models:/telecom@champion``.
        input_path: CSV or Parquet file (or folder).
        output_path: the output folder.
        explain: False leaves the per-row explanations empty (TelecomAI's top_factors).

    Returns:
        Rows written and rows with an error.
    """
    import mlflow.pyfunc
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType, StructField, StructType

    df = conform(read_input(spark, input_path), spec)
    # Whole-number and true/false outputs travel as double: MLflow casts a long or boolean result
    # with numpy, which has no missing value for the empty predictions of invalid rows (a missing
    # boolean would become True). They get their own type again below.
    signature = mlflow.models.get_model_info(model_uri).signature
    kinds = {c.name: str(c.type.name) for c in signature.outputs.inputs}
    result_type = StructType(
        [StructField(n, StringType() if k == "string" else DoubleType()) for n, k in kinds.items()]
    )
    udf = mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type, env_manager="local", params={"explain": explain}
    )
    names = [f.name for f in spec.fields if f.name in df.columns]
    scored = df.withColumn(_OUT, udf(F.struct(*[F.col(f"`{n}`") for n in names])))
    error = _merge_errors(spec)
    # An invalid row (its error from the model or from ``conform``) has empty predictions, as in
    # the CLI, whatever MLflow's text conversion made of its missing values ("None", "nan").
    failed = error.isNotNull()
    outputs = [c for c in output_columns(spec) if c != "error"]

    def value(name: str) -> Any:
        col = F.col(f"{_OUT}.{name}")
        if kinds[name] == "string":
            # MLflow turns a text result into str with numpy: a missing value arrives as "None"
            # (no output text of ours is ever that word).
            return F.when(col != "None", col)
        col = F.nanvl(col, F.lit(None))  # NaN (an invalid row) → empty, as in the CLI
        if kinds[name] in ("long", "boolean"):
            return col.cast(LongType() if kinds[name] == "long" else BooleanType())
        return col

    out = scored.select(
        *[F.when(failed, F.lit(None)).otherwise(value(c)).alias(c) for c in outputs],
        error.alias("error"),
    )
    writer = out.write.mode("overwrite")
    if output_path.endswith(".parquet"):
        writer.parquet(output_path)
        written = spark.read.parquet(output_path)
    else:
        writer.option("header", True).option("escape", '"').csv(output_path)
        written = spark.read.option("header", True).option("escape", '"').csv(output_path)
    counts = written.agg(F.count(F.lit(1)).alias("rows"), F.count("error").alias("failed")).first()
    return SparkReport(rows=int(counts["rows"]), failed=int(counts["failed"]))
