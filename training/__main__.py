import sys

from pydantic import ValidationError

from app.config import get_settings, settings_error
from training.cli import app

try:  # a bad setting is reported in one line, before any command starts work
    get_settings()
except ValidationError as exc:
    sys.exit(f"error: {settings_error(exc)}")
app()
