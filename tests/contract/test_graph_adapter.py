"""Contract of the Microsoft Graph adapter (``GraphExchange``, ``GraphFeed``, ``connect``/``open_folder``)
against the emulator's Graph front door over HTTPS, with a real msal token request to the
emulator's token endpoint. ``TestGraphSide`` runs the port contract shared with the EWS adapter;
the functions below test what is Graph's own (ETags, Retry-After, delta, secrets, one mailbox
behind both protocols).

"Outlook" here is the mailbox owner's client speaking Graph (raw httpx, as Outlook on the web
would) or EWS (plain exchangelib): the emulator serves one store behind both doors.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
from exchangelib import Contact
from exchangelib.indexed_properties import EmailAddress

from crmsync.adapters.exchange.ews import connect as ews_connect
from crmsync.adapters.exchange.ews.connect import open_folder as ews_open_folder
from crmsync.adapters.exchange.ews.side import EwsExchange
from crmsync.adapters.exchange.graph import mapping
from crmsync.adapters.exchange.graph.connect import connect, open_folder
from crmsync.adapters.exchange.graph.feed import GraphFeed, SyncStateExpired
from crmsync.adapters.exchange.graph.side import GraphExchange
from crmsync.config import load_settings
from crmsync.errors import BadRecord, ConfigError, Stale, Transient
from crmsync.ports import ExchangeRecord
from tests.contract.exchange_side_contract import ExchangeSideContract
from tests.support.app_cert import AppCert, make_app_cert
from tests.support.emulator_proc import EmulatorProcess, ca_signed_cert, start_emulator
from tests.support.exchange_settings import exchange_settings

ALICE, ALICE_PW = "alice@example.com", "secret1"
BOB, BOB_PW = "bob@example.com", "secret2"
TENANT = "contoso.onmicrosoft.com"
APP, SECRET = "crmsync-app", "graph-app-secret-7f3a"
BOB_ONLY_APP, BOB_ONLY_SECRET = "bob-only-app", "bob-only-secret-91c"
SECRET_ENV = "TEST_GRAPH_CLIENT_SECRET"
CERT_APP = "crmsync-cert-app"          # the same permission, a certificate credential instead of a secret
MAX_WAIT = 1.0


@pytest.fixture(scope="module")
def app_cert(tmp_path_factory: pytest.TempPathFactory) -> AppCert:
    """CERT_APP's certificate: the public part is registered in the emulator, the private key
    (with the certificate) is what crmsync's exchange.certificate_path reads."""
    return make_app_cert(tmp_path_factory.mktemp("app-cert"), CERT_APP)


@pytest.fixture(scope="module")
def graph_emulator(tmp_path_factory: pytest.TempPathFactory, app_cert: AppCert) -> Iterator[tuple[EmulatorProcess, str]]:
    data = tmp_path_factory.mktemp("graph")
    ca, cert, key = ca_signed_cert(data / "tls")
    emu = start_emulator(data, {ALICE: ALICE_PW, BOB: BOB_PW}, extra_args=[
        "--tls-cert", str(cert), "--tls-key", str(key), "--graph-app-cert", f"{TENANT}:{CERT_APP}:{app_cert.cert_pem}",
        "--graph-app", f"{TENANT}:{APP}:{SECRET}", "--graph-app", f"{TENANT}:{BOB_ONLY_APP}:{BOB_ONLY_SECRET}",
        "--graph-app-scope", f"{BOB_ONLY_APP}:{BOB}"])
    try:
        yield emu, str(ca)
    finally:
        emu.stop()


def graph_settings(emu: EmulatorProcess, *, client_id: str = APP, secret: str | None = SECRET,
                   max_wait: float = MAX_WAIT, **extra: str):
    """Typed settings through load_settings, as a deployment builds them (the secret in the env)."""
    env = {"CRMSYNC_EXCHANGE_API": "graph", "CRMSYNC_EXCHANGE_TENANT_ID": TENANT,
           "CRMSYNC_EXCHANGE_CLIENT_ID": client_id, "CRMSYNC_EXCHANGE_CLIENT_SECRET_ENV": SECRET_ENV,
           "CRMSYNC_EXCHANGE_AUTHORITY": emu.base_url, "CRMSYNC_EXCHANGE_GRAPH_URL": emu.graph_base,
           "CRMSYNC_EXCHANGE_MAX_WAIT_S": str(max_wait), "CRMSYNC_EXCHANGE_TIMEOUT_S": "30",
           "CRMSYNC_SYNC_LEASE_TTL_S": str(2 * (60 + max_wait)), **extra}
    if secret is not None:
        env[SECRET_ENV] = secret
    return load_settings(env=env).exchange


