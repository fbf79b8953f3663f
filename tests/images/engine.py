"""The container engine the image tests and `make images` use: Debian's Docker (dockerd, classic
builder), started here when it is not running and stopped again by whoever started it; the Python
base image (the official one when it can be pulled, else a stand-in made with debootstrap and cached
under a tag keyed by its recipe); and the per-role images built exactly as the README says.

Nothing here is a mock: every call runs the real ``docker``/``dockerd``/``debootstrap``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.helpers import ROOT, ensure_apt

OFFICIAL_BASE = "python:3.11-slim-bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The stand-in base: Debian bookworm's own Python 3.11 (what the official slim image is built on).
STANDIN_SUITE = "bookworm"
STANDIN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
API_ROLES = ("bankchurn", "carvision", "telecom")
ROLES = (*API_ROLES, "dashboard", "mlflow")


def run(
    argv: list[str], timeout: float = 600, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return its completed process; on failure raise with its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@dataclass
class Engine:
    """A reachable Docker daemon; ``started`` says whether this process started it (and must stop it)."""

    docker: str
    started: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    base: str = ""
    base_kind: str = ""
    built: dict[str, float] = field(default_factory=dict)

    def __call__(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one ``docker`` command."""
        return run([self.docker, *args], timeout=timeout, check=check)

    def alive(self) -> bool:
        """Whether the daemon answers."""
        return self("version", "--format", "{{.Server.Version}}", timeout=30, check=False).returncode == 0

    def stop(self) -> None:
        """Stop the daemon if this process started it (its containers stop with it)."""
        if self.started is None or self.started.poll() is not None:
            return
        self.started.terminate()
        try:
            self.started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait(timeout=30)
        self.started = None


