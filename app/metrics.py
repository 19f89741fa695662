"""Prometheus metrics, in a registry of the app's own so that tests can build several apps.

With several workers (`python -m app --workers N` sets PROMETHEUS_MULTIPROC_DIR for them), each worker
writes its values to files in that directory and a scrape of any worker reads them all
(prometheus_client's multiprocess mode): counters and histograms add up over every worker that ever ran;
gauges report each live worker's value with its `pid` (sum them for the service's exposure queue). A
worker that was killed cannot say so: the next worker to start removes the gauges of workers that no
longer run (`forget_dead_workers`).
"""

import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)


PER_WORKER = "liveall"  # each live worker's own value, labelled with its pid


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def forget_dead_workers() -> None:
    """Drop the gauge files of workers that no longer run (SIGKILL leaves no chance to do it on exit)."""
    path = multiprocess_dir()
    if path is None:
        return
    for f in Path(path).glob("gauge_*_*.db"):
        pid = f.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            multiprocess.mark_process_dead(int(pid), path)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.created = time.time()  # counters count from here: the console's average rates divide by it
        self.latency = Histogram("http_request_duration_seconds", "Request latency by endpoint and group",
                                 ["endpoint", "exp_group"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.responses = Counter("recommendations_total", "Recommendation responses by model and group",
                                 ["model", "exp_group"], registry=self.registry)
        self.errors = Counter("http_errors_total", "Responses with status >= 400 by endpoint and status",
                              ["endpoint", "status"], registry=self.registry)
        self.log_queue = Gauge("exposure_log_queue_depth", "Exposure records waiting to be written",
                               registry=self.registry, multiprocess_mode=PER_WORKER)
        self.log_dropped = Gauge("exposure_log_dropped_total", "Exposure records dropped (buffer and spool full, "
                                 "or rejected)",
                                 registry=self.registry, multiprocess_mode=PER_WORKER)
        self.log_written = Gauge("exposure_log_written_total", "Exposure records written",
                                 registry=self.registry, multiprocess_mode=PER_WORKER)
        self.log_failures = Gauge("exposure_log_write_failures_total", "Failed exposure log writes (each one "
                                  "attempt; they follow the back-off while the database is down)",
                                  registry=self.registry, multiprocess_mode=PER_WORKER)
        self.log_spooled = Gauge("exposure_log_spooled_total", "Exposure records put on disk (LOG_SPOOL_DIR) "
                                 "because the buffer was full", registry=self.registry, multiprocess_mode=PER_WORKER)
        self.log_recovered = Gauge("exposure_log_recovered_total", "Exposure records written from the journal "
                                   "of a worker that died before writing them", registry=self.registry,
                                   multiprocess_mode=PER_WORKER)
        self.log_journal_failures = Gauge("exposure_log_journal_failures_total", "Exposure records the journal "
                                          "(LOG_SPOOL_DIR) refused: held in memory only", registry=self.registry,
                                          multiprocess_mode=PER_WORKER)
        # the live state (app.live_state, app.follower)
        self.state_applied_seq = Gauge("state_applied_seq", "Highest feed_data sequence applied to the state",
                                       registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_database_seq = Gauge("state_database_seq", "Highest feed_data sequence at the last poll",
                                        registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_lag = Gauge("state_lag_seconds", "Seconds since the state last held everything the "
                               "database held (-1: never)", registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_events = Gauge("state_events_applied_total", "Feed events applied after the snapshot",
                                  registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_late = Gauge("state_late_events_total", "Applied events older than one already applied",
                                registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_pending = Gauge("state_pending_events", "Events waiting for their user or post",
                                   registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_rate = Gauge("state_apply_rate_events_per_second", "Events per second of the last busy poll",
                                registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_users = Gauge("state_users", "Users the state can rank", registry=self.registry,
                                 multiprocess_mode=PER_WORKER)
        self.model_info = Gauge("model_version_info", "The artifact version serving (value 1)", ["version"],
                                registry=self.registry, multiprocess_mode=PER_WORKER)
        self.model_swaps = Gauge("model_swaps_total", "Versions swapped in while serving", registry=self.registry,
                                 multiprocess_mode=PER_WORKER)
        self.model_refusals = Gauge("model_refusals_total", "Candidate versions refused (failed to load or catch "
                                    "up)", registry=self.registry, multiprocess_mode=PER_WORKER)
        self.state_poll_failures = Gauge("state_poll_failures", "Consecutive failed polls",
                                         registry=self.registry, multiprocess_mode=PER_WORKER)

    def scrape_registry(self) -> CollectorRegistry:
        """What /metrics exposes: every worker's values in multiprocess mode, else this app's registry."""
        if multiprocess_dir() is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
