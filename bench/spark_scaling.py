"""The feature stage on Spark local[2] beside the single-machine path, over demo worlds of growing size.

    python -m bench.spark_scaling run --scales 0.25 0.5 1.0 --data /work/spark-data   (heavy: run niced)
    python -m bench.spark_scaling report --data /work/spark-data --out docs/spark.md

`run` builds each world once (SQLite, seed 11), exports it to Parquet, then computes the training set
(the sampled rows' feature matrices and the served state: `build_training_set`) with each engine in a
process of its own, sampling the memory of that process and of everything it started (the JVM, Spark's
Python workers) every 0.2 s. One line of JSON per (scale, engine) goes to DATA/results.jsonl, so that
an interrupted run keeps what it measured. `report` writes the table, the straight-line fit of time
against events (R²), the extrapolation to a billion events, and the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

PY = sys.executable
SEED = 11
BILLION = 1_000_000_000


# ------------------------------------------------------------------ one stage in a child process
def stage(engine: str, scale_dir: Path, master: str) -> dict:
    """Runs in the child: the training set with one engine; returns its timings and sizes."""
    from training.train import TrainConfig, build_training_set

    config = TrainConfig()  # the CLI's defaults: 400,000 training views, 150,000 validation and held-out
    cache = scale_dir.parent / "cache"
    t0 = time.perf_counter()
    if engine == "single":
        tset = build_training_set(f"sqlite:///{scale_dir / 'world.db'}", cache, "hashing", config)
    else:
        from training.spark_engine import build_training_set as spark_build

        tset = spark_build(scale_dir / "parquet", cache, "hashing", config, master=master)
    total = time.perf_counter() - t0
    rows = {k: len(v) for k, v in tset.rows.items()}
    return {"engine": engine, "seconds": round(total, 1), "stages": tset.seconds, "rows": rows,
            "sample_mb": round(sum(m.nbytes for m in tset.matrices.values()) / 2**20, 1),
            "state_events": len(tset.snapshot.events.ts)}


class PeakMemory:
    """Peak RSS of a process, of the Java processes under it, and of the Python processes under it
    (Spark's workers), sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.every = every
        self.peak = {"driver_mb": 0.0, "jvm_mb": 0.0, "workers_mb": 0.0, "total_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = {"driver_mb": self.root.memory_info().rss / 2**20, "jvm_mb": 0.0, "workers_mb": 0.0}
                for child in self.root.children(recursive=True):
                    try:
                        rss = child.memory_info().rss / 2**20
                        key = "jvm_mb" if "java" in child.name() else "workers_mb"
                        now[key] += rss
                    except psutil.Error:
                        continue
                now["total_mb"] = sum(now.values())
                for k, v in now.items():
                    self.peak[k] = max(self.peak[k], v)
            except psutil.Error:
                break
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: round(v) for k, v in self.peak.items()}


def measured(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, dict, int]:
    """Run a command niced, its output to `log`; wall seconds, peak memory, exit code."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(["nice", "-n", "10", *cmd], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        mem = PeakMemory(proc.pid)
        code = proc.wait()
    return time.perf_counter() - t0, mem.stop(), code


def run(scales: list[float], data: Path, engines: list[str], master: str) -> None:
    data.mkdir(parents=True, exist_ok=True)
    results = data / "results.jsonl"
    for scale in scales:
        d = data / f"scale-{scale}"
        d.mkdir(exist_ok=True)
        db = f"sqlite:///{d / 'world.db'}"
        if not (d / "world.db").exists():
            secs, mem, code = measured([PY, "-m", "training", "generate", "--scale", str(scale), "--seed", str(SEED),
                                        "--db", db, "--world", str(d / "world.npz")], d / "generate.log")
            if code:
                raise SystemExit(f"generate at scale {scale} failed: see {d / 'generate.log'}")
            print(f"scale {scale}: generated in {secs:.0f}s", flush=True)
        if not (d / "parquet" / "export.json").exists():
            secs, mem, code = measured([PY, "-m", "training", "export", "--db", db, "--out", str(d / "parquet"),
                                        "--replace"], d / "export.log")
            if code:
                raise SystemExit(f"export at scale {scale} failed: see {d / 'export.log'}")
            _append(results, {"scale": scale, "engine": "export", "wall_seconds": round(secs, 1), "memory": mem})
        events = json.loads((d / "parquet" / "export.json").read_text())["rows"]["feed_data"]
        for engine in engines:
            out = d / f"stage-{engine}.json"
            secs, mem, code = measured([PY, "-m", "bench.spark_scaling", "stage", "--engine", engine, "--dir", str(d),
                                        "--master", master, "--json", str(out)], d / f"stage-{engine}.log")
            if code:
                print(f"scale {scale} {engine}: failed (exit {code}), see {d / f'stage-{engine}.log'}", flush=True)
                continue
            line = {"scale": scale, "events": events, "wall_seconds": round(secs, 1), "memory": mem,
                    "loadavg": Path("/proc/loadavg").read_text().split()[:3], "master": master,
                    **json.loads(out.read_text())}
            _append(results, line)
            print(json.dumps(line), flush=True)


def _append(path: Path, line: dict) -> None:
    line = {"at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), **line}
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------ report
def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(slope, intercept, R²) of the least-squares line.

    >>> [round(v, 3) for v in fit_line(np.array([1.0, 2, 3]), np.array([2.0, 4, 6]))]
    [2.0, 0.0, 1.0]
    """
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def latest(data: Path) -> dict[tuple[float, str], dict]:
    """The last measurement of each (scale, engine)."""
    out = {}
    for raw in (data / "results.jsonl").read_text().splitlines():
        line = json.loads(raw)
        if line["engine"] in ("single", "spark"):
            out[(line["scale"], line["engine"])] = line
    return out


def report(data: Path, out: Path, plot: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = latest(data)
    scales = sorted({s for s, _ in runs})
    lines = ["| scale | feed events | engine | training set (wall) s | of which sample + features + state s | "
             "rows (train/val/held) | peak driver MB | peak JVM MB | peak workers MB | peak total MB | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in scales:
        for engine in ("single", "spark"):
            r = runs.get((s, engine))
            if not r:
                continue
            m = r["memory"]
            rows = "/".join(str(r["rows"][k]) for k in ("train", "val", "held"))
            lines.append(f"| {s} | {r['events']:,} | {engine} | {r['wall_seconds']} | {r['stages']['features']} | "
                         f"{rows} | {m['driver_mb']} | {m['jvm_mb']} | {m['workers_mb']} | {m['total_mb']} | "
                         f"{' '.join(r['loadavg'])} |")
    fits = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for engine, colour in (("single", "tab:blue"), ("spark", "tab:orange")):
        pts = [(runs[(s, engine)]["events"], runs[(s, engine)]["wall_seconds"]) for s in scales if (s, engine) in runs]
        if not pts:
            continue
        x, y = np.array(pts, float).T
        ax.plot(x / 1e6, y, "o-", color=colour, label=engine)
        if len(pts) >= 2:
            fits[engine] = (*fit_line(x, y), len(pts))
    ax.set_xlabel("feed events (millions)")
    ax.set_ylabel("training set, wall seconds")
    ax.set_title("Feature stage: Spark local[2] vs one process")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    text = "\n".join(lines) + "\n"
    for engine, (slope, intercept, r2, n) in fits.items():
        hours = (slope * BILLION + intercept) / 3600
        text += (f"\n{engine}: {slope * 1e6:.2f} s per million events + {intercept:.0f} s, R² = {r2:.4f} over {n} "
                 f"worlds; a billion events at this rate: {hours:.1f} h on this machine\n")
    print(text)
    if out:
        out.write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spark_scaling")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--engines", nargs="+", default=["spark", "single"])
    p.add_argument("--master", default="local[2]")
    p = sub.add_parser("stage")
    p.add_argument("--engine", choices=["single", "spark"], required=True)
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("report")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="Write the table and fits here (markdown)")
    p.add_argument("--plot", type=Path, default=Path("docs/spark_scaling.png"))
    args = parser.parse_args()
    if args.cmd == "run":
        run(args.scales, args.data, args.engines, args.master)
    elif args.cmd == "stage":
        args.json.write_text(json.dumps(stage(args.engine, args.dir, args.master)))
    else:
        report(args.data, args.out, args.plot)


if __name__ == "__main__":
    main()
