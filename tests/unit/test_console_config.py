"""The ``[console]`` configuration section and the console's users file (argon2 hashes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crmsync.config import load_settings
from crmsync.console.users import add_user, read_users, session_key, verify
from crmsync.errors import ConfigError, CrmsyncError
from tests.unit.test_config_check import UNREACHABLE, crmsync

MAILBOX = '[[mailbox]]\naddress = "alice@example.com"\n'


def config(tmp_path: Path, console: str) -> Path:
    path = tmp_path / "crmsync.toml"
    path.write_text(UNREACHABLE + MAILBOX + "[console]\n" + console)
    return path


def test_console_section_defaults_and_values(tmp_path: Path) -> None:
    assert load_settings(str(config(tmp_path, ""))).console.users_file == "crmsync-console-users"
    s = load_settings(str(config(tmp_path, 'users_file = "/srv/u"\nsecret_key_env = "MY_KEY"\n')), env={"MY_KEY": "k1"})
    assert (s.console.users_file, s.console.secret_key()) == ("/srv/u", "k1")


@pytest.mark.parametrize(("body", "needle"), [
    ('secret_key_env = "not a name"\n', "console.secret_key_env: is not an environment variable name"),
    ('secret_key = "hunter2hunter2"\n', "console.secret_key"),
    ('users_file = ""\n', "console.users_file"),
    ('colour = "blue"\n', "console.colour"),
])
def test_bad_console_keys_are_named(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(str(config(tmp_path, body)))
    assert needle in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_config_check_names_an_unset_secret_key_variable_and_shows_the_users_file(tmp_path: Path) -> None:
    done = crmsync("config", "check", "--config", str(config(tmp_path, 'secret_key_env = "CRMSYNC_TEST_UNSET_KEY"\n')))
    assert done.returncode == 2
    assert "console.secret_key_env: environment variable CRMSYNC_TEST_UNSET_KEY is not set" in done.stderr
    done = crmsync("config", "check", "--config", str(config(tmp_path, f'users_file = "{tmp_path / "users"}"\n')))
    assert done.returncode == 0, done.stderr
    assert f"console users file: {tmp_path / 'users'} (absent" in done.stdout


def test_users_file_keeps_argon2_hashes_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert add_user(path, "ada", "first password") is True
    assert add_user(path, "bob", "bobs password") is True
    assert add_user(path, "ada", "second password") is False          # a new password for ada
    text = path.read_text()
    assert "password" not in text and re.fullmatch(r"(\w+:\$argon2id\$\S+\n){2}", text)
    assert sorted(read_users(path)) == ["ada", "bob"]
    assert verify(path, "ada", "second password") and not verify(path, "ada", "first password")
    assert not verify(path, "carol", "second password") and not verify(path, "bob", "")
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("name", "password", "needle"), [
    ("ada lovelace", "long enough", "user name"), ("", "long enough", "user name"), ("ada", "short", "8 characters")])
def test_bad_users_are_refused(tmp_path: Path, name: str, password: str, needle: str) -> None:
    with pytest.raises(CrmsyncError, match=needle):
        add_user(tmp_path / "users", name, password)
    assert not (tmp_path / "users").exists()


def test_session_key_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert session_key(users, "from-env") == "from-env"
    assert not Path(str(users) + ".secret").exists()
    first = session_key(users, None)
    assert len(first) >= 40 and session_key(users, None) == first
    assert oct(Path(str(users) + ".secret").stat().st_mode & 0o777) == "0o600"
