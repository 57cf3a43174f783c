"""What ``GET /metrics`` reports, in Prometheus' text format (prometheus-client).

One registry per server (not the library's global one, so two apps in one process, as in the
tests, never share counters). Names follow vLLM's where there is one, under ``elmforge_``:
requests by endpoint and status, prompt and generated tokens, time to first token and
inter-token latency (histograms, observed by the scheduler's thread as tokens are picked),
running and waiting requests and batch occupancy (read from the scheduler at scrape time), and
prefix-cache hits, lookups and bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: a tiny model answers in milliseconds, a 270M one on two cores in about a second.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The server's counters; the scheduler calls :meth:`first_token`/:meth:`next_token`, the
    request log calls :meth:`request_done`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "elmforge_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "elmforge_prompt_tokens", "prompt tokens of finished requests", registry=r
        )
        self.generation_tokens = Counter(
            "elmforge_generation_tokens", "tokens generated", registry=r
        )
        self.time_to_first_token = Histogram(
            "elmforge_time_to_first_token_seconds",
            "from a request's arrival to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "elmforge_inter_token_latency_seconds",
            "between consecutive tokens of one sequence",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "elmforge_request_duration_seconds",
            "from a request's arrival to its last byte",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.decode_batch = Histogram(
            "elmforge_decode_batch_rows",
            "rows in each decode step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.prefix_cache_queries = Counter(
            "elmforge_prefix_cache_queries", "prompt tokens looked up in the prefix cache",
            registry=r,
        )  # fmt: skip
        self.prefix_cache_hits = Counter(
            "elmforge_prefix_cache_hits", "prompt tokens found in the prefix cache", registry=r
        )
        self.running = Gauge("elmforge_requests_running", "sequences in the batch", registry=r)
        self.waiting = Gauge("elmforge_requests_waiting", "sequences queued", registry=r)
        self.occupancy = Gauge(
            "elmforge_batch_occupancy", "running sequences / batch slots (0 to 1)", registry=r
        )
        self.prefix_cache_bytes = Gauge(
            "elmforge_prefix_cache_bytes", "bytes of keys and values in the prefix cache",
            registry=r,
        )  # fmt: skip

    def watch(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Read the gauges from ``stats()`` (the scheduler's) whenever /metrics is scraped."""

        def read(key: str) -> Callable[[], float]:
            return lambda: float(stats().get(key, 0))

        self.running.set_function(read("running"))
        self.waiting.set_function(read("waiting"))
        self.prefix_cache_bytes.set_function(read("prefix_cache_bytes"))

        def occupancy() -> float:
            now = stats()
            return now["running"] / max(now["max_batch"], 1)

        self.occupancy.set_function(occupancy)

    # -- the scheduler's thread ------------------------------------------------------------
    def first_token(self, since: float, now: float) -> None:
        self.time_to_first_token.observe(max(now - since, 0.0))
        self.generation_tokens.inc()

    def next_token(self, since: float, now: float) -> None:
        self.inter_token_latency.observe(max(now - since, 0.0))
        self.generation_tokens.inc()

    def decode_step(self, rows: int) -> None:
        self.decode_batch.observe(rows)

    def prefix_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        self.prefix_cache_queries.inc(prompt_tokens)
        self.prefix_cache_hits.inc(hit_tokens)

    # -- the HTTP side ---------------------------------------------------------------------
    def request_done(self, endpoint: str, status: int, prompt_tokens: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_duration.labels(endpoint).observe(seconds)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def now() -> float:
    return time.monotonic()
