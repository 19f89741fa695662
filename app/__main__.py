"""`python -m app [--host H] [--port P] [--workers N]`: check the artifacts, then serve."""

import argparse
import sys

import uvicorn

from app.artifacts import ArtifactsInvalid, current_version_dir, load_manifest
from app.config import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description="Serve post recommendations.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    settings = get_settings()
    try:  # refuse early, in one line, rather than with a traceback from inside the server
        load_manifest(current_version_dir(settings.model_dir))
    except ArtifactsInvalid as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
