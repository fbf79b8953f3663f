"""compose.yaml: valid against the Compose specification, every long-running service health-checked,
and every environment variable, port and address agreeing with what the code and the other
deployment files read (Settings, `mlflow server`, the nginx template, the Prometheus config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from portfolio.services import SERVICES
from tests.deploy.infra import (
    COMPOSE,
    DEPLOYED_SERVICES,
    ENTRYPOINT,
    ENTRYPOINT_VARS,
    EXTRA_ROLES,
    MLFLOW_STORE_VARS,
    NGINX_TEMPLATE,
    PRODUCTION_ENV,
    PROMETHEUS,
    SECRET_NAME,
    env_map,
    interpolate,
    load_yaml,
    mlflow_server_env_names,
    read_env_file,
    run,
    settings_env_names,
    settings_from_env,
    template_variables,
    venv_bin,
)
from tests.support.helpers import ROOT

RAW = load_yaml(COMPOSE)
DEFAULT = interpolate(RAW, {})
PRODUCTION = interpolate(RAW, read_env_file(PRODUCTION_ENV))
APP_ROLES = (*DEPLOYED_SERVICES, *EXTRA_ROLES)


def services(config: dict[str, Any], profiles: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The services `docker compose` starts with these profiles active."""
    return {
        name: svc
        for name, svc in config["services"].items()
        if not svc.get("profiles") or set(svc["profiles"]) & set(profiles)
    }


def role_of(svc: dict[str, Any]) -> str | None:
    return env_map(svc.get("environment")).get("PORTFOLIO_SERVICE")


def app_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if role_of(s) in APP_ROLES}


def is_one_shot(svc: dict[str, Any]) -> bool:
    return svc.get("restart") == "no"


def port_of(svc: dict[str, Any], var: str) -> int:
    return int(env_map(svc["environment"])[var])


