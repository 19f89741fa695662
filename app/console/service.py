"""The Service page: what is served and how the service is doing, from the numbers /metrics exposes.

Request rates are averages since the metrics were created (the process start): a rate over the last
minutes is Prometheus' job (`rate()` over scrapes of /metrics). Latency percentiles are estimated from
the histogram's buckets the way Prometheus' `histogram_quantile` does: linear within the bucket.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

LATENCY = "http_request_duration_seconds"


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Quantile q of a histogram given as (upper bound, cumulative count) pairs, ascending, the last
    one +Inf; None when it is empty. Linear interpolation inside the bucket, as Prometheus does; a
    quantile in the +Inf bucket is reported as the highest finite bound.

    >>> histogram_quantile(0.5, [(0.01, 50.0), (0.02, 100.0), (math.inf, 100.0)])
    0.01
    >>> histogram_quantile(0.75, [(0.01, 50.0), (0.02, 100.0), (math.inf, 100.0)])
    0.015
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass(frozen=True)
class Traffic:
    endpoint: str
    requests: int
    per_second: float
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict, float]]]:
    """Every sample of the registry by name: {name: [(labels, value)]}."""
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in registry.collect():
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def traffic(values: dict[str, list[tuple[dict, float]]], uptime: float) -> list[Traffic]:
    """Per endpoint (summed over A/B groups): requests, average rate, errors, latency percentiles."""
    buckets: dict[str, dict[float, float]] = {}
    for labels, value in values.get(f"{LATENCY}_bucket", []):
        per = buckets.setdefault(labels["endpoint"], {})
        le = float(labels["le"])
        per[le] = per.get(le, 0.0) + value
    errors: dict[str, float] = {}
    for labels, value in values.get("http_errors_total", []):
        errors[labels["endpoint"]] = errors.get(labels["endpoint"], 0.0) + value
    out = []
    for endpoint, per in sorted(buckets.items()):
        pairs = sorted(per.items())
        total = pairs[-1][1] if pairs else 0.0

        def ms(q: float, pairs: list = pairs) -> float | None:
            v = histogram_quantile(q, pairs)
            return None if v is None else v * 1000

        out.append(Traffic(endpoint, int(total), total / uptime if uptime > 0 else 0.0, int(errors.get(endpoint, 0)),
                           ms(0.5), ms(0.95), ms(0.99)))
    return sorted(out, key=lambda t: -t.requests)


def value(values: dict[str, list[tuple[dict, float]]], name: str) -> float | None:
    got = values.get(name)
    return got[0][1] if got else None


def uptime_since(created: float) -> float:
    return max(time.time() - created, 1e-9)
