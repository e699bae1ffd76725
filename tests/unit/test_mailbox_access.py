"""Acting for other users (issue 9): per-mailbox access / username / password_env, and a mailbox
that is unavailable (access denied, folder missing) reported and retried while the others carry on.

Config validation and the effective settings per mailbox; the producer loop with fakes of its
ports (an unavailable feed backs off and is recorded, the other mailbox keeps syncing, the record
goes once it answers); the worker's settle/on_failure never dead-letter an unavailable mailbox's
events. The real thing (emulator, Redis, Celery) is tests/e2e/test_mailbox_access_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from exchangelib import errors as ex

from crmsync.adapters.exchange.ews.faults import translate
from crmsync.config import load_settings
from crmsync.errors import ConfigError, MailboxUnavailable, Transient
from crmsync.service.apply import BatchResult
from tests.unit.test_producer_loop import (  # the loop's fakes
    Change,
    Clock,
    FakeChangelog,
    FakeCrm,
    FakeFeed,
    FakePublisher,
    FakeStore,
    make_loop,
    mark_initial_done,
)
from workers.tasks import ApplyTask, RetryLater, settle

BASE = """
[exchange]
endpoint = "https://mail.example.com/EWS/Exchange.asmx"
username = "svc@example.com"
password_env = "SVC_PW"
access = "impersonation"
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    path = tmp_path / "crmsync.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(str(path), env=env or {})


def problem(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, text)
    return str(excinfo.value)


# ----------------------------------------------------------------------------- config

def test_a_mailbox_overrides_access_username_and_password_env(tmp_path):
    s = load(tmp_path, BASE + """
[[mailbox]]
address = "alice@example.com"
[[mailbox]]
address = "dave@example.com"
access = "delegate"
username = "assistant@example.com"
password_env = "ASSISTANT_PW"
""", env={"SVC_PW": "svc-secret", "ASSISTANT_PW": "assistant-secret"})
    alice, dave = s.exchange_for("alice@example.com"), s.exchange_for("DAVE@example.com")
    assert (alice.access, alice.username, alice.password()) == ("impersonation", "svc@example.com", "svc-secret")
    assert (dave.access, dave.username, dave.password()) == ("delegate", "assistant@example.com", "assistant-secret")
    assert dave.endpoint == alice.endpoint and s.exchange.access == "impersonation"   # [exchange] untouched


def test_a_missing_mailbox_password_names_the_mailbox_and_the_variable(tmp_path):
    s = load(tmp_path, BASE + """
[[mailbox]]
address = "dave@example.com"
password_env = "DAVE_PW"
""", env={"SVC_PW": "x"})
    with pytest.raises(ConfigError, match=r"mailbox dave@example.com.password_env: environment variable DAVE_PW "
                       r"is not set"):
        s.exchange_for("dave@example.com").password()


@pytest.mark.parametrize(("extra", "expected"), [
    ('access = "sudo"\n', "config key mailbox[0].access: must be one of impersonation, delegate"),
    ('username = ""\n', "config key mailbox[0].username: must not be empty"),
    ('api = "graph"\nusername = "x@example.com"\n',
     "config key mailbox: bob@example.com: username apply to EWS only; this mailbox uses api = 'graph'"),
])
def test_bad_mailbox_access_options_name_the_mailbox(tmp_path, extra, expected):
    text = BASE + """
tenant_id = "t"
client_id = "c"
[[mailbox]]
address = "bob@example.com"
""" + extra
    assert expected in problem(tmp_path, text)


def test_username_may_come_from_every_mailbox_instead_of_exchange(tmp_path):
    no_user = BASE.replace('username = "svc@example.com"\n', "")
    s = load(tmp_path, no_user + '[[mailbox]]\naddress = "a@example.com"\nusername = "a@example.com"\n')
    assert s.exchange_for("a@example.com").username == "a@example.com"
    text = no_user + ('[[mailbox]]\naddress = "a@example.com"\nusername = "a@example.com"\n'
                      '[[mailbox]]\naddress = "b@example.com"\n')
    assert ("config key exchange.username: is required when exchange.auth is 'basic' "
            "(or a username in [[mailbox]] b@example.com)") in problem(tmp_path, text)


