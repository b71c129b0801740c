"""One confirmed publish, shared by the worker's publisher and the client's RPC.

The hot paths (events, replies, requests) skip aio-pika's ``Message`` and
publish on the channel's aiormq layer with prebuilt properties, awaiting the
broker's confirm but not the socket flush. The frames of a publish are queued
in its first step (or it queues behind the channel lock, which is FIFO), so
publishes started in some order reach the broker in that order. aio-pika,
aiormq and connection errors become :class:`~execbus.errors.PublishFailed`.

:class:`ConfirmChannel` is the confirm-mode channel both publish on. A
publish the broker nacks replaces it: on RabbitMQ 3.10 a channel whose first
publish to a quorum queue asked the queue's recorded leader while that node
was down is nacked for that queue until the node is back
(``rabbit_fifo_client:enqueue/3`` keeps asking it; docs/reliability.md), and
only a new channel asks the queue's current leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from aio_pika.tools import CallbackCollection
from aiormq.channel import Channel as RawChannel
from aiormq.exceptions import AMQPChannelError, ChannelInvalidStateError
from pamqp.commands import Basic

from execbus.broker import broker_reason
from execbus.errors import PublishFailed

__all__ = [
    "Basic",
    "ChannelOpener",
    "ConfirmChannel",
    "open_confirm_channel",
    "publish_confirmed",
    "publish_errors",
]

log = logging.getLogger("execbus.publishing")

#: Opens a fresh confirm-mode channel on the connection of the one it replaces.
ChannelOpener = Callable[[], Awaitable[AbstractChannel]]
#: Seconds a replaced channel may take to close.
CLOSE_TIMEOUT = 5.0


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


async def open_confirm_channel(connection: AbstractConnection) -> AbstractChannel:
    """A new confirm-mode channel on ``connection``. One that fails to open is closed, so a
    robust connection does not restore it after its next reconnect."""
    channel = connection.channel(publisher_confirms=True)
    try:
        await channel
    except BaseException:
        with contextlib.suppress(Exception):
            await channel.close()
        raise
    return channel


@dataclass(eq=False, slots=True)
class _Slot:
    """One channel and its publishes in flight (it is closed once they are settled)."""

    channel: AbstractChannel
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if not self.inflight:
            self.idle.set()


class ConfirmChannel:
    """The confirm-mode channel a publisher publishes on, replaced after a nack.

    A publish nacked by the broker (a ``basic.nack``; not a returned one, not
    a missing confirm) makes :meth:`publish` open a fresh channel through
    ``reopen`` before it raises :class:`PublishFailed`, so the caller's retry
    and every later publish go out on the fresh channel. With
    ``replace_closed`` a channel the broker closed is replaced the same way
    (the SDK's; the worker starts a new broker session instead). Publishes
    already in flight on the replaced channel are settled there first (at most
    ``drain_timeout`` s), then it is closed; the callbacks others added to its
    ``close_callbacks`` move to the fresh channel (the worker's session ends
    when its publishing channel closes, not when a replaced one does). When
    the fresh channel cannot be opened (the connection is down), the old one
    stays. Without ``reopen`` (yet) nothing is replaced.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        reopen: ChannelOpener | None = None,
        *,
        drain_timeout: float,
        replace_closed: bool = False,
    ) -> None:
        self._slot = _Slot(channel)
        self._reopen = reopen
        self._drain_timeout = drain_timeout
        self._replace_closed = replace_closed
        self._replacing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.replacements = 0

    @property
    def channel(self) -> AbstractChannel:
        """The channel publishes go out on now."""
        return self._slot.channel

    def reopen_with(self, reopen: ChannelOpener) -> None:
        """How to open a replacement (the worker's publisher knows it once its session runs)."""
        self._reopen = reopen

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        *,
        timeout: float,
        mandatory: bool = False,
        what: str = "the message",
    ) -> None:
        """:func:`publish_confirmed` on the current channel; a nack replaces the channel
        before :class:`PublishFailed` is raised."""
        slot = self._slot
        slot.enter()
        try:
            await publish_confirmed(
                slot.channel,
                exchange,
                routing_key,
                body,
                properties,
                timeout=timeout,
                mandatory=mandatory,
                what=what,
            )
        except PublishFailed as exc:
            failure = exc
        else:
            return
        finally:
            slot.leave()
        await self.recover(slot.channel, failure.__cause__)
        raise failure

    async def recover(self, channel: AbstractChannel, cause: BaseException | None) -> bool:
        """A publish on ``channel`` failed with ``cause``: replace the channel if that is
        what it calls for. True if ``channel`` is no longer the current one."""
        if isinstance(cause, DeliveryError):
            stale = isinstance(cause.frame, Basic.Nack)  # a returned message is no fault of it
        else:
            closed = isinstance(cause, AMQPChannelError | ChannelInvalidStateError)
            stale = self._replace_closed and closed
        return stale and await self.replace(channel)

    async def replace(self, stale: AbstractChannel) -> bool:
        """Open a fresh channel in place of ``stale`` (unless that happened already) and
        close ``stale`` once its publishes in flight are settled. False if it stays."""
        async with self._replacing:
            old = self._slot
            if old.channel is not stale:
                return True  # a concurrent publish replaced it
            fresh = await self._open()
            if fresh is None:
                return False
            _move_close_callbacks(stale, fresh)
            self._slot = _Slot(fresh)
            self.replacements += 1
        log.info("replaced the publishing channel (channel %s now)", fresh.number)
        task = asyncio.create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return True

    async def retired(self) -> None:
        """Wait until the replaced channels are closed."""
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _open(self) -> AbstractChannel | None:
        if self._reopen is None:
            return None
        try:
            async with asyncio.timeout(self._drain_timeout):
                return await self._reopen()
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning("could not replace the publishing channel: %s", broker_reason(exc))
            return None

    async def _retire(self, slot: _Slot) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_timeout):
                await slot.idle.wait()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await slot.channel.close()


def _move_close_callbacks(old: AbstractChannel, new: AbstractChannel) -> None:
    """The close callbacks added to ``old`` from outside (not the channel's own, nor its
    queues') watch ``new`` instead."""
    for callback in list(old.close_callbacks):
        if isinstance(callback, CallbackCollection) or getattr(callback, "__self__", None) is old:
            continue
        old.close_callbacks.discard(callback)
        new.close_callbacks.add(callback)
