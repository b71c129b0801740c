"""Is anybody serving this agent (or pool)? A quick check before talking to it.

A request to an agent whose queue nobody consumes would sit there until a
worker shows up; callers want to hear "no worker serves agent X" at once
instead. So before the first request to an agent the client passively
declares ``<ns>.agent.<agent>``: a missing queue, or one without consumers,
means nobody serves it. Workers consume only while they own the agent, so
an empty queue is polled for a short grace period (a standby taking over, a
worker starting) before giving up. Positive answers are cached briefly.

Pools get the same check on ``<ns>.pool.<pool>``: workers consume a pool's
queue while they own at least one of its agents.
"""

from __future__ import annotations

import asyncio
import time

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity

from execbus.broker import broker_reason
from execbus.client.rpc import close_quietly
from execbus.client.target import Target
from execbus.errors import BrokerError, UnknownAgent
from execbus.wire.ids import is_valid_name
from execbus.wire.routing import Names

CACHE_SECONDS = 5.0
NO_CONSUMER_GRACE = 1.0
POLL_INTERVAL = 0.1


class AgentDirectory:
    """Checks (and briefly remembers) that a worker serves an agent or a pool."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        names: Names,
        cache_seconds: float = CACHE_SECONDS,
        grace: float = NO_CONSUMER_GRACE,
    ) -> None:
        self._connection = connection
        self._names = names
        self._cache_seconds = cache_seconds
        self._grace = grace
        self._served_until: dict[str, float] = {}  # by queue name

    async def ensure(self, target: Target) -> None:
        """Return if a worker serves ``target``; raise :class:`UnknownAgent` otherwise."""
        kind, name = target.kind, target.name
        if not is_valid_name(name):
            raise UnknownAgent(f"invalid {kind} name {name!r}: use letters, digits, '_' and '-'")
        queue = target.queue(self._names)
        if self._served_until.get(queue, 0.0) > time.monotonic():
            return
        deadline = time.monotonic() + self._grace
        while True:
            consumers = await self._consumers(kind, name, queue)
            if consumers is None:
                raise UnknownAgent(
                    f"no worker serves {kind} {name!r} in namespace {self._names.ns!r} "
                    f"(queue {queue!r} does not exist)"
                )
            if consumers > 0:
                self._served_until[queue] = time.monotonic() + self._cache_seconds
                return
            if time.monotonic() >= deadline:
                raise UnknownAgent(
                    f"no worker serves {kind} {name!r} in namespace {self._names.ns!r} "
                    "(its queue exists but no worker consumes it)"
                )
            await asyncio.sleep(POLL_INTERVAL)

    def forget(self, target: Target) -> None:
        """Drop the cached answer (e.g. after an ``unknown_agent`` reply)."""
        self._served_until.pop(target.queue(self._names), None)

    async def _consumers(self, kind: str, name: str, queue_name: str) -> int | None:
        """The consumer count of the queue; ``None`` when it does not exist."""
        try:
            # A passive declare that fails closes its channel: use a throwaway one.
            channel = await self._connection.channel(publisher_confirms=False)
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerError(
                f"cannot open a channel to check {kind} {name!r}: {broker_reason(exc)}"
            ) from exc
        try:
            queue = await channel.declare_queue(queue_name, passive=True, robust=False)
        except ChannelNotFoundEntity:
            return None
        except CONNECTION_EXCEPTIONS as exc:
            raise BrokerError(f"cannot check {kind} {name!r}: {broker_reason(exc)}") from exc
        finally:
            await close_quietly(channel)
        result = queue.declaration_result
        return int(result.consumer_count or 0)
