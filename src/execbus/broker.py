"""The broker boundary: connecting to RabbitMQ, for the worker and the SDK alike.

One place for what both sides need: TLS from the ``EXECBUS_AMQP_*_FILE``
settings, URLs with their passwords redacted, and aio-pika/aiormq failures
translated into :class:`~execbus.errors.BrokerUnavailable` (retry later) or
:class:`~execbus.errors.BrokerRefused` (credentials, vhost or permissions:
retrying will not help).

A RabbitMQ cluster is given as several node URLs, comma-separated
(``EXECBUS_AMQP_URL=amqp://u:p@mq1/,amqp://u:p@mq2/``): a process starts on
one picked at random and, when it loses it, reconnects to the next that
answers.

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
import random
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
from yarl import URL

from execbus.errors import BrokerRefused, BrokerUnavailable, ConfigError

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0
REPLACEMENT = "\ufffd"


# -- URLs ------------------------------------------------------------------


def urls_of(value: str) -> list[str]:
    """The node URLs of an ``EXECBUS_AMQP_URL`` (one, or several comma-separated)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def redact_url(url: str) -> str:
    """``url`` (or each of several) with its password replaced by ``***``."""
    if "," in url:
        return ",".join(redact_url(part) for part in urls_of(url))
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
    """Remove the URL's (or URLs') password from ``text`` (third-party messages may echo it)."""
    for part in urls_of(url):
        with contextlib.suppress(ValueError):
            password = urlsplit(part).password
            if password:
                text = text.replace(password, "***")
    return text


# -- errors ------------------------------------------------------------------


def broker_reason(exc: BaseException) -> str:
    """One line for an aio-pika/aiormq failure, never a repr: the broker's reply text
    when it sent one (``ACCESS_REFUSED - write access to exchange ...``), else the
    error's own words (``[Errno 111] Connection refused``, ``the channel is closed``).

    aiormq keeps what the broker said in the exception's ``args``: the reply text
    (a refusal: ``ChannelAccessRefused``, ``ChannelNotFoundEntity``, ...), a
    ``(reply_code, reply_text)`` pair (``ChannelClosed``, ``ConnectionClosed``),
    the ``Connection.Close`` frame itself (``InvalidFrameError`` while
    connecting), or a nacked or returned publish (``DeliveryError``).
    """
    if isinstance(exc, amqp_errors.DeliveryError):
        return _delivery_reason(exc)
    if isinstance(exc, amqp_errors.ChannelInvalidStateError):
        text = str(exc)  # often "<Channel ...> closed"
        return "the channel is closed" if not text or "<" in text else _one_line(text)
    if not isinstance(exc, amqp_errors.AMQPError):
        return _one_line(str(exc)) or type(exc).__name__
    text = "; ".join(words for words in map(_arg_words, exc.args) if words)
    return _one_line(text) if text else _library_words(exc)


def _arg_words(arg: object) -> str:
    """What one argument of an AMQP error says: a text, a nested error, a close frame's text."""
    if isinstance(arg, BaseException):
        return broker_reason(arg)
    if isinstance(arg, str):
        return arg
    reply = getattr(arg, "reply_text", None)  # a pamqp Connection.Close or Channel.Close
    return str(reply) if reply else ""


def _library_words(exc: amqp_errors.AMQPError) -> str:
    """No text from the broker: say what closed (and the reply code), or the library's sentence."""
    codes = [arg for arg in exc.args if isinstance(arg, int) and not isinstance(arg, bool)]
    code = f" (reply code {codes[0]})" if codes else ""
    if isinstance(exc, amqp_errors.ChannelClosed):
        return f"the channel was closed{code}"
    if isinstance(exc, amqp_errors.ConnectionClosed):
        return f"the connection was closed{code}"
    with contextlib.suppress(TypeError, ValueError):
        return _one_line(exc.reason % exc.args)
    return type(exc).__name__


def _delivery_reason(exc: amqp_errors.DeliveryError) -> str:
    """A publish the broker returned (its reply text: ``NO_ROUTE``) or did not confirm."""
    if isinstance(exc, amqp_errors.PublishError):
        return _one_line(str(exc.args[0])) if exc.args and exc.args[0] else "returned"
    name = getattr(exc.frame, "name", "")  # a pamqp method: "Basic.Nack"
    return "nacked by the broker" if name == "Basic.Nack" else f"not confirmed ({name or '?'})"


def _one_line(text: str) -> str:
    return " ".join(text.split())


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


#: How aiormq 7 words a Connection.Close received where Connection.OpenOk was due.
HANDSHAKE_CLOSE = "got <Connection.Close"