def cert_settings(emu: EmulatorProcess, cert: AppCert, *, client_id: str = CERT_APP, **extra: str):
    """Settings of the certificate app: certificate_path and certificate_thumbprint, no secret."""
    env = {"CRMSYNC_EXCHANGE_API": "graph", "CRMSYNC_EXCHANGE_TENANT_ID": TENANT,
           "CRMSYNC_EXCHANGE_CLIENT_ID": client_id, "CRMSYNC_EXCHANGE_CERTIFICATE_PATH": str(cert.key_pem),
           "CRMSYNC_EXCHANGE_CERTIFICATE_THUMBPRINT": cert.thumbprint,
           "CRMSYNC_EXCHANGE_AUTHORITY": emu.base_url, "CRMSYNC_EXCHANGE_GRAPH_URL": emu.graph_base,
           "CRMSYNC_EXCHANGE_MAX_WAIT_S": str(MAX_WAIT), "CRMSYNC_EXCHANGE_TIMEOUT_S": "30",
           "CRMSYNC_SYNC_LEASE_TTL_S": str(2 * (60 + MAX_WAIT)), **extra}
    return load_settings(env=env).exchange


def ca_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


@pytest.fixture(scope="module")
def client(graph_emulator):
    emu, ca = graph_emulator
    c = connect(graph_settings(emu), verify=ca_context(ca))
    yield c
    c.close()


@pytest.fixture(scope="module")
def cert_client(graph_emulator, app_cert):
    emu, ca = graph_emulator
    c = connect(cert_settings(emu, app_cert), verify=ca_context(ca))
    yield c
    c.close()


@pytest.fixture
def folder_id(client) -> str:
    return open_folder(client, ALICE, f"CRM {uuid.uuid4().hex[:8]}")


@pytest.fixture
def graph_side(client, folder_id) -> GraphExchange:
    return GraphExchange(client, ALICE, folder_id)


class _GraphUser:
    """The mailbox owner's client over Graph (raw httpx with its own token)."""

    def __init__(self, client, folder_id: str) -> None:
        self.client = client
        self.base = f"users/{ALICE}/contactFolders/{quote(folder_id, safe='')}/contacts"

    def _req(self, method, url, **kw):
        return self.client.request(method, url, where="test user", **kw)

    def add(self, given_name, *, private=False, business_phones=(), home_city=None, business_city=None):
        body = {"givenName": given_name, "displayName": given_name, "businessPhones": list(business_phones)}
        if home_city:
            body["homeAddress"] = {"city": home_city}
        if business_city:
            body["businessAddress"] = {"city": business_city}
        if private:
            body["singleValueExtendedProperties"] = [{"id": mapping.SENSITIVITY_ID, "value": "2"}]
        return self._req("POST", self.base, json=body).json()["id"]

    def set_job_title(self, item_id, value):
        self._req("PATCH", f"{self.base}/{quote(item_id, safe='')}", json={"jobTitle": value})

    def entries(self, item_id):
        c = self._req("GET", f"{self.base}/{quote(item_id, safe='')}").json()
        return {"business_phones": c["businessPhones"], "home_city": (c["homeAddress"] or {}).get("city"),
                "business_city": (c["businessAddress"] or {}).get("city")}

    def folder_ids(self):
        return {c["id"] for c in self._req("GET", self.base, params={"$top": "1000", "$select": "id"}).json()["value"]}


class _GraphFaults:
    def __init__(self, emu: EmulatorProcess) -> None:
        self.emu = emu

    def busy_on_create(self, seconds):
        # create_many sends its creates in one $batch request
        self.emu.inject_fault("graph:batch", "throttle_429", count=1, back_off_ms=int(seconds * 1000))

    def unavailable_on_read(self):
        self.emu.inject_fault("graph:get contact", "http_503", count=1, back_off_ms=3000)

    def clear(self):
        self.emu.clear_faults()


