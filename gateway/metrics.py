"""Prometheus metrics, one registry per app (multiprocess-aware under gunicorn)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter("gateway_webhooks", "Webhook deliveries by source and outcome", ["source", "outcome"], registry=r)
        self.rejected_unrecorded = Counter(
            "gateway_rejected_unrecorded", "Refused deliveries past the source's budget of stored records (counted only)", ["source"], registry=r)
        self.ingest_seconds = Histogram(
            "gateway_ingest_seconds", "Time from request to acknowledgement", ["source"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.ingest_batch = Histogram(
            "gateway_ingest_batch_size", "Webhooks per group commit (one transaction, one commit)", registry=r,
            buckets=(1, 2, 4, 8, 16, 32),
        )
        self.polls = Counter("gateway_polls", "Job status reads by kind (poll, long_poll) and answer", ["kind", "status"], registry=r)
        self.ws_connections = Gauge("gateway_ws_connections", "Open WebSocket connections", registry=r, multiprocess_mode="livesum")
        self.ws_subscriptions = Gauge("gateway_ws_subscriptions", "Active WebSocket subscriptions", registry=r, multiprocess_mode="livesum")
        self.sse_streams = Gauge("gateway_sse_streams", "Open SSE streams", registry=r, multiprocess_mode="livesum")
        self.fanout_lag = Histogram(
            "gateway_fanout_lag_seconds", "From commit to send to a watcher", registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
        )
        self.jobs_by_state = Gauge("gateway_jobs", "Jobs by state (sampled at scrape)", ["state"], registry=r, multiprocess_mode="mostrecent")
        self.outbox_tries = Counter("gateway_outbox_tries", "Outbound calls tried (callbacks, details) by outcome", ["kind", "outcome"], registry=r)
        self.forward_total = Counter("gateway_forward", "Forwarded message tries by endpoint and outcome (delivered, retry, dead)",
                                     ["endpoint", "outcome"], registry=r)
        self.forward_latency = Histogram("gateway_forward_ack_seconds", "Seconds from the commit that owed a message to its 2xx",
                                         ["endpoint"], registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 300, 3600, 86400))
        self.forward_oldest_pending = Gauge(
            "gateway_forward_oldest_pending_seconds", "Age of each endpoint's oldest pending forwarded message (sampled at scrape)",
            ["endpoint"], registry=r, multiprocess_mode="mostrecent")
        self.stalls = Counter("gateway_jobs_stalled", "Jobs the watchdog failed as stalled", ["source"], registry=r)
        self.poll_reads = Counter("gateway_poll_reads", "Polls answered (200 or 304) by where the job came from: memory or database",
                                  ["from"], registry=r)
        self._poll_counts: dict[tuple[str, str], Counter] = {}
        self._poll_reads: dict[str, Counter] = {}
        self.jobs_sampled_at = float("-inf")  # time.monotonic() of the last jobs-by-state count (health.py)

    def count_poll(self, kind: str, status: str) -> None:
        """One job read answered: ``gateway_polls_total{kind,status}`` (the labelled child is
        looked up once, not on every poll)."""
        child = self._poll_counts.get((kind, status))
        if child is None:
            child = self._poll_counts[(kind, status)] = self.polls.labels(kind=kind, status=status)
        child.inc()

    def count_poll_read(self, source: str) -> None:
        """One poll answered from ``memory`` or after a ``database`` read: ``gateway_poll_reads_total{from}``."""
        child = self._poll_reads.get(source)
        if child is None:
            child = self._poll_reads[source] = self.poll_reads.labels(source)
        child.inc()

    def render(self) -> bytes:
        """The exposition text; in multiprocess mode, merged over every worker's files."""
        if self.multiprocess:
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
