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
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from execbus import __version__
from execbus.loops import wait_event
from execbus.wire.control import NOT_CONNECTED_YET, Announcement, reach_digest
from execbus.wire.routing import Names
from execbus.worker.membership import Membership
from execbus.worker.runtime import AgentRuntime, Role

if TYPE_CHECKING:
    from execbus.worker.session import BrokerSession

log = logging.getLogger("execbus.worker")
#: Every this many announcements the full reachable set goes out even unchanged: a
#: peer that missed the one after a change (a reconnect within the expiry) catches
#: up. At 10,000 agents the set is ~80 KB, so rarely: once in 30 intervals.
FULL_EVERY = 30
#: Role changes (getting in line for a lease, giving one back) in flight at once:
#: at a cold start a worker has one per agent, and thousands of concurrent queue
#: declares and consumes only slow the broker down for every worker.
ROLE_CHANGES_AT_ONCE = 16


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
        self._reachable = frozenset(runtimes)
        self._reach = reach_digest(self._reachable)
        # Send the full reachable set at the next announcement: at start, when a
        # new peer appears, and every FULL_EVERY announcements.
        self._send_full = True
        self._announced = 0
        # Designated-owner agents nobody announces owning, since when (the lease
        # token watchdog, see _check_tokens).
        self._unowned_since: dict[str, float] = {}
        self.interval = interval
        self.pools = pools
        self.stopping = False
        self.membership = Membership(self._announcement(), expiry=expiry)
        # A standby that took an agent over keeps it until a dead owner has expired.
        self.handover_grace = expiry + interval
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_change = on_change
        self._wake = asyncio.Event()
        self._announced_at = 0.0
        for rt in runtimes.values():
            rt.on_owner_change = self._wake.set  # announce a change now, not at the next tick
        self._role_slots = asyncio.Semaphore(ROLE_CHANGES_AT_ONCE)
        # Agents with a role change queued or running (one at a time per agent).
        self._changing: set[str] = set()
        self._declare_channel: AbstractChannel | None = None

    def _announcement(self, full: bool = True) -> Announcement:
        owned = {name: rt for name, rt in self.runtimes.items() if rt.owner}
        # Only the links that are not connected go out (Announcement.to_json) and an
        # owned agent without one reads as connected: one with no link at all (the
        # runtime opens the connection as it takes the agent, so not seen today)
        # is sent as not connected.
        links = {name: rt.link() or NOT_CONNECTED_YET for name, rt in owned.items()}
        return Announcement(
            worker_id=self.worker_id,
            agents=self._reachable,
            reach=self._reach,
            full=full,
            owned=frozenset(owned),
            load=sum(rt.load() for rt in self.runtimes.values()),
            pools=self.pools,
            stopping=self.stopping,
            links=links,
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
        # Hear the others before taking anything: workers started together would
        # each see only themselves and all go for every agent at once.
        await self._announce(exchange)
        await asyncio.sleep(self.interval)
        while True:
            await self._announce(exchange)
            await self.reconcile(session)
            self._wake.clear()
            await wait_event(self._wake, self.interval)
            # Woken early (a role changed, a peer stops): at most a few announcements
            # per interval, however many agents change hands at once.
            await asyncio.sleep(self._announced_at + self.interval / 4 - time.monotonic())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    def _change_role(self, agent: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a role change for ``agent`` within the slots, unless one is pending."""
        if agent in self._changing:
            coro.close()
            return
        self._changing.add(agent)

        async def change() -> None:
            try:
                async with self._role_slots:
                    await coro
            finally:
                self._changing.discard(agent)

        self._spawn(change())

    def _settled(self, task: asyncio.Task[None]) -> None:
        """A role change ended: one line if it failed (the next tick tries again)."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("changing an agent's role failed: %s", str(exc) or type(exc).__name__)

    async def _announce(self, exchange: AbstractExchange) -> None:
        full = self._send_full or self._announced % FULL_EVERY == 0
        self._send_full = False
        self._announced += 1
        self._announced_at = time.monotonic()
        self.membership.me = self._announcement()
        body = json.dumps(self._announcement(full).to_json()).encode()
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
        is_new = self.membership.observe(peer)
        if is_new:
            self._send_full = True  # the newcomer needs our reachable set
        if is_new or peer.stopping:
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
        owned, now = self.membership.owned_anywhere(), time.monotonic()
        for name, rt in self.runtimes.items():
            role = Role.OWNER if name in mine else Role.STANDBY if name in standby else Role.NONE
            step = self._step(rt, role, name in owned, now, session)
            if step is not None:
                self._change_role(name, step)
        self._check_tokens(mine)
        if self.on_change is not None:
            self.on_change()

    def _step(
        self, rt: AgentRuntime, role: Role, owned: bool, now: float, session: BrokerSession
    ) -> Coroutine[Any, Any, None] | None:
        """What moves ``rt`` toward ``role`` now (None: nothing, or not yet)."""
        if role is Role.STANDBY and rt.owner and rt.owned_for() > self.handover_grace:
            # We took it over (its owner died, or we won a race); once the view
            # has settled, the designated owner gets it back.
            return rt.hand_over(session, quiet=self.interval)
        if role is Role.NONE:
            return rt.set_role(role, session) if rt.role is not role else None
        if role is Role.STANDBY and not rt.lease.subscribed and not owned:
            # Get in line behind an owner that holds the lease, not before: its
            # queue may be new, and a consumer racing its creation costs the
            # connection (see worker/lease.py on new quorum queues).
            return None
        if rt.declared_at is None:  # declare first, get in line a tick later (the same)
            return self._declare(rt, session)
        if now - rt.declared_at < self.interval:
            return None
        if role is not rt.role or not rt.owner:
            return rt.set_role(role, session)
        return None

    async def _declare(self, rt: AgentRuntime, session: BrokerSession) -> None:
        """Declare an agent's queues on the session's declaring channel (one for all:
        thousands of agents must not cost thousands of channels)."""
        channel = self._declare_channel
        if channel is None or channel.is_closed:
            channel = self._declare_channel = await session.channel()
        await rt.declare_queues(channel)

    def _check_tokens(self, mine: set[str]) -> None:
        """The lease watchdog, with no broker traffic: an agent this worker should own,
        that nobody has announced owning for a while although we are in line, has
        lost its token (an operator purged the lease queue, say): mint one."""
        now = time.monotonic()
        for name in mine:
            rt = self.runtimes[name]
            if self.membership.owned_by_someone(name) or not rt.lease.subscribed:
                self._unowned_since.pop(name, None)
                continue
            since = self._unowned_since.setdefault(name, now)
            if now - since > self.handover_grace:
                self._unowned_since.pop(name, None)
                self._spawn(rt.mint_token())
