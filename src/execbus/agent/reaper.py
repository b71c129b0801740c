"""Waiting for child processes without threads, signals or per-child polling.

Each child is watched through a pidfd (``os.pidfd_open``, Linux >= 5.3) that
the event loop polls like any other file descriptor; when it becomes readable
the child is reaped with ``waitpid(pid, WNOHANG)``. Only our own pids are
waited for, so an embedding program's child watcher is never disturbed. On a
kernel without pidfds a single shared timer polls all watched children.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess

log = logging.getLogger(__name__)

_FALLBACK_INTERVAL = 0.05


def exit_status(waitstatus: int | None) -> tuple[int, int | None]:
    """``(exit_code, signal_number)`` of a wait status; 128+n when signalled."""
    if waitstatus is None:
        return 255, None
    code = os.waitstatus_to_exitcode(waitstatus)
    if code < 0:
        return 128 - code, -code
    return code, None


class ChildReaper:
    """Reaps children of this process and resolves a future with the wait status.

    The future's result is ``None`` when someone else reaped the child first.
    """

    def __init__(self) -> None:
        self._polled: dict[int, asyncio.Future[int | None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch_process(self, proc: subprocess.Popen[bytes]) -> asyncio.Future[int | None]:
        """Wait for a ``Popen`` child and record its exit code on it.

        Setting ``returncode`` keeps ``Popen`` from ever calling ``waitpid``
        itself (its destructor would otherwise do so for a running child).
        """
        fut = self.watch(proc.pid)
        fut.add_done_callback(lambda f: setattr(proc, "returncode", exit_status(f.result())[0]))
        return fut

    def watch(self, pid: int) -> asyncio.Future[int | None]:
        """Start waiting for ``pid`` (a child of this process)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int | None] = loop.create_future()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if not self._polled:
                log.debug("pidfd_open unavailable (%s), polling children", exc)
            self._polled[pid] = fut
            self._schedule(loop)
            return fut
        loop.add_reader(pidfd, self._on_pidfd, loop, pid, pidfd, fut)
        return fut

    def _on_pidfd(
        self, loop: asyncio.AbstractEventLoop, pid: int, pidfd: int, fut: asyncio.Future[int | None]
    ) -> None:
        done, status = _try_reap(pid)
        if not done:
            return
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not fut.done():
            fut.set_result(status)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self._polled:
            self._timer = loop.call_later(_FALLBACK_INTERVAL, self._poll, loop)

    def _poll(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        for pid, fut in list(self._polled.items()):
            done, status = _try_reap(pid)
            if done:
                del self._polled[pid]
                if not fut.done():
                    fut.set_result(status)
        self._schedule(loop)


def _try_reap(pid: int) -> tuple[bool, int | None]:
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        log.warning("child was reaped by someone else", extra={"pid": pid})
        return True, None
    return (got == pid), (status if got == pid else None)
