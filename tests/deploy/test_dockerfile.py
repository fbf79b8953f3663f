"""The Dockerfile: hadolint-clean, multi-stage, slim Python base, non-root, health-checked, and its
build context (.dockerignore) carries the code and nothing else: no data, state or secrets."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.infra import (
    DOCKERFILE,
    ENTRYPOINT,
    dockerfile_env,
    dockerignore_excludes,
    parse_dockerfile,
    read_dockerignore,
    run,
    venv_bin,
)
from tests.support.helpers import ROOT

GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def test_hadolint_reports_nothing() -> None:
    result = run([venv_bin("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_is_live_on_a_bad_dockerfile() -> None:
    """Control: the same tool does flag a Dockerfile with the usual mistakes."""
    result = subprocess.run(
        [venv_bin("hadolint"), "--no-color", "-"],
        input="FROM python:latest\nRUN apt-get install curl\nUSER root\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout  # :latest, unpinned apt


def test_multi_stage_slim_python_base_and_runtime_only_final_stage() -> None:
    assert len(STAGES) >= 2
    names = [s.name for s in STAGES]
    assert "deps" in names
    for i, stage in enumerate(STAGES):
        # Python's slim image, or an earlier stage (the role's venv is picked from the deps stage).
        earlier = {s.name for s in STAGES[:i]}
        assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", stage.base) or stage.base in earlier, stage.base
    # The final stage takes the built environment from the builder and installs nothing itself.
    copies_from = [i.flags.get("from") for i in FINAL.all("COPY")]
    assert "select" in copies_from
    assert re.fullmatch(r"python:3\.1[12]-slim(-\w+)?", FINAL.base)
    for ins in FINAL.all("RUN"):
        assert not re.search(r"\b(pip|uv)\b.*\binstall\b|apt-get install|gcc|build-essential", ins.args), ins
    deps = next(s for s in STAGES if s.name == "deps")
    assert any("--constraint requirements.lock" in i.args for i in deps.all("RUN"))
    # No build argument in the deps stage: its layers are shared by every role's build.
    assert not deps.all("ARG")


def test_runs_as_the_unprivileged_appuser() -> None:
    users = FINAL.all("USER")
    assert users, "final stage has no USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(i.args for i in FINAL.all("RUN"))
    m = re.search(r"useradd\b[^&]*--uid (\d+)[^&]*\bappuser\b", created)
    assert m, "appuser is not created in the final stage"
    assert user in (m.group(1), "appuser")
    assert int(m.group(1)) >= 1000
    # Kubernetes' runAsNonRoot can only verify a numeric USER.
    assert user.isdigit()


def test_healthcheck_and_entrypoint_are_the_tested_script() -> None:
    checks = FINAL.all("HEALTHCHECK")
    assert len(checks) == 1
    assert checks[0].args == 'CMD ["portfolio-entrypoint", "health"]'
    assert {"interval", "timeout", "retries"} <= set(checks[0].flags)
    # The script the image runs is deploy/docker/entrypoint.sh (exercised for real in
    # test_container_entrypoint.py); its health command probes /health of the API roles.
    copy = next(i for i in FINAL.all("COPY") if i.args.startswith(str(ENTRYPOINT.relative_to(ROOT))))
    assert copy.args.split()[-1] == "/usr/local/bin/portfolio-entrypoint"
    # The classic builder has no COPY --chmod: the script is executable in git, and COPY keeps that.
    assert "chmod" not in copy.flags
    mode = run(["git", "ls-files", "-s", str(ENTRYPOINT.relative_to(ROOT))], cwd=ROOT).stdout.split()[0]
    assert mode == "100755"
    assert FINAL.all("ENTRYPOINT")[-1].args == '["portfolio-entrypoint"]'
    script = ENTRYPOINT.read_text()
    assert '/health"' in script and "/_stcore/health" in script


def test_image_environment_is_only_non_secret_settings() -> None:
    env = dockerfile_env(FINAL)
    assert env["PORTFOLIO_HOST"] == "0.0.0.0"
    assert env["PORTFOLIO_PORT"] == "8000"
    # Everything the app writes goes to /tmp (read-only root filesystem in compose and k8s).
    assert env["PORTFOLIO_STATE_DIR"].startswith("/tmp/")
    assert env["HOME"] == "/tmp"
    for ins in STAGES[0].all("ENV") + FINAL.all("ENV") + FINAL.all("ARG"):
        assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", ins.args, re.IGNORECASE), ins


def test_no_data_models_or_secrets_are_copied() -> None:
    allowed = {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "params.yaml",
        "src",
        "deploy/docker/entrypoint.sh",
        "deploy/docker/jsonlog.py",
        "deploy/docker/requirements.py",
    }
    for stage in STAGES:
        for ins in stage.all("COPY") + stage.all("ADD"):
            assert ins.keyword == "COPY", "ADD can fetch URLs and unpack archives: use COPY"
            if "from" in ins.flags:
                continue
            sources = ins.args.split()[:-1]
            for src in sources:
                assert src.rstrip("/") in allowed, f"unexpected build input {src!r}"


def test_dockerignore_keeps_data_state_and_secrets_out_but_the_build_inputs_in() -> None:
    patterns = read_dockerignore()
    for path in (
        "data/raw/Churn_Modelling.csv",
        "data/raw/Churn_Modelling.csv.dvc",
        ".venv/bin/python",
        ".git/HEAD",
        ".dvc/cache/files/md5/00/abc",
        ".portfolio/mlflow.db",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/model.skops",
        "models/bankchurn/model_card.md",
        "reports/bankchurn/train.json",
        ".env",
        "deploy/compose/production.env",
        "tests/conftest.py",
        "src/portfolio/__pycache__/cli.cpython-311.pyc",
        "src/ml_mlops_portfolio.egg-info/PKG-INFO",
        ".mypy_cache/3.11/x.json",
    ):
        assert dockerignore_excludes(patterns, path), f"{path} would be sent to the Docker daemon"
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    needed = [
        src.rstrip("/")
        for stage in stages
        for ins in stage.all("COPY")
        if "from" not in ins.flags
        for src in ins.args.split()[:-1]
    ]
    needed += ["src/portfolio/cli/__init__.py", "src/portfolio/core/serving/api.py", "src/portfolio/py.typed"]
    for path in needed:
        assert not dockerignore_excludes(patterns, path), f"{path} is needed by the build but ignored"