def start_engine() -> Engine:
    """A running Docker daemon: the one already running, or dockerd started here (installed from
    Debian's ``docker.io`` when missing). The caller stops it with ``Engine.stop``."""
    dockerd = ensure_apt("dockerd", "docker.io")
    docker = shutil.which("docker") or ensure_apt("docker", "docker.io")
    engine = Engine(docker=docker)
    if engine.alive():
        return engine
    log = Path(tempfile.mkdtemp(prefix="portfolio-dockerd-")) / "dockerd.log"
    with log.open("wb") as out:
        engine.started = subprocess.Popen(
            [dockerd, "--pidfile", str(log.parent / "dockerd.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine.log = log
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if engine.alive():
            return engine
        if engine.started.poll() is not None:
            break
        time.sleep(0.5)
    engine.stop()
    raise RuntimeError(f"dockerd did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _standin_tag() -> str:
    """Tag of the stand-in base, keyed by its recipe and the CA bundle it carries."""
    recipe = json.dumps([STANDIN_SUITE, STANDIN_PACKAGES, _ca_digest(), "v1"])
    return f"portfolio-base:{STANDIN_SUITE}-py311-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def _ca_digest() -> str:
    return hashlib.sha256(CA_BUNDLE.read_bytes()).hexdigest() if CA_BUNDLE.exists() else "none"


def _mirror() -> str:
    """The Debian mirror apt uses on this machine (debootstrap fetches from the same one)."""
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = source.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if line.startswith("URIs:") and len(parts) > 1 and "security" not in parts[1]:
                return parts[1]
            if parts[:1] == ["deb"] and len(parts) > 1 and "security" not in line:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return "http://deb.debian.org/debian"


def ensure_base(engine: Engine) -> tuple[str, str]:
    """The base image to build on, as (image, kind): the official ``python:3.11-slim-bookworm`` when
    it can be pulled, otherwise the cached stand-in, made from Debian packages on a miss."""
    if engine("image", "inspect", OFFICIAL_BASE, check=False, timeout=60).returncode == 0:
        return OFFICIAL_BASE, "official"
    if engine("pull", OFFICIAL_BASE, check=False, timeout=300).returncode == 0:
        return OFFICIAL_BASE, "official"
    tag = _standin_tag()
    if engine("image", "inspect", tag, check=False, timeout=60).returncode == 0:
        return tag, "stand-in (cached)"
    debootstrap = ensure_apt("debootstrap", "debootstrap")
    root = Path(tempfile.mkdtemp(prefix="portfolio-rootfs-"))
    try:
        run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(STANDIN_PACKAGES)}",
                STANDIN_SUITE,
                str(root),
                _mirror(),
            ],
            timeout=1200,
        )
        # The machine's CA bundle, so pip and uv inside builds trust the same package index.
        if CA_BUNDLE.exists():
            shutil.copyfile(CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [
                engine.docker,
                "import",
                "--change",
                "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                "--change",
                "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                "-",
                tag,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tar.wait(timeout=60)
        if imported.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag, "stand-in (built now)"


def image_name(role: str) -> str:
    """The image name the README and compose.yaml give ``role``."""
    return f"portfolio-{role}:local"


def build_command(role: str, base: str) -> list[str]:
    """The README's build command for ``role`` (``PYTHON_IMAGE`` only when not the official base)."""
    argv = ["build", "--build-arg", f"SERVICE={role}", "-t", image_name(role)]
    if base != OFFICIAL_BASE:
        argv += ["--build-arg", f"PYTHON_IMAGE={base}"]
    return [*argv, "."]


def build(engine: Engine, role: str) -> float:
    """Build ``role``'s image from the repository's Dockerfile; returns the seconds it took."""
    t0 = time.monotonic()
    run(
        [engine.docker, *build_command(role, engine.base)],
        timeout=1800,
        cwd=ROOT,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    engine.built[role] = time.monotonic() - t0
    return engine.built[role]


def image_size(engine: Engine, image: str) -> int:
    """The image's size in bytes as ``docker image inspect`` reports it."""
    return int(engine("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


# Container runs in tests and `make images`: the image's own HEALTHCHECK command, probed more often
# than its 30 s interval so `healthy` shows up within seconds.
HEALTH_FLAGS = ("--health-interval=2s", "--health-start-period=120s", "--health-retries=3")
LABEL = "org.portfolio.test"


@dataclass
class Container:
    """One running container of a role, reached on 127.0.0.1:port (host network)."""

    engine: Engine
    id: str
    role: str
    port: int
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self) -> dict[str, Any]:
        return json.loads(self.engine("inspect", self.id).stdout)[0]  # type: ignore[no-any-return]

    def logs(self) -> str:
        out = self.engine("logs", self.id, check=False)
        return out.stdout + out.stderr

    def health(self) -> str:
        return str(self.inspect()["State"].get("Health", {}).get("Status", "none"))


def run_role(
    engine: Engine,
    role: str,
    env: dict[str, str],
    port: int,
    extra: tuple[str, ...] = (),
    command: tuple[str, ...] = (),
    image: str | None = None,
) -> Container:
    """``docker run -d`` one role as the README documents: read-only root, /tmp tmpfs, the
    image's non-root user, host network bound to 127.0.0.1."""
    argv = ["run", "-d", "--label", LABEL, "--network", "host", "--read-only", "--tmpfs", "/tmp"]
    argv += [*HEALTH_FLAGS, *extra]
    for key, value in {"PORTFOLIO_HOST": "127.0.0.1", **env}.items():
        argv += ["-e", f"{key}={value}"]
    cid = engine(*argv, image or image_name(role), *command).stdout.strip()
    return Container(engine, cid, role, port)


def wait_until(url: str, container: Container, timeout: float = 240) -> float:
    """Seconds until ``url`` answers 200; fails with the container's logs if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - container.started_at
        except httpx.HTTPError:
            pass
        state = container.inspect()["State"]
        if not state["Running"] and state.get("Restarting") is not True:
            break
        time.sleep(0.2)
    raise AssertionError(
        f"{url} never answered 200\n--- logs of {container.role} ---\n{container.logs()[-4000:]}"
    )


def wait_healthy(container: Container, timeout: float = 120) -> None:
    """Wait until the container's HEALTHCHECK says healthy; fail with its last probe output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if container.health() == "healthy":
            return
        time.sleep(1)
    raise AssertionError(
        f"{container.role} never turned healthy: {container.inspect()['State'].get('Health')}"
    )


def train_all(engine: Engine, tracking_url: str, image: str) -> str:
    """`portfolio train all` in a container of ``image`` against ``tracking_url`` (the raw data
    mounted read-only, reduced CV folds and bootstrap rounds); returns what it printed."""
    data = ROOT / "data" / "raw"
    argv = ["run", "--rm", "--label", LABEL, "--network", "host", "--read-only", "--tmpfs", "/tmp"]
    argv += ["--no-healthcheck"]  # a one-shot job: no server for the image's probe to find
    argv += ["-v", f"{data}:/app/data/raw:ro", "-e", f"MLFLOW_TRACKING_URI={tracking_url}"]
    argv += ["-e", "PORTFOLIO_CV_FOLDS=2", "-e", "PORTFOLIO_BOOTSTRAP_ROUNDS=50"]
    return engine(*argv, image, "portfolio", "train", "all", timeout=1800).stdout


def crash(engine: Engine, cid: str) -> None:
    """SIGKILL the container's main process from the host, as a crash or the OOM killer would
    (`docker kill` counts as a manual stop, which restart policies leave alone)."""
    import signal

    pid = int(engine("inspect", "--format", "{{.State.Pid}}", cid).stdout.strip())
    assert pid > 0, f"{cid} is not running"
    os.kill(pid, signal.SIGKILL)


def start_mlflow(engine: Engine, volume: str) -> tuple[Container, float]:
    """The MLflow role's container on a new named volume ``volume``, on 127.0.0.1 and a free port;
    returns it with the seconds it took to answer /health."""
    from portfolio.core.processes import free_port

    engine("volume", "create", "--label", LABEL, volume)
    port = free_port()
    mlflow = run_role(
        engine,
        "mlflow",
        {"MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"},
        port,
        extra=("-v", f"{volume}:/var/lib/portfolio"),
    )
    return mlflow, wait_until(f"{mlflow.url}/health", mlflow)
