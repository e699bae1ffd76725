"""Configuration: a TOML file, environment overrides, and errors that name the key and its source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from crmsync.config import Settings, load_settings
from crmsync.errors import ConfigError

FULL = """
[crm]
url = "postgresql+psycopg://crm@db.internal/crm"

[state]
url = "sqlite:////var/lib/crmsync/state.db"

[broker]
url = "redis://redis.internal:6379/2"

[exchange]
endpoint = "https://mail.example.com/EWS/Exchange.asmx"
auth = "ntlm"
username = "CORP\\\\svc-crmsync"
password_env = "EWS_PW"
access = "delegate"
verify_tls = false
timeout_s = 45
max_wait_s = 120

[[mailbox]]
address = "alice@example.com"
folder = "CRM Accounts"

[[mailbox]]
address = "bob@corp.local"
folder = "Shared/CRM"
secondary_contacts = false

[sync]
conflict_policy = "crm-wins"
phone_region = "de"
private_sensitivities = ["Private", "Confidential"]
poll_interval_s = 2.5
max_attempts = 3
lease_ttl_s = 420
redrive_after_s = 600
batch_size = 50

[worker]
concurrency = 8
queue_prefix = "crm.q"

[log]
level = "debug"
json = true
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "crmsync.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(excinfo.value).splitlines()


def test_defaults_without_file_or_environment() -> None:
    s = load_settings(env={})
    assert s.crm.url == "sqlite:///crm.db"
    assert s.state.url == "sqlite:///crmsync-state.db"
    assert s.broker.url == "redis://127.0.0.1:6379/0"
    assert (s.exchange.endpoint, s.exchange.auth, s.exchange.access) == (None, "basic", "impersonation")
    assert s.exchange.password_env == "CRMSYNC_EXCHANGE_PASSWORD"
    assert s.exchange.verify_tls is True
    assert s.mailboxes == ()
    assert s.sync.conflict_policy == "newest-wins"
    assert s.sync.phone_region == "US"
    assert s.sync.notifications == "streaming"
    assert s.sync.private_sensitivities == ("Private",)
    assert (s.sync.poll_interval_s, s.sync.max_attempts, s.sync.lease_ttl_s) == (60, 8, 120)
    assert (s.sync.redrive_after_s, s.sync.batch_size) == (300, 200)
    assert s.worker.queue_prefix == "crmsync"
    assert (s.log.level, s.log.json) == ("INFO", False)
    assert s.config_path is None


def test_every_key_is_read_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    s = load_settings(path, env={})
    assert s.config_path == path
    assert s.crm.url == "postgresql+psycopg://crm@db.internal/crm"
    assert s.state.url == "sqlite:////var/lib/crmsync/state.db"
    assert s.broker.url == "redis://redis.internal:6379/2"
    ex = s.exchange
    assert (ex.endpoint, ex.auth, ex.username) == ("https://mail.example.com/EWS/Exchange.asmx", "ntlm", "CORP\\svc-crmsync")
    assert (ex.password_env, ex.access, ex.verify_tls, ex.timeout_s, ex.max_wait_s) == ("EWS_PW", "delegate", False, 45, 120)
    assert [m.address for m in s.mailboxes] == ["alice@example.com", "bob@corp.local"]
    assert s.mailboxes[0].folder == "CRM Accounts" and s.mailboxes[0].secondary_contacts is True
    # a non-empty, never-synced folder waits for `crmsync sync --approve-plan` unless the mailbox says "auto"
    assert s.mailboxes[0].first_sync == s.mailboxes[1].first_sync == "approve"
    assert s.mailboxes[1].folder == "Shared/CRM" and s.mailboxes[1].secondary_contacts is False
    assert s.mailbox("BOB@corp.local").folder == "Shared/CRM"
    assert s.sync.conflict_policy == "crm-wins"
    assert s.sync.phone_region == "DE"
    assert s.sync.private_sensitivities == ("Private", "Confidential")
    assert (s.sync.poll_interval_s, s.sync.max_attempts, s.sync.lease_ttl_s) == (2.5, 3, 420)
    assert (s.sync.redrive_after_s, s.sync.batch_size) == (600, 50)
    assert (s.worker.concurrency, s.worker.queue_prefix) == (8, "crm.q")
    assert (s.log.level, s.log.json) == ("DEBUG", True)


