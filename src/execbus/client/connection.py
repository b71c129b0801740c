"""Connecting the SDK to RabbitMQ: see :mod:`execbus.broker` (shared with the worker)."""

from __future__ import annotations

from aio_pika.abc import AbstractRobustConnection

from execbus.broker import broker_tls_context, connect_robust, redact_url, scrub
from execbus.settings import Settings

__all__ = ["connect", "redact_url", "scrub"]


async def connect(
    url: str, name: str = "execbus-client", settings: Settings | None = None
) -> AbstractRobustConnection:
    """A robust connection, with the ``EXECBUS_AMQP_*_FILE`` TLS files of ``settings``;
    :class:`~execbus.errors.BrokerUnavailable` naming the URL when it fails."""
    tls = None
    if settings is not None:
        tls = broker_tls_context(
            url, settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file
        )
    return await connect_robust(url, name=name, tls=tls)
