"""The console's users file (``name:argon2-hash`` a line) and its session key file."""

from __future__ import annotations

import os
import re
import secrets
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from crmsync.errors import CrmsyncError

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_hasher = PasswordHasher()


@cache
def _dummy() -> str:
    """A hash to verify against when the user is unknown: the answer takes as long as for a known one."""
    return _hasher.hash(secrets.token_hex(16))


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CrmsyncError(f"user name {name!r}: use 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def read_users(path: str | Path) -> dict[str, str]:
    """name -> argon2 hash; an absent file is no users."""
    p = Path(path)
    if not p.exists():
        return {}
    users: dict[str, str] = {}
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not hashed.startswith("$argon2"):
            raise CrmsyncError(f"{p}: line {number}: expected NAME:ARGON2-HASH")
        users[name] = hashed
    return users


def add_user(path: str | Path, name: str, password: str) -> bool:
    """Store ``name`` with the argon2 hash of ``password`` (replacing an older one); True when the
    user is new. The file is written with mode 0600."""
    check_name(name)
    if len(password) < 8:
        raise CrmsyncError("password: at least 8 characters")
    users = read_users(path)
    new = name not in users
    users[name] = _hasher.hash(password)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(f"{n}:{h}\n" for n, h in sorted(users.items()))
    os.replace(tmp, p)
    return new


def verify(path: str | Path, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s (the users file is read each time: a user added or
    changed counts at once)."""
    hashed = read_users(path).get(name)
    try:
        return _hasher.verify(hashed or _dummy(), password) and hashed is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def session_key(users_file: str | Path, from_env: str | None) -> str:
    """The key that signs session cookies: ``from_env`` when given, else the one in
    ``<users_file>.secret`` (generated with mode 0600 the first time)."""
    if from_env:
        return from_env
    p = Path(str(users_file) + ".secret")
    if p.exists():
        return p.read_text(encoding="utf-8").strip()
    p.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    return key
