"""Prometheus metrics of one service instance (own registry: several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class MetricsResponse(Response):
    """Prometheus text exposition format; as a route's response class it is also what /openapi.json documents."""

    media_type = CONTENT_TYPE_LATEST


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("recsys_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("recsys_request_latency_seconds", "server-side request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_version = Gauge("recsys_model_version", "registry version being served", ["alias"], registry=r)
        self.swaps = Counter("recsys_model_swaps_total", "models swapped in", ["alias"], registry=r)
        self.load_failures = Counter("recsys_model_load_failures_total", "versions that failed to load or check",
                                     ["alias"], registry=r)
        self.fallbacks = Counter("recsys_fallbacks_total", "responses served (partly) by a fallback",
                                 ["endpoint", "kind"], registry=r)
        self.impressions_dropped = Counter("recsys_impressions_dropped_total",
                                           "impressions not logged (queue full)", registry=r)
        self._children: dict = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        pair = self._children.get(key)
        if pair is None:  # label lookups are slow-ish; cache the children
            pair = self._children[key] = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
