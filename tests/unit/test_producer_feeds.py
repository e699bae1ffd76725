"""The producer's Exchange feeds: only a feed that has a doorbell offers one (a Graph mailbox's
delta feed has none, so its producer polls; it used to be offered one that raised AttributeError
on every ring)."""

from __future__ import annotations

from types import SimpleNamespace

from crmsync.cli.processes import producer_feeds
from crmsync.config import load_settings


def test_only_ews_mailboxes_get_a_doorbell(tmp_path):
    config = tmp_path / "crmsync.toml"
    config.write_text("""
[crm]
url = "sqlite:///crm.db"
[exchange]
endpoint = "https://ex.example.com/EWS/Exchange.asmx"
auth = "noauth"
tenant_id = "contoso.onmicrosoft.com"
client_id = "app"
client_secret_env = "UNIT_GRAPH_SECRET"
[[mailbox]]
address = "ews@example.com"
folder = "CRM"
[[mailbox]]
address = "graph@example.com"
folder = "CRM"
api = "graph"
""")
    settings = load_settings(str(config), env={})
    feeds = producer_feeds(SimpleNamespace(settings=settings))
    assert set(feeds) == {"ews@example.com", "graph@example.com"}
    assert callable(getattr(feeds["ews@example.com"], "wait_for_change", None))
    assert getattr(feeds["graph@example.com"], "wait_for_change", None) is None
    assert callable(feeds["graph@example.com"].changes)
