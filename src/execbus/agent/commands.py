"""Short helper commands the agent runs for itself (``runc state``), not for clients.

:func:`run_command` spawns with the agent's own :func:`~execbus.agent.spawn.spawn`,
reaps through the :class:`~execbus.agent.reaper.ChildReaper` and captures
through :class:`~execbus.agent.output.OutputPump` (bounded), as an exec
would, minus the bookkeeping: no exec id, no journal, no events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

from execbus.agent import compat
from execbus.agent.output import Capture, OutputPump
from execbus.agent.reaper import ChildReaper, exit_status
from execbus.agent.spawn import ProcessPlan, spawn

COMMAND_TIMEOUT = 30.0


async def run_command(
    argv: list[str], reaper: ChildReaper, timeout: float = COMMAND_TIMEOUT
) -> tuple[int, bytes, bytes]:
    """Run a short helper command; ``(exit_code, stdout, stderr)`` (1 MiB each at most)."""
    loop = asyncio.get_running_loop()
    proc, stdio = spawn(ProcessPlan(argv, dict(os.environ), executable=argv[0]))
    exited = reaper.watch_process(proc)
    eofs: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]
    captures = [Capture(1024 * 1024), Capture(1024 * 1024)]
    fds = (stdio.stdout, stdio.stderr)
    pumps = [
        OutputPump(fd, "output", cap, None, _resolver(eof))
        for fd, cap, eof in zip(fds, captures, eofs)
        if fd is not None
    ]
    for pump in pumps:
        pump.start()
    try:
        async with compat.timeout(timeout):
            status = await asyncio.shield(exited)
            await asyncio.wait(eofs)
    finally:
        kill_and_forget(proc.pid, exited)
        for pump in pumps:
            pump.close()
    return exit_status(status)[0], bytes(captures[0].data), bytes(captures[1].data)


def _resolver(fut: asyncio.Future[None]) -> Callable[[], None]:
    return lambda: None if fut.done() else fut.set_result(None)


def kill_and_forget(pid: int, exited: asyncio.Future[int | None]) -> None:
    """SIGKILL the process group of ``pid`` unless its process has been reaped
    (its exit is still reported through ``exited``)."""
    if not exited.done():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
