"""An Exchange Web Services emulator for contacts, driven by the unmodified exchangelib client.

Standalone: imports nothing else of crmsync. Start it with ``python -m ews_emulator`` or from code:

    emu = build_app(data_dir, users=["alice@example.com:secret"], port=0)
    port = emu.start()          # background thread; emu.url is the endpoint
    ...
    emu.stop()

Nothing happens at import time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Emulator


def build_app(data_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0,
              users: list[str] = (), impersonators: list[str] = (), delegates: list[str] = (),
              no_auth: bool = False, mailboxes: list[str] = (), tls_cert: str | None = None,
              tls_key: str | None = None, graph_apps: list[str] = (), graph_app_scopes: list[str] = (),
              graph_token_lifetime: int = 3599, graph_mailbox_concurrency: int = 4,
              public_folders: bool = False, graph_app_certs: list[str] = ()) -> Emulator:
    """Create (and bind, but not yet serve) an emulator. ``users`` are ADDRESS:PASSWORD strings,
    ``delegates`` OWNER:DELEGATE strings; port 0 picks a free port (see ``.port``). ``graph_apps``
    are TENANT:CLIENT_ID:SECRET app registrations for the Graph front door (Contacts.ReadWrite on
    every mailbox), ``graph_app_certs`` TENANT:CLIENT_ID:CERT_PEM_PATH the same with a certificate
    credential, ``graph_app_scopes`` CLIENT_ID:MAILBOX limits of an app to named mailboxes;
    ``public_folders`` gives the server a public folder tree every mailbox may use."""
    from .server import Emulator, EmulatorConfig

    config = EmulatorConfig.from_args(users=list(users), impersonators=list(impersonators),
                                      delegates=list(delegates), no_auth=no_auth, mailboxes=list(mailboxes),
                                      graph_apps=list(graph_apps), graph_app_scopes=list(graph_app_scopes),
                                      graph_token_lifetime=graph_token_lifetime,
                                      graph_mailbox_concurrency=graph_mailbox_concurrency,
                                      graph_app_certs=list(graph_app_certs))
    config.public_folders = public_folders
    return Emulator(config, data_dir, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)


def serve(data_dir: str | os.PathLike, **kwargs) -> None:
    """Build and serve in the foreground until interrupted (what ``python -m ews_emulator`` does)."""
    emu = build_app(data_dir, **kwargs)
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass


__all__ = ["build_app", "serve"]
