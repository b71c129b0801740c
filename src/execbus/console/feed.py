"""The bus side of the console: the SDK's subscriptions feeding the store.

One :class:`~execbus.Client` (the console's own AMQP user; observer
permissions suffice) with two followers: ``client.events()`` (every event,
duplicates dropped by the SDK, parsed by the SDK's parser) and
``client.announcements()`` (``<ns>.control``). The SDK's robust connection
reconnects by itself after an outage and re-declares both queues; the feed
watches the link (``client.connected``) for the page's banner, reopens a
follower that ended, and connects from scratch when the first connection
cannot be made. Events published while the console was away are lost to it:
the execs that were unfinished then are marked (``gap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from execbus.client import Announcements, Client, Subscription
from execbus.console.metrics import ConsoleMetrics
from execbus.console.store import ConsoleStore
from execbus.errors import BrokerError
from execbus.settings import Settings

log = logging.getLogger("execbus.console")
Follower = TypeVar("Follower", Subscription, Announcements)

RETRY_MIN = 0.5
RETRY_MAX = 5.0
WATCH_INTERVAL = 0.25


class BusFeed:
    """Connects, follows, reconnects; never raises out of :meth:`run` but cancellation."""

    def __init__(
        self,
        settings: Settings,
        store: ConsoleStore,
        metrics: ConsoleMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.client: Client | None = None
        self._subscription: Subscription | None = None
        self._announcements: Announcements | None = None
        self._malformed_before = 0  # counted by followers that were replaced

    async def run(self) -> None:
        delay = RETRY_MIN
        while True:
            client = Client(settings=self.settings)
            try:
                await client.connect()
            except BrokerError as exc:
                self.store.set_broker(False, self.clock(), exc.message)
                log.warning("%s; retrying in %.1f s", exc.message, delay)
                await client.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            self.metrics.broker_connects.inc()
            self.client = client
            try:
                await self._serve(client)
            finally:
                self.client = None
                with contextlib.suppress(Exception):
                    await client.close()

    async def _serve(self, client: Client) -> None:
        self.store.set_broker(True, self.clock())
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow_events(client))
            group.create_task(self._follow_control(client))
            group.create_task(self._watch(client))

    async def _open(self, topic: str, make: Callable[[], Follower]) -> Follower:
        """Open a follower, waiting (with a notice) while its exchange does not exist."""
        delay = RETRY_MIN
        while True:
            follower = make()
            try:
                await follower.open()
            except BrokerError as exc:
                self._malformed_before += follower.malformed
                self.store.set_notice(topic, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.store.set_notice(topic, "")
            return follower

    async def _follow_events(self, client: Client) -> None:
        while True:
            sub = await self._open("events", client.events)
            self._subscription = sub
            async for event in sub:
                now = self.clock()
                self.store.apply_event(event, now)
                self.metrics.events.labels(event.type).inc()
                self.metrics.event_delay.observe(max(0.0, now - event.time.timestamp()))
            self._malformed_before += sub.malformed
            self._subscription = None
            await asyncio.sleep(RETRY_MIN)

    async def _follow_control(self, client: Client) -> None:
        while True:
            follower = await self._open("control", client.announcements)
            self._announcements = follower
            async for announcement in follower:
                self.store.apply_announcement(announcement, self.clock())
                self.metrics.announcements.inc()
            self._malformed_before += follower.malformed
            self._announcements = None
            await asyncio.sleep(RETRY_MIN)

    async def _watch(self, client: Client) -> None:
        while True:
            now = self.clock()
            connected = client.connected
            error = "" if connected else "the connection to the broker was lost; reconnecting"
            self.store.set_broker(connected, now, error)
            self.store.malformed = self.malformed
            self.store.tick(now)
            await asyncio.sleep(WATCH_INTERVAL)

    @property
    def malformed(self) -> int:
        live = sum(f.malformed for f in (self._subscription, self._announcements) if f)
        return self._malformed_before + live