class TestGraphSide(ExchangeSideContract):
    """The port contract over Microsoft Graph, against the emulator's Graph front door."""

    def representable(self, record):
        return not (record.email2 and not record.email)     # Graph lists addresses by position

    @pytest.fixture
    def side(self, graph_side):
        return graph_side

    @pytest.fixture
    def user(self, client, folder_id):
        return _GraphUser(client, folder_id)

    @pytest.fixture
    def feed(self, client, folder_id):
        return GraphFeed(client, ALICE, folder_id)

    @pytest.fixture
    def faults(self, graph_emulator):
        f = _GraphFaults(graph_emulator[0])
        yield f
        f.clear()


    def test_search_finds_a_contact_by_part_of_its_email_address_or_by_any_of_its_phones(self, side) -> None:
        """Graph's limit, not the port's: Graph filters ``emailAddresses`` only with
        ``any(a: a/address eq '...')`` and runs no function inside a lambda over ``businessPhones``
        or ``homePhones`` (user-list-contacts, "Optional query parameters"). Over Graph the folder
        search therefore finds a contact by its whole e-mail address (any case) and by the
        beginning of its mobile phone, but not by part of an address nor by a business or home
        phone."""
        from crmsync.core.matching import search_terms

        grace = side.create("account:QE1", {"first_name": "Grace", "last_name": "Hopper", "email": "grace@navy.example",
                                            "phone_business": "+1 202 555 0147", "phone_home": "+1 202 555 0148",
                                            "phone_mobile": "+1 202 555 0149"})
        side.create("account:QE2", {"first_name": "Alan", "last_name": "Turing", "email": "alan@b.example"})

        def found(text: str) -> set[str]:
            return {r.item_id for r in side.search(search_terms(text)) if not r.private}

        assert found("grace@NAVY") == set()
        assert found("navy.example") == set()
        assert found("GRACE@navy.example") == {grace.item_id}
        assert found("+1 202 555 0147") == set()
        assert found("+1 202 555 0148") == set()
        assert found("+1 202 555 0149") == {grace.item_id}
        assert found("grace") == {grace.item_id}


class TestGraphSideWithCertificate(TestGraphSide):
    """The same port contract with the app signing in by certificate (``certificate_path`` and
    ``certificate_thumbprint``): msal sends a client assertion, the emulator verifies it."""

    @pytest.fixture
    def client(self, cert_client):
        return cert_client

    def test_the_client_signs_in_with_its_certificate(self, client, graph_emulator):
        emu, _ = graph_emulator
        emu.reset_stats()
        token = client.token(fresh=True)
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        assert (claims["appid"], claims["appidacr"]) == (CERT_APP, "2")     # "2": a certificate, not a secret
        assert emu.stats().get("graph:token") == 1


# --------------------------------------------------------------------------- Graph's own


def test_a_stale_etag_is_refused_by_graph_with_412_and_is_stale(graph_side, client):
    created = graph_side.create("account:ETAG", {"first_name": "Ada"})
    newer = graph_side.update(created.item_id, {"job_title": "One"}, created.change_key)
    assert newer.change_key != created.change_key
    url = graph_side._contact_url(created.item_id)
    with pytest.raises(Stale, match="412"):
        client.request("PATCH", url, where="test", json={"jobTitle": "Two"},
                       headers={"If-Match": f'W/"{created.change_key}"'})
    with pytest.raises(Stale, match="412"):       # delete sends no read first: Graph's If-Match decides
        graph_side.delete(created.item_id, created.change_key)
    after = graph_side.read(created.item_id)
    assert (after.record.job_title, after.change_key) == ("One", newer.change_key)


def test_a_429_retry_after_within_max_wait_is_waited_out_and_the_request_repeated(graph_emulator):
    emu, ca = graph_emulator
    c = connect(graph_settings(emu, max_wait=3.0), verify=ca_context(ca))
    try:
        side = GraphExchange(c, ALICE, open_folder(c, ALICE, f"Throttle {uuid.uuid4().hex[:6]}"))
        created = side.create("account:T1", {"first_name": "Patient"})
        emu.inject_fault("graph:get contact", "throttle_429", count=1, back_off_ms=1000)
        emu.reset_stats()
        t0 = time.monotonic()
        rec = side.read(created.item_id)
        elapsed = time.monotonic() - t0
        assert rec.record.first_name == "Patient"
        assert elapsed >= 1.0                              # Retry-After: 1 was honoured
        assert emu.stats().get("graph:get contact") == 2   # once throttled, once answered
    finally:
        emu.clear_faults()
        c.close()


def test_a_429_longer_than_max_wait_is_transient_with_retry_after(graph_side, graph_emulator):
    emu, _ = graph_emulator
    created = graph_side.create("account:T2", {"first_name": "Impatient"})
    emu.inject_fault("graph:get contact", "throttle_429", count=1, back_off_ms=4000)
    try:
        t0 = time.monotonic()
        with pytest.raises(Transient) as info:
            graph_side.read(created.item_id)
        assert time.monotonic() - t0 < MAX_WAIT + 1
        assert info.value.retry_after == pytest.approx(4.0)
        assert ALICE in str(info.value) and "429" in str(info.value)
    finally:
        emu.clear_faults()


