"""Watching execs for their end, independently of the worker that runs them.

A run's reply comes from the worker that started it; if that worker dies,
the worker that takes the agent over publishes the exit (and replies too).
So the client also listens to ``exec.<agent>.*.exited`` and ``.failed`` on
its inbox, and completes a pending exec from whichever arrives first.
Duplicates (the same exit published by two workers) are dropped by
``event_id``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from execbus.client.dedupe import SeenIds
from execbus.client.inbox import Inbox
from execbus.wire.events import Event, ExitedEvent, FailedEvent
from execbus.wire.records import FINISHED_STATES, ExecInfo
from execbus.wire.routing import Names

# How an exec ended: its exit or failure event, or its finished record (by inspect).
Final = ExitedEvent | FailedEvent | ExecInfo


@dataclass(eq=False, slots=True)
class Watch:
    """One waiter for the end of one exec."""

    agent: str
    exec_id: str
    future: asyncio.Future[Final] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ExitWatcher:
    """Resolves :class:`Watch`\\ es from exit events on the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._watches: dict[str, list[Watch]] = defaultdict(list)
        self._seen = SeenIds()

    async def watch(self, agent: str, exec_id: str) -> Watch:
        """Start watching ``exec_id`` (call before the request that may end it)."""
        for kind in ("exited", "failed"):
            await self._inbox.bind(Names.event_binding(agent, None, kind))
        watch = Watch(agent, exec_id)
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

    def pending(self) -> list[Watch]:
        """Every watch not yet resolved."""
        return [w for ws in self._watches.values() for w in ws if not w.future.done()]

    def deliver(self, event: Event) -> None:
        """An event from the inbox: resolve the watches of its exec (first copy only)."""
        if not isinstance(event, ExitedEvent | FailedEvent):
            return
        if not self._seen.first_time(event.event_id):
            return
        self._resolve(event.agent, event.exec_id, event)

    def deliver_record(self, info: ExecInfo) -> None:
        """A record fetched after a reconnect: resolve the watches if it has finished."""
        if info.state in FINISHED_STATES:
            self._resolve(info.agent, info.exec_id, info)

    def fail_all(self, exc: BaseException) -> None:
        """Wake every watch with ``exc`` (the client is closing)."""
        for watch in self.pending():
            watch.future.set_exception(exc)
            watch.future.exception()  # retrieved: its waiter may be gone already
        self._watches.clear()

    def _resolve(self, agent: str, exec_id: str, final: Final) -> None:
        for watch in self._watches.get(exec_id, []):
            if watch.agent == agent and not watch.future.done():
                watch.future.set_result(final)