def test_compose_file_validates_against_the_compose_specification() -> None:
    result = run([venv_bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_is_live() -> None:
    """Control: the same check rejects a compose file with a misspelled service key."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "compose.yaml"
        bad.write_text("services:\n  api:\n    image: x\n    helthcheck:\n      test: [CMD, 'true']\n")
        result = run([venv_bin("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert result.returncode != 0


def test_every_service_of_the_platform_runs_with_its_role() -> None:
    roles = {role_of(s): n for n, s in DEFAULT["services"].items() if role_of(s)}
    assert set(roles) == set(APP_ROLES)
    assert set(SERVICES) <= set(DEPLOYED_SERVICES), "a registered service is missing from the deployment"
    for name, svc in app_services(DEFAULT).items():
        role = role_of(svc)
        assert name == role, f"service {name} runs role {role}"
        # One image per role from the one Dockerfile (the build arg bakes the default role).
        assert svc["build"]["args"]["SERVICE"] == role
        assert svc["image"].split("/")[-1].split(":")[0] == f"portfolio-{role}"
        # 12-factor containers: read-only root filesystem, scratch space in a tmpfs.
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert 'role="${PORTFOLIO_SERVICE:-}"' in ENTRYPOINT.read_text()  # what the image's entrypoint reads


@pytest.mark.parametrize("profiles", [(), ("production",), ("train",), ("retrain",)])
def test_every_long_running_service_has_a_health_check(profiles: tuple[str, ...]) -> None:
    config = PRODUCTION if "production" in profiles else DEFAULT
    for name, svc in services(config, profiles).items():
        if is_one_shot(svc):
            assert svc.get("profiles"), f"one-shot job {name} must not start with a plain `up`"
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL")


def test_start_order_waits_for_health() -> None:
    svcs = DEFAULT["services"]
    for api in DEPLOYED_SERVICES:
        assert svcs[api]["depends_on"]["mlflow"]["condition"] == "service_healthy"
        assert svcs["nginx"]["depends_on"][api]["condition"] == "service_healthy"
        assert svcs["prometheus"]["depends_on"][api]["condition"] == "service_healthy"
    assert svcs["nginx"]["depends_on"]["dashboard"]["condition"] == "service_healthy"
    assert svcs["dashboard"]["depends_on"]["carvision"]["condition"] == "service_healthy"
    # The production stores gate MLflow only when their profile is active.
    assert svcs["mlflow"]["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}
    assert svcs["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # Every dependency names a service of the file.
    for name, svc in svcs.items():
        for dep in svc.get("depends_on", {}):
            assert dep in svcs, f"{name} depends on unknown {dep}"


def test_app_environment_is_exactly_settings_the_code_reads() -> None:
    known = settings_env_names() | ENTRYPOINT_VARS
    for name, svc in app_services(DEFAULT).items():
        env = env_map(svc["environment"])
        if role_of(svc) == "mlflow":
            allowed = mlflow_server_env_names() | MLFLOW_STORE_VARS | ENTRYPOINT_VARS
            assert set(env) <= allowed, f"{name}: not read by mlflow server: {set(env) - allowed}"
            continue
        assert set(env) <= known, f"{name}: not a setting: {set(env) - known}"
        settings = settings_from_env(env)  # values parse (types, bounds)
        assert settings.mlflow_tracking_uri == env["MLFLOW_TRACKING_URI"]
    # The one-shot jobs too.
    for job in ("train", "retrain"):
        env = env_map(DEFAULT["services"][job]["environment"])
        assert set(env) <= known, f"{job}: not a setting: {set(env) - known}"
        settings_from_env(env)


def test_retrain_job_reads_what_the_apis_log() -> None:
    """The one-shot `retrain` runs `portfolio retrain`, on the volume the APIs write their
    prediction log to and the raw data the train job reads."""
    from portfolio.core.training.retrain import WHEN

    svcs = DEFAULT["services"]
    job = svcs["retrain"]
    assert is_one_shot(job) and job["profiles"] == ["retrain"]
    command = job["command"]
    assert command[:2] == ["portfolio", "retrain"] and command[2] in ("all", *SERVICES)
    assert command[3] == "--when" and command[4] in WHEN
    assert (
        "./data/raw:/app/data/raw:ro" in job["volumes"]
        and "./data/raw:/app/data/raw:ro" in svcs["train"]["volumes"]
    )

    def log_mount(svc: dict[str, Any]) -> str:
        log_dir = settings_from_env(env_map(svc["environment"])).prediction_log_dir
        (mount,) = [v for v in svc["volumes"] if str(log_dir).startswith(v.split(":")[1])]
        return str(mount)

    mount = log_mount(job)
    assert mount.split(":")[0] in DEFAULT["volumes"]  # a named volume, shared
    for api in DEPLOYED_SERVICES:
        assert log_mount(svcs[api]) == mount
        assert settings_from_env(env_map(svcs[api]["environment"])).shadow is True


def test_ports_and_addresses_agree_across_services() -> None:
    svcs = DEFAULT["services"]
    mlflow_env = env_map(svcs["mlflow"]["environment"])
    mlflow_port = int(mlflow_env["MLFLOW_PORT"])
    assert svcs["mlflow"]["ports"][0].split(":")[-1] == str(mlflow_port)
    allowed_hosts = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"mlflow:{mlflow_port}" in allowed_hosts  # the address the APIs use is accepted
    nginx_env = env_map(svcs["nginx"]["environment"])
    scrape = load_yaml(PROMETHEUS)
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for api in DEPLOYED_SERVICES:
        env = env_map(svcs[api]["environment"])
        port = int(env["PORTFOLIO_PORT"])
        assert settings_from_env(env).port == port
        assert str(port) in [str(p) for p in svcs[api]["expose"]]
        tracking = urlparse(env["MLFLOW_TRACKING_URI"])
        assert (tracking.hostname, tracking.port) == ("mlflow", mlflow_port)
        assert nginx_env[f"{api.upper()}_UPSTREAM"] == f"{api}:{port}"
        assert f"{api}:{port}" in targets
    dash = env_map(svcs["dashboard"]["environment"])
    dash_port = int(dash["PORTFOLIO_DASHBOARD_PORT"])
    assert nginx_env["DASHBOARD_UPSTREAM"] == f"dashboard:{dash_port}"
    assert str(dash_port) in [str(p) for p in svcs["dashboard"]["expose"]]
    carvision_port = port_of(svcs["carvision"], "PORTFOLIO_PORT")
    assert dash["CARVISION_API_URL"] == f"http://carvision:{carvision_port}"
    gateway_port = nginx_env["NGINX_PORT"]
    assert svcs["nginx"]["ports"][0].split(":")[-1] == gateway_port
    assert f"127.0.0.1:{gateway_port}/healthz" in " ".join(svcs["nginx"]["healthcheck"]["test"])
    # The nginx template gets exactly the variables it uses.
    assert template_variables(NGINX_TEMPLATE.read_text()) == set(nginx_env)


def test_prometheus_scrapes_every_api_metrics_endpoint() -> None:
    scrape = load_yaml(PROMETHEUS)
    api_job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "portfolio-api")
    assert api_job.get("metrics_path", "/metrics") == "/metrics"
    labelled = {sc["labels"]["service"]: sc["targets"] for sc in api_job["static_configs"]}
    assert set(labelled) == set(DEPLOYED_SERVICES)
    mounted = DEFAULT["services"]["prometheus"]["volumes"][0]
    assert mounted.startswith("./deploy/prometheus/prometheus.yml:")


def test_production_profile_runs_mlflow_on_postgres_and_s3() -> None:
    prod_env = read_env_file(PRODUCTION_ENV)
    assert prod_env["COMPOSE_PROFILES"] == "production"
    active = services(PRODUCTION, ("production",))
    assert {"postgres", "minio", "minio-init", "mlflow"} <= set(active)
    mlflow = env_map(active["mlflow"]["environment"])
    backend = urlparse(mlflow["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme == "postgresql+psycopg2" and backend.hostname == "postgres"
    assert backend.password is None  # the password comes from PGPASSWORD, not the URI
    pg = env_map(active["postgres"]["environment"])
    assert (backend.username, backend.path.lstrip("/")) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert urlparse(mlflow["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    # The default stack keeps the embedded SQLite store on the volume.
    default = env_map(DEFAULT["services"]["mlflow"]["environment"])
    assert default["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:////var/lib/portfolio/")
    assert any(v.endswith(":/var/lib/portfolio") for v in DEFAULT["services"]["mlflow"]["volumes"])
    # The bucket MLflow writes to is the one the init job creates.
    bucket = mlflow["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
    assert f"store/{bucket}" in active["minio-init"]["command"][0]


def test_no_secret_values_in_the_repository() -> None:
    for name, svc in RAW["services"].items():
        for key, value in env_map(svc.get("environment")).items():
            if SECRET_NAME.search(key):
                assert value.startswith("${") and value.endswith("}"), f"{name}.{key} has a literal value"
    for key in read_env_file(PRODUCTION_ENV):
        assert not SECRET_NAME.search(key), f"production.env sets {key}"


def test_prometheus_config_loads_the_alert_rules(tmp_path: Path) -> None:
    """promtool validates the scrape config together with the rule file it names."""
    import shutil
    import subprocess

    from tests.support.helpers import ensure_apt

    promtool = ensure_apt("promtool", "prometheus")
    prom = ROOT / "deploy" / "prometheus"
    shutil.copy(prom / "alerts.yml", tmp_path / "alerts.yml")
    text = (prom / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in text
    (tmp_path / "prometheus.yml").write_text(
        text.replace("/etc/prometheus/alerts.yml", str(tmp_path / "alerts.yml"))
    )
    out = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rules found" in out.stdout + out.stderr
