"""The compose stack for real: compose.yaml brought up by Debian's docker-compose (compose v1, the
compose available here), with the third-party images it names (nginx, PostgreSQL) pulled when they
can be, else replaced by stand-ins built from Debian packages on the same base.

Compose v1 lacks two compose-spec features compose.yaml uses: the top-level ``name`` (given with
``-p`` instead) and ``depends_on: {required: false}``; ``v1_compatible`` resolves the latter the
way compose v2 does (a dependency on a service outside the active profiles is dropped).
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.images.engine import Engine, run
from tests.support.helpers import ROOT, ensure_apt

COMPOSE = ROOT / "compose.yaml"

# Stand-ins for images that cannot be pulled here: what the official image does, from Debian.
NGINX_STANDIN = r"""
FROM {base}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light gettext-base wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* /etc/nginx/conf.d/* \
    && install -d -o 101 -g 101 /etc/nginx/templates /etc/nginx/conf.d
COPY nginx.conf /etc/nginx/nginx.conf
COPY nginx-entrypoint.sh /docker-entrypoint.sh
USER 101:101
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "/docker-entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
"""

# The unprivileged image's main config: pid and temp files under /tmp, the rendered templates.
NGINX_CONF = """
worker_processes auto;
pid /tmp/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path /tmp/client_temp;
    proxy_temp_path /tmp/proxy_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
    include /tmp/nginx-conf.d/*.conf;
}
"""

# The official image's template step: /etc/nginx/templates/*.template rendered with envsubst,
# substituting only variables that are set (nginx's own $variables stay); into conf.d when it is
# writable (the official image's place), else into /tmp (the tmpfs compose gives it).
NGINX_ENTRYPOINT = r"""#!/bin/sh
set -eu
vars="$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')"
dir=/etc/nginx/conf.d
[ -w "$dir" ] || { dir=/tmp/nginx-conf.d; mkdir -p "$dir"; }
for t in /etc/nginx/templates/*.template; do
    [ -f "$t" ] || continue
    out="$dir/$(basename "$t" .template)"
    envsubst "$vars" < "$t" > "$out"
done
exec "$@"
"""

POSTGRES_STANDIN = r"""
FROM {base}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /var/run/postgresql
COPY postgres-entrypoint.sh /docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/bin/sh", "/docker-entrypoint.sh"]
"""

# The official image's contract: POSTGRES_USER/POSTGRES_DB/POSTGRES_PASSWORD on first start,
# password authentication from the network.
POSTGRES_ENTRYPOINT = r"""#!/bin/sh
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pw="$(mktemp)"; printf '%s' "$POSTGRES_PASSWORD" > "$pw"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256
    rm -f "$pw"
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" -j postgres
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
"""

STANDINS = {
    "nginxinc/nginx-unprivileged:1.27-alpine": (
        "nginx",
        NGINX_STANDIN,
        {"nginx.conf": NGINX_CONF, "nginx-entrypoint.sh": NGINX_ENTRYPOINT},
    ),
    "postgres:16-alpine": ("postgres", POSTGRES_STANDIN, {"postgres-entrypoint.sh": POSTGRES_ENTRYPOINT}),
}


def third_party_image(engine: Engine, official: str) -> tuple[str, str]:
    """``official`` when it is present or can be pulled, else its stand-in (cached by recipe), as
    (image, kind)."""
    if engine("image", "inspect", official, check=False, timeout=60).returncode == 0:
        return official, "official"
    if engine("pull", official, check=False, timeout=300).returncode == 0:
        return official, "official"
    name, dockerfile, files = STANDINS[official]
    text = dockerfile.format(base=engine.base)
    digest = hashlib.sha256(repr((text, sorted(files.items()))).encode()).hexdigest()[:12]
    tag = f"portfolio-standin-{name}:{digest}"
    if engine("image", "inspect", tag, check=False, timeout=60).returncode == 0:
        return tag, "stand-in (cached)"
    with tempfile.TemporaryDirectory(prefix="portfolio-standin-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(text)
        for filename, content in files.items():
            (Path(ctx) / filename).write_text(content)
        run(
            [engine.docker, "build", "-t", tag, ctx], timeout=1200, env={**os.environ, "DOCKER_BUILDKIT": "0"}
        )
    return tag, "stand-in (built now)"


def v1_compatible(
    config: dict[str, Any], profiles: tuple[str, ...], unavailable: tuple[str, ...] = ()
) -> dict[str, Any]:
    """compose.yaml as compose v1 accepts it, with v2's meaning (see the module docstring).

    Args:
        config: compose.yaml as loaded.
        profiles: the active profiles.
        unavailable: services that cannot run here (their image cannot be pulled): left out, as
            if their profile were inactive.

    Returns:
        A new mapping: no top-level ``name``; optional dependencies on inactive services dropped.
    """
    out = copy.deepcopy(config)
    out.pop("name", None)

    def active(svc: dict[str, Any]) -> bool:
        return not svc.get("profiles") or bool(set(svc["profiles"]) & set(profiles))

    for name in unavailable:
        out["services"].pop(name, None)

    for svc in out["services"].values():
        deps = svc.get("depends_on")
        if not isinstance(deps, dict):
            continue
        for dep, cond in list(deps.items()):
            optional = isinstance(cond, dict) and cond.pop("required", True) is False
            if optional and (dep not in out["services"] or not active(out["services"][dep])):
                del deps[dep]
    return out


@dataclass
class Stack:
    """One compose project brought up from compose.yaml."""

    engine: Engine
    compose: str
    project: str
    files: list[Path]
    env: dict[str, str]
    gateway: str

    def __call__(self, *args: str, timeout: float = 900, check: bool = True) -> Any:
        """Run one docker-compose command on this project."""
        argv = [self.compose, "--project-directory", str(ROOT), "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        return run([*argv, *args], timeout=timeout, check=check, env={**os.environ, **self.env}, cwd=ROOT)

    def container(self, service: str) -> str:
        """The id of ``service``'s container."""
        return str(self("ps", "-q", service).stdout.strip())

    def down(self) -> None:
        """Stop and remove the project's containers, networks and volumes."""
        self("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=300)


def compose_stack(
    engine: Engine,
    profiles: tuple[str, ...],
    overrides: dict[str, Any],
    env: dict[str, str],
    workdir: Path,
    unavailable: tuple[str, ...] = (),
) -> Stack:
    """A Stack (not started) for compose.yaml with ``profiles`` and an override file."""
    compose = ensure_apt("docker-compose", "docker-compose")
    config = v1_compatible(yaml.safe_load(COMPOSE.read_text()), profiles, unavailable)
    main = workdir / "compose.yaml"
    main.write_text(yaml.safe_dump(config, sort_keys=False))
    override = workdir / "override.yaml"
    override.write_text(yaml.safe_dump(overrides, sort_keys=False))
    project = f"portfolio-test-{uuid.uuid4().hex[:8]}"
    full_env = {"COMPOSE_PROFILES": ",".join(profiles), "DOCKER_HOST": "unix:///var/run/docker.sock", **env}
    gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    return Stack(engine, compose, project, [main, override], full_env, gateway)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 1.0) -> None:
    """Poll ``predicate()`` until it is true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cleanup(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