@pytest.fixture
def ews_on_graph_emulator(graph_emulator):
    """alice over EWS on the same (HTTPS) emulator; the EWS adapter does not know the test CA, so
    it is told not to verify this endpoint (verify_tls = false)."""
    emu, _ = graph_emulator
    return ews_connect.connect(exchange_settings(emu.endpoint, username=ALICE, password=ALICE_PW, verify_tls=False),
                               ALICE)


def test_a_contact_stamped_over_ews_is_found_over_graph_and_its_ews_edits_reach_the_delta_feed(
        client, ews_on_graph_emulator):
    name = f"Both {uuid.uuid4().hex[:6]}"
    ews_folder = ews_open_folder(ews_on_graph_emulator, name)
    ews = EwsExchange(ews_on_graph_emulator, ews_folder)
    graph_folder = open_folder(client, ALICE, name, create=False)      # the same folder, found by name
    graph = GraphExchange(client, ALICE, graph_folder)
    feed = GraphFeed(client, ALICE, graph_folder)
    _, state, _ = feed.changes(None)

    over_ews = ews.create("account:EWS-1", {"first_name": "Written", "last_name": "Over EWS", "fax": "+41 1"})
    found = graph.find_by_crm_key("account:EWS-1")
    assert found is not None and found.crm_key == "account:EWS-1"
    assert (found.record.first_name, found.record.last_name, found.record.fax) == ("Written", "Over EWS", "+41 1")
    assert found.change_key == over_ews.change_key                 # one ChangeKey behind both doors

    # An Outlook (EWS) edit and a new Outlook contact show up in the Graph delta feed.
    (item,) = ews_on_graph_emulator.fetch(ids=[(over_ews.item_id, None)], only_fields=["job_title"])
    item.job_title = "Edited over EWS"
    item.save(update_fields=["job_title"])
    Contact(account=ews_on_graph_emulator, folder=ews_folder, given_name="New in Outlook",
            display_name="New in Outlook").save()
    changes, state, more = feed.changes(state)
    assert not more
    by_id = {c.item_id: c for c in changes}
    assert found.item_id in by_id and by_id[found.item_id].op == "upsert"
    assert by_id[found.item_id].change_key != found.change_key
    assert len(by_id) == 2
    assert graph.read(found.item_id).record.job_title == "Edited over EWS"

    # A delete in Outlook is an @removed entry.
    ews_on_graph_emulator.bulk_delete(ids=[(item.id, None)], delete_type="MoveToDeletedItems")
    changes, _, _ = feed.changes(state)
    assert [(c.item_id, c.op) for c in changes] == [(found.item_id, "delete")]


def test_a_third_email_address_reads_as_email2_while_the_second_is_empty(client, ews_on_graph_emulator):
    """Graph lists e-mail addresses by position: a documented limit of the Graph mapping."""
    name = f"Pos {uuid.uuid4().hex[:6]}"
    folder = ews_open_folder(ews_on_graph_emulator, name)
    Contact(account=ews_on_graph_emulator, folder=folder, given_name="Pos", display_name="Pos",
            email_addresses=[EmailAddress(label="EmailAddress1", email="one@example.com"),
                             EmailAddress(label="EmailAddress3", email="three@example.com")]).save()
    graph_folder = open_folder(client, ALICE, name, create=False)
    (change,), _, _ = GraphFeed(client, ALICE, graph_folder).changes(None)
    rec = GraphExchange(client, ALICE, graph_folder).read(change.item_id)
    assert (rec.record.email, rec.record.email2) == ("one@example.com", "three@example.com")


def test_an_ews_item_id_is_read_updated_and_deleted_over_graph(client, ews_on_graph_emulator):
    """Links made over EWS hold EWS ItemIds; after a move to Graph they still reach the contact."""
    name = f"Ids {uuid.uuid4().hex[:6]}"
    ews = EwsExchange(ews_on_graph_emulator, ews_open_folder(ews_on_graph_emulator, name))
    graph = GraphExchange(client, ALICE, open_folder(client, ALICE, name, create=False))
    made = [ews.create(f"account:ID{i}", {"first_name": f"I{i}"}) for i in range(12)]
    odd = [m for m in made if "+" in m.item_id or "/" in m.item_id]
    assert odd, "no EWS id with + or / among 12 (each has 48 base64 characters)"
    m = odd[0]
    rec = graph.read(m.item_id)
    assert rec.crm_key == m.crm_key and "+" not in rec.item_id and "/" not in rec.item_id
    assert graph.read_many([m.item_id])[0].item_id == rec.item_id
    updated = graph.update(m.item_id, {"job_title": "Moved"}, rec.change_key)
    graph.delete(m.item_id, updated.change_key)
    assert graph.read(rec.item_id) is None


