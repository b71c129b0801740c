"""One confirmed publish, shared by the worker's publisher and the client's RPC.

The hot paths (events, replies, requests) skip aio-pika's ``Message`` and
publish on the channel's aiormq layer with prebuilt properties, awaiting the
broker's confirm but not the socket flush. The frames of a publish are queued
in its first step (or it queues behind the channel lock, which is FIFO), so
publishes started in some order reach the broker in that order. aio-pika,
aiormq and connection errors become :class:`~execbus.errors.PublishFailed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from aiormq.channel import Channel as RawChannel
from pamqp.commands import Basic

from execbus.broker import broker_reason
from execbus.errors import PublishFailed

__all__ = ["Basic", "publish_confirmed", "publish_errors"]


@contextlib.contextmanager
def publish_errors(what: str, routing_key: str, timeout: float) -> Iterator[None]:
    """Translate aio-pika/aiormq publish failures into :class:`PublishFailed`."""
    try:
        yield
    except (DeliveryError, TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        raise _publish_failed(exc, what, routing_key, timeout) from exc


def _publish_failed(
    exc: BaseException, what: str, routing_key: str, timeout: float
) -> PublishFailed:
    if isinstance(exc, DeliveryError):
        return PublishFailed(f"the broker refused {what} for {routing_key!r}: {broker_reason(exc)}")
    if isinstance(exc, TimeoutError):
        return PublishFailed(f"no publisher confirm for {what} within {timeout:g} s")
    return PublishFailed(f"publishing {what} failed: {broker_reason(exc)}")


async def publish_confirmed(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: Basic.Properties,
    *,
    timeout: float,
    mandatory: bool = False,
    what: str = "the message",
) -> None:
    """Publish ``body`` and wait (at most ``timeout`` s) for the broker's confirm."""
    try:  # (not ``with publish_errors``: a context manager per publish costs more)
        raw = await channel.get_underlay_channel()
        assert isinstance(raw, RawChannel)  # the concrete channel takes ``wait=``
        await raw.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            timeout=timeout,
            wait=False,  # the confirm is what counts, not the socket flush
        )
    except (DeliveryError, TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        raise _publish_failed(exc, what, routing_key, timeout) from exc
