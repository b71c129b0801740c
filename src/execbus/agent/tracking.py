"""What each exec started, from its spawn until the last of its processes is gone.

An exec's exit is reported when its main process ends, but what it started
in the background may run on (``sh -c 'daemon & exit 0'``). The agent keeps
track of those processes too, as a :class:`ProcessSet` (the exec's cgroup
when cgroups are in use, and the process groups it leads), until none is
left, even after the exit has been acknowledged:

* the exec's ``timeout`` bounds all of them: at its deadline whatever is left
  is killed, even when the main process exited long before;
* on shutdown they are killed with the running execs (after ``--grace``);
* if the agent dies, the lifeline kills them (:mod:`execbus.agent.lifeline`);
* with ``--state-dir`` the journal keeps their identity, so the next life of
  the agent finds and kills what survived (and reports it truthfully).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from execbus.agent import cgroups, procs
from execbus.agent.cgroups import CgroupRoot, ExecCgroup
from execbus.agent.journal import Journal
from execbus.agent.lifeline import Lifeline
from execbus.agent.procs import Leader

log = logging.getLogger(__name__)

# How often processes left behind by finished execs are checked for.
SWEEP_INTERVAL = 1.0


class ProcessSet:
    """The processes of one exec: its cgroup (if any) and the groups it leads."""

    def __init__(
        self, exec_id: str, cgroup: str | None, leaders: list[Leader], *, contained: bool = False
    ) -> None:
        self.exec_id = exec_id
        self.cgroup = cgroup
        self._leaders = leaders
        self._unidentified: tuple[int, ...] = ()  # leaders whose start time is not read yet
        # Every process of the leaders' groups is in the cgroup (born there): the
        # lifeline, which kills the agent's cgroups, need not be told the groups.
        self.contained = contained and cgroup is not None

    @classmethod
    def spawned(
        cls,
        exec_id: str,
        cgroup: ExecCgroup | None,
        pids: tuple[int, ...],
        *,
        contained: bool = False,
    ) -> ProcessSet:
        """Just spawned: the leaders' start times are read now (they cannot have been
        reaped), or, ``contained``, when first needed (:meth:`identify`).

        Read right after a spawn, ``/proc/<pid>/stat`` waits until the child has
        finished its ``execve`` (~0.2 ms here), the agent's whole event loop with
        it. A contained exec's leaders are the agent's children, and its cgroup
        holds all its processes: a start time serves only to signal a group
        while its leader runs (read then), or to journal it. A leader reaped
        before that keeps none, which says the same as its start time would:
        once no process has the leader's pid, what is left in the group is the
        exec's (a pid is not reused while a group has it), and a process that
        has it is not the leader (see :func:`procs.owns_group`)."""
        path = cgroup.path if cgroup else None
        if contained and path is not None:
            pset = cls(exec_id, path, [], contained=True)
            pset._unidentified = pids
            return pset
        return cls(exec_id, path, [(pid, procs.start_time(pid)) for pid in pids])

    @property
    def leaders(self) -> list[Leader]:
        """The process groups of the exec: (leader pid, its start time)."""
        if self._unidentified:
            self.identify()
        return self._leaders

    @property
    def identified(self) -> bool:
        return not self._unidentified

    def identify(self) -> None:
        """Read the start times of the leaders not identified yet (children of the agent)."""
        pids, self._unidentified = self._unidentified, ()
        self._leaders.extend((pid, procs.child_start_time(pid)) for pid in pids)

    @classmethod
    def from_journal(cls, doc: dict[str, Any]) -> ProcessSet | None:
        """What a journal entry says about the exec's processes (None: nothing known)."""
        cgroup = doc.get("cgroup")
        leaders: list[Leader] = []
        for item in doc.get("groups") or []:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], int)
                and item[0] > 1
                and (item[1] is None or isinstance(item[1], str))
            ):
                leaders.append((item[0], item[1]))
        exec_id = str(doc.get("exec_id"))
        if not isinstance(cgroup, str) or not _exec_cgroup(cgroup, exec_id):
            cgroup = None
        if cgroup is None and not leaders:
            return None
        return cls(exec_id, cgroup, leaders)

    def identity(self) -> dict[str, Any]:
        """For the journal."""
        return {"cgroup": self.cgroup, "groups": [[pid, started] for pid, started in self.leaders]}

    def alive(self, members: dict[int, list[int]] | None = None) -> bool:
        """True while any live process of the exec is left (zombies do not count).
        ``members``: one /proc scan for the groups of many sets (see _sweep)."""
        if self.cgroup is not None and cgroups.populated(self.cgroup):
            return True
        return any(procs.group_alive(leader, members) for leader in self.leaders)

    def kill(self) -> bool:
        """SIGKILL every process of the exec; True if there was any."""
        hit = cgroups.kill(self.cgroup) if self.cgroup is not None else False
        return procs.kill_groups(self.leaders) or hit

    def remove(self) -> None:
        """Remove the exec's cgroup (once it is empty)."""
        if self.cgroup is not None:
            cgroups.remove(self.cgroup)


def _exec_cgroup(path: str, exec_id: str) -> bool:
    """True if ``path`` can be the cgroup of that exec (a journal names nothing else)."""
    name = os.path.basename(path)
    return (
        os.path.isabs(path)
        and ".." not in path.split("/")
        and (name == exec_id or name.startswith(exec_id + "."))
        and cgroups.mount_of(path) is not None
    )


