"""After a reconnect: how are the execs we wait for doing?

Replies and events sent while the connection was down are lost (the
client's private queue was gone with it). So after the robust connection
comes back, :class:`Recovery` asks the agents' owners for the record of
every exec still watched, and resolves the watches of those that finished.
A pool run that was not placed yet when the connection dropped has no agent
to ask: the agents of the workers serving its pool are asked in turn (an
exec found nowhere is still queued, and its events will come).
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS

from execbus.client.cluster import cluster_status
from execbus.client.exits import ExitWatcher, Watch
from execbus.client.requests import ExecRequests
from execbus.errors import BrokerError, ExecbusError, NotFound, UnknownAgent
from execbus.wire.routing import Names

log = logging.getLogger("execbus.client")

RECHECK_ATTEMPTS = 5
RECHECK_DELAY = 1.0
# After a reconnect, how long to listen to worker announcements to find the
# agents of a pool whose run was placed while we were away.
PLACEMENT_LISTEN = 2.0


class Recovery:
    """Re-checks the watched execs after each reconnect, in background tasks of its own."""

    def __init__(
        self,
        requests: ExecRequests,
        exits: ExitWatcher,
        connection: AbstractRobustConnection,
        names: Names,
        user: str,
    ) -> None:
        self._requests = requests
        self._exits = exits
        self._connection = connection
        self._names = names
        self._user = user
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def on_reconnect(self, *_: object) -> None:
        """The connection's reconnect callback: start a :meth:`recheck`."""
        task = asyncio.create_task(self.recheck())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop the re-checks in progress (the client is closing)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def recheck(self) -> None:
        """Ask for the record of every watched exec, a few times while some cannot be asked."""
        for attempt in range(RECHECK_ATTEMPTS):
            if self._closed:
                return
            failed = False
            unplaced: list[Watch] = []
            for watch in self._exits.pending():
                if watch.agent is None:
                    unplaced.append(watch)
                    continue
                try:
                    info = await self._requests.inspect(
                        watch.agent, watch.exec_id, include_output=True
                    )
                    self._exits.deliver_record(info)
                except ExecbusError as exc:
                    log.info("re-check of exec %s failed: %s", watch.exec_id, exc.message)
                    failed = True
            if unplaced:
                failed = not await self.find_placements(unplaced) or failed
            if not failed:
                return
            await asyncio.sleep(RECHECK_DELAY * (attempt + 1))

    async def find_placements(self, watches: list[Watch]) -> bool:
        """Pool runs not placed when we lost the connection: ask the agents of the workers
        serving their pool. An exec found nowhere is still queued (its events will come).
        False if some agent could not be asked."""
        if self._closed:
            return True
        try:
            status = await cluster_status(
                self._connection, self._names, PLACEMENT_LISTEN, [], self._user
            )
        except (*CONNECTION_EXCEPTIONS, BrokerError) as exc:  # BrokerError: no read on control
            log.info("re-check of pool runs failed: %r", exc)
            return False
        complete = True
        for watch in watches:
            pool = watch.target.pool
            candidates = sorted({a for w in status.workers if pool in w.pools for a in w.owned})
            for agent in candidates:
                try:
                    info = await self._requests.inspect(agent, watch.exec_id, include_output=True)
                except (NotFound, UnknownAgent):
                    continue
                except ExecbusError as exc:
                    log.info("re-check of exec %s on %s failed: %s", watch.exec_id, agent, exc)
                    complete = False
                    continue
                self._exits.place(watch, agent)
                self._exits.deliver_record(info)
                break
        return complete