def test_noauth_refuses_mailbox_credentials(tmp_path):
    text = BASE.replace('access = "impersonation"', 'auth = "noauth"') + (
        '[[mailbox]]\naddress = "a@example.com"\npassword_env = "A_PW"\n')
    assert ("config key mailbox: a@example.com: username and password_env are not used with "
            "exchange.auth = 'noauth'") in problem(tmp_path, text)


# ----------------------------------------------------------------------------- adapter errors

@pytest.mark.parametrize("exc", [ex.ErrorImpersonateUserDenied("no right"), ex.ErrorAccessDenied("denied"),
                                 ex.UnauthorizedError("Invalid credentials (HTTP 401)")])
def test_access_denials_become_mailbox_unavailable_naming_the_mailbox(exc):
    mapped = translate(exc, "carol@example.com", "opening folder 'CRM Accounts'")
    assert isinstance(mapped, MailboxUnavailable) and mapped.mailbox == "carol@example.com"
    assert str(mapped).startswith("mailbox carol@example.com: opening folder")


def test_other_setup_problems_stay_config_errors():
    mapped = translate(ex.ErrorMailboxConfiguration("bad"), "carol@example.com", "x")
    assert type(mapped) is ConfigError


# ----------------------------------------------------------------------------- producer

class Health:
    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.marks: list[str] = []

    def unavailable(self):
        return {mb: {"error": e} for mb, e in self.rows.items()}

    def mark_unavailable(self, mailbox, error):
        self.rows[mailbox] = error
        self.marks.append(mailbox)

    def mark_available(self, mailbox):
        self.rows.pop(mailbox, None)


class DeniedFeed(FakeFeed):
    def __init__(self) -> None:
        super().__init__()
        self.denied = True

    def changes(self, sync_state, max_changes=500):
        if self.denied:
            self.calls.append(sync_state)
            raise MailboxUnavailable("mailbox alice@example.com: reading changes: ErrorImpersonateUserDenied",
                                     "alice@example.com")
        return super().changes(sync_state, max_changes)


def test_an_unavailable_mailbox_is_recorded_backs_off_and_the_others_carry_on(monkeypatch):
    clock = Clock()
    store = FakeStore(clock)
    mark_initial_done(store)
    denied, alive = DeniedFeed(), FakeFeed()
    health = Health()
    loop = make_loop(FakeChangelog(), FakeCrm({}), store, clock,
                     {"alice@example.com": denied, "bob@example.com": alive}, FakePublisher(),
                     health=health, unavailable_backoff_s=10, unavailable_backoff_max_s=40)
    now = [1000.0]
    monkeypatch.setattr("producers.loop.time.monotonic", lambda: now[0])
    alive.log.append(Change("I1", "ck1", "upsert"))

    assert loop.run_once() == 1                               # bob's change, alice denied
    assert health.rows == {"alice@example.com": "mailbox alice@example.com: reading changes: "
                                                "ErrorImpersonateUserDenied"}
    alive.log.append(Change("I2", "ck2", "upsert"))
    now[0] += 5
    assert loop.run_once() == 1                               # within the back-off: alice not asked
    assert len(denied.calls) == 1
    delays = []
    for _ in range(3):                                        # 10 s, then 20, then 40 (the cap)
        delays.append(loop._backoff["alice@example.com"][1])
        now[0] += 40.1
        loop.run_once()
    assert delays == [10, 20, 40] and loop._backoff["alice@example.com"][1] == 40
    assert len(denied.calls) == 4

    denied.denied = False                                     # the right is granted
    denied.log.append(Change("A1", "cka", "upsert"))
    now[0] += 40.1
    assert loop.run_once() == 1
    assert health.rows == {} and "alice@example.com" not in loop._backoff
    assert {(e.mailbox, e.item_id) for e in store.events.values()} == {
        ("bob@example.com", "I1"), ("bob@example.com", "I2"), ("alice@example.com", "A1")}


def test_a_record_written_by_a_worker_is_removed_once_the_mailbox_answers():
    clock = Clock()
    store = FakeStore(clock)
    mark_initial_done(store)
    health = Health()
    health.rows["bob@example.com"] = "mailbox bob@example.com: ErrorAccessDenied"
    loop = make_loop(FakeChangelog(), FakeCrm({}), store, clock, {"bob@example.com": FakeFeed()},
                     FakePublisher(), health=health)
    loop.run_once()       # the re-drive step reads the records, the next feed step that works clears
    loop.run_once()
    assert health.rows == {}


