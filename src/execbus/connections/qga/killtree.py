"""Signals and timeouts, emulated: qemu-ga cannot signal a process.

So a ``/bin/sh`` helper run through ``guest-exec`` signals the process and
its descendants (qemu-ga's children are not group leaders: they share
qemu-ga's own process group, which must never be signalled). Without
``/bin/sh`` the guest's ``kill`` signals the pid alone; without either, the
guest cannot be signalled at all (:class:`~execbus.errors.Unsupported`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from execbus.connections.qga.stream import QgaCall, QgaCommandError
from execbus.errors import AgentUnavailable, Conflict, Unsupported

log = logging.getLogger("execbus.qga")

HELPER_NAME = "execbus-qga-kill"
# Signals a process and all its descendants. Walking /proc first and stopping
# each process found (for SIGKILL) keeps the tree from forking away while we
# collect it; descendants matter because qemu-ga reports ``exited`` only once
# every holder of the output pipes is gone. ``kill -- -PID`` covers execs that
# made themselves group leaders; qemu-ga's own group is never named.
KILL_TREE_SCRIPT = r"""
sig=$1 root=$2
kids() { cat /proc/"$1"/task/*/children 2>/dev/null || pgrep -P "$1" 2>/dev/null; }
[ "$sig" = 9 ] && kill -STOP "$root" 2>/dev/null
all= level=$root
while [ -n "$level" ]; do
  next=
  for p in $level; do
    for c in $(kids "$p"); do
      [ "$sig" = 9 ] && kill -STOP "$c" 2>/dev/null
      next="$next $c"
    done
  done
  all="$all$next" level=$next
done
kill -"$sig" "$root"; rc=$?
kill -"$sig" -- -"$root" 2>/dev/null
[ -n "$all" ] && kill -"$sig" $all 2>/dev/null
exit $rc
"""


class SignalHelper:
    """Signals guest processes through short helpers run with ``guest-exec``.

    ``call`` runs one qemu-ga command on the live stream; ``timeout`` bounds
    how long a helper may take; its status is polled from ``poll_initial``
    doubling to ``poll_max``.
    """

    def __init__(
        self, call: QgaCall, *, name: str, timeout: float, poll_initial: float, poll_max: float
    ) -> None:
        self._call = call
        self._name = name
        self._timeout = timeout
        self._poll_initial = poll_initial
        self._poll_max = poll_max

    async def signal_tree(self, pid: int, signum: int) -> None:
        """Signal ``pid`` and its descendants from inside the guest.

        Raises :class:`Conflict` when the process is gone already.
        """
        argv = ["/bin/sh", "-c", KILL_TREE_SCRIPT, HELPER_NAME, str(signum), str(pid)]
        try:
            status = await self.run_helper(argv)
        except QgaCommandError as exc:
            if exc.command != "guest-exec":
                raise
            log.info("qemu-ga %s: no /bin/sh (%s); signalling the pid only", self._name, exc.desc)
            try:
                status = await self.run_helper(["kill", f"-{signum}", str(pid)])
            except QgaCommandError as exc2:
                if exc2.command != "guest-exec":
                    raise
                raise Unsupported(
                    "qemu-ga cannot signal processes, and the guest has neither /bin/sh nor "
                    f"kill to do it: {exc2.desc}"
                ) from exc2
        if status.get("exitcode") != 0:
            raise Conflict(f"pid {pid} is not running in the guest any more")

    async def run_helper(self, argv: list[str]) -> dict[str, Any]:
        """Run a short helper through guest-exec and collect its status (qemu-ga keeps
        every child's status until it is read, so it is always read)."""
        args = {"path": argv[0], "arg": argv[1:], "capture-output": True, "input-data": ""}
        pid = int((await self._call("guest-exec", args))["pid"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        delay = self._poll_initial
        while True:
            status: dict[str, Any] = await self._call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status
            if loop.time() >= deadline:
                raise AgentUnavailable(f"the signal helper (pid {pid}) did not finish in time")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_max)
