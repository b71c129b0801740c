"""Connecting to RabbitMQ, with errors that name the broker (never its password)."""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit, urlunsplit

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url

from execbus.errors import BrokerUnavailable

CONNECT_TIMEOUT = 10.0
RECONNECT_INTERVAL = 1.0


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
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


async def connect(url: str, name: str = "execbus-client") -> AbstractRobustConnection:
    """A robust connection; :class:`BrokerUnavailable` naming the URL when it fails."""
    try:
        target = make_url(url)
        # Reconnect sooner than aio-pika's 5 s default, unless the URL says otherwise.
        interval = None if "reconnect_interval" in target.query else RECONNECT_INTERVAL
        connection = RobustConnection(
            target, client_properties={"connection_name": name}, reconnect_interval=interval
        )
    except ValueError as exc:
        raise BrokerUnavailable(f"invalid broker URL {redact_url(url)}: {exc}") from None
    try:
        await connection.connect(timeout=CONNECT_TIMEOUT)
    except Exception as exc:  # aio-pika raises a wide family (OSError, AMQP errors, timeouts)
        # connect_robust() would leave the failed connection to __del__, which
        # schedules its close on a loop that may be gone: close it here.
        with contextlib.suppress(Exception):
            await connection.close()
        reason = scrub(str(exc) or type(exc).__name__, url)
        raise BrokerUnavailable(
            f"cannot connect to the broker at {redact_url(url)}: {reason}"
        ) from exc
    return connection
