"""The lifeline: execs die with the agent, even when the agent is killed outright.

A process the agent started does not die when the agent does: killed with
SIGKILL (or crashing, or OOM-killed) the agent leaves its execs running,
reparented to PID 1, with nothing left that knows them. ``PR_SET_PDEATHSIG``
would reach the direct child only (not what it started), is cleared by a
set-uid program, and needs code in the child between fork and exec, which
costs the fast ``vfork`` spawn path (~3 ms per exec).

So the agent starts one small helper process, the lifeline (a fresh
``python3 -I -S`` in a session of its own, ignoring SIGINT, SIGTERM and
SIGHUP). With cgroups it is given the directory of the agent's life
(``<root>/<life>``, see :mod:`execbus.agent.cgroups`) when it starts: every
exec cgroup below it is the agent's, so an exec spawned into its cgroup costs
the lifeline nothing. What is not in such a cgroup it is told over a pipe::

    + <exec_id> g <pgid> <leader start time>
    + <exec_id> c <cgroup path>      (a cgroup elsewhere)
    - <exec_id>                      (its processes are gone)

When the pipe reaches end of file (the agent exited, however it exited) the
lifeline kills every cgroup of the life that still holds a process (but the
agent's own refuge, ``agent.home``) and every process group and cgroup still
registered, appends the ids of the execs it killed to ``lifeline.log`` in the
state directory (so the next life of the agent can say what happened), and
exits. After a graceful shutdown nothing is left and it just exits.

What the lifeline cannot cover: the lifeline killed together with the agent
(``kill -9`` of both). Then with ``--state-dir`` the next agent kills what
it finds of its journaled execs, and with cgroups it kills what dead agents
left under ``--cgroup-root``; without either, those processes survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys

from execbus.agent.procs import Leader

log = logging.getLogger(__name__)

LOG_NAME = "lifeline.log"
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from execbus.agent.lifeline import guard_main; guard_main(sys.argv[2:])"
)


def _package_parent() -> str:
    """The ``sys.path`` entry this package was imported from (a directory or a zipapp)."""
    here = os.path.dirname(os.path.abspath(__file__))  # .../execbus/agent
    return os.path.dirname(os.path.dirname(here))


class Lifeline:
    """The agent's side: starts the lifeline on first use and keeps it told."""

    def __init__(self, state_dir: str | None, life: str | None = None) -> None:
        self._state_dir = state_dir or ""
        self._life = life  # the directory of the agent's exec cgroups (see above)
        self._proc: subprocess.Popen[bytes] | None = None
        self._targets: dict[str, list[str]] = {}
        self._closed = False
        self._watching: tuple[asyncio.AbstractEventLoop, int] | None = None

    def start(self) -> None:
        """Start the lifeline now if it does not run (else it starts on first use)."""
        if self._proc is None and not self._closed:
            self._start()

    def register(self, exec_id: str, cgroup: str | None, leaders: list[Leader]) -> None:
        """Kill these with the agent (added to what was registered for the exec)."""
        lines = [f"+ {exec_id} c {cgroup}"] if cgroup and not self._watches(cgroup) else []
        lines += [f"+ {exec_id} g {pid} {started or '-'}" for pid, started in leaders]
        if not lines:
            return
        known = self._targets.setdefault(exec_id, [])
        new = [line for line in lines if line not in known]
        if new:
            known.extend(new)
            self._send(new)

    def _watches(self, cgroup: str) -> bool:
        """True for a cgroup of the agent's life (the lifeline kills those unasked)."""
        return self._life is not None and os.path.dirname(cgroup) == self._life

    def release(self, exec_id: str) -> None:
        """The exec's processes are gone: nothing to kill for it any more."""
        if self._targets.pop(exec_id, None) is not None:
            self._send([f"- {exec_id}"])

    def _send(self, lines: list[str]) -> None:
        if self._closed:
            return
        data = "".join(line + "\n" for line in lines).encode()
        for _ in range(2):
            proc = self._proc or self._start()
            if proc is None or proc.stdin is None:
                return
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
                return
            except OSError:  # it died: start another and tell it everything
                self._lost()
                data = "".join(
                    line + "\n" for entry in self._targets.values() for line in entry
                ).encode()

    def _start(self) -> subprocess.Popen[bytes] | None:
        if not sys.executable:
            log.warning("no python executable known: execs do not die with the agent")
            self._closed = True
            return None
        try:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-I", "-S", "-c", _BOOT, _package_parent()),
                    *(self._state_dir, self._life or ""),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_ignore_signals,  # from its first instruction on
            )
        except OSError as exc:
            log.warning("cannot start the lifeline (%s): execs do not die with the agent", exc)
            self._closed = True
            return None
        self._proc = proc
        self._watch(proc)
        log.debug("lifeline started", extra={"pid": proc.pid})
        return proc

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        """Reap the lifeline if it dies before us (and start another on next use)."""
        try:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(proc.pid)
        except (RuntimeError, OSError, AttributeError):
            return

        def exited() -> None:
            self._unwatch()
            if self._proc is proc and not self._closed:
                log.warning("the lifeline exited (%s); starting another", proc.poll())
                self._lost()
                if self._targets:
                    self._send([line for entry in self._targets.values() for line in entry])
                elif self._life is not None:  # it guards the life's cgroups unasked
                    self._start()
            else:
                proc.poll()

        self._unwatch()
        loop.add_reader(pidfd, exited)
        self._watching = (loop, pidfd)

    def _unwatch(self) -> None:
        watching, self._watching = self._watching, None
        if watching is not None:
            loop, pidfd = watching
            if not loop.is_closed():
                loop.remove_reader(pidfd)
            os.close(pidfd)

    def _lost(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            proc.poll()

    def close(self) -> None:
        """The agent stops: the lifeline kills what is still registered, then exits."""
        self._closed = True
        self._unwatch()
        proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


_IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_signals() -> None:
    # In the child before exec: ignored signals stay ignored across exec (and
    # Python keeps an ignored SIGINT ignored).
    for signum in _IGNORED:
        signal.signal(signum, signal.SIG_IGN)


def read_log(state_dir: str) -> set[str]:
    """Exec ids the lifeline of a previous life killed (and forget them)."""
    path = os.path.join(state_dir, LOG_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with open(fd, encoding="utf-8", errors="replace") as f:
            ids = set(f.read().split()) if stat.S_ISREG(os.fstat(fd).st_mode) else set()
    except OSError:
        return set()
    with contextlib.suppress(OSError):
        os.unlink(path)
    return ids


# -- the lifeline process -----------------------------------------------------


def guard_main(argv: list[str]) -> None:
    """Entry point of the lifeline process: hold the registrations until EOF, then kill."""
    from execbus.agent import cgroups, procs

    _ignore_signals()
    state_dir = argv[0] if argv else ""
    life = argv[1] if len(argv) > 1 else ""
    targets: dict[str, list[list[str]]] = {}
    stdin = sys.stdin.buffer
    while True:
        try:
            line = stdin.readline()
        except OSError:
            break
        if not line:
            break
        parts = line.decode(errors="replace").split()
        if len(parts) >= 2 and parts[0] == "-":
            targets.pop(parts[1], None)
        elif len(parts) >= 4 and parts[0] == "+":
            targets.setdefault(parts[1], []).append(parts[2:])
    killed = []
    cgroup_paths = []
    if life:  # the agent's exec cgroups, named <exec_id> or <exec_id>.<n>
        for name in cgroups.children(life):
            if name == cgroups.REFUGE:
                continue  # the agent's own (the lifeline may be in it)
            path = os.path.join(life, name)
            cgroup_paths.append(path)
            if cgroups.kill(path):
                killed.append(name.partition(".")[0])
    for exec_id, items in targets.items():
        hit = False
        for item in items:
            if item[0] == "c":
                path = " ".join(item[1:])
                cgroup_paths.append(path)
                hit = cgroups.kill(path) or hit
            elif item[0] == "g" and len(item) >= 3 and item[1].isdigit():
                started = None if item[2] == "-" else item[2]
                hit = procs.kill_groups([(int(item[1]), started)]) or hit
        if hit and exec_id not in killed:
            killed.append(exec_id)
    if state_dir and killed:
        with contextlib.suppress(OSError):
            fd = os.open(
                os.path.join(state_dir, LOG_NAME),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                0o600,
            )
            with open(fd, "w", encoding="utf-8") as f:
                f.write("".join(f"{exec_id}\n" for exec_id in killed))
    for path in cgroup_paths:
        cgroups.wait_empty(path, 2.0)
        cgroups.remove(path)
    for parent in {os.path.dirname(path) for path in cgroup_paths} | ({life} if life else set()):
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # the agent's own directory, once empty
