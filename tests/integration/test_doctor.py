"""``crmsync doctor`` against real parts: a private redis-server, the EWS emulator over TLS
(certificate verified through a throwaway CA), SQLite CRM and state databases and a real
Celery worker process. One healthy stack is shared by the module; each failure test points a
config file at one broken part (a Redis port nobody listens on, a wrong password, a folder
that does not exist, a CRM without its triggers, a state database never migrated)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import Celery

from crmsync.adapters.database import init_crm, init_state, make_engine
from tests.support.app_cert import make_app_cert
from tests.support.emulator_proc import ca_signed_cert, free_port, start_emulator
from tests.support.pipeline import wait_until
from tests.support.redis_proc import start_redis

MAILBOX = "alice@example.com"
SERVICE_USER = "svc@example.com"
SERVICE_PASSWORD = "svc-doctor-Secret-77"
WRONG_PASSWORD = "not-the-Password-42"
FOLDER = "CRM Accounts"
PASSWORD_ENV = "CRMSYNC_TEST_EXCHANGE_PASSWORD"
# a second mailbox reached with its own credentials: bob's assistant, his delegate
BOB, ASSISTANT, ASSISTANT_PASSWORD = "bob@example.com", "assistant@example.com", "assistant-Secret-58"
ASSISTANT_PASSWORD_ENV = "CRMSYNC_TEST_ASSISTANT_PASSWORD"
# Microsoft Graph: the app may use every mailbox; the scoped app only bob's (RBAC for Applications)
GRAPH_TENANT, GRAPH_APP, SCOPED_APP = "contoso.onmicrosoft.com", "doctor-app", "doctor-scoped-app"
GRAPH_SECRET, GRAPH_SECRET_ENV = "doctor-Graph-secret-31", "CRMSYNC_TEST_GRAPH_SECRET"
CERT_APP = "doctor-cert-app"      # the same permission, signing in with a certificate


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = start_redis(tmp / "redis")
        self.redis.client().config_set("appendonly", "yes")     # a production-like broker
        ca, cert, key = ca_signed_cert(tmp / "tls")
        self.ca = ca
        self.app_cert = make_app_cert(tmp / "app-cert", CERT_APP)
        self.emulator = start_emulator(tmp / "exchange", users={MAILBOX: "alice-pw", SERVICE_USER: SERVICE_PASSWORD,
                                                                           BOB: "bob-pw", ASSISTANT: ASSISTANT_PASSWORD},
                                       extra_args=["--impersonator", SERVICE_USER, "--delegate", f"{BOB}:{ASSISTANT}",
                                                   "--tls-cert", str(cert),
                                                   "--tls-key", str(key),
                                                   "--graph-app", f"{GRAPH_TENANT}:{GRAPH_APP}:{GRAPH_SECRET}",
                                                   "--graph-app", f"{GRAPH_TENANT}:{SCOPED_APP}:{GRAPH_SECRET}",
                                                   "--graph-app-scope", f"{SCOPED_APP}:{BOB}",
                                                   "--graph-app-cert",
                                                   f"{GRAPH_TENANT}:{CERT_APP}:{self.app_cert.cert_pem}"])
        self.queue = f"crmsync.doctor.{uuid.uuid4().hex[:8]}"
        self.crm_url = f"sqlite:///{tmp / 'crm.db'}"
        self.state_url = f"sqlite:///{tmp / 'state.db'}"
        self.broker_url = self.redis.url(0)
        self.env = {**os.environ, PASSWORD_ENV: SERVICE_PASSWORD, "REQUESTS_CA_BUNDLE": str(ca),
                    "SSL_CERT_FILE": str(ca), GRAPH_SECRET_ENV: GRAPH_SECRET, "PYTHONUNBUFFERED": "1"}
        self.env.pop("CRMSYNC_CONFIG", None)
        self.config = self.write_config("healthy")
        for url, init in ((self.crm_url, init_crm), (self.state_url, init_state)):
            engine = make_engine(url)
            init(engine)
            engine.dispose()
        self.worker = None

    def write_config(self, name: str, *, crm_url: str | None = None, state_url: str | None = None,
                     broker_url: str | None = None, folder: str = FOLDER, queue: str | None = None,
                     extra: str = "", exchange_extra: str = "") -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(f"""
