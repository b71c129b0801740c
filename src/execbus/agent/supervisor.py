"""The table of execs: idempotent start, retention until ack, events to watchers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Protocol

from execbus.agent import lifeline
from execbus.agent.cgroups import CgroupRoot
from execbus.agent.containers import Backend, backend_for, make_backends
from execbus.agent.errors import (
    AGENT_LOST,
    CONFLICT,
    FORBIDDEN,
    INTERNAL,
    LIMIT_EXCEEDED,
    NOT_FINISHED,
    NOT_FOUND,
    AgentError,
    StartFailure,
)
from execbus.agent.execs import RUNNING, Exec
from execbus.agent.execspec import ExecSpec
from execbus.agent.journal import MAX_TOMBSTONES, Journal
from execbus.agent.metrics import AgentMetrics
from execbus.agent.options import AgentOptions
from execbus.agent.protocol import encode_frame
from execbus.agent.reaper import ChildReaper
from execbus.agent.tracking import ProcessSet, Tracker

log = logging.getLogger(__name__)

# How long shutdown waits for killed execs to be reaped and reported.
KILL_WAIT = 5.0
# How long a starting agent waits for the processes of its previous life it killed.
RECOVERY_KILL_WAIT = 5.0

LOST_KILLED_NOW = (
    "the agent restarted; the exec's processes were still running and have been killed "
    "(exit status unknown)"
)
LOST_KILLED_WITH_AGENT = (
    "the agent restarted; the exec's processes were killed when the agent died "
    "(exit status unknown)"
)
LOST_ENDED = "the agent restarted; the process had already ended (its exit status is lost)"


class Watcher(Protocol):
    """A connection that called ``watch`` (see :class:`execbus.agent.session.Session`)."""

    def send_frame(self, frame: bytes) -> bool:
        """Queue an encoded frame; True when the connection is congested."""
        ...

    def wait_writable(self) -> Awaitable[None]:
        """Completes once the connection has room again (never raises)."""
        ...


class Supervisor:
    """Owns every exec of the agent until a client acknowledges its exit."""

    def __init__(self, options: AgentOptions) -> None:
        """Raises JournalError for an unusable ``state_dir``, CgroupError for an
        unusable ``cgroup_root``."""
        self.options = options
        self.reaper = ChildReaper()
        self.metrics = AgentMetrics()
        self.journal = Journal(options.state_dir)
        self.tracker = Tracker(self.journal, CgroupRoot.open(options.cgroup_root))
        self.backends: dict[str, Backend] = make_backends(options, self.reaper)
        self._execs: dict[str, Exec] = {}
        self._starting: dict[str, asyncio.Future[Exec]] = {}
        self._watchers: set[Watcher] = set()
        self._launches: set[asyncio.Task[None]] = set()
        self._closing = False
        # Exec ids already acknowledged: a late or redelivered start for one of
        # them must not run the command again (bounded; kept across restarts
        # with --state-dir).
        self._acked: OrderedDict[str, None] = OrderedDict.fromkeys(self.journal.tombstones())
        self._recover()

    def _recover(self) -> None:
        """Execs journaled by a previous life of the agent: kill what survived of
        them, and report each one lost, saying what became of its processes."""
        killed_with_agent = (
            lifeline.read_log(self.options.state_dir) if self.options.state_dir else set()
        )
        outcomes: dict[str, str] = {}
        killed: list[ProcessSet] = []
        found: list[tuple[dict[str, object], ProcessSet | None]] = []
        for doc in self.journal.leftovers():
            exec_id = str(doc["exec_id"])
            pset = ProcessSet.from_journal(doc)
            found.append((doc, pset))
            if pset is not None and pset.alive():
                pset.kill()
                killed.append(pset)
                outcomes[exec_id] = LOST_KILLED_NOW
            elif exec_id in killed_with_agent:
                outcomes[exec_id] = LOST_KILLED_WITH_AGENT
            else:
                outcomes[exec_id] = LOST_ENDED
        deadline = time.monotonic() + RECOVERY_KILL_WAIT
        while any(p.alive() for p in killed) and time.monotonic() < deadline:
            time.sleep(0.01)
        for doc, pset in found:
            exec_id = str(doc["exec_id"])
            if pset is not None:
                if pset.alive():
                    log.error("lost exec survived SIGKILL", extra={"exec_id": exec_id})
                pset.remove()
            extra = {"exec_id": exec_id, "outcome": outcomes[exec_id]}
            if doc.get("acked"):  # acknowledged; only its processes were still tracked
                self.journal.forget(exec_id)
                log.warning("processes of an acknowledged exec found after a restart", extra=extra)
                continue
            meta = doc.get("meta")
            spec = ExecSpec(
                exec_id=exec_id,
                cmd=["?"],
                tty=bool(doc.get("tty", False)),
                container_id=str(doc.get("container_id") or ""),
                meta=meta if isinstance(meta, dict) else {},
            )
            exe = Exec(spec, self)
            started_at = doc.get("started_at")
            if isinstance(started_at, (int, float)):
                exe.started_at = float(started_at)
            self._execs[spec.exec_id] = exe
            exe.fail(StartFailure(AGENT_LOST, outcomes[exec_id]))
            log.warning("exec lost in an agent restart", extra=extra)
        root = self.tracker.cgroup_root
        if root is not None:
            for path in root.sweep_dead_lives():
                log.warning("killed the processes a dead agent left in %s", path)

    # -- start -----------------------------------------------------------

    async def start(self, spec: ExecSpec) -> tuple[Exec, bool]:
        """Spawn ``spec`` unless its exec id is known; ``(exec, new)``."""
        known = self._execs.get(spec.exec_id)
        if known is not None:
            return known, False
        if spec.exec_id in self._acked:
            raise AgentError(
                CONFLICT,
                f"exec {spec.exec_id!r} already ran here and was acknowledged; "
                "use a new exec id to run the command again",
            )
        pending = self._starting.get(spec.exec_id)
        if pending is not None:
            return await asyncio.shield(pending), False
        backend = self._admit(spec)
        if self._closing:
            # Never answered: the connection closes with the agent, and the
            # client retries against the agent that replaces this one.
            await asyncio.get_running_loop().create_future()
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume_exception)
        self._starting[spec.exec_id] = fut
        # A task of its own: a client that disconnects mid-start must not
        # abandon a process that is being spawned.
        task = asyncio.ensure_future(self._launch(spec, backend, fut))
        self._launches.add(task)
        task.add_done_callback(self._launches.discard)
        return await asyncio.shield(fut), True

    def _admit(self, spec: ExecSpec) -> Backend:
        if len(self._execs) + len(self._starting) >= self.options.max_execs:
            raise AgentError(
                LIMIT_EXCEEDED,
                f"the agent holds {self.options.max_execs} execs (running or not acknowledged)",
            )
        if spec.privileged and not self.options.allow_privileged:
            raise AgentError(FORBIDDEN, "privileged execs need the agent's --allow-privileged")
        return backend_for(self.backends, spec.container_id)

    async def _launch(self, spec: ExecSpec, backend: Backend, fut: asyncio.Future[Exec]) -> None:
        exe = Exec(spec, self)
        cgroup = self.tracker.cgroup_for(spec.exec_id)
        # Journal before spawning: killed between the spawn and the journal, the
        # next life of the agent would not know the exec and would run it again.
        self.journal.record(spec, exe.started_at, cgroup.path if cgroup else None)
        try:
            launched = await backend.launch(spec, cgroup)
        except StartFailure as failure:
            self.tracker.discard_cgroup(spec.exec_id, cgroup)
            log.info(
                "exec failed to start: %s",
                failure.message,
                extra={"exec_id": spec.exec_id, "code": failure.code},
            )
            self._execs[spec.exec_id] = exe
            self.metrics.exec_started(spawned=False)
            exe.fail(failure)
        except AgentError as exc:
            self.tracker.discard_cgroup(spec.exec_id, cgroup)
            self.journal.forget(spec.exec_id)
            fut.set_exception(exc)
            return
        except Exception as exc:
            self.tracker.discard_cgroup(spec.exec_id, cgroup)
            self.journal.forget(spec.exec_id)
            log.exception("exec start crashed", extra={"exec_id": spec.exec_id})
            fut.set_exception(AgentError(INTERNAL, f"starting the exec failed: {exc}"))
            return
        else:
            self._execs[spec.exec_id] = exe
            self.metrics.exec_started(spawned=True)
            procs = ProcessSet.spawned(
                spec.exec_id, cgroup, launched.kill_groups, contained=launched.contained
            )
            self.tracker.track(procs)
            exe.attach(launched, procs)
            log.info(
                "exec started",
                extra={"exec_id": spec.exec_id, "pid": exe.pid, "program": spec.cmd[0]},
            )
        finally:
            del self._starting[spec.exec_id]
        fut.set_result(exe)

    # -- lookups ---------------------------------------------------------

    async def lookup(self, exec_id: str) -> Exec:
        """The exec with this id (waiting for a start in progress)."""
        pending = self._starting.get(exec_id)
        if pending is not None:
            return await asyncio.shield(pending)
        exe = self._execs.get(exec_id)
        if exe is None:
            raise AgentError(NOT_FOUND, f"no exec {exec_id!r}")
        return exe

    def knows(self, exec_id: str) -> bool:
        """True when the exec is held or being started (a start would not spawn it)."""
        return exec_id in self._execs or exec_id in self._starting

    def all(self) -> list[Exec]:
        return list(self._execs.values())

    def ack(self, exec_id: str) -> None:
        """Forget a finished exec."""
        exe = self._execs.get(exec_id)
        if exe is None:
            raise AgentError(NOT_FOUND, f"no exec {exec_id!r}")
        if exe.state == RUNNING:
            raise AgentError(NOT_FINISHED, f"exec {exec_id!r} is still running")
        del self._execs[exec_id]
        self.journal.acknowledged(exec_id, lingering=self.tracker.acked(exec_id))
        self._acked[exec_id] = None
        if len(self._acked) > MAX_TOMBSTONES:
            self._acked.popitem(last=False)

    # -- events (ExecSink) -------------------------------------------------

    def add_watcher(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def output(self, exe: Exec, stream: str, seq: int, data: bytes) -> Awaitable[object] | None:
        if not self._watchers:
            return None
        header = {"event": "output", "exec_id": exe.exec_id, "stream": stream, "seq": seq}
        frame = encode_frame(header, data)
        congested = [w.wait_writable() for w in list(self._watchers) if w.send_frame(frame)]
        return asyncio.gather(*congested) if congested else None

    def finished(self, exe: Exec) -> None:
        if exe.procs is not None:
            self.tracker.settle(exe.exec_id, exe.deadline)
        self.metrics.exec_finished(exe.exit)
        extra = {"exec_id": exe.exec_id, "state": exe.state}
        if exe.exit is not None:
            extra.update(exit_code=exe.exit["exit_code"], signal=exe.exit["signal"])
        log.info("exec finished", extra=extra)
        if self._watchers:
            frame = encode_frame({"event": "exit", **exe.to_state()}, exe.captures())
            for watcher in list(self._watchers):
                watcher.send_frame(frame)

    # -- shutdown --------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Let running execs finish for ``grace`` seconds, then kill and report them."""
        self._closing = True
        if self._starting:
            await asyncio.wait(list(self._starting.values()), timeout=KILL_WAIT)
        running = [e for e in self._execs.values() if e.state == RUNNING]
        pending = {e.finished for e in running}
        if pending and grace > 0:
            log.info("waiting for %d running execs", len(pending), extra={"grace": grace})
            _, pending = await asyncio.wait(pending, timeout=grace)
        for exe in running:
            if not exe.finished.done():
                log.info("killing exec at shutdown", extra={"exec_id": exe.exec_id})
                exe.kill()
        if pending:
            await asyncio.wait(pending, timeout=KILL_WAIT)
        # Then what finished execs left running in the background.
        await self.tracker.close(KILL_WAIT)
        for backend in self.backends.values():
            backend.close()


def _consume_exception(fut: asyncio.Future[Exec]) -> None:
    # Mark the exception retrieved even if every waiter went away.
    if not fut.cancelled():
        fut.exception()
