"""The API's Prometheus metrics: requests, request duration, predictions by label, the served model.

Names follow Prometheus's naming practices: base units in the name (``_seconds``), ``_total`` on
counters (added by the client), the served model's identity as an ``_info`` metric (value 1, the
identity in its labels). The service is the ``model_service`` label and the route the ``handler``
label: ``service``, ``endpoint``, ``job``, ``instance``, ``namespace``, ``pod`` and ``container``
are labels a scrape attaches (static target labels, the Prometheus Operator's ServiceMonitor), and
a metric label of the same name would be renamed ``exported_<name>`` at ingestion.

The default process and Python collectors are registered too. Each API worker process keeps its
own registry (no multiprocess mode: ``core/serving/workers.py`` gives each worker its own socket,
and the manifests run one worker per pod), so ``process_*`` describe the process that answered the
scrape."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from portfolio.core.spec import ServiceSpec

# Labels a scrape attaches to every series (Prometheus: job, instance and static target labels;
# the Prometheus Operator: namespace, service, endpoint, pod, container). No metric may use them.
SCRAPE_LABELS = frozenset({"job", "instance", "service", "endpoint", "namespace", "pod", "container"})

# The service's label on every portfolio_* series.
SERVICE_LABEL = "model_service"


class Metrics:
    """One registry per app (tests build several apps in one process).

    Args:
        spec: The service (its name is every series' ``model_service``).
    """

    def __init__(self, spec: ServiceSpec):
        self.service = spec.name
        self.registry = CollectorRegistry()
        # The default registry's process, platform (python_info) and GC collectors, on this one.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Counter(
            "portfolio_requests",
            "HTTP requests by handler (route) and status code",
            [SERVICE_LABEL, "handler", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "portfolio_request_duration_seconds",
            "Time from a request's arrival to its last response byte, by handler (route)",
            [SERVICE_LABEL, "handler"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.predictions = Counter(
            "portfolio_predictions",
            "Scored records by predicted class (classifiers) or `price` (CarVision)",
            [SERVICE_LABEL, "label"],
            registry=self.registry,
        )
        self.model = Info(
            "portfolio_model",
            "The served model: registered version and inference path (compiled or pipeline)",
            [SERVICE_LABEL],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "portfolio_model_ready", "1 when a model is loaded", [SERVICE_LABEL], registry=self.registry
        )

    def served(self, version: str | None, inference: str | None) -> None:
        """Set the model's identity and readiness (at each scrape).

        Args:
            version: The served registered version; None while no model is loaded.
            inference: The predictor's inference path as ``/model`` reports it (its first word,
                ``compiled`` or ``pipeline``, becomes the label: the reason stays in ``/model``).
        """
        self.model_ready.labels(self.service).set(0 if version is None else 1)
        if version is None:
            self.model.clear()
            return
        path = (inference or "unknown").split(" ", 1)[0]
        self.model.labels(self.service).info({"model_version": str(version), "inference": path})
