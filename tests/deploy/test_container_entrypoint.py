"""The container's entrypoint, for real and without a container engine: the project installed the way
the Dockerfile's builder stage installs it (its own `uv` commands, the lock as constraints, from a
build context holding only what the Dockerfile copies) into a clean virtual environment, then the
image's ENTRYPOINT script run with the image's ENV as an unprivileged user (`nobody`)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from portfolio.core.processes import free_port, stop
from portfolio.services import SERVICES
from tests.deploy.conftest import Tracking, example_record, wait_or_explain
from tests.deploy.infra import (
    DOCKERFILE,
    ENTRYPOINT,
    dockerfile_env,
    dockerignore_excludes,
    parse_dockerfile,
    read_dockerignore,
    run,
    venv_bin,
    world_readable_tmpdir,
)
from tests.support.helpers import ROOT, require

pytestmark = pytest.mark.integration
_, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER = next(s for s in STAGES if s.name == "deps")
FINAL = STAGES[-1]
IMAGE_VENV = "/opt/venv"


def world_executable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    if not real.is_file():
        return False
    return all(p.stat().st_mode & 0o001 for p in (real, *real.parents))


def base_python() -> str:
    """A CPython of this minor version that an unprivileged user may execute (the image's
    python:3.11-slim has /usr/local/bin/python3.11; Debian's is /usr/bin/python3.11)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        f"/usr/local/bin/python{version}",
        f"/usr/bin/python{version}",
        getattr(sys, "_base_executable", ""),
    ]
    found = next((c for c in candidates if world_executable(c)), None)
    require(found is not None, f"no python{version} executable by other users")
    assert found is not None
    return found


@dataclass
class Install:
    root: Path
    context: Path
    venv: Path


@pytest.fixture(scope="module")
def installed() -> Iterator[Install]:
    root = world_readable_tmpdir("deploy-image-")
    context, venv = root / "context", root / "venv"
    try:
        # The build context: exactly what the Dockerfile copies, filtered by .dockerignore.
        patterns = read_dockerignore()
        for stage in STAGES:
            for ins in stage.all("COPY"):
                if "from" in ins.flags:
                    continue
                for src in ins.args.split()[:-1]:
                    source = ROOT / src
                    files = [source] if source.is_file() else [p for p in source.rglob("*") if p.is_file()]
                    for f in files:
                        rel = f.relative_to(ROOT).as_posix()
                        if not dockerignore_excludes(patterns, rel):
                            (context / rel).parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(f, context / rel)
        # What the deps stage does for an API image (its `api` kind), with this machine's paths:
        # the kind's requirements from deploy/docker/requirements.py, the lock as constraints,
        # then the package without dependencies. The local uv cache is reused.
        run_args = " ".join(ins.args for ins in BUILDER.all("RUN"))
        assert "requirements.py --kind" in run_args and "--no-deps ." in run_args
        env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
        uv = venv_bin("uv")
        kind = run([sys.executable, "deploy/docker/requirements.py", "--kind", "api"], cwd=context)
        assert kind.returncode == 0, kind.stderr
        (context / "api.txt").write_text(kind.stdout)
        py = str(venv / "bin" / "python")
        for argv in (
            ["venv", str(venv), "--python", base_python()],
            ["pip", "install", "--python", py, "--constraint", "requirements.lock", "-r", "api.txt"],
            ["pip", "install", "--python", py, "--no-deps", "."],
        ):
            result = run([uv, *argv], cwd=context, env=env, timeout=900)
            assert result.returncode == 0, f"{argv}\n{result.stderr[-3000:]}"
        for tool in ("portfolio", "mlflow"):
            assert (venv / "bin" / tool).exists()
        yield Install(root, context, venv)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Container:
    """The image's ENTRYPOINT with the image's ENV, as `nobody` (setpriv, no new privileges)."""

    def __init__(self, install: Install, env: dict[str, str]):
        self.install = install
        self.state = world_readable_tmpdir("deploy-appuser-")
        self.log = self.state / "entrypoint.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            shutil.chown(self.state, nobody.pw_uid, nobody.pw_gid)
            self.uid = nobody.pw_uid
            self.as_user = [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                "--no-new-privs",
            ]
        else:
            self.uid = os.geteuid()
        image_env = dockerfile_env(FINAL)
        image_env["PATH"] = image_env["PATH"].replace(f"{IMAGE_VENV}/bin", str(install.venv / "bin"))
        image_env["PATH"] = image_env["PATH"].replace("${PATH}", "/usr/local/bin:/usr/bin:/bin")
        # Host paths instead of the image's: the app folder (params.yaml) and a private home.
        image_env |= {
            "PORTFOLIO_HOME": str(install.context),
            "HOME": str(self.state),
            "PORTFOLIO_STATE_DIR": str(self.state / "portfolio"),
            "PORTFOLIO_MODELS_DIR": str(self.state / "portfolio" / "models"),
            "PORTFOLIO_HOST": "127.0.0.1",  # loopback only on this machine
            "LANG": "C.UTF-8",
        }
        self.env = image_env | env
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([*self.as_user, str(ENTRYPOINT), *args], env=self.env, timeout=120)

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.as_user, str(ENTRYPOINT)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.state, ignore_errors=True)


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_clean_environment_has_the_runtime_only(installed: Install) -> None:
    bin_dir = installed.venv / "bin"
    for dev_tool in ("pytest", "ruff", "mypy", "hadolint", "kubectl"):
        assert not (bin_dir / dev_tool).exists(), f"{dev_tool} leaked into the runtime image"
    probe = run(
        [str(bin_dir / "python"), "-c", "import portfolio.core.serving.api, portfolio.core.training.train"]
    )
    assert probe.returncode == 0, probe.stderr
    # An API image carries neither the dashboard nor the MLflow server's backends.
    for other_role in ("streamlit", "psycopg2", "boto3", "flask"):
        absent = run([str(bin_dir / "python"), "-c", f"import {other_role}"])
        assert absent.returncode != 0, f"{other_role} is in the API environment"


