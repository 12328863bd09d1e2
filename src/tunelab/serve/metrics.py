"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own per app."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """Requests, latency, tokens, queue depth and batching of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tunelab_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("tunelab_request_seconds", "Time from request to response (streams: to the "
                                 "response start)", ["endpoint"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.tokens = Counter("tunelab_tokens", "Prompt and completion tokens", ["model", "kind"], registry=r)
        self.queue_depth = Gauge("tunelab_queue_rows", "Rows of work waiting for a batch", registry=r)
        self.batch_rows = Histogram("tunelab_batch_rows", "Rows per forward batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.batches = Counter("tunelab_batches", "Batches run, by kind and number of models in them",
                               ["kind", "adapters"], registry=r)
        self.cancelled_rows = Counter("tunelab_cancelled_rows", "Rows dropped or stopped because their client "
                                      "went away", registry=r)
        self.rejected = Counter("tunelab_rejected", "Requests refused with 429 (queue full)", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
