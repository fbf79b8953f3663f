"""Kubernetes: `kubectl kustomize` renders both overlays, every object validates against the
Kubernetes schemas (kubernetes-validate, strict, offline), and the rendered objects hold together:
probes, resources, security contexts, settings, service/port references, replicas, stores."""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest

from portfolio.services import SERVICES
from tests.deploy.infra import (
    DEPLOYED_SERVICES,
    ENTRYPOINT_VARS,
    MLFLOW_STORE_VARS,
    SECRET_NAME,
    kustomize,
    mlflow_server_env_names,
    settings_env_names,
    settings_from_env,
)

K8S_VERSION = "1.37.0"
OVERLAYS = ("local", "production")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")  # the tag CI pushes every image with
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config_map(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    """A generated ConfigMap's data (kustomize appends a content hash to the name)."""
    found = [d for n, d in by_kind(docs, "ConfigMap").items() if n.rsplit("-", 1)[0] == prefix]
    assert len(found) == 1, f"ConfigMap {prefix} missing"
    return dict(found[0]["data"])


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's plain environment: its ConfigMap envFrom plus literal env values."""
    env: dict[str, str] = {}
    maps = by_kind(docs, "ConfigMap")
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in maps, f"envFrom refers to missing ConfigMap {ref}"
        env.update(maps[ref]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from secret>")
    return env


def test_every_rendered_object_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    assert len(docs) >= 15
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_is_live(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Control: a misspelled field and a wrong type are both rejected."""
    _, docs = rendered
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_each_service_has_deployment_service_and_autoscaler(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    deployments, svcs, hpas = (
        by_kind(docs, "Deployment"),
        by_kind(docs, "Service"),
        by_kind(docs, "HorizontalPodAutoscaler"),
    )
    assert set(SERVICES) <= set(DEPLOYED_SERVICES)
    for name in DEPLOYED_SERVICES:
        dep = deployments[f"{name}-api"]
        pod = dep["spec"]["template"]
        container = pod["spec"]["containers"][0]
        env = container_env(docs, container)
        assert env["PORTFOLIO_SERVICE"] == name
        assert container["image"].split("/")[-1].split(":")[0] == f"portfolio-{name}"
        # Replicas: 3 in production (seed), autoscaled from there.
        expected = 3 if overlay == "production" else 1
        assert dep["spec"]["replicas"] == expected
        hpa = hpas[f"{name}-api"]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{name}-api",
        }
        assert hpa["spec"]["minReplicas"] == expected and hpa["spec"]["maxReplicas"] > expected
        # Selectors: the Deployment's and the Service's both pick exactly this service's pods.
        labels = pod["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items() and selector["app.kubernetes.io/name"] == name
        svc = svcs[f"{name}-api"]
        assert svc["spec"]["selector"].items() <= labels.items()
        assert svc["spec"]["selector"]["app.kubernetes.io/name"] == name
        # Ports: the Service targets the container port the API listens on (PORTFOLIO_PORT).
        port = settings_from_env(env).port
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named[svc["spec"]["ports"][0]["targetPort"]] == port


def test_probes_resources_and_security_context_of_every_workload(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(workloads) >= 5
    for wl in workloads:
        pod = wl["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"]:
            where = f"{wl['metadata']['name']}/{c['name']}"
            assert c.get("livenessProbe") and c.get("readinessProbe"), where
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), (
                where
            )
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True, where
            assert pod["securityContext"].get("runAsUser", 0) != 0, where
            # A read-only root needs a writable /tmp.
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, where


def test_api_probes_are_health_for_liveness_and_ready_for_readiness(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    for name in DEPLOYED_SERVICES:
        c = deployments[f"{name}-api"]["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert c["livenessProbe"]["httpGet"]["port"] in {p["name"] for p in c["ports"]}


def test_configmaps_hold_only_real_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    app = config_map(docs, "portfolio-config")
    assert set(app) <= settings_env_names(), set(app) - settings_env_names()
    settings_from_env(app)  # every value parses
    tracking = config_map(docs, "mlflow-config")
    assert set(tracking) <= mlflow_server_env_names(), set(tracking) - mlflow_server_env_names()
    # Literal env entries of the containers are settings too (or the entrypoint's role / store creds).
    for wl in by_kind(docs, "Deployment").values():
        for c in wl["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            allowed = settings_env_names() | ENTRYPOINT_VARS | MLFLOW_STORE_VARS
            assert names <= allowed, names - allowed


def test_apis_reach_the_in_cluster_mlflow_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    app = config_map(docs, "portfolio-config")
    tracking = config_map(docs, "mlflow-config")
    uri = urlparse(app["MLFLOW_TRACKING_URI"])
    svc = by_kind(docs, "Service")[uri.hostname or ""]
    port = next(p for p in svc["spec"]["ports"] if p["port"] == uri.port)
    mlflow = by_kind(docs, "Deployment")["mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert svc["spec"]["selector"].items() <= mlflow["spec"]["template"]["metadata"]["labels"].items()
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == int(tracking["MLFLOW_PORT"])
    assert container_env(docs, container)["PORTFOLIO_SERVICE"] == "mlflow"
    allowed = tracking["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert uri.netloc in allowed
    # The dashboard calls the carvision API through its Service.
    dash = urlparse(app["CARVISION_API_URL"])
    carvision = by_kind(docs, "Service")[dash.hostname or ""]
    assert carvision["spec"]["selector"]["app.kubernetes.io/name"] == "carvision"
    assert dash.port == carvision["spec"]["ports"][0]["port"]


def test_ingress_routes_every_prefix_to_an_existing_service_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    svcs = by_kind(docs, "Service")
    routes: dict[str, tuple[str, str]] = {}
    for ing in by_kind(docs, "Ingress").values():
        ann = ing["metadata"]["annotations"]
        assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "2m"
        assert "nginx.ingress.kubernetes.io/proxy-read-timeout" in ann
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                routes[path["path"].split("(")[0]] = (backend["name"], backend["port"]["name"])
    assert set(routes) == {f"/{s}" for s in DEPLOYED_SERVICES} | {"/dashboard"}
    for prefix, (svc_name, port_name) in routes.items():
        assert svc_name in svcs, f"{prefix} → missing Service {svc_name}"
        assert port_name in {p["name"] for p in svcs[svc_name]["spec"]["ports"]}


def test_tracking_store_per_overlay(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    tracking = config_map(docs, "mlflow-config")
    mlflow = by_kind(docs, "Deployment")["mlflow"]
    pod = mlflow["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    assert not by_kind(docs, "Secret"), "secrets are created out of band, never rendered from the repo"
    if overlay == "local":
        # Embedded store: SQLite + artifacts on the PersistentVolumeClaim, one replica.
        assert tracking["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:////var/lib/portfolio/")
        claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
        assert claim in pvcs
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data")
        assert tracking["MLFLOW_ARTIFACTS_DESTINATION"].startswith(mount["mountPath"])
        assert mlflow["spec"]["strategy"]["type"] == "Recreate"
        return
    # Production: PostgreSQL backend (password from a Secret), S3 artifacts, no local volume.
    backend = urlparse(tracking["MLFLOW_BACKEND_STORE_URI"])
    assert backend.scheme == "postgresql+psycopg2" and backend.password is None
    pg_svc = by_kind(docs, "Service")[backend.hostname or ""]
    assert backend.port in {p["port"] for p in pg_svc["spec"]["ports"]}
    postgres = by_kind(docs, "StatefulSet")[pg_svc["spec"]["selector"]["app.kubernetes.io/name"]]
    assert postgres["spec"]["volumeClaimTemplates"], "PostgreSQL keeps its data on a volume"
    assert tracking["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "persistentVolumeClaim" not in volumes["data"] and "mlflow-data" not in pvcs
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-postgres"
    pg_password = next(
        e
        for e in postgres["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "POSTGRES_PASSWORD"
    )
    assert pg_password["valueFrom"]["secretKeyRef"] == env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert mlflow["spec"]["replicas"] >= 2
    # Disruption budgets keep most replicas of every API up during drains.
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for name in DEPLOYED_SERVICES:
        assert pdbs[f"{name}-api"]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == name


def test_no_secret_literals_and_pinned_images(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for cm in by_kind(docs, "ConfigMap").values():
        for key in cm["data"]:
            assert not SECRET_NAME.search(key), f"{key} belongs in a Secret"
    for wl in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        for c in wl["spec"]["template"]["spec"]["containers"]:
            for item in c.get("env", []):
                if SECRET_NAME.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), (
                        f"{item['name']} must come from a Secret"
                    )
            image = c["image"]
            assert ":" in image.split("/")[-1], f"{image} has no tag"
            if overlay == "production":
                assert image.startswith(("ghcr.io/", "postgres:")), image
                # A release pins what it runs: our images by the commit SHA CI tagged them with
                # (or a digest), others by a version; never a moving tag such as `latest`.
                tag = image.split("/")[-1].split("@")[0].partition(":")[2]
                if "@sha256:" in image:
                    continue
                if image.startswith("ghcr.io/"):
                    assert COMMIT_SHA.fullmatch(tag), f"{image}: tag is not a commit SHA"
                else:
                    assert tag != "latest" and re.search(r"\d", tag), f"{image}: tag is not a version"


def pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload or a CronJob."""
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def test_each_service_has_a_retrain_cronjob(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """`portfolio retrain SERVICE --when …` nightly, one run at a time, the API's image and
    settings, as locked down as the APIs (no probes: it is a job)."""
    from portfolio.cli.closed_loop import When
    from portfolio.core.training.retrain import WHEN

    assert {w.value for w in When} == set(WHEN)  # what the command accepts is what the core reads
    _, docs = rendered
    jobs, deployments = by_kind(docs, "CronJob"), by_kind(docs, "Deployment")
    assert set(jobs) == {f"{name}-retrain" for name in DEPLOYED_SERVICES}
    for name in DEPLOYED_SERVICES:
        job = jobs[f"{name}-retrain"]
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        assert len(job["spec"]["schedule"].split()) == 5
        pod = pod_of(job)
        assert pod["restartPolicy"] == "Never" and pod.get("automountServiceAccountToken") is False
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        (c,) = pod["containers"]
        api = deployments[f"{name}-api"]["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == api["image"] and c["envFrom"] == api["envFrom"]
        env = container_env(docs, c)
        assert env["PORTFOLIO_SERVICE"] == name
        # Kubernetes expands $(PORTFOLIO_SERVICE) in args; the entrypoint runs the command as given.
        args = [env["PORTFOLIO_SERVICE"] if a == "$(PORTFOLIO_SERVICE)" else a for a in c["args"]]
        assert args[:3] == ["portfolio", "retrain", name]
        assert args[3] == "--when" and args[4] in WHEN
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])


def test_prediction_log_and_training_data_volumes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The APIs write the prediction log where the settings say, on the shared claim the retrain
    jobs read; the jobs read the training data where training looks for it."""
    overlay, docs = rendered
    app = config_map(docs, "portfolio-config")
    settings = settings_from_env(app | {"PORTFOLIO_HOME": "/app"})  # the image's home (Dockerfile)
    log_dir = str(settings.prediction_log_dir)
    assert settings.shadow is True and settings.prediction_log_retention_days > 0
    pvcs = by_kind(docs, "PersistentVolumeClaim")
    pods = [d for d in docs if d["kind"] in (*WORKLOAD_KINDS, "CronJob")]
    for doc in pods:  # every claim a pod names exists
        for volume in pod_of(doc).get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            assert claim is None or claim in pvcs, f"{doc['metadata']['name']}: missing claim {claim}"

    def mounts(doc: dict[str, Any]) -> dict[str, str]:
        pod = pod_of(doc)
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        return {
            claims[m["name"]]: m["mountPath"]
            for m in pod["containers"][0]["volumeMounts"]
            if m["name"] in claims
        }

    writers = [by_kind(docs, "Deployment")[f"{n}-api"] for n in DEPLOYED_SERVICES]
    readers = [by_kind(docs, "CronJob")[f"{n}-retrain"] for n in DEPLOYED_SERVICES]
    for doc in writers + readers:
        assert mounts(doc)["prediction-log"] == log_dir, doc["metadata"]["name"]
    for doc in readers:
        assert mounts(doc)["training-data"] == str(settings.resolved_data_dir)
    # Replicas on several nodes share the claim in production; the local cluster has one node.
    modes = {name: pvcs[name]["spec"]["accessModes"] for name in ("prediction-log", "training-data")}
    expected = ["ReadWriteOnce"] if overlay == "local" else ["ReadWriteMany"]
    assert modes == {"prediction-log": expected, "training-data": expected}
