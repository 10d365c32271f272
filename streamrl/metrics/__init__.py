"""Prometheus metrics of a run's components: the names (`names.py`) and the endpoint each
component serves them from (`endpoint.py`). Library code: components build their readers."""

from streamrl.metrics.endpoint import (
    MetricsEndpoint,
    record_endpoint,
    recorded_endpoints,
    serve_component,
)
from streamrl.metrics.names import BY_NAME, PRODUCER, TRAINER, Metric

__all__ = ["BY_NAME", "PRODUCER", "TRAINER", "Metric", "MetricsEndpoint", "record_endpoint",
           "recorded_endpoints",
           "serve_component"]
