"""Command line: python -m ews_emulator --host 127.0.0.1 --port 8443 --data DIR --user a@x:pw ..."""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ews_emulator",
        description="Exchange Web Services emulator for contacts (endpoint /EWS/Exchange.asmx), with a "
                    "Microsoft Graph v1.0 front door (/v1.0/users/{id}/contactFolders..., token service "
                    "/{tenant}/oauth2/v2.0/token) over the same store. "
                    "Admin API (loopback only): POST/DELETE /_emulator/faults, GET /_emulator/stats, "
                    "POST /_emulator/stats/reset.",
        epilog='example: python -m ews_emulator --port 8080 --data ./emu --user alice@example.com:secret '
               '--user svc@example.com:pw --impersonator svc@example.com; then '
               'curl -X POST localhost:8080/_emulator/faults -d \'{"operation": "CreateItem", '
               '"kind": "server_busy", "count": 1, "back_off_ms": 500}\'')
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    p.add_argument("--data", required=True, metavar="DIR", help="directory holding the SQLite store")
    p.add_argument("--user", action="append", default=[], metavar="ADDRESS:PASSWORD",
                   help="create a mailbox with Basic credentials (repeatable)")
    p.add_argument("--impersonator", action="append", default=[], metavar="ADDRESS[:MAILBOX,...]",
                   help="grant ApplicationImpersonation over every mailbox, or (ADDRESS:MAILBOX,...) only "
                        "over the listed ones, as a management scope does; others get "
                        "ErrorImpersonateUserDenied (repeatable)")
    p.add_argument("--delegate", action="append", default=[], metavar="OWNER:DELEGATE",
                   help="grant DELEGATE access to OWNER's mailbox (repeatable)")
    p.add_argument("--public-folders", action="store_true",
                   help="give the server a public folder tree (distinguished id publicfoldersroot) that every "
                        "mailbox may use; without it the root answers ErrorNoPublicFolderReplicaAvailable")
    p.add_argument("--no-auth", action="store_true", help="accept unauthenticated requests")
    p.add_argument("--mailbox", action="append", default=[], metavar="ADDRESS",
                   help="create a mailbox without credentials (for --no-auth; repeatable)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    p.add_argument("--graph-app", action="append", default=[], metavar="TENANT:CLIENT_ID:SECRET",
                   help="register a Graph app (client credentials) with Contacts.ReadWrite on every mailbox"
                        " (repeatable)")
    p.add_argument("--graph-app-cert", action="append", default=[], metavar="TENANT:CLIENT_ID:CERT_PEM",
                   help="register a Graph app whose credential is a certificate (PEM, public part): it signs a"
                        " client_assertion JWT with the private key (repeatable; several per app for rotation)")
    p.add_argument("--graph-app-scope", action="append", default=[], metavar="CLIENT_ID:MAILBOX",
                   help="limit a Graph app to the named mailboxes; others answer 403 (repeatable)")
    p.add_argument("--graph-token-lifetime", type=int, default=3599, metavar="SECONDS",
                   help="lifetime of issued Graph access tokens (default 3599)")
    p.add_argument("--graph-mailbox-concurrency", type=int, default=4, metavar="N",
                   help="concurrent Graph requests per app per mailbox before 429 ApplicationThrottled (default 4)")
    p.add_argument("--streaming-minute-seconds", type=float, default=None, metavar="SECONDS",
                   help="for tests: how long one minute of a GetStreamingEvents ConnectionTimeout lasts (default 60)")
    p.add_argument("--streaming-keepalive-seconds", type=float, default=None, metavar="SECONDS",
                   help="idle seconds before an open stream sends a keep-alive (default 30)")
    p.add_argument("--log-level", default="WARNING", help="Python logging level (default WARNING)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser().error("--tls-cert and --tls-key go together")
    if not args.user and not args.mailbox:
        parser().error("no mailbox: give --user ADDRESS:PASSWORD or --no-auth --mailbox ADDRESS")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import build_app

    try:
        emu = build_app(args.data, host=args.host, port=args.port, users=args.user,
                        impersonators=args.impersonator, delegates=args.delegate, no_auth=args.no_auth,
                        public_folders=args.public_folders,
                        mailboxes=args.mailbox, tls_cert=args.tls_cert, tls_key=args.tls_key,
                        graph_apps=args.graph_app, graph_app_scopes=args.graph_app_scope,
                        graph_token_lifetime=args.graph_token_lifetime,
                        graph_mailbox_concurrency=args.graph_mailbox_concurrency,
                        graph_app_certs=args.graph_app_cert)
    except ValueError as e:
        print(f"ews_emulator: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ews_emulator: cannot listen on {args.host}:{args.port} or use --data {args.data}: {e}",
              file=sys.stderr)
        return 2
    if args.streaming_minute_seconds:
        emu.streaming_minute_seconds = args.streaming_minute_seconds
    if args.streaming_keepalive_seconds:
        emu.streaming_keepalive_seconds = args.streaming_keepalive_seconds

    def on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        emu.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
