"""The one ordered path every event of an exec takes to the broker.

Per exec, events leave in lifecycle order: created, started, output by seq,
then exited or failed. They are published as tasks, without waiting for each
other's confirms: tasks take their first step in creation order, and a
publish queues its frames in its first step (or queues behind the channel
lock, which is FIFO), so the events of an exec reach the broker in the order
they were sent. :class:`ExecEvents` keeps the confirms of what was sent until
someone waits for them (before a delivery is settled), and holds back output
that arrives before the exec's start was recorded, so it cannot overtake
``exec.started``.

Output chunks are pipelined too, within a window: the agent's read loop
waits in :meth:`ExecEvents.send_output` only while :data:`OUTPUT_WINDOW`
chunks of this agent are unconfirmed (that wait is the backpressure that
slows the agent, and through it the command, when the broker falls behind).
Waiting for every chunk's confirm before reading the next one made a
stream's rate one 64 KiB chunk per broker round trip.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque

from execbus.registry import ExecRecord
from execbus.wire import events as ev
from execbus.wire.routing import Names
from execbus.worker.context import Outbox

log = logging.getLogger("execbus.worker")

#: Output chunks of one agent that may be unconfirmed at a time (64 KiB each at most:
#: with their base64 encoding, about 1.4 MiB in flight per agent).
OUTPUT_WINDOW = 16


class ExecEvents:
    """Publishes the events of one agent's execs, in order, tracking their confirms."""

    def __init__(self, agent: str, names: Names, outbox: Outbox) -> None:
        self.agent = agent
        self.names = names
        self.outbox = outbox
        # Events sent but not yet confirmed, per exec (see send and confirmed).
        self._unconfirmed: dict[str, list[asyncio.Future[None]]] = {}
        # Output that arrived before the exec's start was recorded.
        self._held_output: dict[str, list[ev.OutputEvent]] = {}
        # Output chunks sent, oldest first, until confirmed (see send_output).
        self._output_inflight: deque[asyncio.Future[None]] = deque()

    def send(
        self, record: ExecRecord, kind: str, event: ev.EventBase, *, track: bool = True
    ) -> asyncio.Future[None]:
        """Start publishing an event of ``record``; returns its confirm. ``track``: keep
        the confirm for :meth:`confirmed` (output chunks are awaited by their sender)."""
        task = asyncio.ensure_future(self._publish(record, kind, event))
        if track:
            self._unconfirmed.setdefault(record.exec_id, []).append(task)
        return task

    async def _publish(self, record: ExecRecord, kind: str, event: ev.EventBase) -> None:
        key = self.names.event_routing_key(self.agent, record.container_id, kind)
        await self.outbox.event(key, event, event.event_id)

    async def confirmed(self, record: ExecRecord) -> None:
        """Wait until every event sent for ``record`` so far is confirmed."""
        tasks = self._unconfirmed.pop(record.exec_id, None)
        if not tasks:
            return
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    def take_confirms(self, record: ExecRecord) -> list[asyncio.Future[None]]:
        """The confirms still pending for ``record`` (the caller now waits for them)."""
        return self._unconfirmed.pop(record.exec_id, [])

    def hold_output(self, record: ExecRecord, event: ev.OutputEvent) -> None:
        """Keep a chunk that arrived before the start was recorded (see release_output)."""
        self._held_output.setdefault(record.exec_id, []).append(event)

    def drop_held(self, exec_id: str) -> None:
        """Forget the held chunks of a start that never happened."""
        self._held_output.pop(exec_id, None)

    def release_output(self, record: ExecRecord) -> None:
        """Send the output held back while the start was pending, in arrival order.

        Sent here and now (not from a task of its own), so these chunks queue
        behind exec.started and ahead of anything the caller sends next.
        """
        for event in self._held_output.pop(record.exec_id, ()):
            sent = self.send(record, "output", event, track=False)
            sent.add_done_callback(functools.partial(self._check_sent, record, event))

    async def send_output(self, record: ExecRecord, event: ev.OutputEvent) -> None:
        """Publish one chunk; wait while :data:`OUTPUT_WINDOW` chunks of this agent are
        unconfirmed (backpressure). A lost chunk is logged."""
        sent = self.send(record, "output", event, track=False)
        sent.add_done_callback(functools.partial(self._check_sent, record, event))
        inflight = self._output_inflight
        inflight.append(sent)
        while inflight and (inflight[0].done() or len(inflight) > OUTPUT_WINDOW):
            oldest = inflight.popleft()
            if not oldest.done():
                await asyncio.wait((oldest,))

    def _check_sent(
        self, record: ExecRecord, event: ev.OutputEvent, sent: asyncio.Future[None]
    ) -> None:
        if not sent.cancelled() and (exc := sent.exception()) is not None:
            self._lost(record, event, exc)

    def _lost(self, record: ExecRecord, event: ev.OutputEvent, exc: object) -> None:
        log.warning(
            "exec %s: output chunk %s/%d lost: %s",
            record.exec_id,
            event.stream,
            event.seq,
            exc,
            extra={"agent": self.agent, "exec_id": record.exec_id},
        )
