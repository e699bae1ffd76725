"""The Graph client's answer handling, against httpx's MockTransport (the emulator tests cover the
same paths over the wire; a token Graph refuses although msal still holds it is only reachable here)."""

from __future__ import annotations

import httpx
import pytest

from crmsync.adapters.exchange.graph.client import GraphClient
from crmsync.errors import BadRecord, ConfigError, Stale, Transient


def _client(handler, **kw) -> tuple[GraphClient, list[bool]]:
    c = GraphClient(tenant_id="t", client_id="app", credential="unused", graph_url="https://graph.test/v1.0", **kw)
    c.http = httpx.Client(base_url="https://graph.test/v1.0/", transport=httpx.MockTransport(handler))
    fresh_calls: list[bool] = []

    def token(*, fresh: bool = False) -> str:
        fresh_calls.append(fresh)
        return "token-2" if any(fresh_calls) else "token-1"
    c.token = token  # type: ignore[method-assign]
    return c, fresh_calls


def _error(status: int, code: str, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code} happened"}}, headers=headers)


def test_a_refused_token_is_fetched_again_once():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer token-1":
            return _error(401, "InvalidAuthenticationToken")
        return httpx.Response(200, json={"ok": True})
    c, fresh = _client(handler)
    assert c.request("GET", "users/a", where="w").json() == {"ok": True}
    assert seen == ["Bearer token-1", "Bearer token-2"] and True in fresh


def test_a_token_refused_twice_is_a_config_error():
    c, _ = _client(lambda request: _error(401, "InvalidAuthenticationToken"))
    with pytest.raises(ConfigError, match="tenant_id"):
        c.request("GET", "users/a", where="mailbox a: reading")


@pytest.mark.parametrize(("status", "code", "error"), [
    (412, "ErrorIrresolvableConflict", Stale), (403, "ErrorAccessDenied", ConfigError),
    (404, "ErrorInvalidUser", ConfigError), (400, "ErrorInvalidProperty", BadRecord),
    (500, "InternalServerError", Transient), (504, "GatewayTimeout", Transient),
])
def test_graph_errors_become_crmsync_errors_naming_where(status, code, error):
    c, _ = _client(lambda request: _error(status, code))
    with pytest.raises(error, match=f"mailbox a: reading.*{status}"):
        c.request("GET", "users/a", where="mailbox a: reading")


def test_every_request_asks_for_immutable_ids():
    c, _ = _client(lambda request: httpx.Response(200, json={"prefer": request.headers.get("Prefer")}))
    c.http.headers["Prefer"] = 'IdType="ImmutableId"'
    assert c.request("GET", "users/a", where="w").json() == {"prefer": 'IdType="ImmutableId"'}


def test_a_503_without_retry_after_waits_the_default_second_then_gives_up_with_it():
    calls = []

    def handler(request):
        calls.append(1)
        return _error(503, "ServiceUnavailable")
    c, _ = _client(handler, max_wait_s=0.5)
    with pytest.raises(Transient) as info:
        c.request("GET", "users/a", where="w")
    assert info.value.retry_after == 1.0 and len(calls) == 1


@pytest.mark.parametrize(("header", "expected"), [("86400", 300.0), ("-5", 0.1), ("0", 0.1), ("soon", 1.0),
                                                  ("2.5", 2.5)])
def test_a_retry_after_is_bounded_both_ways(header, expected):
    """A server's Retry-After becomes the Celery countdown: a day-long one must not park the
    events for a day (at most MAX_RETRY_AFTER seconds); and a 0 (or negative) one must not let
    the in-process retries spin for ever without using up max_wait_s."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return _error(429, "TooManyRequests", {"Retry-After": header})
    c, _ = _client(handler, max_wait_s=0.5)
    with pytest.raises(Transient) as info:
        c.request("GET", "users/a", where="w")
    assert info.value.retry_after == expected
    assert len(calls) <= 6


def test_a_429_pauses_the_mailbox_for_every_request_sharing_the_limiter():
    from crmsync.adapters.exchange.graph.limiter import LocalSlots

    limiter = LocalSlots(4, wait_s=0.2)
    c, _ = _client(lambda request: _error(429, "TooManyRequests", {"Retry-After": "30"}), limiter=limiter,
                   max_wait_s=0.1)
    with pytest.raises(Transient):
        c.request("GET", "users/a/contacts", where="w", mailbox="a@example.com")
    with pytest.raises(Transient, match="Retry-After") as info, limiter.hold("A@example.com"):
        pass
    assert 25 < info.value.retry_after <= 30
