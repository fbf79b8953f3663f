"""A real Prometheus server (Debian package ``prometheus``) for the tests, configured from
deploy/prometheus/*: the deployed scrape job and alert rules, pointed at APIs on loopback, with
short intervals for a test (set here only, never in the deployed files)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from portfolio.core.processes import free_port
from tests.support.helpers import ROOT, ensure_apt
from tests.support.live import LiveProcess, running

PROM = ROOT / "deploy" / "prometheus"
API_JOB = "portfolio-api"


def held_rules(rules: Mapping[str, Any], hold: str) -> dict[str, Any]:
    """The deployed rule groups with every alert's ``for`` set to ``hold``: a test cannot wait
    15 minutes for FeatureDrift. Expressions, labels and annotations stay as deployed."""
    out = copy.deepcopy(dict(rules))
    for group in out["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = hold
    return out


def loopback_config(
    port: int, api_targets: Mapping[str, str], rules_file: Path, scrape: str, evaluation: str
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml for a Prometheus listening on ``port``: the API job keeps
    its settings and target labels, each target replaced by the loopback address of the API
    running here (``api_targets``: the target's ``service`` label to ``host:port``; services not
    running are left out); a scrape (and its timeout) every ``scrape``, rules evaluated every
    ``evaluation``."""
    conf = yaml.safe_load((PROM / "prometheus.yml").read_text())
    conf["global"].update(scrape_interval=scrape, scrape_timeout=scrape, evaluation_interval=evaluation)
    conf["rule_files"] = [str(rules_file)]
    for job in conf["scrape_configs"]:
        if job["job_name"] == API_JOB:
            statics = [sc for sc in job["static_configs"] if sc["labels"]["service"] in api_targets]
            for sc in statics:
                sc["targets"] = [api_targets[sc["labels"]["service"]]]
            assert statics, f"no target of {API_JOB} is among {sorted(api_targets)}"
            job["static_configs"] = statics
        else:  # Prometheus's own metrics
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return conf


class LivePrometheus(LiveProcess):
    """The Prometheus server and its HTTP API."""

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/<path>``'s ``data`` (fails on an error answer)."""
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", body
        return body["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), from Prometheus's own ``/api/v1/alerts``."""
        return list(self.api("alerts")["alerts"])

    def firing(self, alertname: str) -> list[dict[str, str]]:
        """The labels of each firing ``alertname`` alert."""
        return [
            a["labels"]
            for a in self.alerts()
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def last_evaluation(self, group: str) -> float:
        """When the rule group last finished an evaluation (Unix seconds; 0 before the first)."""
        found = [g for g in self.api("rules")["groups"] if g["name"] == group]
        assert found, f"rule group {group} not loaded"
        stamp = datetime.fromisoformat(found[0]["lastEvaluation"]).timestamp()
        return max(stamp, 0.0)


def wait_for(
    what: str,
    probe: Callable[[], Any],
    timeout: float,
    until: Callable[[Any], bool] = bool,
    every: float = 0.5,
) -> Any:
    """Poll ``probe`` until ``until`` holds for its value, and return that value; fail, naming
    ``what`` and the last value seen, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if until(last):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@contextmanager
def live_prometheus(
    workdir: Path,
    api_targets: Mapping[str, str],
    scrape: str = "2s",
    evaluation: str = "1s",
    hold: str = "2s",
    start_timeout: float = 60,
) -> Iterator[LivePrometheus]:
    """The real ``prometheus`` on a free loopback port with the deployed configuration (see
    ``loopback_config`` and ``held_rules``), its TSDB under ``workdir``; stopped when the block ends."""
    binary = ensure_apt("prometheus", "prometheus")
    port = free_port()
    rules = workdir / "alerts.yml"
    rules.write_text(yaml.safe_dump(held_rules(yaml.safe_load((PROM / "alerts.yml").read_text()), hold)))
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(port, api_targets, rules, scrape, evaluation)))
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url, log = f"http://127.0.0.1:{port}", workdir / "prometheus.log"
    ready, kind = "/-/ready", LivePrometheus
    with running(kind, "prometheus", argv, url, ready, log, cwd=workdir, timeout=start_timeout) as prom:
        yield prom
