"""The broker boundary: connecting to RabbitMQ, for the worker and the SDK alike.

One place for what both sides need: TLS from the ``EXECBUS_AMQP_*_FILE``
settings, URLs with their passwords redacted, and aio-pika/aiormq failures
translated into :class:`~execbus.errors.BrokerUnavailable` (retry later) or
:class:`~execbus.errors.BrokerRefused` (credentials, vhost or permissions:
retrying will not help).

It also makes the AMQP frame decoder tolerant of one kind of garbage any
publisher can send: short strings (``message_id``, ``type``,
``correlation_id``, ``reply_to``, header names) that are not UTF-8. pamqp
raises on them while decoding the frame, and aiormq then drops the whole
connection (every channel, every consumer) for one message. Decoded with
U+FFFD replacement instead, the message arrives, and the consumer refuses it
as invalid (:func:`undecodable_property`).
"""

from __future__ import annotations

import contextlib
import ssl
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq import exceptions as amqp_errors
from pamqp import common, decode

from execbus.errors import BrokerRefused, BrokerUnavailable, ConfigError

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0
REPLACEMENT = "\ufffd"


# -- URLs ------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}{port}"))


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from ``text`` (third-party messages may echo it)."""
    with contextlib.suppress(ValueError):
        password = urlsplit(url).password
        if password:
            return text.replace(password, "***")
    return text


# -- TLS ---------------------------------------------------------------------


def broker_tls_context(
    url: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext | None:
    """The TLS context for an ``amqps://`` broker URL, or None to use aio-pika's default.

    aio-pika's default for ``amqps://`` verifies the broker against the system
    trust store (or the URL's ``?cafile=``/``certfile=``/``keyfile=``). With
    a CA, certificate or key file given this builds the context instead: it
    verifies the broker's certificate and host name, and presents the client
    certificate (broker mTLS, e.g. RabbitMQ's EXTERNAL auth).
    """
    if ca_file is None and cert_file is None and key_file is None:
        return None
    if not url.startswith("amqps://"):
        raise ConfigError(
            "EXECBUS_AMQP_CA_FILE/CERT_FILE/KEY_FILE need an amqps:// URL (TLS to the broker)"
        )
    return tls_context("broker", ca_file, cert_file, key_file)


def tls_context(
    peer: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2+) verifying ``peer``; :class:`ConfigError` on bad files."""
    if key_file is not None and cert_file is None:
        raise ConfigError(f"a {peer} TLS key file needs its certificate file too")
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the {peer} TLS files: {exc}") from exc
    return ctx


# -- connecting ----------------------------------------------------------------


def connect_error(exc: BaseException, url: str) -> BrokerUnavailable:
    """What a failed connection attempt means, naming the broker (never its password)."""
    where = f"the broker at {redact_url(url)}"
    if isinstance(exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        reason = scrub(str(exc.args[0] if exc.args else exc), url)
        return BrokerRefused(f"{where} refused our credentials ({reason})")
    close = exc.args[0] if isinstance(exc, amqp_errors.InvalidFrameError) and exc.args else None
    if isinstance(exc, amqp_errors.ConnectionNotAllowed) or hasattr(close, "reply_text"):
        text = getattr(close, "reply_text", None) or str(exc)
        return BrokerRefused(f"{where} refused the connection ({scrub(str(text), url)})")
    reason = scrub(str(exc) or type(exc).__name__, url)
    return BrokerUnavailable(f"cannot connect to {where}: {reason}")


async def connect_plain(
    url: str, *, name: str, tls: ssl.SSLContext | None = None, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A plain connection (the worker manages its own reconnects)."""
    try:
        return await aio_pika.connect(
            url, ssl_context=tls, timeout=timeout, client_properties={"connection_name": name}
        )
    except Exception as exc:  # aio-pika raises a wide family (OSError, AMQP errors, timeouts)
        raise connect_error(exc, url) from exc


async def connect_robust(
    url: str, *, name: str = "execbus-client", tls: ssl.SSLContext | None = None
) -> AbstractRobustConnection:
    """A robust connection (the SDK's); it reconnects by itself after the first one."""
    try:
        target = make_url(url)
        # Reconnect sooner than aio-pika's 5 s default, unless the URL says otherwise.
        interval = None if "reconnect_interval" in target.query else RECONNECT_INTERVAL
        kwargs: dict[str, Any] = {"client_properties": {"connection_name": name}}
        if tls is not None:
            kwargs["ssl_context"] = tls
        connection = RobustConnection(target, reconnect_interval=interval, **kwargs)
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid broker URL {redact_url(url)}: {exc}") from None
    try:
        await connection.connect(timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        # connect_robust() would leave the failed connection to __del__, which
        # schedules its close on a loop that may be gone: close it here.
        with contextlib.suppress(Exception):
            await connection.close()
        raise connect_error(exc, url) from exc
    return connection


# -- frames that are not UTF-8 -------------------------------------------------


def undecodable_property(message: AbstractIncomingMessage) -> str | None:
    """The name of a short-string property or header name that was not UTF-8, if any."""
    for name in ("message_id", "correlation_id", "reply_to", "type", "user_id", "app_id"):
        value = getattr(message, name, None)
        if isinstance(value, str) and REPLACEMENT in value:
            return name
    if any(REPLACEMENT in key for key in (message.headers or {})):
        return "a header name"
    return None


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err
    return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def _field_table(value: bytes) -> tuple[int, common.FieldTable]:
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset, data, end = 4, {}, 4 + length
        if end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "replace")
            offset += key_length
            consumed, result = decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def _tolerate_non_utf8_short_strings() -> None:
    decode.short_str = _short_str
    decode.field_table = _field_table
    decode.METHODS["shortstr"] = _short_str
    decode.METHODS["table"] = _field_table
    decode.TABLE_MAPPING[b"F"] = _field_table


_tolerate_non_utf8_short_strings()
