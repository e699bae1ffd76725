"""The seam between the emulator's HTTP/SOAP layer and its operations.

Each EWS operation is one handler registered by name; the server parses the envelope, resolves
who is calling and on whose mailbox, and calls the handler with the operation's request element.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
NSMAP = {"s": NS_SOAP, "m": NS_M, "t": NS_T}


def m(tag: str) -> str:
    """Clark name in the messages namespace."""
    return f"{{{NS_M}}}{tag}"


def t(tag: str) -> str:
    """Clark name in the types namespace."""
    return f"{{{NS_T}}}{tag}"


class EwsError(Exception):
    """An EWS ResponseCode (e.g. ErrorItemNotFound) for one response message.

    ``message_xml`` holds extra children for <m:MessageXml> (e.g. BackOffMilliseconds).
    """

    def __init__(self, code: str, text: str = "", message_xml: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {text}" if text else code)
        self.code = code
        self.text = text or code
        self.message_xml = message_xml or {}


@dataclass
class Context:
    """Everything a handler may use for one request."""

    store: Any                    # ews_emulator.store.Store
    caller: str | None            # the authenticated user's address (None with --no-auth)
    mailbox: str | None           # the mailbox acted on: impersonated user, or the caller
    request_version: str          # the RequestServerVersion the client sent
    app: Any = None               # the running emulator (subscriptions, faults, stats)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Streaming:
    """A handler result that the server writes as a chunked HTTP response: each element is
    the body content of one SOAP envelope, sent as soon as the iterator yields it."""

    chunks: Iterator[etree._Element]


Handler = Callable[[Context, etree._Element], "etree._Element | Streaming"]

OPERATIONS: dict[str, Handler] = {}


def operation(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` for the EWS operation ``name`` (the request element's local name)."""

    def register(handler: Handler) -> Handler:
        OPERATIONS[name] = handler
        return handler

    return register