def connect_error(exc: BaseException, url: str) -> BrokerUnavailable:
    """What a failed connection attempt means, naming the broker (never its password)."""
    where = f"the broker at {redact_url(url)}"
    reason = scrub(broker_reason(exc), url)
    if isinstance(exc, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        return BrokerRefused(f"{where} refused our credentials ({reason})")
    close = exc.args[0] if isinstance(exc, amqp_errors.InvalidFrameError) and exc.args else None
    if isinstance(exc, amqp_errors.ConnectionNotAllowed) or hasattr(close, "reply_text"):
        return BrokerRefused(f"{where} refused the connection ({reason})")
    if isinstance(close, str) and HANDSHAKE_CLOSE in close:
        # aiormq 7 formats the broker's Close at Connection.Open into a string and
        # loses its reply text; RabbitMQ closes there for a virtual host that does not
        # exist or that the user may not access.
        return BrokerRefused(
            f"{where} refused the connection (closed at Connection.Open: "
            "a virtual host that does not exist, or no access to it)"
        )
    return BrokerUnavailable(f"cannot connect to {where}: {reason}")


async def connect_plain(
    url: str, *, name: str, tls: ssl.SSLContext | None = None, timeout: float = CONNECT_TIMEOUT
) -> AbstractConnection:
    """A plain connection (the worker manages its own reconnects) to one of the nodes of
    ``url``, tried in a random order; the last node's error when none answers."""
    nodes = urls_of(url)
    random.shuffle(nodes)
    error: BrokerUnavailable | None = None
    for node in nodes:
        try:
            return await aio_pika.connect(
                node, ssl_context=tls, timeout=timeout, client_properties={"connection_name": name}
            )
        except Exception as exc:  # aio-pika raises a wide family (OSError, AMQP errors, ...)
            error = connect_error(exc, node)
            if isinstance(error, BrokerRefused):
                raise error from exc  # the same users on every node: no point going on
    assert error is not None, "an AMQP URL names at least one node"
    raise error


async def connect_robust(
    url: str, *, name: str = "execbus-client", tls: ssl.SSLContext | None = None
) -> AbstractRobustConnection:
    """A robust connection (the SDK's); it reconnects by itself after the first one."""
    try:
        nodes = [make_url(node) for node in urls_of(url)]
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid broker URL {redact_url(url)}: {exc}") from None
    random.shuffle(nodes)
    # Reconnect sooner than aio-pika's 5 s default, unless the URL says otherwise.
    interval = None if "reconnect_interval" in nodes[0].query else RECONNECT_INTERVAL
    kwargs: dict[str, Any] = {"client_properties": {"connection_name": name}}
    if tls is not None:
        kwargs["ssl_context"] = tls
    error: BrokerUnavailable | None = None
    for first in range(len(nodes)):  # the first connection fails fast: try each node
        order = nodes[first:] + nodes[:first]
        connection: RobustConnection = (
            RobustConnection(order[0], reconnect_interval=interval, **kwargs)
            if len(nodes) == 1
            else NodesRobustConnection(order, reconnect_interval=interval, **kwargs)
        )
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            # connect_robust() would leave the failed connection to __del__, which
            # schedules its close on a loop that may be gone: close it here.
            with contextlib.suppress(Exception):
                await connection.close()
            error = connect_error(exc, str(order[0]) if len(nodes) > 1 else url)
            if isinstance(error, BrokerRefused):
                break
            continue
        return connection
    assert error is not None, "an AMQP URL names at least one node"
    raise error


class NodesRobustConnection(RobustConnection):
    """aio-pika's robust connection over several cluster nodes.

    aio-pika reconnects to ``self.url`` only. Here ``url`` names the node of the
    current attempt: while the connection is down, every connection attempt
    (which reads ``url`` once) moves on to the next node, so a client whose node
    died reconnects to another that answers. ``__str__``/``__repr__`` (log
    lines) name the current node without moving on.
    """

    def __init__(self, nodes: list[URL], **kwargs: Any) -> None:
        self._nodes = nodes
        self._node = -1  # the first attempt moves to node 0
        super().__init__(nodes[0], **kwargs)

    @property
    def url(self) -> URL:
        connected = getattr(self, "connected", None)
        if connected is not None and not connected.is_set():
            self._node = (self._node + 1) % len(self._nodes)
        return self._nodes[max(self._node, 0)]

    @url.setter
    def url(self, value: URL) -> None:
        """Set by aio-pika's ``__init__`` (and ``update_secret``): the node list rules."""

    def __str__(self) -> str:
        node = self._nodes[max(self._node, 0)]
        return str(node.with_password("******") if node.password else node)


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