# ----------------------------------------------------------------------------- worker

class Store:
    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}
        self.dead: list[int] = []
        self.events: dict[int, SimpleNamespace] = {}

    def record_attempt(self, event_id, error):
        self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
        return self.attempts[event_id]

    def mark_dead(self, event_id, error):
        self.dead.append(event_id)

    def get_events(self, ids):
        return {i: self.events[i] for i in ids if i in self.events}


def test_settle_retries_an_unavailable_mailbox_without_counting_attempts():
    store = Store()
    denied = MailboxUnavailable("mailbox carol@example.com: ErrorImpersonateUserDenied", "carol@example.com")
    assert settle(store, BatchResult({}, {1: denied, 2: Transient("busy")}), max_attempts=3) == [1, 2]
    assert settle(store, BatchResult({}, {1: denied, 2: Transient("busy")}), max_attempts=3) == [1, 2]
    assert settle(store, BatchResult({}, {1: denied, 2: Transient("busy")}), max_attempts=3) == [1]
    for _ in range(20):
        assert settle(store, BatchResult({}, {1: denied}), max_attempts=3) == [1]
    assert store.dead == [2] and 1 not in store.attempts


def test_when_celery_gives_up_an_unavailable_mailboxs_events_are_left_for_the_redrive(monkeypatch):
    store = Store()
    store.events = {i: SimpleNamespace(status="published", mailbox="m@example.com", attempts=0, last_error=None)
                    for i in (1, 2)}
    task = ApplyTask()
    monkeypatch.setattr(ApplyTask, "_store", lambda self: store)
    exc = RetryLater([1, 2], [MailboxUnavailable("mailbox m@example.com: denied", "m@example.com"),
                              Transient("busy")])
    assert exc.parked == [1]
    task.on_failure(exc, "t", (), {}, None)
    assert store.dead == [2]


def test_graph_denials_of_one_mailbox_become_mailbox_unavailable():
    from crmsync.adapters.exchange.graph.client import translate as graph_translate

    body = {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}
    denied = graph_translate(403, {}, body, "mailbox erin@example.com: reading changes", "erin@example.com")
    assert isinstance(denied, MailboxUnavailable) and denied.mailbox == "erin@example.com"
    gone = graph_translate(404, {}, {"error": {"code": "ErrorInvalidUser", "message": "no"}}, "mailbox x@example.com: y",
                           "x@example.com")
    assert isinstance(gone, MailboxUnavailable)
    token = graph_translate(401, {}, {"error": {"code": "InvalidAuthenticationToken"}}, "w", "erin@example.com")
    assert type(token) is ConfigError          # the app's token: every mailbox, not this one


def test_a_first_sync_check_that_finds_the_mailbox_unavailable_holds_it_until_it_answers(monkeypatch):
    clock = Clock()
    store = FakeStore(clock)
    health = Health()
    denied = {"alice@example.com"}

    def gate(mailbox):
        if mailbox in denied:
            raise MailboxUnavailable(f"mailbox {mailbox}: opening folder: ErrorAccessDenied", mailbox)
        return None

    now = [1000.0]
    monkeypatch.setattr("producers.loop.time.monotonic", lambda: now[0])
    loop = make_loop(FakeChangelog(), FakeCrm({"A-2": []}), store, clock, None, FakePublisher(),
                     first_sync_gate=gate, health=health, unavailable_backoff_s=10, gate_recheck_s=3600)
    loop.run_once()
    assert "alice@example.com" in loop.crm_producer.held and "bob@example.com" not in loop.crm_producer.held
    assert set(health.rows) == {"alice@example.com"}
    assert {e.mailbox for e in store.events.values()} == {"bob@example.com"}   # bob's first sync went ahead
    denied.clear()
    now[0] += 10.1           # the back-off, not the hour-long gate_recheck_s, decides when it is asked again
    loop.run_once()
    assert "alice@example.com" not in loop.crm_producer.held and health.rows == {}
    assert {e.mailbox for e in store.events.values()} == {"alice@example.com", "bob@example.com"}
