"""Property-based fuzzing of a running API from its own OpenAPI schema (schemathesis + hypothesis).

Every operation in ``/openapi.json`` is called with generated requests, both schema-valid
("positive") and schema-violating ("negative") ones. Each response goes through schemathesis'
default checks (no 5xx, documented status codes / content types / response schemas, invalid data
rejected, valid data accepted) and through ours: every 4xx body is ``{"detail": [{"field", "reason"}]}``
with a field that names the culprit (a request property, ``body``, or the unknown field).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

# Issue 7: at least 1,000 generated requests per service. Six body-taking operations (/predict,
# /predict/batch, /explain; valid and invalid variants) x 170, plus the parameterless ones.
CASES_PER_SERVICE = 1000
EXAMPLES_PER_OPERATION = 170


@dataclass
class FuzzReport:
    cases: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.cases} cases, status {dict(sorted(self.by_status.items()))}, {dict(self.by_operation)}"


def _body_properties(operation: Any) -> set[str]:
    """Top-level property names of the operation's JSON body (empty when it has none), plus
    ``query.<name>`` for each documented query parameter (how the API names those in a 422)."""
    raw = operation.definition.raw
    query = {f"query.{p['name']}" for p in raw.get("parameters", []) if p.get("in") == "query"}
    try:
        content = raw["requestBody"]["content"]["application/json"]["schema"]
    except (KeyError, TypeError):
        return query
    ref = content.get("$ref", "")
    schema = operation.schema.raw_schema["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else content
    return set(schema.get("properties", {})) | query


def error_shape_problem(status: int, body: Any, properties: set[str]) -> str | None:
    """None when a 4xx body names a field and a reason the way our API promises, else what is wrong."""
    if not 400 <= status < 500:
        return None
    items = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return "4xx body without a `detail` list"
    for item in items:
        if not isinstance(item, dict) or not item.get("field") or not item.get("reason"):
            return f"4xx detail item without field and reason: {item!r}"
        root = str(item["field"]).split(".", 1)[0]
        known = (
            root in properties
            or item["field"] in properties  # query.<name>
            or root in ("body", "authorization", "path", "method")
        )
        if properties and not known and item["reason"] != "unknown field":
            return f"4xx names a field the request does not have: {item!r}"
    return None


def fuzz_api(base_url: str, examples_per_operation: int) -> FuzzReport:
    """Fuzz every operation of the API at ``base_url`` (positive and negative cases)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    report = FuzzReport()
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the OpenAPI schema lists no operations"
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for operation in operations:
            properties = _body_properties(operation)
            try:
                _fuzz_operation(
                    operation, mode, properties, base_url, session, report, examples_per_operation
                )
            except Unsatisfiable:
                # An operation without parameters or body (GET /health) has no invalid variant.
                assert mode is GenerationMode.NEGATIVE and not properties, operation.label
    return report


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    properties: set[str],
    base_url: str,
    session: requests.Session,
    report: FuzzReport,
    examples: int,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report the case as found
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, timeout=60)
        report.cases += 1
        report.by_status[response.status_code] += 1
        report.by_operation[operation.label] += 1
        where = f"{operation.label} ({mode.value}) → {response.status_code}"
        try:
            case.validate_response(response)
        except BaseException as exc:  # schemathesis raises a FailureGroup (a BaseExceptionGroup)
            if isinstance(exc, KeyboardInterrupt):
                raise
            report.failures.append(f"{where}: {exc}")
        try:
            body = response.json()
        except ValueError:
            body = None
        problem = error_shape_problem(response.status_code, body, properties)
        if problem:
            report.failures.append(f"{where}: {problem}\n{case.as_curl_command()}")

    call()


def assert_fuzz_clean(base_url: str, service: str) -> None:
    """Fuzz one API and hold it to issue 7: ≥ CASES_PER_SERVICE cases, no 5xx, every 4xx names a
    field and a reason (and schemathesis' own checks pass)."""
    report = fuzz_api(base_url, EXAMPLES_PER_OPERATION)
    print(f"{service} fuzz: {report.summary()}")
    assert report.cases >= CASES_PER_SERVICE, report.summary()
    assert not [s for s in report.by_status if s >= 500], report.summary()
    assert not report.failures, "\n\n".join(report.failures[:5])