[crm]
url = "{crm_url or self.crm_url}"
[state]
url = "{state_url or self.state_url}"
[broker]
url = "{broker_url or self.broker_url}"
[exchange]
endpoint = "{self.emulator.endpoint}"
auth = "basic"
username = "{SERVICE_USER}"
password_env = "{PASSWORD_ENV}"
access = "impersonation"
timeout_s = 4
max_wait_s = 2
{exchange_extra}
[[mailbox]]
address = "{MAILBOX}"
folder = "{folder}"
[worker]
concurrency = 1
queue_prefix = "{queue or self.queue}"
{extra}""")
        return path

    def cli(self, config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "crmsync", "--config", str(config), *args],
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=120)

    def start_worker(self) -> None:
        log = open(self.tmp / "worker.log", "ab")  # noqa: SIM115 - owned by the process
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "crmsync", "--config", str(self.config), "worker",
             "-n", f"doctor-{uuid.uuid4().hex[:6]}@%h"],
            env=self.env, stdout=log, stderr=log, start_new_session=True)
        app = Celery("doctor-test", broker=self.broker_url, set_as_current=False)
        try:
            wait_until(lambda: app.control.ping(timeout=1.0), 60, what="the Celery worker to answer a ping")
        finally:
            app.close()

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)
        self.emulator.stop()
        self.redis.stop()


def create_folder(stack: Stack, mailbox: str = MAILBOX, password: str = "alice-pw") -> None:
    """The mailbox owner makes the sync folder in Outlook (exchangelib as alice)."""
    from exchangelib import BASIC, DELEGATE, Account, Configuration, Credentials
    from exchangelib.folders import Folder

    config = Configuration(service_endpoint=stack.emulator.endpoint, credentials=Credentials(mailbox, password),
                           auth_type=BASIC)
    account = Account(mailbox, config=config, autodiscover=False, access_type=DELEGATE)
    Folder(parent=account.contacts, name=FOLDER, folder_class="IPF.Contact").save()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("doctor"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REQUESTS_CA_BUNDLE", str(s.ca))
            create_folder(s)
            create_folder(s, BOB, "bob-pw")
        s.start_worker()
        yield s
    finally:
        s.close()


def rows(done: subprocess.CompletedProcess) -> dict[str, dict]:
    """The doctor's JSON rows by check name (asserting the output is nothing but that JSON)."""
    return {row["check"]: row for row in json.loads(done.stdout)}


def assert_no_secret(done: subprocess.CompletedProcess) -> None:
    for secret in (SERVICE_PASSWORD, WRONG_PASSWORD, GRAPH_SECRET):
        assert secret not in done.stdout and secret not in done.stderr


EXPECTED = {"config", "crm.database", "crm.schema", "crm.triggers", "state.database", "state.migrations",
            "redis", "redis.eviction", "redis.persistence", "exchange.endpoint", "exchange.credentials",
            f"mailbox {MAILBOX}", "celery.workers"}


