"""The API's Prometheus metrics: requests, latency, predictions by label, the served version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from portfolio.core.spec import ServiceSpec


class Metrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(self, spec: ServiceSpec):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "portfolio_requests",
            "HTTP requests",
            ["service", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "portfolio_request_latency_seconds",
            "Request latency",
            ["service", "endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.predictions = Counter(
            "portfolio_predictions",
            "Predictions by class (classification) or count",
            ["service", "label"],
            registry=self.registry,
        )
        self.model_version = Gauge(
            "portfolio_model_version",
            "Version of the model being served",
            ["service"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "portfolio_model_ready", "1 when a model is loaded", ["service"], registry=self.registry
        )
