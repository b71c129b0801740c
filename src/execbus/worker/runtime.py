"""One agent served by this worker: registry, agent connection, ownership lease, consumer.

Ownership of an agent is a lease (``worker/lease.py``): being the single
active consumer of ``<ns>.lease.<agent>`` and holding its token. A runtime
is told its role by the membership reconciler:

* ``owner``: it should own the agent: get in line for the lease; once the
  token arrives, sync with the agent (takeover) and consume its queue;
* ``standby``: next in line: get in line too, so that the broker hands the
  token over the moment the owner's connection dies;
* ``none``: give the agent up: stop consuming, finish what is in flight,
  give the token back and leave the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractChannel, AbstractQueue

from execbus.connections.address import AgentAddress
from execbus.connections.base import AgentConnection
from execbus.connections.factory import ConnectOptions, make_connection
from execbus.connections.retry import RetryPolicy
from execbus.loops import wait_event
from execbus.registry import ExecRegistry, RegistryLimits
from execbus.settings import Settings
from execbus.wire.control import AgentLink
from execbus.wire.records import ExecState
from execbus.wire.routing import Names
from execbus.worker.consumer import RequestConsumer
from execbus.worker.context import Outbox
from execbus.worker.ends import ExecEnds
from execbus.worker.execs import AgentExecs
from execbus.worker.guard import RequestGuard
from execbus.worker.lease import Lease
from execbus.worker.metrics import WorkerMetrics
from execbus.worker.state import AgentState, Hooks
from execbus.worker.topology import topology_of
from execbus.worker.watch import AgentWatch

if TYPE_CHECKING:
    from execbus.worker.session import BrokerSession

log = logging.getLogger("execbus.worker")


class Role(Enum):
    OWNER = "owner"
    STANDBY = "standby"
    NONE = "none"


class AgentRuntime:
    """Everything this worker holds for one agent."""

    def __init__(
        self,
        name: str,
        address: AgentAddress,
        settings: Settings,
        connect: ConnectOptions,
        outbox: Outbox,
        metrics: WorkerMetrics,
        guard: RequestGuard | None = None,
    ) -> None:
        self.name = name
        self.guard = guard  # authorization policy and request limits (worker/policy.py)
        self.address = address
        self.settings = settings
        self.names = Names(settings.namespace)
        self.metrics = metrics
        self._connect_options = connect
        self.connection: AgentConnection = make_connection(name, address, connect)
        self.state = AgentState.build(
            name,
            ExecRegistry(name, _limits(settings)),
            self.connection,
            outbox,
            _retry(settings),
            self.names,
            lifecycle=settings.lifecycle_events,
        )
        self.state.hooks = Hooks(
            on_retry=metrics.agent_retries.labels(name).inc,
            on_finished=metrics.observe_finished,
            on_connect=metrics.agent_reconnects.labels(name).inc,
            on_link_down=metrics.agent_link_down.labels(name).inc,
        )
        ends = ExecEnds(self.state)
        self.execs = AgentExecs(self.state, ends)
        self.watch = AgentWatch(self.state, ends)
        metrics.agent_owned.labels(name).set_function(lambda: float(self.owner))
        metrics.agent_connected.labels(name).set_function(
            lambda: float(self._opened and self.connection.connected)
        )
        self.role = Role.NONE
        self.owner = False
        # Told when this worker starts or stops serving the agent (the ownership
        # loop announces it then, not at its next tick).
        self.on_owner_change: Callable[[], None] = lambda: None
        self.consumer: RequestConsumer | None = None
        self._opened = False
        self.topology = topology_of(settings)
        self.lease = Lease(self.topology, name, self._granted, self._lost)
        self._session: BrokerSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queue_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._transition = asyncio.Lock()
        self.owned_since = 0.0
        self._quiet_until = 0.0
        # When this process declared the agent's request and lease queues (they are
        # durable: a reconnect finds them; an owner declares its queue again anyway).
        self.declared_at: float | None = None

    # -- roles ------------------------------------------------------------

    async def set_role(self, role: Role, session: BrokerSession) -> None:
        """Move to ``role``: owner/standby get in line for the lease; none leaves it."""
        self.role = role
        self._session = session
        if role is Role.NONE:
            async with self._transition:
                await self._release()
        elif not self.lease.subscribed and time.monotonic() >= self._quiet_until:
            await self.lease.subscribe(session)

    async def declare_queues(self, channel: AbstractChannel) -> None:
        """Declare the agent's request queue (requests wait there for an owner) and
        lease queue, a tick before getting in line (see worker/lease.py)."""
        await self.topology.declare_agent_queue(channel, self.name)
        await self.topology.declare_lease_queue(channel, self.name)
        self.declared_at = time.monotonic()

    def owned_for(self) -> float:
        """Seconds since this worker took the agent (0 when it does not own it)."""
        return time.monotonic() - self.owned_since if self.owner else 0.0

    async def hand_over(self, session: BrokerSession, quiet: float) -> None:
        """Give an agent we hold as standby to its designated owner, then stand by again.

        For ``quiet`` seconds this worker stays out of the line, so the token goes
        to the designated owner (next in line) and does not come straight back.
        """
        async with self._transition:
            if not self.owner:
                return
            await self._release()
        self._quiet_until = time.monotonic() + quiet
        await self.set_role(Role.STANDBY, session)

    async def mint_token(self) -> None:
        """The designated owner found nobody owning the agent for a while: add a token."""
        if self.lease.subscribed and not self.lease.held:
            await self.lease.mint()

    def _granted(self) -> None:
        """The lease's token arrived: this worker is the agent's owner now."""
        task = asyncio.create_task(self._take())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self) -> None:
        session = self._session
        async with self._transition:
            if session is None or self.role is Role.NONE or session.closed.is_set():
                await self.lease.release()
                return
            try:
                await self._own(session)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent %s: taking ownership failed", self.name)
                await self._release()

    def _lost(self) -> None:
        """The lease's channel closed under us: someone else may own the agent now."""
        if self.owner:
            log.warning("agent %s: lost the lease; giving the agent up", self.name)
            task = asyncio.create_task(self._give_up())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _give_up(self) -> None:
        async with self._transition:
            await self._release()

    async def _own(self, session: BrokerSession) -> None:
        self.owner = True
        self.owned_since = time.monotonic()
        self.metrics.owned.inc()
        log.info("agent %s: this worker is now the owner", self.name, extra={"agent": self.name})
        if not self._opened:
            self._opened = True
            self.watch.synced.clear()
            await self.connection.open(self.watch)  # its on_connected runs the sync
            # Requests wait for the takeover sync: a retry of an exec the previous
            # owner started must find it (and join it), not start a new record.
            if not await wait_event(self.watch.synced, self.settings.agent_call_timeout):
                log.warning("agent %s: not synced yet; serving requests anyway", self.name)
        elif self.connection.connected:
            await self.watch.sync()
        self._queue_channel = await session.channel()
        await self._queue_channel.set_qos(prefetch_count=self.settings.prefetch)
        self._queue = await self.topology.declare_agent_queue(self._queue_channel, self.name)
        self.consumer = RequestConsumer(
            self.execs,
            session.publisher,
            self.settings.max_message_bytes,
            observe=self.metrics.observe_request,
            authorize=(
                self.guard.for_agent(self.name, self.execs.registry) if self.guard else None
            ),
            on_inflight=self.metrics.inflight.inc,
        )
        self._tag = await self._queue.consume(self.consumer.on_message)
        self.on_owner_change()

    async def _release(self) -> None:
        """Stop consuming, finish in-flight requests, give the token back, leave the line."""
        if self.owner:
            await self.stop_consuming()
            await self.drain()
            if self._queue_channel is not None:
                with contextlib.suppress(Exception):
                    await self._queue_channel.close()
            self._forget_session()
            await self._drop_connection()
            log.info("agent %s: handed over", self.name, extra={"agent": self.name})
        await self.lease.release()

    async def _drop_connection(self) -> None:
        """Leave the agent to its new owner: some agents (qemu-ga) serve one client only.

        The in-process agent stays: it lives in this worker and would take its
        processes with it.
        """
        if self.address.scheme == "local" or not self._opened:
            return
        with contextlib.suppress(Exception):
            await self.connection.close()
        self.connection = make_connection(self.name, self.address, self._connect_options)
        self.state.connection = self.connection
        self._opened = False

    def end_session(self) -> None:
        """The broker connection is gone: so are the lease and the consumer."""
        self.lease.forget()
        self._forget_session()
        self._session = None
        self.role = Role.NONE

    def _forget_session(self) -> None:
        if self.owner:
            self.metrics.owned.dec()
            self.on_owner_change()
        self.owner = False
        self.consumer = None
        self._queue = self._tag = None
        self._queue_channel = None

    # -- work -------------------------------------------------------------

    async def stop_consuming(self) -> None:
        """Stop taking new requests from the agent's queue."""
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
            self._tag = None

    async def drain(self) -> None:
        """Wait for in-flight requests."""
        if self.consumer is not None and self.consumer.inflight:
            await asyncio.gather(*self.consumer.inflight, return_exceptions=True)

    def load(self) -> int:
        """Running execs plus requests in flight (for pool placement and announcements)."""
        running = sum(
            1
            for r in self.execs.registry.list(include_finished=False)
            if r.state is ExecState.RUNNING
        )
        inflight = len(self.consumer.inflight) if self.consumer is not None else 0
        return running + inflight

    def sweep(self) -> None:
        for exec_id in self.state.registry.sweep():
            self.state.waiters.pop(exec_id, None)
        for state, count in self.execs.registry.counts_by_state().items():
            self.metrics.registry_size.labels(self.name, state.value).set(count)

    def stop_contending(self) -> None:
        """Shutting down: take nothing over (a token that still arrives goes back)."""
        if not self.owner:
            self.role = Role.NONE
            task = asyncio.create_task(self.lease.release())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def link(self) -> AgentLink | None:
        """The link to the agent while this worker owns (and so talks to) it."""
        if not self.owner or not self._opened:
            return None
        state = self.connection.state
        return AgentLink(state.connected, state.reason, state.code, state.since)

    def status(self) -> dict[str, Any]:
        link = self.link()
        return {
            "address": str(self.address),
            "role": self.role.value,
            "owner": self.owner,
            "contending": self.lease.subscribed and not self.lease.held,
            "connected": self.connection.connected if self._opened else None,
            "link": link.to_json() if link is not None else None,
            "execs": len(self.execs.registry),
        }


def _limits(settings: Settings) -> RegistryLimits:
    return RegistryLimits(
        settings.registry_max_records, settings.registry_retention, settings.registry_created_ttl
    )


def _retry(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        attempts=settings.agent_retry_attempts,
        max_elapsed=settings.agent_retry_max_elapsed,
        attempt_timeout=settings.agent_call_timeout,
    )
