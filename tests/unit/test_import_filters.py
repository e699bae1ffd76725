"""Exchange -> CRM filters per mailbox (issue 9): ``private_sensitivities`` overridable per
``[[mailbox]]`` and ``only_categories``. A contact kept out reads as private with an empty record
(so nothing of it can reach the CRM, the state database or a log line); the e2e proof is
tests/e2e/test_import_filters_e2e.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from exchangelib import Contact

from crmsync.adapters.exchange.contact_rules import kept_out
from crmsync.adapters.exchange.ews.side import CRM_KEY_ATTR, EwsExchange
from crmsync.config import load_settings
from crmsync.errors import ConfigError
from schemas.canonical import CanonicalContact

PRIVATE = frozenset({"Private"})


def write(tmp_path, text: str) -> str:
    path = tmp_path / "crmsync.toml"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ config
def test_private_sensitivities_and_only_categories_take_their_sync_defaults_per_mailbox(tmp_path):
    s = load_settings(write(tmp_path, """
[sync]
private_sensitivities = ["Private", "Personal"]
only_categories = ["CRM"]
[[mailbox]]
address = "a@example.com"
[[mailbox]]
address = "b@example.com"
private_sensitivities = ["Confidential"]
only_categories = [" Customers ", "Partners"]
"""), env={})
    a, b = s.effective("a@example.com"), s.effective("b@example.com")
    assert (a.private_sensitivities, a.only_categories) == (("Private", "Personal"), ("CRM",))
    assert (b.private_sensitivities, b.only_categories) == (("Confidential",), ("Customers", "Partners"))
    default = load_settings(write(tmp_path, '[[mailbox]]\naddress = "a@example.com"\n'), env={})
    assert (default.effective("a@example.com").private_sensitivities,
            default.effective("a@example.com").only_categories) == (("Private",), ())


@pytest.mark.parametrize("text, expect", [
    ('[[mailbox]]\naddress = "a@example.com"\nprivate_sensitivities = ["Normal"]\n',
     "config key mailbox[0].private_sensitivities[0]: must be one of Personal, Private, Confidential "
     "(got 'Normal') (mailbox a@example.com)"),
    ('[[mailbox]]\naddress = "a@example.com"\nprivate_sensitivities = ["Secret"]\n',
     "mailbox[0].private_sensitivities[0]: must be one of Personal, Private, Confidential"),
    ('[sync]\nprivate_sensitivities = ["Normal"]\n', "sync.private_sensitivities[0]: must be one of Personal"),
    ('[[mailbox]]\naddress = "a@example.com"\nonly_categories = ["CRM", " "]\n',
     "config key mailbox[0].only_categories: an empty category name matches no contact"),
    ('[sync]\nonly_categories = "CRM"\n', "config key sync.only_categories: must be a list"),
])
def test_bad_filter_values_name_the_key_and_the_mailbox(tmp_path, text, expect):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    assert expect in str(info.value)


def test_the_environment_sets_the_sync_defaults(tmp_path):
    s = load_settings(write(tmp_path, '[[mailbox]]\naddress = "a@example.com"\n'),
                      env={"CRMSYNC_SYNC_ONLY_CATEGORIES": "CRM,Sales", "CRMSYNC_SYNC_PRIVATE_SENSITIVITIES": "Personal"})
    assert s.effective("a@example.com").only_categories == ("CRM", "Sales")
    assert s.effective("a@example.com").private_sensitivities == ("Personal",)


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize("sensitivity, categories, stamped, only, out", [
    ("Normal", None, False, (), False),                       # no filter: everything is read
    ("Private", None, False, (), True),                       # the sensitivity set
    ("Private", ["CRM"], True, ("CRM",), True),               # ... wins over stamp and categories
    ("Personal", None, False, (), False),                     # not in the set
    ("Normal", None, False, ("CRM",), True),                  # no category at all
    ("Normal", ["Family"], False, ("CRM",), True),            # only other categories
    ("Normal", ["Family", "CRM"], False, ("CRM", "Sales"), False),
    ("Normal", ["crm"], False, ("CRM",), True),               # names compare exactly
    ("Normal", None, True, ("CRM",), False),                  # stamped by crmsync: keeps syncing
])
def test_kept_out(sensitivity, categories, stamped, only, out):
    assert kept_out(sensitivity, categories, stamped, PRIVATE, frozenset(only)) is out


def test_the_ews_side_reads_a_kept_out_contact_as_an_empty_private_record():
    side = EwsExchange(SimpleNamespace(primary_smtp_address="a@example.com"), object(),
                       private_sensitivities={"Private", "Confidential"}, only_categories={"CRM"})

    def contact(**kw) -> Contact:
        return Contact(id=f"id-{len(kw)}", changekey="ck", given_name="Marker", surname="Person", **kw)
    shown = side._record(contact(sensitivity="Normal", categories=["CRM", "Mine"]))
    assert not shown.private and shown.record.first_name == "Marker"
    for item in (contact(sensitivity="Normal", categories=["Family"]), contact(sensitivity="Confidential",
                 categories=["CRM"]), contact(sensitivity="Normal")):
        rec = side._record(item)
        assert rec.private and rec.record == CanonicalContact(), item
        side._remember(item)
        assert side._take(item.id) is None                   # never cached either
    stamped = contact(sensitivity="Normal")
    setattr(stamped, CRM_KEY_ATTR, "account:A-1")
    assert not side._record(stamped).private


def test_the_container_gives_each_mailbox_its_own_filters(tmp_path, monkeypatch):
    from crmsync import logging_setup
    from crmsync.adapters.exchange.ews import connect as ews
    from crmsync.bootstrap import Container

    monkeypatch.setattr(logging_setup, "_HIDE_UNSTAMPED", [False])
    monkeypatch.setattr(ews, "connect", lambda exchange, address: SimpleNamespace(primary_smtp_address=address))
    monkeypatch.setattr(ews, "open_folder", lambda account, path, create=True, **_: object())
    s = load_settings(write(tmp_path, '[sync]\nonly_categories = ["CRM"]\n[[mailbox]]\naddress = "a@example.com"\n'
                                      '[[mailbox]]\naddress = "b@example.com"\nprivate_sensitivities = '
                                      '["Private", "Personal"]\nonly_categories = []\n'), env={})
    c = Container(s)
    a, b = c.exchange_side("a@example.com"), c.exchange_side("b@example.com")
    assert (a.private_sensitivities, a.only_categories) == ({"Private"}, {"CRM"})
    assert (b.private_sensitivities, b.only_categories) == ({"Private", "Personal"}, frozenset())
    assert logging_setup._HIDE_UNSTAMPED == [True]      # the EWS wire log hides unstamped items now


WIRE = ('<m:Items><t:Contact><t:ItemId Id="AAA1" ChangeKey="c1"/><t:GivenName>KeptOutZq</t:GivenName>'
        '<t:Sensitivity>Normal</t:Sensitivity></t:Contact>'
        '<t:Contact><t:ItemId Id="AAA2" ChangeKey="c2"/><t:ExtendedProperty><t:ExtendedFieldURI '
        'PropertySetId="x" PropertyName="crmsync-crm-key" PropertyType="String"/><t:Value>account:A-1</t:Value>'
        '</t:ExtendedProperty><t:GivenName>SyncedZq</t:GivenName><t:Sensitivity>Normal</t:Sensitivity>'
        '</t:Contact></m:Items>')


def test_with_only_categories_the_wire_log_hides_every_unstamped_item(monkeypatch):
    from crmsync import logging_setup

    monkeypatch.setattr(logging_setup, "_HIDE_UNSTAMPED", [False])
    assert "KeptOutZq" in logging_setup.redact_private_items(WIRE)
    logging_setup.hide_unstamped_items()
    shown = logging_setup.redact_private_items(WIRE)
    assert "KeptOutZq" not in shown and 'Id="AAA1"' in shown and "SyncedZq" in shown


def test_the_graph_side_applies_the_same_rule():
    from crmsync.adapters.exchange.graph import mapping
    from crmsync.adapters.exchange.graph.side import GraphExchange

    side = GraphExchange(object(), "a@example.com", "folder-1", private_sensitivities={"Private"},  # type: ignore[arg-type]
                         only_categories={"CRM"})

    def contact(sensitivity: int = 0, categories: list[str] | None = None, stamp: str | None = None) -> dict:
        props = [{"id": mapping.SENSITIVITY_ID, "value": str(sensitivity)}]
        if stamp:
            props.append({"id": mapping.CRM_KEY_ID, "value": stamp})
        return {"id": "AAM=", "changeKey": "ck", "givenName": "Marker", "categories": categories or [],
                "singleValueExtendedProperties": props}
    assert not side._record(contact(categories=["CRM"])).private
    assert side._record(contact(categories=["CRM"])).record.first_name == "Marker"
    for kept_out_contact in (contact(categories=["Family"]), contact(), contact(2, ["CRM"])):
        rec = side._record(kept_out_contact)
        assert rec.private and rec.record == CanonicalContact()
    assert not side._record(contact(stamp="account:A-1")).private
