"""Helpers for the deployment tests: the files under test, the real tools that check them
(hadolint, check-jsonschema, kubectl kustomize, nginx, PostgreSQL) and small parsers."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from portfolio.core.processes import free_port
from portfolio.core.settings import Settings
from tests.support.helpers import ROOT, ensure_apt, require

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
COMPOSE = ROOT / "compose.yaml"
PRODUCTION_ENV = ROOT / "deploy" / "compose" / "production.env"
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "templates" / "default.conf.template"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s"
WORKFLOW = ROOT / ".github" / "workflows" / "ci-mlops.yml"

# The services the deployment runs (compose, nginx, Kubernetes, CI images). Every registered
# service must be among them; the end-to-end tests need all of them registered.
DEPLOYED_SERVICES = ("bankchurn", "carvision", "telecom", "plan")
# Roles of the one image besides the APIs (deploy/docker/entrypoint.sh).
EXTRA_ROLES = ("dashboard", "mlflow")
# Read by the container entrypoint (and by `portfolio serve`'s uvicorn factory), not by Settings.
ENTRYPOINT_VARS = frozenset({"PORTFOLIO_SERVICE"})
# Variables of the libraries the MLflow server uses for its production stores: libpq reads
# PGPASSWORD, boto3 the AWS credentials; MLflow's S3 client reads MLFLOW_S3_ENDPOINT_URL.
MLFLOW_STORE_VARS = frozenset(
    {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"}
)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|ACCESS_KEY", re.IGNORECASE)


def venv_bin(name: str) -> str:
    """A console script of the test's own environment (pinned in the lock), else PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    require(found is not None, f"{name} is not installed (pinned in requirements.lock: run `make install`)")
    assert found is not None
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


# ------------------------------------------------------------------ settings the code reads


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads: PORTFOLIO_<field> or the field's aliases."""
    prefix = str(Settings.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{name}")
    return {n.upper() for n in names}


def mlflow_server_env_names() -> set[str]:
    """The environment variables `mlflow server` reads for its options (click envvars)."""
    from mlflow.cli import server

    names: set[str] = set()
    for param in server.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names |= set(envvar)
    return names


def settings_from_env(env: dict[str, str]) -> Settings:
    """Validate the Settings variables among ``env`` (types, bounds) as the process would."""
    prefix = str(Settings.model_config.get("env_prefix") or "").upper()
    kwargs: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = (
            [c for c in alias.choices if isinstance(c, str)]
            if isinstance(alias, AliasChoices)
            else [alias]
            if isinstance(alias, str)
            else []
        )
        for key, value in env.items():
            if choices and key.upper() in {c.upper() for c in choices}:
                kwargs[choices[0]] = value
            elif not choices and key.upper() == f"{prefix}{name.upper()}":
                kwargs[name] = value
    return Settings(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            key, _, value = flag[2:].partition("=")
            flags[key] = value
            rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            base = parts[0]
            for k, v in global_args.items():
                base = base.replace(f"${{{k}}}", v).replace(f"${k}", v)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if keyword == "ARG":
                k, _, v = rest.partition("=")
                global_args[k] = v
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, flags))
    return global_args, stages


def dockerfile_env(stage: Stage) -> dict[str, str]:
    """The ENV of a stage (KEY=VALUE pairs, quotes removed)."""
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("([^"]*)"|(\S*))', ins.args):
            env[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(4)
    return env


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule for one context path: the last matching pattern wins, `!`
    re-includes, a pattern matching a parent folder matches everything below it, `**` spans folders."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = _dockerignore_regex(pat)
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        else:
            ch = pattern[i]
            out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
            i += 1
    return re.compile(out)


def read_dockerignore() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ------------------------------------------------------------------ compose


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


_INTERP = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, $$) applied to a parsed file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        current = env.get(name)
        if op == ":-":
            return current if current else default
        if op == "-":
            return current if current is not None else default
        if op in (":?", "?") and not current:
            raise KeyError(f"{name} is required: {default}")
        return current or ""

    return _INTERP.sub(sub, value)


def env_map(environment: Any) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


# ------------------------------------------------------------------ Kubernetes


def kustomize(overlay: str) -> list[dict[str, Any]]:
    kubectl = venv_bin("kubectl")
    result = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# ------------------------------------------------------------------ nginx


def render_template(text: str, env: dict[str, str]) -> str:
    """What the nginx image's envsubst step does: replace ${NAME} for names given in ``env``."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), m.group(0)), text)


def template_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))


def ensure_nginx() -> str:
    return ensure_apt("nginx", "nginx")


def nginx_main_conf(workdir: Path, include: Path) -> Path:
    """A minimal main nginx.conf around the rendered server config (the image has its own)."""
    temp = {name: workdir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(parents=True, exist_ok=True)
    mime = Path("/etc/nginx/mime.types")
    user = "root" if os.geteuid() == 0 else ""
    conf = workdir / "nginx.conf"
    conf.write_text(
        (f"user {user};\n" if user else "")
        + f"pid {workdir / 'nginx.pid'};\n"
        + f"error_log {workdir / 'error.log'} info;\n"
        + "worker_processes 1;\n"
        + "events { worker_connections 512; }\n"
        + "http {\n"
        + (f"  include {mime};\n" if mime.exists() else "")
        + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items())
        + f"  include {include};\n"
        + "}\n"
    )
    return conf


# ------------------------------------------------------------------ PostgreSQL


def world_readable_tmpdir(prefix: str) -> Path:
    """A temp dir other users (postgres, nobody) can enter; pytest's own tmp dirs are 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4] or 0)
    )
    return candidates[-1] if candidates else None


def ensure_postgres() -> tuple[str, str]:
    """(initdb, pg_ctl) of the Debian `postgresql` package, installed with apt when missing."""
    if _pg_bin("initdb") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # Debian keeps the server's binaries off PATH (/usr/lib/postgresql/<major>/bin).
        run(["apt-get", "update", "-qq"], timeout=600)
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
            timeout=900,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    require(initdb is not None and pg_ctl is not None, "PostgreSQL server (Debian `postgresql`) missing")
    assert initdb is not None and pg_ctl is not None
    return initdb, pg_ctl


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster on a loopback port, owned by the `postgres` user."""

    root: Path
    port: int
    password: str
    user: str = "mlflow"
    database: str = "mlflow"

    def __post_init__(self) -> None:
        self.initdb, self.pg_ctl = ensure_postgres()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # the server refuses to run as root
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_owner:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        out = run(
            [
                *self.as_owner,
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        assert out.returncode == 0, out.stdout + out.stderr
        pwfile.unlink()

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
        argv = [*self.as_owner, self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options]
        out = run([*argv, "-w", "-t", "60", "start"])
        assert out.returncode == 0, out.stdout + out.stderr + self.log.read_text()

    def stop(self) -> None:
        run([*self.as_owner, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=self.database
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()


def start_postgres(root: Path) -> Postgres:
    pg = Postgres(root=root, port=free_port(), password=os.urandom(12).hex())
    pg.init()
    try:
        pg.start()
        pg.create_database()
    except BaseException:
        pg.stop()
        raise
    return pg
