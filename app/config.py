"""Settings read once from the environment and `.env` (see `.env.example`)."""

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_PATH = PROJECT_ROOT / "data" / "feed.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DB_PATH}",
        description="SQLAlchemy URL of the database holding user_data, post_text_df, feed_data.",
    )
    model_dir: Path = Field(
        default=PROJECT_ROOT / "models",
        description="Folder with versioned artifacts; `current` inside it points at the one served.",
    )
    world_path: Path = Field(
        default=PROJECT_ROOT / "data" / "world.npz",
        description="Where the demo world's latent parameters are saved.",
    )
    cache_dir: Path = Field(
        default=PROJECT_ROOT / "data" / "cache",
        description="Cache of text embeddings, one file per model, keyed by a hash of each text.",
    )
    embedding_model: str = Field(
        default="minilm-int8",
        description="Sentence encoder for post texts: minilm-int8 (onnxruntime), or hashing (tests only).",
    )
    ab_salt: str = Field(default="startml-ab", description="Salt of the A/B hash.")
    ab_control_percent: int = Field(default=50, ge=0, le=100, description="Share of users in control.")
    ab_control_model: str = Field(default="control", pattern="^(control|test|popular)$")
    ab_test_model: str = Field(default="test", pattern="^(control|test|popular)$")
    scoring_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1,
        description="Requests scored at once per process; more than the cores only adds contention "
                    "(`python -m app --workers N` defaults it to the cores / N). At 1 the event loop scores "
                    "each request itself, without a hand-off to a thread: /health and /ready then wait "
                    "behind the requests queued before them (milliseconds with candidate retrieval).",
    )
    exclude_viewed_hours: float = Field(
        default=72.0, ge=0, le=24 * 365,
        description="A screen leaves out posts the user viewed this many hours before the request (0: none); "
                    "posts liked before it are always left out.",
    )
    exclude_last_views: int = Field(
        default=50, ge=0, le=100,
        description="A screen also leaves out the user's last this many viewed posts, however long ago (0: none): "
                    "a user who comes back after a week does not get the same screen again.",
    )
    state_follow: bool = Field(
        default=True,
        description="Follow feed_data and user_data after the artifact's snapshot; false serves the snapshot "
                    "frozen, as before the live state (for comparison).",
    )
    state_poll_seconds: float = Field(default=0.2, gt=0, le=60, description="How often the state polls the database.")
    state_batch_rows: int = Field(default=50_000, ge=1, description="Feed rows read per poll while catching up.")
    state_keep_hours: float = Field(
        default=240, ge=170, le=24 * 365,
        description="Events the state keeps one by one behind the latest applied one; older ones are folded into "
                    "its base (counts), so memory stops growing with the feed. Requests before that cut are answered "
                    "as of it. At least 170 h: recent-popularity retrieval looks 7 days back.",
    )
    state_compact_hours: float = Field(
        default=24, gt=0, le=24 * 365,
        description="Fold once this many hours of events have passed the STATE_KEEP_HOURS horizon.",
    )
    state_compact_in_child: bool = Field(
        default=True,
        description="Build a compaction in a forked child process (Linux) rather than a thread of the worker: its "
                    "seconds of NumPy then do not hold the requests' GIL (bench.live_state compaction).",
    )
    retrieval: str = Field(
        default="candidates", pattern="^(candidates|full)$",
        description="candidates: CatBoost ranks a few hundred retrieved posts (app/candidates.py); full: every "
                    "post of the catalogue (the cost grows with it).",
    )
    fresh_share: float = Field(
        default=0.0, ge=0, le=0.5,
        description="Share of a screen given to the best fresh posts (fewer than FRESH_VIEWS views or younger than "
                    "FRESH_HOURS) when the ranking holds fewer.",
    )
    retrieval_collaborative: int = Field(
        default=50, ge=0, le=10_000,
        description="Posts the collaborative candidate source contributes (nearest by the collaborative vectors; "
                    "0: off).",
    )
    fresh_hours: float = Field(default=24.0, gt=0, le=24 * 30, description="A post younger than this is fresh.")
    fresh_views: int = Field(default=20, ge=0, description="A post with fewer views than this is fresh.")
    console_enabled: bool = Field(
        default=True,
        description="Serve the read-only web console under /console/; false in production leaves only the API.",
    )
    console_report_dir: Path = Field(
        default=PROJECT_ROOT / "reports" / "ab",
        description="Folder of the A/B report the console's Experiment page shows (`ab-report --out`).",
    )
    model_watch_seconds: float = Field(
        default=2.0, gt=0, le=3600,
        description="How often each worker looks at models/current for a new version to swap in.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Enables POST /admin/reload (Authorization: Bearer <token>); without it the endpoint does not "
                    "exist.",
    )
    db_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300,
        description="Bound on connecting to the database, waiting for a pooled connection, and each statement "
                    "(PostgreSQL statement_timeout); a data endpoint that passes it answers 503.",
    )
    log_queue_size: int = Field(default=10_000, ge=1, description="Exposure log buffer bound.")
    log_batch_size: int = Field(default=500, ge=1)
    log_flush_seconds: float = Field(default=1.0, gt=0)
    log_spool_dir: Path | None = Field(
        default=None,
        description="Where each worker journals the exposure records it has not written yet (another worker "
                    "writes them if it dies) and puts those that do not fit the buffer (database down for long), "
                    "to be written once it is back; unset, no journal, and overflow is dropped and counted.",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_error(exc: ValidationError) -> str:
    """One line naming each bad setting as it is spelt in the environment, and why."""
    return "invalid settings: " + "; ".join(
        f"{'.'.join(str(part) for part in e['loc']).upper()}={e['input']!r}: {e['msg']}" for e in exc.errors())
