"""Typed Exchange settings for tests, built the way a deployment builds them: through
``load_settings`` from environment variables, so a test gets exactly the validation a real
configuration gets."""

from __future__ import annotations

from crmsync.config import ExchangeSettings, load_settings


def exchange_settings(endpoint: str, *, auth: str = "basic", username: str | None = None,
                      password: str | None = None, access: str = "delegate", verify_tls: bool = True,
                      max_wait: float = 5.0, timeout_s: float = 30.0) -> ExchangeSettings:
    env = {
        "CRMSYNC_EXCHANGE_ENDPOINT": endpoint,
        "CRMSYNC_EXCHANGE_AUTH": auth,
        "CRMSYNC_EXCHANGE_ACCESS": access,
        "CRMSYNC_EXCHANGE_VERIFY_TLS": "true" if verify_tls else "false",
        "CRMSYNC_EXCHANGE_MAX_WAIT_S": str(max_wait),
        "CRMSYNC_EXCHANGE_TIMEOUT_S": str(timeout_s),
        "CRMSYNC_SYNC_LEASE_TTL_S": str(2 * (2 * timeout_s + max_wait)),
    }
    if username is not None:
        env["CRMSYNC_EXCHANGE_USERNAME"] = username
    if password is not None:
        env["CRMSYNC_EXCHANGE_PASSWORD"] = password
    return load_settings(env=env).exchange
