"""Command line: `python -m training <command>`. Thin: parse, call a stage function, report."""

from pathlib import Path
from typing import Annotated

import typer

from app.config import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

AllowLatestOpt = Annotated[bool, typer.Option(help="Accept artifacts built with --serve-latest (their features "
                                                "include the held-out window: inflated metrics)")]
DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL; default DATABASE_URL.")]


def _db(db: str | None) -> str:
    return db or get_settings().database_url


@app.command("import")
def import_cmd(
    users: Annotated[Path, typer.Option(help="user_data as CSV or Parquet")],
    posts: Annotated[Path, typer.Option(help="post_text_df as CSV or Parquet")],
    feed: Annotated[Path, typer.Option(help="feed_data as CSV or Parquet")],
    db: DbOpt = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows per chunk while streaming")] = 500_000,
) -> None:
    """Load the three course tables from files, all or nothing."""
    from training.importer import ImportError_, import_files

    try:
        counts = import_files(_db(db), users=users, posts=posts, feed=feed, chunk_rows=chunk_rows)
    except ImportError_ as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(" ".join(f"{name}={n}" for name, n in counts.items()))


@app.command()
def migrate(db: DbOpt = None) -> None:
    """Add what this version needs to a database made by an earlier one (feed_data's insertion sequence,
    the exposure log's new columns). Safe to run twice."""
    from app.db import add_feed_seq, create_log_table, make_engine

    engine = make_engine(_db(db))
    added = add_feed_seq(engine)
    create_log_table(engine)
    engine.dispose()
    typer.echo("feed_data: insertion sequence added" if added else "feed_data: up to date")


@app.command()
def generate(
    scale: Annotated[float, typer.Option(help="1.0 = the course database's size")] = 0.03,
    seed: Annotated[int, typer.Option()] = 11,
    db: DbOpt = None,
    world: Annotated[Path | None, typer.Option(help="Where to save the world; default WORLD_PATH")] = None,
    replace: Annotated[bool, typer.Option(help="Drop existing course tables first")] = False,
    posts: Annotated[int | None, typer.Option(min=10, help="Catalogue size (default: the 7,023 real posts); "
                                                           "more repeats real texts under new ids")] = None,
    release_share: Annotated[float, typer.Option(min=0, max=1, help="Share of posts released over the "
                                                                    "data's days rather than at its start")] = 0.0,
    held_back: Annotated[int, typer.Option(min=0, help="Posts kept out of the tables, for "
                                                      "`simulate --new-posts-per-day`")] = 0,
    exposure: Annotated[str, typer.Option(help="random: the course's feed shows random posts; organic: "
                                                   "users choose by popularity, recency and taste")] = "random",
) -> None:
    """Build the demo world and write its three tables."""
    from training.world.generate import EXPOSURES, TablesExist, generate_world

    if exposure not in EXPOSURES:
        raise typer.BadParameter(f"--exposure must be one of {', '.join(EXPOSURES)}, got {exposure!r}")
    try:
        summary = generate_world(
            _db(db), scale=scale, seed=seed, world_path=world or get_settings().world_path, replace=replace,
            n_posts=posts, release_share=release_share, held_back=held_back, exposure=exposure,
        )
    except TablesExist as exc:  # refused before anything was built or written: one line, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(summary)


if __name__ == "__main__":
    app()


def _split_args(test_start: str | None, test_days: float, val_days: float, train_days: float,
                window_likes: int = 0) -> dict:
    from training.data import to_seconds

    args: dict = {"test_days": test_days, "val_days": val_days, "train_days": train_days}
    if window_likes:
        args["window_likes"] = window_likes
    if test_start:
        from datetime import datetime

        try:
            args["test_start"] = to_seconds(datetime.fromisoformat(test_start))
        except ValueError:
            raise typer.BadParameter(f"--test-start {test_start!r} is not an ISO date") from None
    return args


TestStart = Annotated[str | None, typer.Option(help="Start of the held-out window (ISO date); default "
                                                       "the data end minus --test-days")]


