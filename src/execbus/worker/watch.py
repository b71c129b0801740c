"""The agent's listener: output, exits and (re)connections of one agent.

:class:`AgentWatch` is what the agent connection reports to
(:class:`~execbus.connections.base.AgentListener`). Output chunks go out as
``exec.output`` events (held back until the exec's start is recorded);
exits go through :class:`~execbus.worker.ends.ExecEnds` in the exec's lane;
a (re)connection runs the takeover sync (``worker/takeover.py``) that
adopts the agent's execs, publishes the exits nobody published, and fails
the ones the agent lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from execbus.connections.base import AgentExec
from execbus.errors import ErrorCode, ExecbusError, PublishFailed
from execbus.registry import ExecRecord
from execbus.wire.records import ExecState
from execbus.worker import event_factory
from execbus.worker.ends import ExecEnds
from execbus.worker.meta import record_from_agent, started_under, targets_from_meta
from execbus.worker.state import AgentState
from execbus.worker.takeover import lost_message, plan_sync

log = logging.getLogger("execbus.worker")


class AgentWatch:
    """Receives what one agent pushes, and syncs with it at every (re)connection."""

    def __init__(self, state: AgentState, ends: ExecEnds) -> None:
        self.state = state
        self.ends = ends
        # Set once the agent's execs have been synced after a (re)connection,
        # or the link is known down: requests wait for it at a takeover, so a
        # retry finds the exec the previous owner started (see AgentRuntime._own).
        self.synced = asyncio.Event()
        self._sync_lock = asyncio.Lock()

    async def on_output(self, agent: str, exec_id: str, stream: str, seq: int, data: bytes) -> None:
        record = self.state.registry.find(exec_id)
        if record is None or stream not in ("stdout", "stderr"):
            return
        event = event_factory.output(self.state.agent, record, stream, seq, data)
        if record.state is ExecState.CREATED:
            # The agent streams as soon as it has spawned, so output can arrive
            # before the start's answer has been handled: hold it until
            # exec.started is sent. Not awaited: the start's answer travels
            # on this same connection, behind this chunk.
            self.state.events.hold_output(record, event)
            return
        await self.state.events.send_output(record, event)

    async def on_exit(self, agent: str, state: AgentExec) -> None:
        await self.state.lanes.submit(state.exec_id, lambda: self._on_exit(state))

    async def _on_exit(self, agent_state: AgentExec) -> None:
        state = self.state
        if not started_under(state.agent, agent_state):  # its own name's owner acks it
            return
        if agent_state.exec_id in state.removed:  # settled and forgotten here already
            await self.ends.ack_agent(agent_state.exec_id)
            return
        record = state.registry.find(agent_state.exec_id) or self._adopt(agent_state)
        if record is None:
            await self.ends.ack_agent(agent_state.exec_id)
            return
        try:
            await self.ends.finish(record, agent_state)
        except PublishFailed as exc:  # not acked: the next sync publishes it again
            log.warning(
                "exec %s: exit not published yet: %s",
                agent_state.exec_id,
                exc,
                extra=state.log_ctx(agent_state.exec_id),
            )

    def _adopt(self, agent_state: AgentExec) -> ExecRecord | None:
        record = record_from_agent(self.state.agent, agent_state)
        if record is None:
            log.warning(
                "agent %s: exec %s has no execbus meta; ignoring",
                self.state.agent,
                agent_state.exec_id,
                extra=self.state.log_ctx(agent_state.exec_id),
            )
            return None
        self.state.registry.adopt(record)
        targets = targets_from_meta(agent_state.meta)
        self.state.waiters.setdefault(record.exec_id, []).extend(targets)
        return record

    async def on_connected(self, agent: str, boot_changed: bool) -> None:
        if self.state.hooks.on_connect is not None:
            self.state.hooks.on_connect()
        await self.sync(boot_changed)

    async def on_disconnected(self, agent: str, reason: str) -> None:
        # The connection logged it; requests waiting for the first sync may go
        # on (they fail fast with this reason while the link is down).
        self.synced.set()
        if self.state.hooks.on_link_down is not None:
            self.state.hooks.on_link_down()

    def running(self) -> int:
        """Execs being started or running (their ends are still to come)."""
        return sum(
            1
            for r in self.state.registry.list(include_finished=False)
            if r.starting or r.state is ExecState.RUNNING
        )

    async def wait_settled(self, poll: float = 0.05) -> None:
        """Until no exec of this agent is starting or running (shutdown: their exits
        are published as they come, so their callers get their results)."""
        while self.running():
            await asyncio.sleep(poll)

    async def sync(self, boot_changed: bool = False) -> None:
        """Takeover: rebuild records from the agent, publish exits nobody published."""
        state = self.state
        async with self._sync_lock:
            try:
                states = await state.connection.list()
            except ExecbusError as exc:
                log.warning("agent %s: sync failed: %s", state.agent, exc, extra=state.log_ctx())
                self.synced.set()
                return
            plan = plan_sync(state.agent, states, state.registry)
            for agent_state in plan.adopt:
                self._adopt(agent_state)
            tasks = [state.lanes.submit(s.exec_id, self._published(s)) for s in plan.finished]
            message = lost_message(state.agent, boot_changed)
            tasks += [state.lanes.submit(r.exec_id, self._failed(r, message)) for r in plan.lost]
            await asyncio.gather(*tasks, return_exceptions=True)
            self.synced.set()
            log.info(
                "agent %s: synced %d execs from the agent",
                state.agent,
                len(states),
                extra=state.log_ctx(),
            )

    def _published(self, agent_state: AgentExec) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            full = await self.state.connection.inspect(agent_state.exec_id)
            await self._on_exit(full)

        return work

    def _failed(self, record: ExecRecord, message: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            await self.ends.fail(record, ErrorCode.AGENT_LOST, message)

        return work
