"""The Exchange side through Microsoft Graph (Exchange Online): httpx + msal, app-only.

- ``client.GraphClient``: one app's token (msal client credentials, cached) and its HTTP calls,
  with throttling (429/503 + Retry-After), a per-mailbox concurrency limit and ``$batch``
- ``connect``: a client from ``ExchangeSettings`` and the mailbox's sync folder (created if allowed)
- ``side.GraphExchange``: the ``ExchangeSide`` port
- ``feed.GraphFeed``: the change feed from ``contacts/delta`` (the deltaLink is the sync state)
- ``mapping``: canonical <-> Graph contact JSON, pure

Nothing is imported here, so importing the package loads no client library and opens nothing.
"""