def test_the_file_can_come_from_crmsync_config(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nurl = "redis://elsewhere:6380/1"\n')
    assert load_settings(env={"CRMSYNC_CONFIG": path}).broker.url == "redis://elsewhere:6380/1"


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    s = load_settings(path, env={
        "CRMSYNC_BROKER_URL": "redis://127.0.0.1:6399/5",
        "CRMSYNC_EXCHANGE_VERIFY_TLS": "true",
        "CRMSYNC_EXCHANGE_AUTH": "basic",
        "CRMSYNC_SYNC_CONFLICT_POLICY": "exchange-wins",
        "CRMSYNC_SYNC_MAX_ATTEMPTS": "12",
        "CRMSYNC_SYNC_PRIVATE_SENSITIVITIES": "Private, Personal",
        "CRMSYNC_WORKER_CONCURRENCY": "2",
        "CRMSYNC_LOG_JSON": "false",
        "CRMSYNC_EXCHANGE_PASSWORD": "not-a-key-just-the-secret",
    })
    assert s.broker.url == "redis://127.0.0.1:6399/5"
    assert s.exchange.verify_tls is True and s.exchange.auth == "basic"
    assert s.sync.conflict_policy == "exchange-wins" and s.sync.max_attempts == 12
    assert s.sync.private_sensitivities == ("Private", "Personal")
    assert s.worker.concurrency == 2 and s.log.json is False
    assert s.crm.url == "postgresql+psycopg://crm@db.internal/crm"  # untouched keys keep the file's value


def test_an_empty_environment_value_clears_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    s = load_settings(path, env={"CRMSYNC_EXCHANGE_ENDPOINT": ""})
    assert s.exchange.endpoint is None


def test_crmsync_mailboxes_replaces_the_files_list(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    s = load_settings(path, env={"CRMSYNC_MAILBOXES": "carol@example.com=CRM Accounts, dave@example.com=Kunden/CRM,erin@example.com"})
    assert [(m.address, m.folder) for m in s.mailboxes] == [
        ("carol@example.com", "CRM Accounts"),
        ("dave@example.com", "Kunden/CRM"),
        ("erin@example.com", "CRM Accounts"),
    ]
    assert all(m.secondary_contacts for m in s.mailboxes)
    assert load_settings(path, env={"CRMSYNC_MAILBOXES": ""}).mailboxes == ()


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ('[exchange]\nauth = "bsic"\n', {},
         "config key exchange.auth: must be one of basic, ntlm, oauth, noauth (got 'bsic') [from {path}]"),
        ("", {"CRMSYNC_EXCHANGE_AUTH": "bsic"},
         "config key exchange.auth: must be one of basic, ntlm, oauth, noauth (got 'bsic') [from env CRMSYNC_EXCHANGE_AUTH]"),
        ("", {"CRMSYNC_EXCHANGE_VERIFY_TLS": "maybe"},
         "config key exchange.verify_tls: must be true or false (got 'maybe') [from env CRMSYNC_EXCHANGE_VERIFY_TLS]"),
        ('[sync]\nmax_attempts = 0\n', {}, "config key sync.max_attempts: must be >= 1 (got 0) [from {path}]"),
        ("", {"CRMSYNC_SYNC_BATCH_SIZE": "lots"},
         "config key sync.batch_size: must be a whole number (got 'lots') [from env CRMSYNC_SYNC_BATCH_SIZE]"),
        ('[sync]\nconflict_policy = "last-wins"\n', {},
         "config key sync.conflict_policy: must be one of newest-wins, crm-wins, exchange-wins, manual (got 'last-wins') [from {path}]"),
        ('[sync]\nphone_region = "XX"\n', {}, "config key sync.phone_region: must be a two-letter region code"),
        ('[sync]\nnotifications = "push"\n', {},
         "config key sync.notifications: must be one of streaming, pull, poll (got 'push') [from {path}]"),
        ('[sync]\nprivate_sensitivities = ["Secret"]\n', {},
         "config key sync.private_sensitivities[0]: must be one of Personal, Private, Confidential (got 'Secret') [from {path}]"),
        ('[sync]\npoll_interval = 3\n', {}, "config key sync.poll_interval: unknown key (known keys here: conflict_policy,"),
        ('[sink]\nx = 1\n', {}, "config key sink: unknown key"),
        ('crm = "sqlite:///x.db"\n', {}, "config key crm: must be a table ([crm]) (got 'sqlite:///x.db') [from {path}]"),
        ('[[mailbox]]\nfolder = "CRM"\n', {}, "config key mailbox[0].address: is required [from {path}]"),
        ("", {"CRMSYNC_MAILBOXES": "alice@example.com,not-an-address"},
         "config key mailbox[1].address: is not an email address"),
        ('[[mailbox]]\naddress = "a@example.com"\n[[mailbox]]\naddress = "A@example.com"\n', {},
         "config key mailbox: A@example.com is listed twice [from {path}]"),
        ('[mailboxes]\naddress = "a@example.com"\n', {}, "config key mailboxes: unknown key; write each mailbox as a [[mailbox]] table"),
        ('[exchange]\nendpoint = "mail.example.com"\n', {}, "config key exchange.endpoint: must be an http(s) URL"),
        ('[exchange]\nendpoint = "https://mail.example.com/EWS/Exchange.asmx"\n', {},
         "config key exchange.username: is required when exchange.auth is 'basic' [from {path}]"),
        ('[exchange]\nendpoint = "https://m.example.com/EWS/Exchange.asmx"\nauth = "oauth"\nclient_id = "c"\n', {},
         "config key exchange.tenant_id: is required when exchange.auth is 'oauth'"),
        ('[log]\nlevel = "chatty"\n', {}, "config key log.level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'CHATTY')"),
        ('[worker]\nqueue_prefix = ""\n', {}, "config key worker.queue_prefix: must not be empty"),
        ('[crm]\nurl = "not a url"\n', {}, "config key crm.url: is not a URL"),
    ],
)
def test_every_validation_error_names_the_key_and_its_source(tmp_path: Path, toml: str, env: dict[str, str],
                                                             expected: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env=env)
    lines = problems(excinfo)
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected.format(path=path).split(" [from ")[0]), lines[0]
    if "[from" in expected:
        assert lines[0] == expected.format(path=path)
    else:
        assert lines[0].endswith(f"[from {path}]") or "[from env " in lines[0]


