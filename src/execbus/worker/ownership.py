"""Membership I/O: announce this worker, hear the others, reconcile agent roles.

Every ``control_interval`` seconds a worker publishes its
:class:`~execbus.worker.membership.Announcement` on ``<ns>.control``
(routing key ``worker.<id>``) and listens to the others on an exclusive
queue. After each tick, and at once when a new worker appears, it computes
the assignment and tells each agent runtime its role. Peers silent for
``peer_expiry`` seconds drop out of the view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from execbus import __version__
from execbus.loops import wait_event
from execbus.wire.control import Announcement
from execbus.wire.routing import Names
from execbus.worker.membership import Membership
from execbus.worker.runtime import AgentRuntime, Role

if TYPE_CHECKING:
    from execbus.worker.service import BrokerSession

log = logging.getLogger("execbus.worker")


class OwnershipLoop:
    """Keeps this worker's agent roles in line with the live membership."""

    def __init__(
        self,
        worker_id: str,
        names: Names,
        runtimes: dict[str, AgentRuntime],
        interval: float,
        expiry: float,
        pools: frozenset[str],
        on_change: Callable[[], None] | None = None,
        started_at: float | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.started_at = time.time() if started_at is None else started_at
        self.names = names
        self.runtimes = runtimes
        self.interval = interval
        self.pools = pools
        self.stopping = False
        self.membership = Membership(self._announcement(), expiry=expiry)
        # A standby that took an agent over keeps it until a dead owner has expired.
        self.handover_grace = expiry + interval
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_change = on_change
        self._wake = asyncio.Event()

    def _announcement(self) -> Announcement:
        links = {name: rt.link() for name, rt in self.runtimes.items()}
        return Announcement(
            worker_id=self.worker_id,
            agents=frozenset(self.runtimes),
            owned=frozenset(n for n, rt in self.runtimes.items() if rt.owner),
            load=sum(rt.load() for rt in self.runtimes.values()),
            pools=self.pools,
            stopping=self.stopping,
            links={name: link for name, link in links.items() if link is not None},
            version=__version__,
            started_at=self.started_at,
        )

    async def run(self, session: BrokerSession) -> None:
        """Announce, listen and reconcile until cancelled."""
        channel = await session.channel()
        exchange = await channel.declare_exchange(
            self.names.control_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "worker.#")
        await queue.consume(self._on_announcement, no_ack=True)
        while True:
            await self._announce(exchange)
            await self.reconcile(session)
            self._wake.clear()
            await wait_event(self._wake, self.interval)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, exchange: AbstractExchange) -> None:
        self.membership.me = self._announcement()
        body = json.dumps(self.membership.me.to_json()).encode()
        message = aio_pika.Message(body, content_type="application/json", expiration=10)
        with contextlib.suppress(Exception):
            await exchange.publish(message, f"worker.{self.worker_id}", mandatory=False)

    async def announce_stopping(self, session: BrokerSession) -> None:
        """Tell the others we are leaving, so they take over without waiting for expiry.

        From now on this worker takes nothing over: reconciling stops, and agents
        it does not own stop contending (peers that stop too release theirs).
        """
        self.stopping = True
        for rt in self.runtimes.values():
            rt.stop_contending()
        with contextlib.suppress(Exception):
            channel = await session.channel()
            exchange = await channel.get_exchange(self.names.control_exchange, ensure=False)
            await self._announce(exchange)

    async def _on_announcement(self, message: AbstractIncomingMessage) -> None:
        try:
            peer = Announcement.from_json(json.loads(message.body))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed worker announcement")
            return
        is_new = peer.worker_id not in self.membership.live() or peer.stopping
        self.membership.observe(peer)
        if is_new and peer.worker_id != self.worker_id:
            self._wake.set()  # reconcile now, not at the next tick

    async def reconcile(self, session: BrokerSession) -> None:
        """Give each agent runtime the role the assignment says."""
        if self.stopping:
            return
        mine = self.membership.mine()
        standby = self.membership.standby_for()
        log.debug(
            "membership: %d live workers; should own %d agents, standby for %d",
            len(self.membership.live()),
            len(mine),
            len(standby),
        )
        for name, rt in self.runtimes.items():
            role = Role.OWNER if name in mine else Role.STANDBY if name in standby else Role.NONE
            if role is Role.STANDBY and rt.owner and rt.owned_for() > self.handover_grace:
                # We took it over (its owner died, or we won a race); once the view
                # has settled, the designated owner gets it back.
                self._spawn(rt.hand_over(session, quiet=self.interval))
            elif role is not rt.role or (role is not Role.NONE and not rt.owner):
                self._spawn(rt.set_role(role, session))
        if self.on_change is not None:
            self.on_change()
