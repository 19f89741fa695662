"""The course's checker, against a running service: replay held-out requests over HTTP and score them.

Requests and hits come from the same code as `evaluate` (same sampling, seed and truth), so with the
same artifacts and A/B settings the hit rate here equals `evaluate`'s "served" hit rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import Connection
from tqdm import tqdm

from app import columns as c
from training import data
from training.evaluate import K_MAX, evaluate_rankings, load_world_for, read_truth, sample_requests
from training.metrics import expected_hit

K = 5


@dataclass
class CheckConfig:
    requests: int = 1000
    horizon_days: float | None = None
    seed: int = 0
    timeout: float = 5.0


def _percentiles(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "p99": round(float(p99), 2)}


def run_check(conn: Connection, client: httpx.Client, world_path: Path | None, config: CheckConfig) -> dict:
    info = client.get("/model", timeout=config.timeout).raise_for_status().json()
    lo, end = int(info["split"]["test_start"]), int(info["split"]["end"])
    requests = sample_requests(conn, lo, end, config.requests, config.seed)
    horizon_end = end if config.horizon_days is None else lo + int(config.horizon_days * 86_400)
    truth = read_truth(conn, requests, horizon_end, 0)

    ranked, groups, latencies, errors = [], [], [], 0
    for u, t in tqdm(zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True),
                     total=len(requests), desc="check", disable=None):
        moment = datetime.fromtimestamp(int(t), tz=UTC).isoformat()
        started = time.perf_counter()
        try:
            r = client.get("/post/recommendations/", params={"id": int(u), "time": moment, "limit": K},
                           timeout=config.timeout)
            latencies.append((time.perf_counter() - started) * 1000)
            r.raise_for_status()
            body = r.json()
            ranked.append(np.array([p["id"] for p in body["recommendations"]], dtype=np.int64))
            groups.append(body["exp_group"])
        except (httpx.HTTPError, ValueError, KeyError):
            errors += 1
            ranked.append(np.empty(0, dtype=np.int64))
            groups.append("error")
    hits = evaluate_rankings({"service": ranked}, truth)["service"]["hitrate@5"]
    groups_arr = np.array(groups)
    world = load_world_for(world_path, data.read_users(conn)[c.USER_ID].to_numpy())
    expected = None
    if world is not None:
        expected = np.array([expected_hit(world.like_probability(np.full(len(r), u), r, int(t))) if len(r) else 0.0
                             for r, u, t in zip(ranked, requests[c.USER_ID], requests["ts"], strict=True)])

    def summary(mask: np.ndarray) -> dict:
        out = {"requests": int(mask.sum()), "hitrate@5": round(float(hits[mask].mean()), 4) if mask.any() else None}
        if expected is not None:
            out["expected_hitrate@5"] = round(float(expected[mask].mean()), 4) if mask.any() else None
        return out

    everything = np.ones(len(requests), dtype=bool)
    return {
        "url": str(client.base_url), "model_version": info["version"], "requests": len(requests), "errors": errors,
        "hitrate@5": summary(everything)["hitrate@5"],
        "expected_hitrate@5": summary(everything).get("expected_hitrate@5"),
        "latency_ms": _percentiles(latencies),
        "by_group": {g: summary(groups_arr == g) for g in ("control", "test")},
        "protocol": {"held_out": [lo, end], "horizon_end": horizon_end, "seed": config.seed, "k": K,
                     "max_k_offline": K_MAX},
    }
