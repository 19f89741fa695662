"""Security basics that a file can show: the image runs unprivileged, the repository holds no credentials."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# placeholders a reader must replace are fine; anything else between "user:" and "@" is a password
PLACEHOLDERS = {"pass", "change-me"}
URL_PASSWORD = re.compile(r"://[A-Za-z0-9_.-]+:([^@/\s*${<]+)@")


def test_the_image_runs_as_an_unprivileged_user():
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    users = [words[1] for words in lines if words[0] == "USER"]
    cmd_at = max(i for i, words in enumerate(lines) if words[0] == "CMD")
    user_at = max((i for i, words in enumerate(lines) if words[0] == "USER"), default=-1)
    assert users and users[-1] not in ("root", "0") and user_at < cmd_at


def test_no_database_password_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = ROOT / name
        if path.suffix in (".png", ".npz", ".cbm", ".parquet", ".gz", ".db") or not path.is_file():
            continue
        for password in URL_PASSWORD.findall(path.read_text(errors="ignore")):
            if password not in PLACEHOLDERS:
                found.append(f"{name}: {password}")
    assert not found
