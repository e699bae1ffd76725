"""Logging for every crmsync process: structlog in front, the stdlib ``logging`` behind it.

Why this shape: crmsync's own events are structured (``log.info("applied", event_id=7)``), while
Celery, kombu and exchangelib log through the stdlib. Both go through one ``ProcessorFormatter``
so that they share one format (console or JSON lines) and, above all, one redaction step: no
password, client secret, token or Authorization header reaches a log line, whoever logged it.

exchangelib's wire logging (loggers ``exchangelib.util`` and ``exchangelib.util.xml``, at DEBUG)
prints every request's headers — with Basic auth the ``Authorization`` header is base64 of
``user:password`` — and whole SOAP bodies, private contacts included. So:

* ``exchangelib`` is held at INFO even when crmsync logs at DEBUG; only the explicit switch
  ``[log] ews_wire = true`` (``CRMSYNC_LOG_EWS_WIRE=true``) turns the wire on;
* a filter on those two loggers (it runs before any handler, Celery's included) rewrites each
  record: ``Authorization``-style header values, registered secrets and URL passwords become
  ``***``, and every item in a SOAP body whose Sensitivity is not Normal keeps only its ids
  (once a mailbox uses ``only_categories``: every item not stamped with a CRM key, too);
* every line through crmsync's handler is redacted again (Authorization values included).

Nothing happens at import; a process calls :func:`configure_logging` once at start.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "***"

#: Keys whose values are always hidden, whatever they hold.
SECRET_KEY_PATTERN = re.compile(r"password|passwd|secret|token|authorization|api[_-]?key|credential", re.I)
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.I)
#: An (Proxy-)Authorization header's value in any rendering: "Authorization: Basic x",
#: "'Authorization': 'Bearer x'", "authorization=NTLM x" (scheme kept, credentials hidden).
_AUTH_HEADER = re.compile(
    r"""(?P<head>(?:proxy-)?authorization['"]?\s*[:=]\s*['"]?)(?P<scheme>[A-Za-z][A-Za-z0-9-]*\s+)?[^\s'",}]+""",
    re.I,
)
WIRE_LOGGERS = ("exchangelib.util", "exchangelib.util.xml")
_MIN_SUBSTRING = 4  # shorter secrets are only redacted where a whole value equals them

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_HANDLER_MARK = "_crmsync_handler"


def register_secret(value: str | None) -> None:
    """Hide this exact string wherever it appears in a log event from now on (e.g. a password
    read from the environment)."""
    if value:
        with _secrets_lock:
            _secrets.add(value)


def redact_text(text: str) -> str:
    """``text`` with registered secrets and URL passwords replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if text == secret:
            return REDACTED
        if len(secret) >= _MIN_SUBSTRING and secret in text:
            text = text.replace(secret, REDACTED)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group('head')}{m.group('scheme') or ''}{REDACTED}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)


_ITEM_ELEMENT = re.compile(r"<(?P<tag>t:(?:Contact|Item|Message|DistributionList|CalendarItem|Task))\b[^>]*>.*?</(?P=tag)>", re.S)
_SENSITIVITY = re.compile(r"<t:Sensitivity>\s*(?P<value>[^<\s]*)\s*</t:Sensitivity>")
_ITEM_IDS = re.compile(r"<t:(?:ItemId|ParentFolderId)\b[^>]*/>")


_HIDE_UNSTAMPED = [False]
_STAMP_NAME = "crmsync-crm-key"   # the stamp's PropertyName (crmsync.adapters.exchange.ews.side)


def hide_unstamped_items() -> None:
    """From now on the wire redaction also hides every item not stamped with a CRM key: a mailbox
    uses ``only_categories``, so a Normal contact may be one that is kept out of the sync."""
    _HIDE_UNSTAMPED[0] = True


def redact_private_items(xml: str) -> str:
    """A SOAP body with every item whose Sensitivity is not Normal reduced to its ids (a private
    contact's fields never reach a log, not even on the wire switch); after
    :func:`hide_unstamped_items`, every item without our stamp too."""
    def hide(m: re.Match[str]) -> str:
        sensitivity = _SENSITIVITY.search(m.group(0))
        if sensitivity is not None and sensitivity.group("value") != "Normal":
            why = f"{sensitivity.group('value')} item"
        elif _HIDE_UNSTAMPED[0] and _STAMP_NAME not in m.group(0):
            why = "unstamped item (only_categories)"
        else:
            return m.group(0)
        ids = "".join(_ITEM_IDS.findall(m.group(0)))
        return f"<{m.group('tag')}>{ids}<!-- {why}: fields hidden --></{m.group('tag')}>"
    return _ITEM_ELEMENT.sub(hide, xml)


class _WireFilter(logging.Filter):
    """On exchangelib's wire loggers: render the record once and redact it (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - an unformattable record: drop its arguments
            message = str(record.msg)
        if isinstance(record.args, Mapping):
            # exchangelib logs bytes bodies through %(xml_request)s: decode them for redaction
            rendered = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
                        for k, v in record.args.items()}
            try:
                message = str(record.msg) % rendered
            except (TypeError, ValueError, KeyError):
                pass
        record.msg = redact_text(redact_private_items(message))
        record.args = None
        return True


_WIRE_FILTER = _WireFilter()


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (REDACTED if _secret_key(k) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if type(value) is tuple:
        return tuple(_redact_value(v) for v in value)
    return value


def _secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY_PATTERN.search(key))


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: hide values under secret-looking keys and any registered secret."""
    for key, value in list(event_dict.items()):
        if _secret_key(key) and value is not None:
            event_dict[key] = REDACTED
        elif key not in ("_record", "_from_structlog"):
            event_dict[key] = _redact_value(value)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def wants_json(stream: TextIO) -> bool:
    """JSON lines unless a person is reading: a terminal gets the console format, a pipe, file,
    journald or docker log gets one JSON object per line."""
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return True


def configure_logging(level: str = "INFO", json: bool | None = False, *, stream: TextIO | None = None,
                      quiet_loggers: Iterable[str] = ("exchangelib", "alembic"), ews_wire: bool = False) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) at ``level``, rendered as JSON
    lines or for a console, with secrets redacted. Safe to call again (it replaces its handler).

    ``json=None`` chooses by the stream: JSON lines when it is not a terminal (:func:`wants_json`).
    ``quiet_loggers`` are held at WARNING, or at INFO when ``level`` is DEBUG. exchangelib's wire
    loggers log at DEBUG only with ``ews_wire`` (``[log] ews_wire``), and always redacted."""
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared = _shared_processors()
    target = stream if stream is not None else sys.stderr
    if json is None:
        json = wants_json(target)
    renderer: Any = (
        structlog.processors.JSONRenderer(default=str) if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, redact_secrets],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact_secrets,  # again, after exc_info became text
            renderer,
        ],
    )
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(logging.INFO if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    for name in WIRE_LOGGERS:
        wire = logging.getLogger(name)
        wire.setLevel(logging.DEBUG if ews_wire else logging.NOTSET)  # NOTSET: exchangelib's level
        if _WIRE_FILTER not in wire.filters:
            wire.addFilter(_WIRE_FILTER)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            redact_secrets,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    """A structlog logger (thin alias so callers need not import structlog)."""
    return structlog.get_logger(name)