def test_several_problems_are_reported_one_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[exchange]\nauth = "x"\naccess = "y"\n[sync]\nbatch_size = -1\n')
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    lines = problems(excinfo)
    assert [line.split(":")[0] for line in lines] == [
        "config key exchange.auth", "config key exchange.access", "config key sync.batch_size"]
    assert all(line.endswith(f"[from {path}]") for line in lines)


def test_a_missing_or_broken_file_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml: not found"):
        load_settings(str(tmp_path / "nope.toml"), env={})
    path = write(tmp_path, "[crm\nurl = 1\n")
    with pytest.raises(ConfigError, match=r"config file .*crmsync\.toml: invalid TOML: .*line 1"):
        load_settings(path, env={})


@pytest.mark.parametrize(("toml", "key", "points_to"), [
    ('[exchange]\npassword = "Tr0ub4dor&3"\n', "exchange.password", "exchange.password_env"),
    ('[exchange]\nclient_secret = "Tr0ub4dor&3"\n', "exchange.client_secret", "exchange.client_secret_env"),
    ('[broker]\nurl = "redis://:Tr0ub4dor&3@redis:6379/0"\n', "broker.url", "broker.password_env"),
    ('[crm]\nurl = "postgresql://crm:Tr0ub4dor&3@db/crm"\n', "crm.url", "crm.password_env"),
])
def test_a_secret_in_the_file_is_refused_without_echoing_it(tmp_path: Path, toml: str, key: str,
                                                            points_to: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    message = str(excinfo.value)
    assert message.startswith(f"config key {key}: ")
    assert "secrets are never stored in the config file" in message
    assert points_to in message
    assert "Tr0ub4dor" not in message


def test_a_typo_near_a_secret_key_does_not_echo_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[exchange]\npasword = "Tr0ub4dor&3"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    assert "exchange.pasword: unknown key" in str(excinfo.value)
    assert "Tr0ub4dor" not in str(excinfo.value)


def test_the_password_is_read_from_the_named_variable_at_call_time(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    env: dict[str, str] = {}
    s = load_settings(path, env=env)
    with pytest.raises(ConfigError) as excinfo:
        s.exchange.password()
    assert str(excinfo.value) == "exchange.password_env: environment variable EWS_PW is not set"
    env["EWS_PW"] = "s3cret-value"
    assert s.exchange.password() == "s3cret-value"


def test_the_default_password_variable_and_its_missing_message() -> None:
    s = load_settings(env={"CRMSYNC_EXCHANGE_ENDPOINT": "https://m.example.com/EWS/Exchange.asmx",
                           "CRMSYNC_EXCHANGE_USERNAME": "svc@example.com"})
    with pytest.raises(ConfigError, match="^exchange.password_env: environment variable "
                                          "CRMSYNC_EXCHANGE_PASSWORD is not set$"):
        s.exchange.password()


def test_noauth_needs_no_password() -> None:
    s = load_settings(env={"CRMSYNC_EXCHANGE_AUTH": "noauth",
                           "CRMSYNC_EXCHANGE_ENDPOINT": "http://127.0.0.1:8080/EWS/Exchange.asmx"})
    assert s.exchange.password() is None


def test_a_url_password_comes_from_password_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[broker]\nurl = "redis://redis.internal:6379/0"\npassword_env = "REDIS_PW"\n')
    s = load_settings(path, env={"REDIS_PW": "p@ss:word"})
    assert s.broker.url == "redis://redis.internal:6379/0"
    assert s.broker.dsn() == "redis://:p%40ss%3Aword@redis.internal:6379/0"
    assert load_settings(env={}).crm.dsn() == "sqlite:///crm.db"


def test_secrets_never_show_in_repr_dump_or_errors(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    env = {"EWS_PW": "s3cret-value", "CRMSYNC_BROKER_URL": "redis://:hunter2-redis@h:6379/0"}
    s = load_settings(path, env=env)
    assert s.exchange.password() == "s3cret-value"
    shown = " ".join([repr(s), str(s), str(s.model_dump()), s.model_dump_json(), repr(s.broker)])
    assert "s3cret-value" not in shown
    assert "hunter2-redis" not in shown
    assert "redis://:***@h:6379/0" in shown
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={**env, "CRMSYNC_BROKER_URL": "redis://:hunter2-redis@h:port/0",
                                 "CRMSYNC_SYNC_BATCH_SIZE": "x"})
    assert "hunter2-redis" not in str(excinfo.value)


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(ValidationError):
        s.sync.batch_size = 1  # type: ignore[misc]
    assert isinstance(s, Settings)


def test_loading_twice_does_not_share_the_environment() -> None:
    a = load_settings(env={"CRMSYNC_EXCHANGE_PASSWORD": "first-one"})
    b = load_settings(env={})
    assert a.exchange.password() == "first-one"
    with pytest.raises(ConfigError):
        b.exchange.password()


EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "crmsync.example.toml"


def _example_sections(text: str) -> dict[str, list[str]]:
    """The example's lines per section header (the first [[mailbox]] table only)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = sections.setdefault("", [])
    for line in text.splitlines():
        header = re.fullmatch(r"\[\[?([a-z_]+)\]\]?", line.strip())
        if header:
            current = sections.setdefault(header.group(1), []) if header.group(1) not in sections else []
        else:
            current.append(line)
    return sections


def test_the_example_config_loads_and_documents_every_key() -> None:
    """Every key of every config model is in deploy/crmsync.example.toml, in its own section, set
    or commented out, under a comment saying what it does, so the example cannot drift."""
    from crmsync.config import _SECTIONS, MailboxSettings, PushRule

    s = load_settings(str(EXAMPLE), env={})
    assert [m.address for m in s.mailboxes] == ["alice@example.com", "bob@example.com"]
    sections = _example_sections(EXAMPLE.read_text(encoding="utf-8"))
    models = {**_SECTIONS, "mailbox": MailboxSettings}
    assert set(models) <= set(sections), f"sections missing from {EXAMPLE.name}: {set(models) - set(sections)}"
    for section, model in models.items():
        lines = sections[section]
        for name, info in model.model_fields.items():
            key = info.alias or name
            at = [i for i, line in enumerate(lines) if re.match(rf"^(# )?{key} = ", line)]
            assert at, f"[{section}] {key} is not in {EXAMPLE.name}"
            above = lines[:at[0]]
            while above and re.match(r"^(# )?[a-z_]+ = ", above[-1]):   # keys grouped under one comment
                above.pop()
            assert above and above[-1].startswith("# "), f"[{section}] {key} has no comment in {EXAMPLE.name}"
    push_keys = [info.alias or name for name, info in PushRule.model_fields.items()]
    push_examples = [line for lines in sections.values() for line in lines if "push_filter = [{" in line]
    assert all(f"{key} = " in line for key in push_keys for line in push_examples) and push_examples


def test_commands_that_need_exchange_or_mailboxes_say_which_key_is_missing() -> None:
    s = load_settings(env={})
    with pytest.raises(ConfigError, match="^config key exchange.endpoint: is required"):
        s.exchange.require_endpoint()
    with pytest.raises(ConfigError, match="^config key mailbox: no mailbox is configured"):
        s.require_mailboxes()
    with pytest.raises(ConfigError, match="^mailbox nobody@example.com: not in the configuration"):
        s.mailbox("nobody@example.com")