@app.command()
def train(
    db: DbOpt = None,
    out: Annotated[Path | None, typer.Option(help="Artifact folder; default MODEL_DIR")] = None,
    test_start: TestStart = None,
    test_days: Annotated[float, typer.Option(help="Held-out window length")] = 7,
    val_days: Annotated[float, typer.Option(help="Validation window (early stopping) length")] = 7,
    train_days: Annotated[float, typer.Option(help="Training-label window length; 0: every day before "
                                                   "validation")] = 14,
    window_likes: Annotated[int, typer.Option(min=0, help="Size the held-out and validation windows by the "
                                                          "data: each the fewest whole days holding this many "
                                                          "liked views (0: --test-days and --val-days)")] = 0,
    max_train_rows: Annotated[int, typer.Option(help="Views sampled from the training window")] = 400_000,
    iterations: Annotated[int, typer.Option()] = 600,
    class_weights: Annotated[str, typer.Option(help="none (calibrated) or balanced")] = "none",
    cold_share: Annotated[float, typer.Option(min=0, max=1, help="Share of training rows repeated with the "
                                                                 "user's history hidden (new users)")] = 0.0,
    cold_spread: Annotated[bool, typer.Option(help="Screens of users without history take one post per topic "
                                                   "before a second (their tastes unknown, likes within a topic "
                                                   "go together)")] = True,
    viewed_negatives: Annotated[int | None, typer.Option(min=0, help="The liked-within-7-days models: per "
                                                                     "request, up to this many posts the user "
                                                                     "opened and did not like as negatives beside "
                                                                     "40 uniform ones (0: uniform only, what users "
                                                                     "come to open; default 5)")] = None,
    serve_latest: Annotated[bool, typer.Option(help="Keep events one by one only from the data end minus the "
                                                    "exclusion window (smaller; held-out replay then sees the "
                                                    "base, which includes the held-out window)")] = False,
    retrieval_recall: Annotated[float | None, typer.Option(min=0, max=1, help="Candidate lists of each model "
                                                                            "made the shortest holding this share "
                                                                            "of its full top 5 on validation "
                                                                            "requests (0: the fixed sizes); "
                                                                            "default 0.98")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    exposure: Annotated[str | None, typer.Option(help="random or organic: how users came to view posts, which "
                                                      "decides the validation protocol; default detected "
                                                      "from the log")] = None,
    engine: Annotated[str, typer.Option(help="single (the database, one process) or spark (a Parquet export)")]
        = "single",
    parquet: Annotated[Path | None, typer.Option(help="--engine spark: the folder `export` wrote")] = None,
    master: Annotated[str, typer.Option(help="--engine spark: Spark master (local[2], spark://host:7077, yarn, "
                                             "k8s://https://host:443)")] = "local[2]",
) -> None:
    """Fit the control and test models and write a new artifact version."""
    from training.exposure_kind import KINDS
    from training.objectives import ObjectiveConfig
    from training.train import TrainConfig
    from training.train import train as run

    if exposure is not None and exposure not in KINDS:
        raise typer.BadParameter(f"--exposure must be one of {', '.join(KINDS)}, got {exposure!r}")

    settings = get_settings()
    if class_weights not in ("none", "balanced"):
        raise typer.BadParameter("--class-weights must be none or balanced")
    config = TrainConfig(max_train_rows=max_train_rows, iterations=iterations, class_weights=class_weights,
                         seed=seed, cold_share=cold_share,
                         **({} if retrieval_recall is None else {"retrieval_recall": retrieval_recall}))
    if engine not in ("single", "spark"):
        raise typer.BadParameter(f"--engine {engine!r}: single or spark")
    if engine == "spark":
        path = _train_spark(parquet, master, out or settings.model_dir, config,
                            _split_args(test_start, test_days, val_days, train_days, window_likes), serve_latest)
        typer.echo(f"trained: {path}")
        return
    from training.train import SplitError

    try:
        path = run(_db(db), out or settings.model_dir, settings.cache_dir, settings.embedding_model, config,
                   _split_args(test_start, test_days, val_days, train_days, window_likes),
                   serve_latest=serve_latest,
                   objectives=ObjectiveConfig(exposure=exposure, seed=seed, cold_spread=cold_spread,
                                              **({} if viewed_negatives is None else
                                                 {"viewed_negatives": viewed_negatives})))
    except SplitError as exc:  # raised before anything is written: a clear error, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"trained: {path}")


def _train_spark(parquet: Path | None, master: str, out: Path, config, split_args: dict, serve_latest: bool) -> Path:
    import time

    from training.export import ExportError, read_meta
    from training.spark_engine import build_training_set
    from training.train import fit_and_export

    if parquet is None:
        raise typer.BadParameter("--engine spark reads a Parquet export: pass --parquet DIR (see `export`)")
    try:
        read_meta(parquet)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    settings = get_settings()
    t0 = time.perf_counter()
    tset = build_training_set(parquet, settings.cache_dir, settings.embedding_model, config, split_args,
                              serve_latest, master=master)
    return fit_and_export(tset, out, settings.embedding_model, config, serve_latest, t0=t0)


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="Folder to write (user_data/, post_text_df/, feed_data/day=.../)")],
    db: DbOpt = None,
    chunk_rows: Annotated[int, typer.Option(help="Feed rows read and written at once")] = 2_000_000,
    replace: Annotated[bool, typer.Option(help="Overwrite an export already in --out")] = False,
) -> None:
    """Write the three tables to Parquet, the feed partitioned by day (what `train --engine spark` reads)."""
    from training.export import ExportError, export_parquet

    try:
        meta = export_parquet(_db(db), out, chunk_rows=chunk_rows, replace=replace)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(" ".join(f"{name}={n}" for name, n in meta["rows"].items()) + f" seq={meta['seq']}")


