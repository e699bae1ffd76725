"""``crmsync flower``: Flower on crmsync's own Celery app, never open to the world by accident.

Basic-auth credentials come from the environment (``CRMSYNC_FLOWER_USER`` and
``CRMSYNC_FLOWER_PASSWORD``) and reach Flower through its own ``FLOWER_BASIC_AUTH`` variable, so
they never appear on a command line (``ps``). Without them Flower starts only with
``--insecure-no-auth`` and on a loopback address.
"""

from __future__ import annotations

import ipaddress
import os

import typer

from crmsync.errors import CrmsyncError

ENV_USER = "CRMSYNC_FLOWER_USER"
ENV_PASSWORD = "CRMSYNC_FLOWER_PASSWORD"


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower(
    port: int = typer.Option(5555, "--port", "-p", min=1, max=65535, help="port to listen on"),
    address: str = typer.Option("127.0.0.1", "--address", help="address to listen on (put a TLS reverse proxy in front)"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth",
                                          help="start without basic auth; only allowed on a loopback address"),
) -> None:
    """Start Flower (Celery monitoring) on crmsync's Celery app, with basic auth from
    CRMSYNC_FLOWER_USER / CRMSYNC_FLOWER_PASSWORD. Refuses to start without them unless
    --insecure-no-auth and a loopback --address."""
    from crmsync.cli.app import settings
    from crmsync.logging_setup import register_secret

    user, password = os.environ.get(ENV_USER, ""), os.environ.get(ENV_PASSWORD, "")
    if not (user and password):
        if not insecure_no_auth:
            raise CrmsyncError(f"Flower needs basic auth: set {ENV_USER} and {ENV_PASSWORD} "
                               "(or pass --insecure-no-auth with a loopback --address for a local look)")
        if not _loopback(address):
            raise CrmsyncError(f"--insecure-no-auth is only allowed on a loopback address, not {address!r}; "
                               f"set {ENV_USER} and {ENV_PASSWORD} to listen elsewhere")
    try:
        import flower as _flower  # noqa: F401 - the celery `flower` sub-command comes from this package
    except ImportError:
        raise CrmsyncError("Flower is not installed: pip install 'crmsync[ops]'") from None
    from workers.celery_app import create_app

    loaded = settings()
    if user and password:
        register_secret(password)
        os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    else:
        os.environ.pop("FLOWER_BASIC_AUTH", None)
    app = create_app(loaded)
    # Flower's inspector sends its ~10 inspect commands at once from a thread pool, each holding
    # a pooled broker connection: with crmsync's small pool (4, for the workers) the rest wait
    # on the pool, and at SIGTERM Flower hung on those threads (killed after 20 s in the tests).
    app.conf.broker_pool_limit = None
    app.start(argv=["flower", f"--port={port}", f"--address={address}"])
