"""The image's build context (the repository root, per deploy/docker-compose.yml) keeps secrets,
local databases, virtualenvs, test output, caches and .git out of the image.

There is no Docker engine here, so the rules are checked with a small matcher that follows
Docker's .dockerignore semantics (moby/patternmatcher): patterns are relative to the context
root, ``*`` and ``?`` stay within one path segment, ``**`` spans any number of segments, a
matched directory excludes everything below it, ``!`` re-includes, and the last match wins.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def load_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.lstrip("/").rstrip("/")
        rules.append((negate, _regex(pattern)))
    return rules


def excluded(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def rules() -> list[tuple[bool, re.Pattern[str]]]:
    path = ROOT / ".dockerignore"
    assert path.is_file(), "the build context (repository root) needs a .dockerignore"
    return load_rules(path)


def test_the_build_context_is_the_repository_root() -> None:
    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    assert re.search(r"context:\s*\.\.\s*$", compose, re.M) and "dockerfile: deploy/Dockerfile" in compose


KEPT_OUT = [
    # secrets
    ".env", "deploy/.env", "deploy/prod.env", "crmsync.env", "deploy/systemd/worker-a.env", ".env.local",
    "deploy/tls/server.key", "server.pem",
    # virtualenvs
    ".venv/bin/python", "venv/lib/python3.11/site-packages/x.py", "deploy/.venv/pyvenv.cfg",
    # databases (SQLite files and their journals), the demo's and the emulator's data
    "crm.db", "crmsync-state.db-wal", "x.db-shm", "x.db-journal", "crmsync-demo/crm.db", "tests/tmp/y.sqlite3",
    "ews-data/mailboxes.sqlite3", "crmsync-demo/worker.log",
    # test output and caches
    ".pytest_cache/v/cache/lastfailed", ".hypothesis/examples/ab/cd", ".mypy_cache/3.11/x.json", ".ruff_cache/x",
    ".import_linter_cache/x", "crmsync/__pycache__/app.cpython-311.pyc", "__pycache__/x.pyc", ".coverage",
    ".coverage.host.123", "htmlcov/index.html", "junit.xml", "test-results/report.xml",
    "build/lib/crmsync/__init__.py", "dist/crmsync-0.1.tar.gz", "crmsync.egg-info/PKG-INFO",
    # the repository's history
    ".git", ".git/HEAD", ".git/objects/ab/cdef",
]

KEPT_IN = ["pyproject.toml", "README.md", "deploy/Dockerfile", "deploy/crmsync.example.toml", "deploy/.env.example",
           "crmsync/__init__.py", "crmsync/core/reconcile.py", "schemas/migrations/env.py", "ews_emulator/__init__.py",
           "producers/loop.py", "workers/celery_app.py"]


@pytest.mark.parametrize("path", KEPT_OUT)
def test_secrets_local_state_and_caches_stay_out_of_the_image(rules, path: str) -> None:
    assert excluded(rules, path), f"{path} would be sent into the image"


@pytest.mark.parametrize("path", KEPT_IN)
def test_what_pip_install_needs_is_in_the_context(rules, path: str) -> None:
    assert not excluded(rules, path), f"{path} is needed in the build context"


def test_every_tracked_file_is_in_the_context(rules) -> None:
    """Nothing the repository tracks is a secret or a cache, so all of it may be built from."""
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True,
                                 timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    left_out = [p for p in tracked if excluded(rules, p)]
    assert left_out == []


@pytest.mark.parametrize(("pattern", "path", "matches"), [
    ("*.env", "a.env", True), ("*.env", "deploy/a.env", False), ("**/*.env", "deploy/a.env", True),
    ("**/*.env", "a.env", True), (".git", ".git/HEAD", True), ("**/__pycache__", "a/b/__pycache__/c.pyc", True),
])
def test_the_matcher_follows_dockers_rules(pattern: str, path: str, matches: bool) -> None:
    assert excluded([(False, _regex(pattern))], path) is matches
