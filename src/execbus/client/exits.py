"""Watching execs for their end, independently of the worker that runs them.

A run's reply comes from the worker that started it; if that worker dies,
the worker that takes the agent over publishes the exit (and replies too).
So the client also listens to ``exec.<agent>.*.exited`` and ``.failed`` on
its inbox, and completes a pending exec from whichever arrives first.
Duplicates (the same exit published by two workers) are dropped by
``event_id``.

A run sent to a pool has no agent until a worker places it: its watch
listens to ``exec.*.*.exited`` / ``.failed`` (filtered by exec id) and to
``exec.*.*.created``, whose ``agent`` tells where it was placed (the worker
publishes it before starting the process). From then on the watch belongs
to that agent.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from execbus.client.dedupe import SeenIds
from execbus.client.inbox import Inbox
from execbus.client.target import Target
from execbus.wire.events import CreatedEvent, Event, ExitedEvent, FailedEvent, StartedEvent
from execbus.wire.records import FINISHED_STATES, ExecInfo
from execbus.wire.routing import Names

# How an exec ended: its exit or failure event, or its finished record (by inspect).
Final = ExitedEvent | FailedEvent | ExecInfo

END_KINDS = ("exited", "failed")
POOL_KINDS = ("created", *END_KINDS)


def _new_future() -> asyncio.Future[str]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False, slots=True)
class Watch:
    """One waiter for the end of one exec, sent to ``target``.

    ``agent`` is ``None`` for a pool run not yet placed; ``placed`` completes
    with the agent once it is known (at once for an agent run).
    """

    target: Target
    exec_id: str
    agent: str | None = None
    future: asyncio.Future[Final] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    placed: asyncio.Future[str] = field(default_factory=_new_future)


class ExitWatcher:
    """Resolves :class:`Watch`\\ es from exit events on the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._watches: dict[str, list[Watch]] = defaultdict(list)
        self._seen = SeenIds()

    async def watch(self, target: Target, exec_id: str) -> Watch:
        """Start watching ``exec_id`` (call before the request that may end it).

        A pool run: watch the exec on every agent until it is placed.
        """
        agent = target.agent
        for kind in END_KINDS if agent is not None else POOL_KINDS:
            await self._inbox.bind(Names.event_binding(agent, None, kind))
        watch = Watch(target, exec_id, agent)
        if agent is not None:
            watch.placed.set_result(agent)
        self._watches[exec_id].append(watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Stop watching (idempotent)."""
        watches = self._watches.get(watch.exec_id)
        if watches is not None and watch in watches:
            watches.remove(watch)
            if not watches:
                del self._watches[watch.exec_id]
        if not watch.future.done():
            watch.future.cancel()
        if not watch.placed.done():
            watch.placed.cancel()

    def watching(self, exec_id: str) -> bool:
        """True while someone waits for ``exec_id`` (its events are worth parsing)."""
        return exec_id in self._watches

    def pending(self) -> list[Watch]:
        """Every watch not yet resolved."""
        return [w for ws in self._watches.values() for w in ws if not w.future.done()]

    @staticmethod
    def place(watch: Watch, agent: str) -> None:
        """The agent a pool run was placed on is known: the watch follows it from now on."""
        if watch.agent is None:
            watch.agent = agent
        if not watch.placed.done():
            watch.placed.set_result(watch.agent)

    def deliver(self, event: Event) -> None:
        """An event from the inbox: resolve the watches of its exec (first copy only)."""
        if isinstance(event, CreatedEvent | StartedEvent):
            for watch in self._watches.get(event.exec_id, []):
                if watch.agent is None:
                    self.place(watch, event.agent)
            return
        if not isinstance(event, ExitedEvent | FailedEvent):
            return
        if not self._seen.first_time(event.event_id):
            return
        self._resolve(event.agent, event.exec_id, event)

    def deliver_record(self, info: ExecInfo) -> None:
        """A record fetched after a reconnect: resolve the watches if it has finished."""
        for watch in self._watches.get(info.exec_id, []):
            if watch.agent is None:
                self.place(watch, info.agent)
        if info.state in FINISHED_STATES:
            self._resolve(info.agent, info.exec_id, info)

    def fail_all(self, exc: BaseException) -> None:
        """Wake every watch with ``exc`` (the client is closing)."""
        for watch in self.pending():
            watch.future.set_exception(exc)
            watch.future.exception()  # retrieved: its waiter may be gone already
            if not watch.placed.done():
                watch.placed.cancel()
        self._watches.clear()

    def _resolve(self, agent: str, exec_id: str, final: Final) -> None:
        for watch in self._watches.get(exec_id, []):
            if watch.agent is None:
                self.place(watch, agent)
            if watch.agent == agent and not watch.future.done():
                watch.future.set_result(final)