def test_healthy_stack_is_all_ok(stack):
    done = stack.cli(stack.config, "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(found) == EXPECTED
    assert {name: row["status"] for name, row in found.items()} == dict.fromkeys(EXPECTED, "OK")
    assert "certificate verified" in found["exchange.endpoint"]["detail"]
    assert stack.queue in found["celery.workers"]["detail"]
    assert_no_secret(done)


def test_table_output_names_every_check(stack):
    done = stack.cli(stack.config, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "overall: OK" in done.stdout
    for name in ("crm.triggers", "state.migrations", "redis.persistence", "celery.workers"):
        assert name in done.stdout


def test_persistence_off_is_only_a_warning(stack):
    client = stack.redis.client()
    client.config_set("appendonly", "no")
    try:
        done = stack.cli(stack.config, "doctor", "--format", "json")
    finally:
        client.config_set("appendonly", "yes")
    found = rows(done)
    assert done.returncode == 0, done.stdout
    assert found["redis.persistence"]["status"] == "WARN"
    assert "appendonly yes" in found["redis.persistence"]["fix"]
    assert [n for n, r in found.items() if r["status"] != "OK"] == ["redis.persistence"]


def test_evicting_redis_fails(stack):
    client = stack.redis.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        done = stack.cli(stack.config, "doctor", "--format", "json")
    finally:
        client.config_set("maxmemory-policy", "noeviction")
    found = rows(done)
    assert done.returncode == 1
    assert found["redis.eviction"]["status"] == "FAIL"
    assert "allkeys-lru" in found["redis.eviction"]["detail"]
    assert "noeviction" in found["redis.eviction"]["fix"]


def test_redis_down_fails_with_how_to_start_it(stack):
    config = stack.write_config("redis-down", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    done = stack.cli(config, "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    assert found["redis"]["status"] == "FAIL"
    assert "unreachable" in found["redis"]["detail"]
    assert "start Redis" in found["redis"]["fix"]
    assert found["celery.workers"]["status"] == "FAIL"
    assert "redis.eviction" not in found


def test_no_worker_on_the_configured_queue_fails(stack):
    config = stack.write_config("other-queue", queue="crmsync.nobody-listens")
    done = stack.cli(config, "doctor", "--format", "json")
    workers = rows(done)["celery.workers"]
    assert done.returncode == 1
    assert workers["status"] == "FAIL"
    assert ("none consumes 'crmsync.nobody-listens.to_exchange', 'crmsync.nobody-listens.to_crm', "
            "'crmsync.nobody-listens.maintenance'") in workers["detail"]
    assert f"{stack.queue}.to_crm" in workers["detail"]          # what the live worker does consume
    assert ("crmsync worker -Q crmsync.nobody-listens.to_exchange,crmsync.nobody-listens.to_crm,"
            "crmsync.nobody-listens.maintenance") in workers["fix"]


def test_no_worker_alive_fails_with_how_to_start_one(stack):
    config = stack.write_config("no-workers", broker_url=stack.redis.url(7))   # a database no worker uses
    done = stack.cli(config, "doctor", "--format", "json")
    workers = rows(done)["celery.workers"]
    assert done.returncode == 1
    assert workers["status"] == "FAIL" and "no worker answered" in workers["detail"]
    assert "crmsync worker" in workers["fix"]


def test_wrong_exchange_password_fails_without_printing_it(stack):
    done = stack.cli(stack.config, "doctor", "--format", "json", env={PASSWORD_ENV: WRONG_PASSWORD})
    found = rows(done)
    assert done.returncode == 1
    assert found["exchange.credentials"]["status"] == "FAIL"
    assert "password" in found["exchange.credentials"]["fix"]
    assert found[f"mailbox {MAILBOX}"]["status"] == "FAIL"
    assert found["exchange.endpoint"]["status"] == "OK"
    assert_no_secret(done)
    table = stack.cli(stack.config, "doctor", env={PASSWORD_ENV: WRONG_PASSWORD})
    assert table.returncode == 1 and "overall: FAIL" in table.stdout
    assert_no_secret(table)


def test_missing_folder_fails_with_how_to_create_it(stack):
    config = stack.write_config("no-folder", folder="Not There")
    done = stack.cli(config, "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    mailbox = found[f"mailbox {MAILBOX}"]
    assert mailbox["status"] == "FAIL"
    assert "'Not There' does not exist" in mailbox["detail"]
    assert "create the folder" in mailbox["fix"]
    assert found["exchange.credentials"]["status"] == "OK"


def test_a_mailbox_with_its_own_credentials_is_hinted_with_its_own_options(stack):
    """The second [[mailbox]] (index 1) signs in as its delegate with its own username and
    password_env: a wrong password there fails that mailbox only, and the fix names the options in
    effect (mailbox[1].username, mailbox[1].password_env), not [exchange]'s."""
    config = stack.write_config("own-credentials", extra=f"""
[[mailbox]]
address = "{BOB}"
access = "delegate"
username = "{ASSISTANT}"
password_env = "{ASSISTANT_PASSWORD_ENV}"
""")
    done = stack.cli(config, "doctor", "--format", "json", env={ASSISTANT_PASSWORD_ENV: ASSISTANT_PASSWORD})
    found = rows(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert found[f"mailbox {BOB}"]["status"] == "OK" and found[f"mailbox {MAILBOX}"]["status"] == "OK"

    done = stack.cli(config, "doctor", "--format", "json", env={ASSISTANT_PASSWORD_ENV: WRONG_PASSWORD})
    found = rows(done)
    assert done.returncode == 1
    bob = found[f"mailbox {BOB}"]
    assert bob["status"] == "FAIL"
    assert "mailbox[1].password_env" in bob["fix"] and "mailbox[1].username" in bob["fix"]
    assert "exchange." not in bob["fix"]
    # the service account and the mailbox it impersonates are fine
    assert found["exchange.credentials"]["status"] == "OK"
    assert found[f"mailbox {MAILBOX}"]["status"] == "OK"
    assert_no_secret(done)
    assert ASSISTANT_PASSWORD not in done.stdout + done.stderr

    done = stack.cli(config, "doctor", "--format", "json", env={ASSISTANT_PASSWORD_ENV: ""})
    bob = rows(done)[f"mailbox {BOB}"]
    assert bob["status"] == "FAIL" and ASSISTANT_PASSWORD_ENV in bob["detail"]
    assert "mailbox[1].password_env" in bob["fix"] and "exchange." not in bob["fix"]


def test_missing_triggers_fail_with_crmsync_init(stack):
    path = stack.tmp / "crm-no-triggers.db"
    engine = make_engine(f"sqlite:///{path}")
    init_crm(engine)
    engine.dispose()
    with sqlite3.connect(path) as db:
        name = db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name").fetchone()[0]
        db.execute(f'DROP TRIGGER "{name}"')
    config = stack.write_config("no-triggers", crm_url=f"sqlite:///{path}")
    done = stack.cli(config, "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    assert found["crm.triggers"]["status"] == "FAIL"
    assert name in found["crm.triggers"]["detail"]
    assert "crmsync init" in found["crm.triggers"]["fix"]
    assert found["crm.schema"]["status"] == "OK"


def test_state_database_not_migrated_fails_with_crmsync_init(stack):
    config = stack.write_config("no-state", state_url=f"sqlite:///{stack.tmp / 'empty-state.db'}")
    done = stack.cli(config, "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    assert found["state.migrations"]["status"] == "FAIL"
    assert "crmsync init" in found["state.migrations"]["fix"]


def test_invalid_config_is_a_failure_not_a_crash(stack):
    path = stack.tmp / "bad.toml"
    path.write_text('[sync]\nconflict_policy = "loudest-wins"\n')
    done = stack.cli(path, "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    assert list(found) == ["config"]
    assert "sync.conflict_policy" in found["config"]["detail"]


def graph_config(stack: Stack, name: str, *, app: str = GRAPH_APP, folder: str = FOLDER) -> Path:
    return stack.write_config(name, folder=folder, exchange_extra=f"""api = "graph"
tenant_id = "{GRAPH_TENANT}"
client_id = "{app}"
client_secret_env = "{GRAPH_SECRET_ENV}"
authority = "{stack.emulator.base_url}"
graph_url = "{stack.emulator.graph_base}"
""")


def cert_graph_config(stack: Stack, name: str, cert) -> Path:
    return stack.write_config(name, exchange_extra=f"""api = "graph"
tenant_id = "{GRAPH_TENANT}"
client_id = "{CERT_APP}"
certificate_path = "{cert.key_pem}"
certificate_thumbprint = "{cert.thumbprint}"
authority = "{stack.emulator.base_url}"
graph_url = "{stack.emulator.graph_base}"
""")


def assert_no_private_key(done: subprocess.CompletedProcess, *certs) -> None:
    for cert in certs:
        key = cert.private_pem.split("-----END PRIVATE KEY-----")[0]
        for line in key.splitlines():
            if line and not line.startswith("-----"):
                assert line not in done.stdout and line not in done.stderr
    assert "eyJ" not in done.stdout + done.stderr          # no client assertion, no token


def test_a_graph_app_with_a_certificate_passes_the_doctor(stack):
    done = stack.cli(cert_graph_config(stack, "graph-cert", stack.app_cert), "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert found["exchange.graph"]["status"] == "OK"
    assert found[f"mailbox {MAILBOX}"]["status"] == "OK" and "over Graph" in found[f"mailbox {MAILBOX}"]["detail"]
    assert_no_private_key(done, stack.app_cert)


def test_a_certificate_not_uploaded_to_the_app_fails_the_app_check_without_printing_the_key(stack):
    other = make_app_cert(stack.tmp / "app-cert", "not-uploaded")
    done = stack.cli(cert_graph_config(stack, "graph-cert-wrong", other), "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    graph = found["exchange.graph"]
    assert graph["status"] == "FAIL" and "AADSTS700027" in graph["detail"] and other.thumbprint in graph["detail"]
    assert "certificate" in graph["fix"] and "Certificates & secrets" in graph["fix"]
    assert found[f"mailbox {MAILBOX}"]["status"] == "FAIL"
    assert_no_private_key(done, other, stack.app_cert)


def test_an_unreadable_or_keyless_certificate_file_is_named_with_its_fix(stack):
    public_only = SimpleNamespace(key_pem=stack.app_cert.cert_pem, thumbprint=stack.app_cert.thumbprint)
    missing = SimpleNamespace(key_pem=stack.tmp / "no-such.pem", thumbprint=stack.app_cert.thumbprint)
    for cert, says in ((public_only, "holds no PEM private key"), (missing, "cannot read")):
        done = stack.cli(cert_graph_config(stack, "graph-cert-file", cert), "doctor", "--format", "json")
        graph = rows(done)["exchange.graph"]
        assert done.returncode == 1
        assert graph["status"] == "FAIL" and "exchange.certificate_path" in graph["detail"] and says in graph["detail"]
        assert "certificate_path at a PEM file" in graph["fix"] and "client_secret_env" not in graph["fix"]


def test_a_graph_mailbox_is_probed_over_graph(stack):
    done = stack.cli(graph_config(stack, "graph"), "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert found["exchange.graph"]["status"] == "OK"
    assert found[f"mailbox {MAILBOX}"]["status"] == "OK"
    assert "over Graph" in found[f"mailbox {MAILBOX}"]["detail"]
    assert "exchange.endpoint" not in found and "exchange.credentials" not in found    # no EWS probe
    assert_no_secret(done)


def test_a_wrong_graph_secret_fails_the_app_check_without_printing_it(stack):
    wrong = "wrong-Graph-secret-99"
    done = stack.cli(graph_config(stack, "graph-wrong"), "doctor", "--format", "json", env={GRAPH_SECRET_ENV: wrong})
    found = rows(done)
    assert done.returncode == 1
    assert found["exchange.graph"]["status"] == "FAIL"
    assert "Certificates & secrets" in found["exchange.graph"]["fix"]
    assert found[f"mailbox {MAILBOX}"]["status"] == "FAIL"
    assert_no_secret(done)
    assert wrong not in done.stdout + done.stderr
    done = stack.cli(graph_config(stack, "graph-unset"), "doctor", "--format", "json", env={GRAPH_SECRET_ENV: ""})
    graph = rows(done)["exchange.graph"]
    assert graph["status"] == "FAIL" and GRAPH_SECRET_ENV in graph["detail"]
    assert "client_secret_env" in graph["fix"]


def test_a_graph_app_outside_its_rbac_scope_is_told_to_scope_it(stack):
    done = stack.cli(graph_config(stack, "graph-scoped", app=SCOPED_APP), "doctor", "--format", "json")
    found = rows(done)
    assert done.returncode == 1
    assert found["exchange.graph"]["status"] == "OK"                       # the token is fine
    mailbox = found[f"mailbox {MAILBOX}"]
    assert mailbox["status"] == "FAIL" and "403" in mailbox["detail"]
    assert "Contacts.ReadWrite" in mailbox["fix"] and "RBAC for Applications" in mailbox["fix"]
    assert SCOPED_APP in mailbox["fix"] and "service account" not in mailbox["fix"]


def test_a_missing_folder_over_graph_fails_with_how_to_create_it(stack):
    done = stack.cli(graph_config(stack, "graph-no-folder", folder="Not There"), "doctor", "--format", "json")
    mailbox = rows(done)[f"mailbox {MAILBOX}"]
    assert done.returncode == 1
    assert mailbox["status"] == "FAIL" and "'Not There' does not exist" in mailbox["detail"]
    assert "create the folder" in mailbox["fix"]


def test_access_denied_hints_fit_the_access_mode(stack):
    """The service account may impersonate alice but is not bob's delegate: with access =
    "delegate" for bob the fix says how to grant delegate access, not ApplicationImpersonation."""
    config = stack.write_config("delegate-denied", extra=f"""
[[mailbox]]
address = "{BOB}"
access = "delegate"
""")
    done = stack.cli(config, "doctor", "--format", "json")
    bob = rows(done)[f"mailbox {BOB}"]
    assert done.returncode == 1, done.stdout
    assert bob["status"] == "FAIL"
    assert "delegate access" in bob["fix"] and SERVICE_USER in bob["fix"]
    assert not bob["fix"].startswith("grant")                       # not the impersonation hint