def test_an_unknown_delta_token_asks_for_a_restart(client, folder_id):
    feed = GraphFeed(client, ALICE, folder_id)
    _, state, _ = feed.changes(None)
    with pytest.raises(SyncStateExpired, match=ALICE):
        feed.changes(state.replace("deltatoken=", "deltatoken=x"))


def test_a_state_that_is_no_delta_link_of_this_graph_is_not_followed_but_restarts(client, folder_id):
    feed = GraphFeed(client, ALICE, folder_id)
    for state in ("https://attacker.example/v1.0/users/x/contactFolders/y/contacts/delta?$deltatoken=z",
                  "H4sIAAAAAAAEAGNgYGBkYGBgZGRk",          # an EWS SyncFolderItems state (base64)
                  "users/x/contactFolders/y/contacts/delta"):
        with pytest.raises(SyncStateExpired, match="not a Graph delta link"):
            feed.changes(state)
    with pytest.raises(ConfigError, match="not following"):   # the client never sends the token elsewhere
        client.request("GET", "https://attacker.example/v1.0/users/x", where="test")


def test_restore_brings_a_deleted_contact_back_stamped(graph_side):
    created = graph_side.create("account:BACK", {"first_name": "Back", "city": "Bern"})
    graph_side.delete(created.item_id, created.change_key)
    assert graph_side.find_by_crm_key("account:BACK") is None
    restored = graph_side.restore(created.item_id)
    assert restored.crm_key == "account:BACK"
    assert restored.record.first_name == "Back" and restored.record.city == "Bern"
    assert graph_side.find_by_crm_key("account:BACK").item_id == restored.item_id
    assert graph_side.restore(created.item_id).item_id == restored.item_id    # a retry adds no duplicate


def test_a_second_email_without_a_first_is_a_bad_record_naming_the_field(graph_side):
    (result,) = graph_side.create_many([("account:E2", {"first_name": "E", "email2": "e2@example.com"})])
    assert isinstance(result, BadRecord)
    assert "account:E2" in str(result) and "email2" in str(result)
    created = graph_side.create("account:E3", {"email": "a@example.com", "email2": "b@example.com"})
    with pytest.raises(BadRecord, match="email2"):
        graph_side.update(created.item_id, {"email": None}, created.change_key)
    assert graph_side.read(created.item_id).record.email == "a@example.com"


def test_open_folder_without_create_names_the_missing_folder(client):
    parent = f"Exists {uuid.uuid4().hex[:4]}"
    open_folder(client, ALICE, parent)
    with pytest.raises(ConfigError, match=f"'Nope' does not exist under Contacts/{parent} .*create_folder"):
        open_folder(client, ALICE, f"{parent}/Nope", create=False)


def test_open_folder_creates_a_nested_path_once(client):
    path = f"Parent {uuid.uuid4().hex[:6]}/Child"
    first = open_folder(client, ALICE, path)
    assert open_folder(client, ALICE, path) == first
    assert open_folder(client, ALICE, path.upper(), create=False) == first


def test_a_mailbox_outside_the_apps_rbac_scope_is_a_config_error_naming_it(graph_emulator):
    emu, ca = graph_emulator
    c = connect(graph_settings(emu, client_id=BOB_ONLY_APP, secret=BOB_ONLY_SECRET), verify=ca_context(ca))
    try:
        assert open_folder(c, BOB, "CRM Accounts")                 # in scope
        with pytest.raises(ConfigError, match=f"{ALICE}.*403.*RBAC"):
            open_folder(c, ALICE, "CRM Accounts")
    finally:
        c.close()


def test_a_wrong_secret_is_a_config_error_and_the_secret_never_shows(graph_emulator, caplog):
    emu, ca = graph_emulator
    wrong = "wrong-secret-5e1d9"
    caplog.set_level(logging.DEBUG)
    c = connect(graph_settings(emu, secret=wrong), verify=ca_context(ca))
    try:
        with pytest.raises(ConfigError) as info:
            open_folder(c, ALICE, "CRM Accounts")
    finally:
        c.close()
    text = str(info.value)
    assert "AADSTS7000215" in text and APP in text and TENANT in text
    assert wrong not in text and wrong not in repr(info.value)
    assert wrong not in caplog.text and SECRET not in caplog.text


def test_the_secret_never_reaches_the_logs_of_a_working_sync(graph_emulator, caplog):
    emu, ca = graph_emulator
    caplog.set_level(logging.DEBUG)          # httpx, httpcore and msal log their requests at DEBUG
    c = connect(graph_settings(emu), verify=ca_context(ca))
    try:
        side = GraphExchange(c, ALICE, open_folder(c, ALICE, f"Logs {uuid.uuid4().hex[:6]}"))
        created = side.create("account:LOG", {"first_name": "Logged"})
        side.read(created.item_id)
    finally:
        c.close()
    assert "oauth2/v2.0/token" in caplog.text or "contactFolders" in caplog.text   # something was logged
    assert SECRET not in caplog.text