@app.command()
def calibrate(
    db: DbOpt = None,
    models: Annotated[Path | None, typer.Option(help="Artifact folder; default MODEL_DIR")] = None,
    version: Annotated[str | None, typer.Option(help="Version folder inside it; default the current one")] = None,
    recall: Annotated[float, typer.Option(min=0.5, max=1, help="Share of each model's full top 5 its "
                                                               "candidates must hold")] = 0.98,
    requests: Annotated[int, typer.Option(min=30, help="Validation-window requests scored in full")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Size each model's candidate lists in an existing artifact version (one trained before the
    calibration, or for another --recall): the shortest that hold --recall of the model's full top 5 on
    requests of the validation window. Rewrites the version's retrieval.json and manifest; a service
    already serving it keeps the old sizes until it loads the version again."""
    from app.artifacts import current_version_dir, load_manifest
    from app.db import make_engine
    from training.evaluate import sample_requests
    from training.retrieval import calibrate_version, calibration_size

    settings = get_settings()
    folder = models or settings.model_dir
    version_dir = folder / version if version else current_version_dir(folder)
    if not version_dir.is_dir():
        typer.echo(f"error: no artifact version {version_dir}", err=True)
        raise typer.Exit(code=2)
    manifest = load_manifest(version_dir).data
    split, base = manifest["split"], int(manifest["state"]["base_as_of"])
    n = calibration_size(int(manifest["state"]["posts"]), requests)
    engine = make_engine(_db(db))
    lo, hi = int(split["val_start"]), int(split["test_start"])
    try:
        with engine.connect() as conn:
            # the moments the artifact's state answers exactly, when they hold enough views (as training does)
            asked = sample_requests(conn, max(lo, base), hi, n, seed) if base < hi else None
            if asked is None or len(asked) < n:
                asked = sample_requests(conn, lo, hi, n, seed)
    except ValueError as exc:  # no views in the validation window of this database
        typer.echo(f"error: {exc} (validation window of {version_dir.name})", err=True)
        raise typer.Exit(code=2) from None
    finally:
        engine.dispose()
    try:
        budgets = calibrate_version(version_dir, asked, recall)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    for name, b in budgets.items():
        typer.echo(f"{name}: scale {b['scale']} holds {b['recall']} of the full top 5 at {b['candidates']} "
                   f"candidates ({b['requests']} requests)")


@app.command()
def evaluate(
    db: DbOpt = None,
    models: Annotated[Path | None, typer.Option(help="Artifact folder; default MODEL_DIR")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics JSON here")] = None,
    report: Annotated[Path | None, typer.Option(help="Write report.md and plots into this folder")] = None,
    requests: Annotated[int, typer.Option(help="Held-out (user, time) requests")] = 1000,
    horizon_days: Annotated[float | None, typer.Option(help="Hits count up to this many days after the "
                                                            "held-out start; default the window end")] = None,
    window_hours: Annotated[float, typer.Option(help="Shown-set protocol: candidates shown within this "
                                                     "many hours after the request")] = 24.0,
    world: Annotated[Path | None, typer.Option(help="Demo world for expected hit rates; default WORLD_PATH")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    allow_serve_latest: AllowLatestOpt = False,
) -> None:
    """Evaluate random, popularity, control and test on held-out requests."""
    from app.db import make_engine
    from app.engine import Recommender, ScreenPolicy
    from app.follower import catch_up
    from training.evaluate import EvalConfig, run_evaluation, write_json

    settings = get_settings()
    engine = Recommender.load(models or settings.model_dir, settings.exclude_viewed_hours,
                              settings.exclude_last_views, ScreenPolicy.from_settings(settings))
    config = EvalConfig(requests=requests, horizon_days=horizon_days, window_hours=window_hours, seed=seed,
                        ab_salt=settings.ab_salt, ab_control_percent=settings.ab_control_percent,
                        ab_models=(settings.ab_control_model, settings.ab_test_model))
    _refuse_serve_latest(engine.manifest.data.get("serves"), allow_serve_latest, f"artifacts {engine.version}")
    db_engine = make_engine(_db(db))
    # the state as the service would hold it: the snapshot plus every event the database has after it
    applied = catch_up(db_engine, engine.state)
    if applied:
        typer.echo(f"state: applied {applied} events after the snapshot", err=True)
    with db_engine.connect() as conn:
        result, details = run_evaluation(conn, engine, world or settings.world_path, config)
    if json_path:
        write_json(result, json_path)
    if report:
        from training.report import write_report

        write_report(result, details, engine, report)
    typer.echo(format_table(result))


def format_table(result: dict) -> str:
    rows = [k for k in ("hitrate@1", "hitrate@5", "hitrate@10", "ndcg@5", "map@5", "shown_hitrate@5",
                        "expected_hitrate@5", "roc_auc", "coverage@5", "mean_popularity@5") if k in result]
    names = ("random", "popularity", "segment_popularity", "control", "test", "oracle")
    short = {"segment_popularity": "segment_pop"}
    lines = []
    if "exposure" in result:
        lines.append(f"exposure: {result['exposure'].get('kind')} (detected {result['exposure'].get('detected')}); "
                     f"the protocol that fits it: {result['fitting_protocol']}")
    for name, choice in result.get("slots", {}).items():
        cold = choice.get("cold", {})
        lines.append(f"{name} serves {choice.get('serves')} ({choice.get('reason')}); users without history: "
                     f"{cold.get('serves')}{', one post per topic first' if cold.get('spread') else ''}")
    lines.append(f"{'metric':<20}" + "".join(f"{short.get(n, n):>12}" for n in names))
    for key in rows:
        vals = result[key]
        lines.append(f"{key:<20}" + "".join(
            f"{vals[n]:>12}" if vals.get(n) is not None else f"{'':>12}" for n in names))
    if "gap_closed" in result:
        lines.append(f"gap_closed: {result['gap_closed']}")
    lines.append(f"requests: {result['requests']} (shown-set eligible: {result['shown_requests']})")
    if "cold_start" in result:
        cold = result["cold_start"]
        lines.append(f"cold start (history hidden): expected hitrate@5 {cold.get('expected_hitrate@5')}, "
                     f"shown-set hitrate@5 {cold['shown_hitrate@5']} ({cold['shown_requests']} requests), "
                     f"full-catalogue hitrate@5 {cold.get('hitrate@5')}")
    lines.append(f"as served by A/B group (what `check` measures): {result['served']}")
    return "\n".join(lines)


def _refuse_serve_latest(serves: str | None, allowed: bool, what: str) -> None:
    """Artifacts built with --serve-latest hold the held-out window in their features: what evaluate and
    check measure on them is inflated. Refused (exit 2) unless asked for, then warned about."""
    if serves != "latest":
        return
    message = (f"{what}: built with --serve-latest, so held-out requests are answered with features that "
               "include the held-out window and the metrics are inflated")
    if not allowed:
        typer.echo(f"error: {message}; retrain without --serve-latest, or pass --allow-serve-latest", err=True)
        raise typer.Exit(code=2)
    typer.echo(f"warning: {message}", err=True)


@app.command()
def check(
    url: Annotated[str, typer.Option(help="Base URL of the running service")] = "http://127.0.0.1:8000",
    db: DbOpt = None,
    requests: Annotated[int, typer.Option(help="Held-out (user, time) requests to replay")] = 1000,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result JSON here")] = None,
    world: Annotated[Path | None, typer.Option(help="Demo world for expected hit rates; default WORLD_PATH")] = None,
    horizon_days: Annotated[float | None, typer.Option(help="As in evaluate")] = None,
    seed: Annotated[int, typer.Option(help="Same seed as evaluate gives the same requests")] = 0,
    allow_serve_latest: AllowLatestOpt = False,
) -> None:
    """Replay held-out requests against a running service, like the course's checker."""
    import json

    import httpx

    from app.db import make_engine
    from training.check import CheckConfig, run_check

    settings = get_settings()
    config = CheckConfig(requests=requests, horizon_days=horizon_days, seed=seed)
    engine = make_engine(_db(db))
    try:
        with httpx.Client(base_url=url) as client, engine.connect() as conn:
            served = client.get("/model").json()
            _refuse_serve_latest(served.get("serves"), allow_serve_latest,
                                 f"the served version {served.get('version')}")
            result = run_check(conn, client, world or settings.world_path, config)
    except httpx.HTTPError as exc:
        typer.echo(f"error: service at {url} not reachable: {exc}", err=True)
        raise typer.Exit(code=1) from None
    text = json.dumps(result, indent=2)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
    typer.echo(text)


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="Base URL of the running service")] = "http://127.0.0.1:8000",
    world: Annotated[Path | None, typer.Option(help="The demo world; default WORLD_PATH")] = None,
    db: DbOpt = None,
    days: Annotated[int, typer.Option(min=1, help="Simulated days after the data end")] = 3,
    users_per_day: Annotated[int, typer.Option(min=1, help="Users opening the feed each day")] = 1000,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Posts per screen")] = 5,
    max_rps: Annotated[float, typer.Option(help="Upper bound on requests per second")] = 200.0,
    seed: Annotated[int, typer.Option()] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary JSON here")] = None,
    retrain_every: Annotated[int, typer.Option(min=0, help="Every this many days run `retrain` on the database "
                                                           "and wait for the service to swap (0: never)")] = 0,
    models: Annotated[Path | None, typer.Option(help="The service's artifact folder (for --retrain-every); "
                                                     "default MODEL_DIR")] = None,
    new_posts_per_day: Annotated[int, typer.Option(min=0, help="Held-back posts of the world inserted into "
                                                               "post_text_df each simulated day")] = 0,
) -> None:
    """Simulated users call the live service and react as the world says; reactions go to feed_data.

    To compare with a service that does not follow the database, start that one with STATE_FOLLOW=false
    (and EXCLUDE_VIEWED_HOURS=0 for the behaviour before the live state)."""
    import json
    from dataclasses import asdict

    import httpx

    from app.db import make_engine
    from training.simulate import SimConfig, day_table
    from training.simulate import simulate as run
    from training.world.model import World

    path = world or get_settings().world_path
    if not Path(path).is_file():
        typer.echo(f"error: no world at {path}: run `python -m training generate` first", err=True)
        raise typer.Exit(code=1)
    engine = make_engine(_db(db))
    config = SimConfig(days=days, users_per_day=users_per_day, limit=limit, seed=seed, max_rps=max_rps,
                       retrain_every=retrain_every, new_posts_per_day=new_posts_per_day)
    settings = get_settings()

    def retrainer():
        from training.retrain import retrain

        return retrain(_db(db), models or settings.model_dir, settings.cache_dir, settings.embedding_model,
                       world=Path(path))

    try:
        with httpx.Client(base_url=url) as client:
            client.get("/health", timeout=5).raise_for_status()
            summary = run(engine, client, World.load(path), config, retrainer if retrain_every else None)
    except httpx.HTTPError as exc:
        typer.echo(f"error: service at {url} not reachable: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        # with the per-request expected hit rates and young-post flags (plan order), for paired comparisons of
        # two runs with one seed (`python -m bench.catalogue simcompare`)
        json_path.write_text(json.dumps(asdict(summary)))
    typer.echo(day_table(summary))
    brief = {k: v for k, v in asdict(summary).items() if k not in ("days", "expected")}
    typer.echo(json.dumps(brief, indent=2))


@app.command()
def retrain(
    db: DbOpt = None,
    models: Annotated[Path | None, typer.Option(help="Artifact folder; default MODEL_DIR")] = None,
    keep: Annotated[int, typer.Option(min=2, help="Versions to keep (the serving one and the rollback target "
                                                  "are always kept)")] = 5,
    requests: Annotated[int, typer.Option(min=50, help="Held-out requests both versions are evaluated on")] = 1000,
    world: Annotated[Path | None, typer.Option(help="Demo world for expected hit rates; default WORLD_PATH "
                                                    "when it exists")] = None,
    test_days: Annotated[float, typer.Option(help="Held-out window: the last days of the data")] = 7,
    val_days: Annotated[float, typer.Option()] = 7,
    train_days: Annotated[float, typer.Option(help="0: every day before validation")] = 14,
    window_likes: Annotated[int, typer.Option(min=0, help="Windows sized by the data, as in `train`")] = 0,
    auc_drop: Annotated[float, typer.Option(help="Largest ROC-AUC drop the gate accepts")] = 0.005,
    min_requests: Annotated[int, typer.Option(min=1, help="A hit rate on fewer held-out requests does not vote "
                                                          "in the gate")] = 100,
) -> None:
    """Train a candidate on the latest data; promote it only if it is not worse than the serving version.
    Exit code 0: promoted; 3: refused by the gate; 1: failed."""
    import json as json_

    from training.retrain import FAILED, Gate
    from training.retrain import retrain as run

    settings = get_settings()
    path = world or settings.world_path
    try:
        result = run(_db(db), models or settings.model_dir, settings.cache_dir, settings.embedding_model, keep=keep,
                     world=path if Path(path).is_file() else None, requests=requests,
                     split_args=_split_args(None, test_days, val_days, train_days, window_likes),
                     gate=Gate(auc_drop=auc_drop, min_requests=min_requests))
    except Exception as exc:  # a scheduler reads the exit code; the reason goes to stderr
        typer.echo(f"error: retrain failed: {exc}", err=True)
        raise typer.Exit(code=FAILED) from None
    typer.echo(json_.dumps({"decision": result.decision, "candidate": result.candidate, "serving": result.serving,
                            "reason": result.reason, "promotion": str(result.path)}, indent=2))
    raise typer.Exit(code=result.code)


@app.command()
def rollback(
    models: Annotated[Path | None, typer.Option(help="Artifact folder; default MODEL_DIR")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Version to serve; default the one served before")] = None,
) -> None:
    """Point models/current back to the previous version (every worker swaps it in)."""
    from training.retrain import rollback as run

    try:
        version = run(models or get_settings().model_dir, to)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"current: {version}")


@app.command("ab-report")
def ab_report(
    out: Annotated[Path, typer.Option(help="Folder for report.md, summary.json and the plots")],
    db: DbOpt = None,
    since: Annotated[str | None, typer.Option(help="First request moment (ISO)")] = None,
    until: Annotated[str | None, typer.Option(help="Last request moment (ISO)")] = None,
    window: Annotated[str, typer.Option(help="Hit window after a response: 30m, 1h, 1d")] = "1h",
    control_percent: Annotated[int | None, typer.Option(help="Configured split; default AB_CONTROL_PERCENT")] = None,
    bucket_salt: Annotated[str, typer.Option(help="Salt of the 100 analysis buckets")] = "ab-buckets",
    aa_resamples: Annotated[int, typer.Option(help="Also measure the decision rule's false-positive rate by "
                                                   "re-splitting the control group this many times")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Analyse the A/B test in recommendation_log: health checks, tests, verdict, plots."""
    from datetime import datetime

    from app.db import make_engine
    from training.abreport import (
        ABConfig,
        ReportError,
        aa_false_positive_rate,
        analyse,
        load_exposures,
        parse_window,
        verdict_text,
        write_report,
    )
    from training.data import to_seconds

    try:
        bounds = [to_seconds(datetime.fromisoformat(x)) if x else None for x in (since, until)]
    except ValueError as exc:
        typer.echo(f"error: --since/--until must be ISO dates: {exc}", err=True)
        raise typer.Exit(code=1) from None
    try:
        config = ABConfig(window=parse_window(window), bucket_salt=bucket_salt, seed=seed,
                          control_percent=get_settings().ab_control_percent if control_percent is None
                          else control_percent)
        engine = make_engine(_db(db))
        with engine.connect() as conn:
            frame, health = load_exposures(conn, bounds[0], bounds[1], config.window)
        summary = analyse(frame, config, health["catalogue"], health)
        if aa_resamples:
            summary["aa"] = {"resamples": aa_resamples,
                             "false_positive_rate": aa_false_positive_rate(frame, aa_resamples, config)}
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    path = write_report(summary, frame, out, config)
    typer.echo(verdict_text(summary))
    typer.echo(f"report: {path}")
