"""Connecting: Basic, NOAUTH, impersonation, delegation, denials, HTTPS, restart."""

from __future__ import annotations

import datetime
import urllib.error
import urllib.request

import pytest
from exchangelib import Contact
from exchangelib.errors import ErrorAccessDenied, ErrorImpersonateUserDenied, ErrorNonExistentMailbox, UnauthorizedError
from exchangelib.protocol import BaseProtocol, NoVerifyHTTPAdapter

from .conftest import IMPERSONATION, NOAUTH, make_account


def test_basic_auth_connects_and_reports_an_exchange_2016_build(account):
    assert account.version.build.major_version == 15
    assert account.version.api_version == "Exchange2016"
    assert account.contacts.name == "Contacts"
    assert account.trash.name == "Deleted Items"
    assert account.inbox.name == "Inbox"
    assert account.root.tois.name == "Top of Information Store"


def test_exchangelib_can_guess_basic_auth_from_the_401_challenge(emulator):
    from exchangelib import Account, Configuration, Credentials

    config = Configuration(service_endpoint=emulator.url, credentials=Credentials("bob@example.com", "secret2"))
    acc = Account("bob@example.com", config=config, autodiscover=False)
    assert acc.protocol.auth_type == "basic"
    assert acc.contacts.all().count() == 0


def test_missing_or_wrong_credentials_get_401_with_basic_challenge(emulator):
    req = urllib.request.Request(emulator.url, data=b"<x/>", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 401
    assert info.value.headers["WWW-Authenticate"].startswith("Basic realm=")
    with pytest.raises(UnauthorizedError):
        make_account(emulator, password="wrong").contacts.all().count()


def test_no_auth_mode_serves_the_listed_mailboxes(start_emulator):
    emu = start_emulator(users=[], impersonators=[], delegates=[], no_auth=True,
                         mailboxes=["carol@example.com", "dave@example.com"])
    carol = make_account(emu, user=None, mailbox="carol@example.com", auth_type=NOAUTH)
    Contact(folder=carol.contacts, display_name="No auth").save()
    assert [c.display_name for c in carol.contacts.all()] == ["No auth"]
    dave = make_account(emu, user=None, mailbox="dave@example.com", auth_type=NOAUTH)
    assert dave.contacts.all().count() == 0


def test_impersonation_acts_on_the_target_mailbox(emulator):
    as_alice = make_account(emulator, user="svc@example.com", mailbox="alice@example.com",
                            access_type=IMPERSONATION)
    Contact(folder=as_alice.contacts, display_name="Via svc").save()
    alice = make_account(emulator)
    assert [c.display_name for c in alice.contacts.all()] == ["Via svc"]


def test_impersonation_without_the_right_is_denied(emulator):
    bob_as_alice = make_account(emulator, user="bob@example.com", mailbox="alice@example.com",
                                access_type=IMPERSONATION)
    with pytest.raises(ErrorImpersonateUserDenied):
        bob_as_alice.contacts.all().count()


def test_scoped_impersonation_reaches_only_the_mailboxes_in_its_scope(start_emulator):
    emu = start_emulator(impersonators=["svc@example.com:bob@example.com"])
    bob = make_account(emu, user="svc@example.com", mailbox="bob@example.com", access_type=IMPERSONATION)
    assert bob.contacts.all().count() == 0
    alice = make_account(emu, user="svc@example.com", mailbox="alice@example.com", access_type=IMPERSONATION)
    with pytest.raises(ErrorImpersonateUserDenied):
        alice.contacts.all().count()


def test_impersonating_an_unknown_mailbox_fails(emulator):
    ghost = make_account(emulator, user="svc@example.com", mailbox="ghost@example.com",
                         access_type=IMPERSONATION)
    with pytest.raises(ErrorNonExistentMailbox):
        ghost.contacts.all().count()


def test_delegate_access_without_a_grant_is_denied(emulator):
    alice_on_bob = make_account(emulator, user="alice@example.com", mailbox="bob@example.com")
    with pytest.raises(ErrorAccessDenied):
        alice_on_bob.contacts.all().count()
    ghost = make_account(emulator, user="alice@example.com", mailbox="ghost@example.com")
    with pytest.raises(ErrorNonExistentMailbox):
        ghost.contacts.all().count()


def test_items_ids_and_changekeys_survive_a_restart(start_emulator):
    emu = start_emulator()
    acc = make_account(emu)
    c = Contact(folder=acc.contacts, display_name="Durable", given_name="Dora", birthday=datetime.date(1990, 1, 2))
    c.save()
    item_id, ck, folder_id = c.id, c.changekey, acc.contacts.id
    emu.restart()
    acc2 = make_account(emu)
    assert acc2.contacts.id == folder_id
    got = acc2.contacts.get(id=item_id)
    assert (got.display_name, got.given_name, got.changekey) == ("Durable", "Dora", ck)
    got.surname = "After"
    got.save(update_fields=["surname"])
    assert acc2.contacts.get(id=item_id).surname == "After"


def _self_signed(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_endpoint_with_a_generated_certificate(start_emulator, tmp_path):
    cert, key = _self_signed(tmp_path)
    emu = start_emulator(tls_cert=cert, tls_key=key)
    assert emu.url.startswith("https://")
    saved = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = NoVerifyHTTPAdapter
    try:
        acc = make_account(emu)
        Contact(folder=acc.contacts, display_name="Over TLS").save()
        assert [c.display_name for c in acc.contacts.all()] == ["Over TLS"]
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved


def test_an_unknown_request_version_is_refused_and_exchangelib_negotiates_down(emulator):
    from exchangelib import Account, Build, Configuration, Credentials, Version

    config = Configuration(service_endpoint=emulator.url, credentials=Credentials("alice@example.com", "secret1"),
                           auth_type="basic", version=Version(build=Build(15, 1), api_version="Exchange2099"))
    acc = Account("alice@example.com", config=config, autodiscover=False)
    assert acc.contacts.all().count() == 0
    assert acc.version.api_version != "Exchange2099"
