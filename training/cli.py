"""Command line: `python -m training <command>`. Thin: parse, call a stage function, report."""

from pathlib import Path
from typing import Annotated

import typer

from app.config import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)

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
def generate(
    scale: Annotated[float, typer.Option(help="1.0 = the course database's size")] = 0.03,
    seed: Annotated[int, typer.Option()] = 11,
    db: DbOpt = None,
    world: Annotated[Path | None, typer.Option(help="Where to save the world; default WORLD_PATH")] = None,
    replace: Annotated[bool, typer.Option(help="Drop existing course tables first")] = False,
) -> None:
    """Build the demo world and write its three tables."""
    from training.world.generate import generate_world

    summary = generate_world(
        _db(db), scale=scale, seed=seed, world_path=world or get_settings().world_path, replace=replace
    )
    typer.echo(summary)


if __name__ == "__main__":
    app()
