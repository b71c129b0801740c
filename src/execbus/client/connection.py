"""Connecting the SDK to RabbitMQ: see :mod:`execbus.broker` (shared with the worker).

Also the client's settings (the environment's, with the explicit arguments
of :class:`~execbus.client.Client` on top) and the AMQP user it acts as.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from aio_pika.abc import AbstractRobustConnection

from execbus.broker import broker_tls_context, connect_robust, redact_url, scrub
from execbus.settings import Settings, load_settings

__all__ = ["amqp_user", "client_settings", "connect", "redact_url", "scrub"]


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


def client_settings(
    settings: Settings | None, amqp_url: str | None, namespace: str | None, timeout: float | None
) -> Settings:
    """``settings`` (or the environment's) with the explicit arguments on top."""
    base = settings.model_dump(exclude_none=True) if settings is not None else {}
    overrides = {"amqp_url": amqp_url, "namespace": namespace, "request_timeout": timeout}
    return load_settings(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def amqp_user(url: str) -> str:
    """The user an AMQP URL authenticates as (``guest`` when it names none)."""
    return unquote(urlsplit(url).username or "guest")