class Tracker:
    """Every exec's processes, until they are gone."""

    def __init__(self, journal: Journal, cgroup_root: CgroupRoot | None) -> None:
        self.journal = journal
        self.cgroup_root = cgroup_root
        self.lifeline = Lifeline(
            str(journal.directory) if journal.directory else None,
            cgroup_root.life if cgroup_root is not None else None,
        )
        self._sets: dict[str, ProcessSet] = {}
        self._lingering: set[str] = set()
        self._acked: set[str] = set()
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def cgroup_for(self, exec_id: str) -> ExecCgroup | None:
        """A fresh cgroup for an exec about to be spawned (None without cgroups).

        The lifeline is started first: it must run before anything it guards
        does (it kills every cgroup of this agent's life, so the exec's needs no
        registration), and it keeps the agent's own cgroup populated while the
        agent steps into the exec's for the spawn (a service manager watching
        that cgroup never sees it empty).
        """
        self.lifeline.start()
        if self.cgroup_root is None:
            return None
        try:
            return self.cgroup_root.create(exec_id)
        except OSError as exc:
            log.warning("cannot create the exec's cgroup: %s", exc, extra={"exec_id": exec_id})
            return None

    def track(self, pset: ProcessSet) -> None:
        """The exec's processes run: they die with the agent from now on.

        An exec contained in its cgroup is the lifeline's already (it kills the
        agent's cgroups), and its journal entry names the cgroup; with a
        journal its leaders are identified and journaled on the next turn of
        the event loop, else when first needed (see ProcessSet.spawned).
        """
        self._sets[pset.exec_id] = pset
        if not pset.identified:
            if self.journal.directory is not None:
                asyncio.get_running_loop().call_soon(self._identify, pset)
            return
        self.lifeline.register(pset.exec_id, pset.cgroup, [] if pset.contained else pset.leaders)
        self.journal.identify(pset.exec_id, pset.identity())

    def _identify(self, pset: ProcessSet) -> None:
        pset.identify()  # unless a kill or an exit check needed them first
        if self._sets.get(pset.exec_id) is pset:
            self.journal.identify(pset.exec_id, pset.identity())

    def discard_cgroup(self, exec_id: str, cgroup: ExecCgroup | None) -> None:
        """The spawn failed: its cgroup is not needed."""
        if cgroup is not None:
            self.lifeline.release(exec_id)
            cgroup.remove()

    def kill(self, exec_id: str) -> bool:
        pset = self._sets.get(exec_id)
        return pset.kill() if pset is not None else False

    def settle(self, exec_id: str, deadline: float | None) -> None:
        """The exec's main process ended: release its set now, or once what it left
        behind is gone (killed at ``deadline``, a loop time, if it has a timeout)."""
        pset = self._sets.get(exec_id)
        if pset is None:
            return
        if not pset.alive():
            self._release(exec_id)
            return
        loop = asyncio.get_running_loop()
        log.info("processes of the exec run on after its exit", extra={"exec_id": exec_id})
        self._lingering.add(exec_id)
        if deadline is not None:
            self._deadlines[exec_id] = loop.call_at(
                max(deadline, loop.time()), self._deadline, exec_id
            )
        self._schedule_sweep(loop)

    def _deadline(self, exec_id: str) -> None:
        self._deadlines.pop(exec_id, None)
        if self.kill(exec_id):
            log.info(
                "exec timed out: killed the processes it left behind", extra={"exec_id": exec_id}
            )

    def acked(self, exec_id: str) -> bool:
        """The exec was acknowledged; True when processes of it still run (kept journaled)."""
        if exec_id in self._lingering:
            self._acked.add(exec_id)
            return True
        return False

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and self._lingering:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        check: dict[str, ProcessSet] = {}
        for exec_id in list(self._lingering):
            pset = self._sets.get(exec_id)
            if pset is None:
                self._release(exec_id)
            elif pset.cgroup is None or not cgroups.populated(pset.cgroup):
                check[exec_id] = pset  # its process groups tell
        if check:  # one scan of /proc for all of them
            members = procs.live_group_members(
                pid for pset in check.values() for pid, _ in pset.leaders
            )
            for exec_id, pset in check.items():
                if not pset.alive(members):
                    self._release(exec_id)
        self._schedule_sweep(loop)

    def _release(self, exec_id: str) -> None:
        pset = self._sets.pop(exec_id, None)
        self._lingering.discard(exec_id)
        timer = self._deadlines.pop(exec_id, None)
        if timer is not None:
            timer.cancel()
        if pset is not None:
            pset.remove()
        self.lifeline.release(exec_id)
        if exec_id in self._acked:
            self._acked.discard(exec_id)
            self.journal.forget(exec_id)

    @property
    def lingering(self) -> int:
        """Finished execs whose processes still run."""
        return len(self._lingering)

    async def close(self, wait: float) -> None:
        """Shutdown: kill what finished execs left behind, wait for it, stop the lifeline."""
        for exec_id in list(self._lingering):
            self.kill(exec_id)
        deadline = time.monotonic() + wait
        while self._lingering and time.monotonic() < deadline:
            for exec_id in list(self._lingering):
                pset = self._sets.get(exec_id)
                if pset is None or not pset.alive():
                    self._release(exec_id)
            if self._lingering:
                await asyncio.sleep(0.02)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        # Whatever is still registered (processes that would not die in time) is
        # killed once more by the lifeline as it sees the agent go.
        self.lifeline.close()
        if self.cgroup_root is not None:
            self.cgroup_root.close()
