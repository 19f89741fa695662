"""Prometheus metrics, in a registry of the app's own so that tests can build several apps."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("http_request_duration_seconds", "Request latency by endpoint and group",
                                 ["endpoint", "exp_group"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.responses = Counter("recommendations_total", "Recommendation responses by model and group",
                                 ["model", "exp_group"], registry=self.registry)
        self.errors = Counter("http_errors_total", "Responses with status >= 400 by endpoint and status",
                              ["endpoint", "status"], registry=self.registry)
        self.log_queue = Gauge("exposure_log_queue_depth", "Exposure records waiting to be written",
                               registry=self.registry)
        self.log_dropped = Gauge("exposure_log_dropped_total", "Exposure records dropped (buffer full)",
                                 registry=self.registry)
        self.log_written = Gauge("exposure_log_written_total", "Exposure records written",
                                 registry=self.registry)
