""".github/workflows/ci-mlops.yml: valid GitHub workflow with every stage the project promises
(Python matrix with pip cache, data validation, ruff, mypy, bandit, pytest + coverage threshold,
pip-audit, per-service image build, Trivy, GHCR push on main) — and bandit clean in `make test`."""

from __future__ import annotations

import re
from typing import Any

from portfolio.services import SERVICES
from tests.deploy.infra import DEPLOYED_SERVICES, EXTRA_ROLES, WORKFLOW, load_yaml, run, venv_bin
from tests.support.helpers import ROOT

FLOW = load_yaml(WORKFLOW)
JOBS: dict[str, Any] = FLOW["jobs"]


def steps(job: str) -> list[dict[str, Any]]:
    return list(JOBS[job]["steps"])


def commands(job: str) -> str:
    return "\n".join(str(s.get("run", "")) for s in steps(job))


def uses(job: str, action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith(action + "@")]


def test_workflow_validates_against_the_github_workflow_schema() -> None:
    result = run([venv_bin("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_triggers_and_least_privilege() -> None:
    # PyYAML reads the key `on` as True.
    triggers = FLOW.get("on", FLOW.get(True))
    assert triggers["push"]["branches"] == ["main"] and "pull_request" in triggers
    assert FLOW["permissions"] == {"contents": "read"}
    assert JOBS["image"]["permissions"]["packages"] == "write"


def test_python_matrix_with_pip_cache() -> None:
    matrix = JOBS["test"]["strategy"]["matrix"]["python-version"]
    assert sorted(matrix) == ["3.11", "3.12"]
    cache = uses("test", "actions/cache")
    assert cache and cache[0]["with"]["path"] == "~/.cache/pip"
    assert "hashFiles('requirements.lock'" in cache[0]["with"]["key"]
    assert "matrix.python-version" in JOBS["test"]["container"]["image"]


def test_quality_gates_run_in_order() -> None:
    cmds = commands("test")
    for service in DEPLOYED_SERVICES:
        assert re.search(rf"for service in [^;]*\b{service}\b", cmds), f"no data validation of {service}"
    assert set(SERVICES) <= set(DEPLOYED_SERVICES)
    assert 'portfolio validate "$service"' in cmds
    order = [
        "dvc pull",
        "portfolio validate",
        "ruff check",
        "ruff format --check",
        "mypy",
        "bandit",
        "pytest",
    ]
    positions = [cmds.index(c) for c in order]
    assert positions == sorted(positions), "data → lint → types → security → tests"
    assert "--cov=portfolio" in cmds and '--cov-fail-under="$COVERAGE_MIN"' in cmds
    assert int(FLOW["env"]["COVERAGE_MIN"]) >= 70
    assert "pip-audit --requirement requirements.lock" in commands("audit")


def test_image_per_service_scanned_and_pushed_on_main_with_sha_and_latest() -> None:
    image = JOBS["image"]
    assert set(image["needs"]) == {"test", "audit"}
    assert image["strategy"]["matrix"]["role"] == [*DEPLOYED_SERVICES, *EXTRA_ROLES]
    build, push = uses("image", "docker/build-push-action")
    assert "SERVICE=${{ matrix.role }}" in build["with"]["build-args"]
    assert build["with"]["load"] is True and not build["with"].get("push")
    trivy = uses("image", "aquasecurity/trivy-action")[0]
    assert trivy["with"]["image-ref"] == build["with"]["tags"]
    assert trivy["with"]["exit-code"] == "1" and "CRITICAL" in trivy["with"]["severity"]
    names = [s.get("name", s.get("uses")) for s in steps("image")]
    assert names.index("Scan the image (Trivy)") < names.index("Push (commit SHA and latest)")
    on_main = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert push["if"] == on_main and uses("image", "docker/login-action")[0]["if"] == on_main
    assert push["with"]["push"] is True
    tags = push["with"]["tags"].strip().splitlines()
    assert tags == [
        "${{ steps.image.outputs.name }}:${{ github.sha }}",
        "${{ steps.image.outputs.name }}:latest",
    ]
    assert "ghcr.io/" in commands("image")


def test_ci_entry_point_is_make_test() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", script, re.MULTILINE)


def test_bandit_finds_nothing_unjustified_in_src() -> None:
    """The workflow's bandit step, run here too: skips are listed with reasons in pyproject.toml."""
    result = run([venv_bin("bandit"), "-c", str(ROOT / "pyproject.toml"), "-r", str(ROOT / "src"), "-q"])
    assert result.returncode == 0, result.stdout + result.stderr