def _pem_body(pem: str) -> list[str]:
    """The base64 lines of a PEM private key: none may show anywhere."""
    key = pem.split("-----END PRIVATE KEY-----")[0]
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


def test_a_certificate_the_app_does_not_have_is_a_config_error_and_no_key_shows(graph_emulator, tmp_path, caplog,
                                                                                  app_cert):
    emu, ca = graph_emulator
    caplog.set_level(logging.DEBUG)
    other = make_app_cert(tmp_path, "not-uploaded")
    wrong_thumbprint = cert_settings(emu, app_cert, CRMSYNC_EXCHANGE_CERTIFICATE_THUMBPRINT=other.thumbprint)
    for settings, thumbprint in ((cert_settings(emu, other), other.thumbprint), (wrong_thumbprint, other.thumbprint)):
        c = connect(settings, verify=ca_context(ca))
        try:
            with pytest.raises(ConfigError) as info:
                open_folder(c, ALICE, "CRM Accounts")
        finally:
            c.close()
        text = str(info.value)
        assert "AADSTS700027" in text and CERT_APP in text and TENANT in text and thumbprint in text
        for line in _pem_body(other.private_pem) + _pem_body(app_cert.private_pem):
            assert line not in text and line not in caplog.text
    assert "client_assertion=" not in caplog.text


def test_the_private_key_and_the_assertion_never_reach_the_logs_of_a_working_sync(graph_emulator, app_cert, caplog):
    emu, ca = graph_emulator
    caplog.set_level(logging.DEBUG)          # httpx, httpcore and msal log their requests at DEBUG
    c = connect(cert_settings(emu, app_cert), verify=ca_context(ca))
    try:
        side = GraphExchange(c, ALICE, open_folder(c, ALICE, f"CertLogs {uuid.uuid4().hex[:6]}"))
        created = side.create("account:CLOG", {"first_name": "Logged"})
        side.read(created.item_id)
    finally:
        c.close()
    assert "oauth2/v2.0/token" in caplog.text                          # the token request was logged
    for line in _pem_body(app_cert.private_pem):
        assert line not in caplog.text
    assert "client_assertion=" not in caplog.text and "eyJ" not in caplog.text    # no assertion, no token


def test_a_thumbprint_is_taken_as_openssl_prints_it_and_a_bad_one_is_named(graph_emulator, app_cert):
    emu, ca = graph_emulator
    pairs = [app_cert.thumbprint[i:i + 2] for i in range(0, 40, 2)]
    for shown in (":".join(pairs).lower(), " ".join(pairs)):          # openssl's form, Windows' form
        c = connect(cert_settings(emu, app_cert, CRMSYNC_EXCHANGE_CERTIFICATE_THUMBPRINT=shown), verify=ca_context(ca))
        try:
            assert open_folder(c, ALICE, "CRM Accounts")
        finally:
            c.close()
    for bad in ("not-a-thumbprint", app_cert.thumbprint[:-2]):
        with pytest.raises(ConfigError, match="exchange.certificate_thumbprint: expected .* 40 hex digits"):
            connect(cert_settings(emu, app_cert, CRMSYNC_EXCHANGE_CERTIFICATE_THUMBPRINT=bad))


def test_a_certificate_file_without_its_private_key_is_named(graph_emulator, app_cert, tmp_path):
    emu, _ = graph_emulator
    with pytest.raises(ConfigError, match="holds no PEM private key"):
        connect(cert_settings(emu, app_cert, CRMSYNC_EXCHANGE_CERTIFICATE_PATH=str(app_cert.cert_pem)))
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError, match=f"certificate_path: cannot read {missing}"):
        connect(cert_settings(emu, app_cert, CRMSYNC_EXCHANGE_CERTIFICATE_PATH=str(missing)))


@pytest.mark.parametrize(("env", "message"), [
    ({"CRMSYNC_EXCHANGE_TENANT_ID": ""}, "exchange.tenant_id: is required when a mailbox uses api = 'graph'"),
    ({"CRMSYNC_EXCHANGE_CERTIFICATE_PATH": "/x.pem"}, "certificate_thumbprint: certificate_path and"),
    ({"CRMSYNC_EXCHANGE_GRAPH_URL": "graph.example"}, "exchange.graph_url: must be an http(s) URL"),
    ({"CRMSYNC_EXCHANGE_API": "rest"}, "exchange.api: must be one of ews, graph"),
])
def test_bad_graph_settings_are_named_before_anything_connects(env, message):
    base = {"CRMSYNC_EXCHANGE_API": "graph", "CRMSYNC_EXCHANGE_TENANT_ID": TENANT,
            "CRMSYNC_EXCHANGE_CLIENT_ID": APP}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env={**base, **env})


