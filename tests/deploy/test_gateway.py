"""The nginx gateway, for real: deploy/nginx's template rendered the way the nginx image renders it
(only the upstream addresses and the port differ: loopback here, service names in compose), a real
nginx process in front of the real APIs (and the dashboard), requests through it."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from portfolio.core.processes import free_port, start, stop
from portfolio.services import SERVICES
from tests.deploy.conftest import (
    entrypoint_health,
    example_record,
    require_all_services,
    start_role,
    wait_or_explain,
)
from tests.deploy.infra import (
    DEPLOYED_SERVICES,
    NGINX_TEMPLATE,
    ensure_nginx,
    nginx_main_conf,
    render_template,
    run,
    template_variables,
)
from tests.support.helpers import require

pytestmark = pytest.mark.integration
HEX32 = re.compile(r"[0-9a-f]{32}")


def has_dashboard_command() -> bool:
    from typer.main import get_command

    from portfolio.cli import app

    return "dashboard" in get_command(app).commands  # type: ignore[attr-defined]


@dataclass
class Gateway:
    url: str
    nginx: str
    conf: Path
    prefix: Path
    access_log: Path

    def log_lines(self, *request_ids: str, timeout: float = 30) -> list[dict[str, object]]:
        """The JSON access-log lines, once a line for each of ``request_ids`` is there (nginx
        writes a request's line after its response is sent)."""
        deadline = time.monotonic() + timeout
        while True:
            out = [json.loads(x) for x in self.access_log.read_text().splitlines() if x.startswith("{")]
            missing = set(request_ids) - {line.get("request_id") for line in out}
            if not missing:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {sorted(missing)} after {timeout} s")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def dashboard(apis: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    if not has_dashboard_command():
        yield None
        return
    root = tmp_path_factory.mktemp("deploy-dashboard")
    port = free_port()
    log = root / "dashboard.log"
    env = {
        "PORTFOLIO_DASHBOARD_PORT": str(port),
        "PORTFOLIO_STATE_DIR": str(root / "state"),
        "HOME": str(root),
    }
    if "carvision" in apis:
        env["CARVISION_API_URL"] = apis["carvision"]
    proc = start_role("dashboard", log, env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_or_explain(f"{url}/_stcore/health", proc, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def gateway(
    apis: dict[str, str], dashboard: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    nginx = ensure_nginx()
    work = tmp_path_factory.mktemp("deploy-nginx")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: a missing component answers 503

    def hostport(url: str | None) -> str:
        return url.removeprefix("http://") if url else dead

    port = free_port()
    env = {f"{name.upper()}_UPSTREAM": hostport(apis.get(name)) for name in DEPLOYED_SERVICES}
    env["DASHBOARD_UPSTREAM"] = hostport(dashboard)
    env["NGINX_PORT"] = f"127.0.0.1:{port}"
    template = NGINX_TEMPLATE.read_text()
    assert template_variables(template) == set(env)
    rendered = render_template(template, env)
    assert not template_variables(rendered)
    (work / "default.conf").write_text(rendered)
    conf = nginx_main_conf(work, work / "default.conf")
    test = run([nginx, "-t", "-p", str(work), "-c", str(conf)])
    assert test.returncode == 0, test.stderr
    access_log = work / "stdout.log"
    proc = start([nginx, "-p", str(work), "-c", str(conf), "-g", "daemon off;"], log_file=access_log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_or_explain(f"{url}/healthz", proc, work / "error.log", timeout=30)
        yield Gateway(url, nginx, conf, work, access_log)
    finally:
        stop(proc)


def test_predicts_through_the_gateway_for_every_service(
    gateway: Gateway, apis: dict[str, str], trained: dict[str, str]
) -> None:
    assert apis
    for name, direct in apis.items():
        base = f"{gateway.url}/{name}"
        record = example_record(SERVICES[name])
        assert httpx.get(f"{base}/ready").json()["model_version"] == trained[name]
        assert httpx.get(f"{base}/model").json()["name"] == name
        via = httpx.post(f"{base}/predict", json=record, timeout=30)
        assert via.status_code == 200, via.text
        assert via.json() == httpx.post(f"{direct}/predict", json=record, timeout=30).json()
        batch = httpx.post(f"{base}/predict/batch", json={"records": [record] * 3}, timeout=30)
        assert batch.status_code == 200 and batch.json()["count"] == 3
        # Per-service validation errors come back through the gateway unchanged.
        bad = httpx.post(f"{base}/predict", json={**record, "nonsense_field": 1})
        assert bad.status_code == 422
        assert {"field": "nonsense_field", "reason": "unknown field"} in bad.json()["detail"]
        # /metrics (what Prometheus scrapes) is valid exposition text counting this service.
        text = httpx.get(f"{base}/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        predicted = [s for s in families["portfolio_requests"].samples if s.labels["handler"] == "/predict"]
        assert predicted and all(s.labels["model_service"] == name for s in predicted)
    require_all_services(trained)


def test_request_ids_pass_through_or_are_generated(gateway: Gateway, apis: dict[str, str]) -> None:
    name = next(iter(apis))
    url = f"{gateway.url}/{name}/model"
    given = httpx.get(url, headers={"X-Request-ID": "deploy-test-42"})
    assert given.headers["x-request-id"] == "deploy-test-42"
    generated = httpx.get(url)
    rid = generated.headers["x-request-id"]
    assert HEX32.fullmatch(rid), rid
    # A hostile id (too long / odd characters) is replaced, not forwarded.
    hostile = httpx.get(url, headers={"X-Request-ID": "x" * 200})
    assert HEX32.fullmatch(hostile.headers["x-request-id"])
    logged = {line["request_id"]: line for line in gateway.log_lines("deploy-test-42", rid)}
    assert logged["deploy-test-42"]["uri"] == f"/{name}/model"
    assert logged[rid]["status"] == 200 and logged[rid]["upstream"] == apis[name].removeprefix("http://")


def test_request_body_limit_is_enforced_at_the_gateway(gateway: Gateway, apis: dict[str, str]) -> None:
    name = next(iter(apis))
    big = b'{"records": [' + b" " * 3_000_000 + b"]}"
    r = httpx.post(
        f"{gateway.url}/{name}/predict/batch", content=big, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json() == {
        "detail": [{"field": "body", "reason": "request body larger than the gateway limit (2 MB)"}]
    }
    # It never reached the service…
    metrics = httpx.get(f"{apis[name]}/metrics").text
    assert 'status="413"' not in metrics
    # …while a body under the limit does (the API itself judges it).
    ok = b'{"records": [' + b" " * 1_500_000 + b"]}"
    r = httpx.post(
        f"{gateway.url}/{name}/predict/batch", content=ok, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "records"


def test_routes_redirects_and_unknown_paths(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/healthz").text == "ok\n"
    for prefix in (*DEPLOYED_SERVICES, "dashboard"):
        r = httpx.get(f"{gateway.url}/{prefix}")
        assert r.status_code == 308 and r.headers["location"] == f"/{prefix}/"
    r = httpx.get(f"{gateway.url}/admin")
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "path"
    assert "server" not in r.headers or "nginx/" not in r.headers["server"]  # no version banner


def test_timeouts_and_limits_are_configured(gateway: Gateway) -> None:
    dump = run([gateway.nginx, "-T", "-p", str(gateway.prefix), "-c", str(gateway.conf)])
    assert dump.returncode == 0, dump.stderr
    text = dump.stdout

    def seconds(directive: str) -> list[int]:
        values = re.findall(rf"^\s*{directive}\s+(\d+)([smh]?);", text, re.MULTILINE)
        return [int(v) * {"": 1, "s": 1, "m": 60, "h": 3600}[u] for v, u in values]

    assert re.search(r"^\s*client_max_body_size 2m;", text, re.MULTILINE)
    for directive, ceiling in (
        ("client_header_timeout", 30),
        ("client_body_timeout", 30),
        ("proxy_connect_timeout", 10),
        ("send_timeout", 60),
    ):
        values = seconds(directive)
        assert values and max(values) <= ceiling, (directive, values)
    # API calls are cut after 30 s; only the dashboard's websocket may stay open longer.
    assert sorted(set(seconds("proxy_read_timeout"))) == [30, 3600]


def test_dashboard_is_routed_with_websockets(gateway: Gateway, dashboard: str | None) -> None:
    require(dashboard is not None, "`portfolio dashboard` is not available yet")
    port = dashboard.rsplit(":", 1)[1] if dashboard else ""
    assert entrypoint_health("dashboard", {"PORTFOLIO_DASHBOARD_PORT": port}).returncode == 0
    page = httpx.get(f"{gateway.url}/dashboard/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert httpx.get(f"{gateway.url}/dashboard/_stcore/health").text == "ok"
    from websockets.sync.client import connect

    ws_url = gateway.url.replace("http://", "ws://") + "/dashboard/_stcore/stream"
    with connect(ws_url, subprotocols=["streamlit"], open_timeout=10) as ws:  # type: ignore[list-item]
        assert ws.response is not None and ws.response.status_code == 101


def test_gateway_answers_json_when_a_service_is_down(tmp_path: Path) -> None:
    """The same template with nothing listening upstream: the gateway's own error, in JSON."""
    nginx = ensure_nginx()
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    env = {f"{name.upper()}_UPSTREAM": dead for name in (*DEPLOYED_SERVICES, "dashboard")}
    env["NGINX_PORT"] = f"127.0.0.1:{port}"
    (tmp_path / "default.conf").write_text(render_template(NGINX_TEMPLATE.read_text(), env))
    conf = nginx_main_conf(tmp_path, tmp_path / "default.conf")
    proc = start(
        [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"], log_file=tmp_path / "out.log"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_or_explain(f"{url}/healthz", proc, tmp_path / "error.log", timeout=30)
        for prefix in (*DEPLOYED_SERVICES, "dashboard"):
            r = httpx.get(f"{url}/{prefix}/ready")
            assert r.status_code == 502  # nginx's own code (connection refused), JSON body
            assert r.json()["detail"][0]["reason"].startswith("service unavailable")
    finally:
        stop(proc)
