"""The runc backend: execs inside OCI containers managed by runc.

Each exec is ``runc [--root R] exec --pid-file F --process P ID`` run in the
foreground as our own child, so its exit status reaches us without making
the agent a child subreaper. ``P`` is the container's own ``process`` from
its bundle's ``config.json`` (so capabilities, rlimits, AppArmor, SELinux and
no-new-privileges are exactly the container's, as with plain ``runc exec``)
with the request's args, env, cwd, user, terminal and console size applied;
``privileged`` adds every capability. The pid file names the real process in
the container; signals and timeouts go to its process group.

For a TTY exec runc gets a PTY of ours as its terminal: runc makes it raw,
proxies it to the container's console, and forwards resizes (our TIOCSWINSZ
sends runc SIGWINCH; we also resize the container's terminal directly, so a
resize is in effect when its reply is sent). ``runc exec --console-socket``
would hand us the container's PTY directly, but runc allows it only with
``--detach``, which reparents the process away from us and loses its exit
status unless the agent becomes a child subreaper of every orphan.

Line endings: runc clears ONLCR on the container's console once it has it and
leaves the newline translation to our PTY. Output written before that moment
was already translated by the container's console, so our PTY starts with
output processing off (``tty.setraw``, what runc sets anyway, minus OPOST,
which runc turns back on). A process that writes in the few microseconds
between those two runc steps may still show a lone ``\n`` or ``\r\r\n``.

runc reports a process killed by signal n as exit code 128+n, so the agent
reports ``signal`` for such codes (a process that itself exits with 137 is
indistinguishable).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import Callable
from typing import Any

from execbus.agent.cgroups import ExecCgroup
from execbus.agent.commands import kill_and_forget, run_command
from execbus.agent.errors import START_FAILED, StartFailure
from execbus.agent.execspec import ExecSpec
from execbus.agent.reaper import ChildReaper, exit_status
from execbus.agent.runc.errors import failure_from_log
from execbus.agent.runc.oci import build_process
from execbus.agent.runc.scratch import ScratchDir
from execbus.agent.runc.state import KnownContainer, container_process, parse_state
from execbus.agent.spawn import Launched, ProcessPlan, set_winsize, spawn
from execbus.agent.users import FileUserDB, resolve_user

STARTUP_TIMEOUT = 30.0
# runc writes the pid file 10-15 ms into a `runc exec`; polling every 1 ms
# (an open() per poll, ~15 per container exec) loses 0.5 ms on average where
# 5 ms lost 2.5 ms.
_PIDFILE_POLL = 0.001
_KNOWN_SWEEP_AT = 256  # containers remembered before the stopped ones are dropped


class RuncBackend:
    """Starts execs in runc containers by container id."""

    name = "runc"

    def __init__(self, reaper: ChildReaper, binary: str = "runc", root: str | None = None) -> None:
        self._reaper = reaper
        self._binary = shutil.which(binary) or binary
        self._global = [self._binary] + (["--root", root] if root else [])
        self._scratch = ScratchDir()
        self._counter = 0
        self._known: dict[str, KnownContainer] = {}

    async def launch(self, spec: ExecSpec, cgroup: ExecCgroup | None = None) -> Launched:
        rootfs, base = await self._container(spec.container_id)
        user = resolve_user(spec.user, FileUserDB(rootfs)) if spec.user else None
        workdir = self._exec_dir()
        try:
            return await self._start(spec, build_process(base, spec, user), workdir, cgroup)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    async def _start(
        self, spec: ExecSpec, process: dict[str, Any], workdir: str, cgroup: ExecCgroup | None
    ) -> Launched:
        paths = {name: os.path.join(workdir, name) for name in ("process.json", "pid", "log")}
        _write_json(paths["process.json"], process)
        argv = [*self._global, "--log", paths["log"], "--log-format", "json", "exec"]
        argv += ["--pid-file", paths["pid"], "--process", paths["process.json"], spec.container_id]
        plan = ProcessPlan(
            argv,
            dict(os.environ),
            tty=spec.tty,
            console_size=spec.console_size,
            stdin=spec.stdin,
            stdout=spec.attach_stdout,
            stderr=spec.attach_stderr,
            raw_tty=True,  # see the module docstring on line endings
            cgroup=cgroup,  # runc exec moves the container process to the container's
        )
        proc, stdio = spawn(plan)
        exited = self._reaper.watch_process(proc)
        try:
            pid = await _wait_for_pid(paths["pid"], exited)
        except BaseException:
            stdio.close()
            kill_and_forget(proc.pid, exited)
            raise
        if pid is None:
            stdio.close()
            raise failure_from_log(paths["log"])
        cleanup = [lambda: shutil.rmtree(workdir, ignore_errors=True)]
        launched = Launched(
            proc, pid, stdio, exited, (pid,), (pid, proc.pid), runc_exit_status, cleanup
        )
        if stdio.control is not None:
            launched.resize = _tty_resizer(stdio.control, pid)
        return launched

    async def _container(self, container_id: str) -> tuple[str, dict[str, Any]]:
        """The container's rootfs and process template, from ``runc state`` and its bundle.

        ``runc state`` takes ~5 ms, a quarter of a container exec. What it tells
        stays true while the container's init process lives, so it is kept per
        container and trusted while that very process (pid and start time: pid
        reuse cannot fool it) is alive. A stopped, deleted or re-created
        container has another (or no) init: asked again. A paused one is
        refused by ``runc exec`` itself (``container_not_running``).
        """
        known = self._known.get(container_id)
        if known is not None and known.alive():
            return known.rootfs, known.process
        state = await self._state(container_id)
        rootfs, process = container_process(state)
        init = KnownContainer.of(state, rootfs, process)
        if init is not None:
            self._known[container_id] = init
            if len(self._known) > _KNOWN_SWEEP_AT:  # containers come and go: forget the gone
                self._known = {cid: k for cid, k in self._known.items() if k.alive()}
        else:
            self._known.pop(container_id, None)
        return rootfs, process

    async def _state(self, container_id: str) -> dict[str, Any]:
        argv = [*self._global, "state", container_id]
        return parse_state(container_id, *await run_command(argv, self._reaper))

    def _exec_dir(self) -> str:
        workdir = self._scratch.ensure()
        self._counter += 1
        path = os.path.join(workdir, str(self._counter))
        os.mkdir(path, 0o700)
        return path

    def close(self) -> None:
        self._scratch.close()


def _tty_resizer(control: int, pid: int) -> Callable[[int, int], None]:
    """Resize both terminals of a runc TTY exec, the container's one synchronously.

    runc copies our PTY's size to the container's console when it gets
    SIGWINCH, but asynchronously: input sent right after a resize could be
    read before it. So the container process's own terminal (reached through
    ``/proc/<pid>/fd``) is resized directly too, before ``resize`` returns;
    runc's later copy sets the same size.
    """

    def resize(width: int, height: int) -> None:
        set_winsize(control, width, height)
        for fd in range(3):
            try:
                inner = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if os.isatty(inner):
                    set_winsize(inner, width, height)
                    return
            finally:
                os.close(inner)

    return resize


def runc_exit_status(waitstatus: int | None) -> tuple[int, int | None]:
    """runc exits with the process's code, or 128+n when signal n killed it."""
    code, signum = exit_status(waitstatus)
    if signum is None and 128 < code <= 128 + signal.SIGRTMAX:
        signum = code - 128
    return code, signum


async def _wait_for_pid(path: str, exited: asyncio.Future[int | None]) -> int | None:
    """The pid runc writes once the process runs; None if runc ended without one.

    runc offers no event for this, so the file is polled briefly (only while a
    runc exec starts).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT
    while loop.time() < deadline:
        pid = _read_pid(path)
        if pid is not None:
            return pid
        if exited.done():
            return _read_pid(path)
        await asyncio.wait([exited], timeout=_PIDFILE_POLL)
    raise StartFailure(START_FAILED, f"runc exec did not start within {STARTUP_TIMEOUT:g}s")


def _write_json(path: str, value: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f)


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