def test_a_mailbox_can_override_the_api_and_then_needs_the_graph_settings(tmp_path):
    cfg = tmp_path / "crmsync.toml"
    cfg.write_text('[exchange]\nendpoint = "https://mail.example.com/EWS/Exchange.asmx"\nusername = "svc"\n'
                   '[[mailbox]]\naddress = "a@example.com"\n[[mailbox]]\naddress = "b@example.com"\napi = "graph"\n')
    with pytest.raises(ConfigError, match="exchange.tenant_id: is required"):
        load_settings(str(cfg), env={})
    cfg.write_text(cfg.read_text().replace('username = "svc"\n', 'username = "svc"\ntenant_id = "t"\nclient_id = "c"\n'))
    settings = load_settings(str(cfg), env={})
    assert (settings.api_of("a@example.com"), settings.api_of("B@example.com")) == ("ews", "graph")


def test_the_client_secret_is_refused_in_the_file_without_echoing_it(tmp_path):
    cfg = tmp_path / "crmsync.toml"
    cfg.write_text('[exchange]\napi = "graph"\ntenant_id = "t"\nclient_id = "c"\nclient_secret = "s3cr3t-in-file"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(str(cfg), env={})
    assert "client_secret_env" in str(info.value) and "s3cr3t-in-file" not in str(info.value)


def test_a_missing_secret_variable_is_named(graph_emulator):
    emu, _ = graph_emulator
    with pytest.raises(ConfigError, match=f"environment variable {SECRET_ENV} is not set"):
        connect(graph_settings(emu, secret=None))


def test_requests_carry_immutable_ids_and_go_to_the_configured_graph(client, graph_emulator):
    assert client.http.headers["Prefer"] == 'IdType="ImmutableId"'
    resp = client.request("GET", f"users/{ALICE}", where="test")
    assert 'IdType="ImmutableId"' in resp.headers.get("Preference-Applied", "")
    assert str(resp.url).startswith(graph_emulator[0].graph_base)
    assert isinstance(client.http, httpx.Client)


def test_concurrent_requests_stay_within_the_mailbox_concurrency_limit(graph_side, graph_emulator):
    """Exchange Online answers a 5th concurrent request of an app on one mailbox with 429; the
    client queues its own requests instead, so none is refused (the emulator counts each one)."""
    emu, _ = graph_emulator
    created = graph_side.create_many([(f"account:CC{i}", {"first_name": f"C{i}"}) for i in range(12)])
    emu.inject_fault("graph:get contact", "delay", count=12, delay_ms=300)   # keep them in flight together
    emu.reset_stats()
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            read = list(pool.map(graph_side.read, [c.item_id for c in created]))
    finally:
        emu.clear_faults()
    assert [r.record.first_name for r in read] == [f"C{i}" for i in range(12)]
    assert emu.stats().get("graph:get contact") == 12          # no 429 ApplicationThrottled, no repeat


def test_the_container_wires_the_graph_adapter_for_a_graph_mailbox(graph_emulator, monkeypatch):
    from crmsync.bootstrap import Container

    emu, ca = graph_emulator
    monkeypatch.setenv("SSL_CERT_FILE", ca)          # the deployment trusts the emulator's CA
    env = {"CRMSYNC_EXCHANGE_ENDPOINT": emu.endpoint, "CRMSYNC_EXCHANGE_USERNAME": ALICE,
           "CRMSYNC_EXCHANGE_TENANT_ID": TENANT, "CRMSYNC_EXCHANGE_CLIENT_ID": APP,
           "CRMSYNC_EXCHANGE_CLIENT_SECRET_ENV": SECRET_ENV, SECRET_ENV: SECRET,
           "CRMSYNC_EXCHANGE_AUTHORITY": emu.base_url, "CRMSYNC_EXCHANGE_GRAPH_URL": emu.graph_base}
    cfg = f'[[mailbox]]\naddress = "{ALICE}"\nfolder = "Wired {uuid.uuid4().hex[:6]}"\napi = "graph"\n'
    path = emu.data_dir / "wired.toml"
    path.write_text(cfg)
    container = Container(load_settings(str(path), env=env))
    try:
        side, feed = container.exchange_side(ALICE), container.exchange_feed(ALICE)
        assert isinstance(side, GraphExchange) and isinstance(feed, GraphFeed)
        assert container.exchange_side(ALICE) is side
        created = side.create("account:WIRED", {"first_name": "Wired"})
        changes, _, _ = feed.changes(None)
        assert [c.item_id for c in changes] == [created.item_id]
    finally:
        container.dispose()


def test_the_container_honours_create_folder_false_for_a_graph_mailbox(graph_emulator, monkeypatch):
    """Like EWS: a missing folder with create_folder = false is not created; it is MailboxUnavailable
    (reported and retried) naming the mailbox and the path. Once it exists, the mailbox opens."""
    from crmsync.bootstrap import Container
    from crmsync.errors import MailboxUnavailable

    emu, ca = graph_emulator
    monkeypatch.setenv("SSL_CERT_FILE", ca)
    env = {"CRMSYNC_EXCHANGE_TENANT_ID": TENANT, "CRMSYNC_EXCHANGE_CLIENT_ID": APP,
           "CRMSYNC_EXCHANGE_CLIENT_SECRET_ENV": SECRET_ENV, SECRET_ENV: SECRET,
           "CRMSYNC_EXCHANGE_AUTHORITY": emu.base_url, "CRMSYNC_EXCHANGE_GRAPH_URL": emu.graph_base}
    name = f"Absent {uuid.uuid4().hex[:6]}"
    path = emu.data_dir / "absent.toml"
    path.write_text(f'[exchange]\napi = "graph"\n[[mailbox]]\naddress = "{ALICE}"\nfolder = "{name}/CRM"\n'
                    'create_folder = false\n')
    container = Container(load_settings(str(path), env=env))
    try:
        with pytest.raises(MailboxUnavailable) as excinfo:
            container.exchange_feed(ALICE)
        assert excinfo.value.mailbox == ALICE
        assert ALICE in str(excinfo.value) and f"{name}/CRM" in str(excinfo.value)
        assert "create_folder" in str(excinfo.value)
        with pytest.raises(MailboxUnavailable):
            container.exchange_side(ALICE)
        with pytest.raises(MailboxUnavailable):               # nothing was created on the way
            open_folder(container.graph_client(), ALICE, name, create=False)
        made = open_folder(container.graph_client(), ALICE, f"{name}/CRM")   # the user creates it
        assert container.graph_folder(ALICE) == made                          # retried: now it opens
    finally:
        container.dispose()


def test_the_token_is_fetched_once_and_reused(graph_emulator):
    emu, ca = graph_emulator
    emu.reset_stats()
    c = connect(graph_settings(emu), verify=ca_context(ca))
    try:
        side = GraphExchange(c, ALICE, open_folder(c, ALICE, f"Token {uuid.uuid4().hex[:6]}"))
        for i in range(3):
            side.create(f"account:TK{i}", {"first_name": f"T{i}"})
        assert side.find_by_crm_key("account:TK2").record.first_name == "T2"
    finally:
        c.close()
    stats = emu.stats()
    assert stats.get("graph:token") == 1 and c.requests_sent >= 5


def test_concurrent_batches_and_reads_share_the_mailbox_limit(graph_side, graph_emulator):
    """A $batch runs its requests in parallel on the mailbox: it counts for as many slots."""
    emu, _ = graph_emulator
    one = graph_side.create("account:ONE", {"first_name": "One"})
    emu.inject_fault("graph:create contact", "delay", count=40, delay_ms=100)
    emu.inject_fault("graph:get contact", "delay", count=4, delay_ms=100)
    emu.reset_stats()
    jobs = [lambda n=n: graph_side.create_many([(f"account:PB{n}-{i}", {"first_name": "B"}) for i in range(20)])
            for n in range(2)] + [lambda: graph_side.read(one.item_id) for _ in range(4)]
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda job: job(), jobs))
    finally:
        emu.clear_faults()
    assert all(isinstance(r, ExchangeRecord) for batch in results[:2] for r in batch)
    assert all(r.record.first_name == "One" for r in results[2:])
    stats = emu.stats()
    assert stats.get("graph:create contact") == 40 and stats.get("graph:get contact") == 4   # none refused


def test_a_deleted_folder_reads_missing_over_graph(client, graph_side, folder_id) -> None:
    graph_side.create("account:GONE", {"first_name": "Gone"})
    client.request("DELETE", f"users/{ALICE}/contactFolders/{quote(folder_id, safe='')}", where="test user")
    assert graph_side.folder_state() == "missing"


def test_hard_delete_is_refused_over_graph(graph_side) -> None:
    created = graph_side.create("account:HARD", {"first_name": "Hard"})
    with pytest.raises(ConfigError, match="hard-delete' is not supported over Graph"):
        graph_side.delete(created.item_id, created.change_key, hard=True)
    assert graph_side.read(created.item_id) is not None