def test_entrypoint_refuses_to_guess_a_role(installed: Install) -> None:
    box = Container(installed, {"PORTFOLIO_SERVICE": ""})
    try:
        result = box.command("run")
        assert result.returncode == 64
        assert "PORTFOLIO_SERVICE is not set" in result.stderr
        box.env["PORTFOLIO_SERVICE"] = "nosuchservice"
        result = box.command("run")
        assert result.returncode == 2 and "unknown service 'nosuchservice'" in result.stdout + result.stderr
    finally:
        box.close()


def test_health_probe_is_liveness_not_readiness(installed: Install) -> None:
    """No tracking server: the API is alive (/health, HEALTHCHECK passes) but not ready (/ready 503)."""
    port = free_port()
    box = Container(
        installed,
        {
            "PORTFOLIO_SERVICE": "bankchurn",
            "PORTFOLIO_PORT": str(port),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
            "PORTFOLIO_MODEL_LOAD_RETRIES": "0",
        },
    )
    try:
        proc = box.start()
        url = f"http://127.0.0.1:{port}"
        wait_or_explain(f"{url}/health", proc, box.log)
        assert httpx.get(f"{url}/ready").status_code == 503
        health = box.command("health")
        assert health.returncode == 0, health.stderr
        stop(proc)
        down = box.command("health")
        assert down.returncode == 1 and f"unhealthy: http://127.0.0.1:{port}/health" in down.stderr
    finally:
        box.close()


def test_entrypoint_serves_the_champion_as_an_unprivileged_user(
    installed: Install, tracking: Tracking, trained: dict[str, str]
) -> None:
    name = "bankchurn" if "bankchurn" in trained else next(iter(trained))
    port = free_port()
    box = Container(
        installed,
        {"PORTFOLIO_SERVICE": name, "PORTFOLIO_PORT": str(port), "MLFLOW_TRACKING_URI": tracking.url},
    )
    try:
        proc = box.start()
        url = f"http://127.0.0.1:{port}"
        wait_or_explain(f"{url}/ready", proc, box.log)
        assert httpx.get(f"{url}/ready").json()["model_version"] == trained[name]
        r = httpx.post(f"{url}/predict", json=example_record(SERVICES[name]), timeout=30)
        assert r.status_code == 200, r.text
        # The entrypoint exec'd into the server: the listening process is the unprivileged user.
        assert process_uid(proc.pid) == box.uid != 0
        assert box.command("health").returncode == 0
    finally:
        box.close()
