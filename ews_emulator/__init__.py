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
              tls_key: str | None = None) -> Emulator:
    """Create (and bind, but not yet serve) an emulator. ``users`` are ADDRESS:PASSWORD strings,
    ``delegates`` OWNER:DELEGATE strings; port 0 picks a free port (see ``.port``)."""
    from .server import Emulator, EmulatorConfig

    config = EmulatorConfig.from_args(users=list(users), impersonators=list(impersonators),
                                      delegates=list(delegates), no_auth=no_auth, mailboxes=list(mailboxes))
    return Emulator(config, data_dir, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)


def serve(data_dir: str | os.PathLike, **kwargs) -> None:
    """Build and serve in the foreground until interrupted (what ``python -m ews_emulator`` does)."""
    emu = build_app(data_dir, **kwargs)
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass


__all__ = ["build_app", "serve"]
