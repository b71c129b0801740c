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
import contextlib
import copy
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from execbus.agent import compat
from execbus.agent.cgroups import ExecCgroup
from execbus.agent.compat import slots_dataclass
from execbus.agent.errors import (
    CONTAINER_NOT_FOUND,
    CONTAINER_NOT_RUNNING,
    START_FAILED,
    StartFailure,
    bad_working_dir,
    not_executable,
    not_found,
)
from execbus.agent.execspec import ExecSpec
from execbus.agent.output import Capture, OutputPump
from execbus.agent.reaper import ChildReaper, exit_status
from execbus.agent.spawn import DEFAULT_PATH, Launched, ProcessPlan, set_winsize, spawn
from execbus.agent.users import FileUserDB, ResolvedUser, resolve_user

# Capability names by number (linux/capability.h), up to CAP_CHECKPOINT_RESTORE (40).
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
STARTUP_TIMEOUT = 30.0
_COMMAND_TIMEOUT = 30.0
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
        self._workdir: str | None = None
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
            _kill_and_forget(proc.pid, exited)
            raise
        if pid is None:
            stdio.close()
            raise _failure_from_log(paths["log"])
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
        rootfs, process = _container_process(state)
        init = KnownContainer.of(state, rootfs, process)
        if init is not None:
            self._known[container_id] = init
            if len(self._known) > _KNOWN_SWEEP_AT:  # containers come and go: forget the gone
                self._known = {cid: k for cid, k in self._known.items() if k.alive()}
        else:
            self._known.pop(container_id, None)
        return rootfs, process

    async def _state(self, container_id: str) -> dict[str, Any]:
        code, out, err = await run_command([*self._global, "state", container_id], self._reaper)
        if code != 0:
            message = err.decode(errors="replace").strip()
            if "does not exist" in message:
                raise StartFailure(CONTAINER_NOT_FOUND, f"container {container_id!r} not found")
            raise StartFailure(START_FAILED, f"runc state failed: {message[-500:]}")
        try:
            state: dict[str, Any] = json.loads(out)
        except ValueError:
            raise StartFailure(START_FAILED, "runc state printed no JSON") from None
        if state.get("status") != "running":
            raise StartFailure(
                CONTAINER_NOT_RUNNING,
                f"container {container_id!r} is {state.get('status', 'not running')}",
            )
        return state

    def _exec_dir(self) -> str:
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="execbus-agent-runc-")
        self._counter += 1
        path = os.path.join(self._workdir, str(self._counter))
        os.mkdir(path, 0o700)
        return path

    def close(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


@slots_dataclass(frozen=True)
class KnownContainer:
    """What ``runc state`` said about a running container, tied to its init process."""

    init_pid: int
    init_started: str
    rootfs: str
    process: dict[str, Any]

    @classmethod
    def of(
        cls, state: dict[str, Any], rootfs: str, process: dict[str, Any]
    ) -> KnownContainer | None:
        pid = state.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        started = _process_start_time(pid)
        return None if started is None else cls(pid, started, rootfs, process)

    def alive(self) -> bool:
        """True while the init process seen then is still the one running."""
        return _process_start_time(self.init_pid) == self.init_started


def _process_start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks) of a live process;
    None if it is gone or a zombie (a killed container's init may stay unreaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()  # after the command name, which may hold spaces
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


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


def _container_process(state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The container's rootfs and the ``process`` section of its config.json."""
    bundle = str(state.get("bundle", ""))
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            config: dict[str, Any] = json.load(f)
    except (OSError, ValueError) as exc:
        raise StartFailure(
            START_FAILED, f"cannot read the container's config.json: {exc}"
        ) from None
    rootfs = state.get("rootfs") or os.path.join(bundle, config.get("root", {}).get("path", ""))
    process: dict[str, Any] = config.get("process") or {}
    return str(rootfs), process


def build_process(
    base: dict[str, Any], spec: ExecSpec, user: ResolvedUser | None
) -> dict[str, Any]:
    """The OCI process for ``runc exec --process``: the container's, overridden."""
    process: dict[str, Any] = copy.deepcopy(base)
    process["args"] = spec.cmd
    process["terminal"] = spec.tty
    process.pop("consoleSize", None)
    if spec.tty:
        width, height = spec.console_size
        process["consoleSize"] = {"width": width, "height": height}
    process["cwd"] = spec.working_dir or process.get("cwd") or "/"
    process["env"] = _env(process.get("env") or [], spec, user)
    if user is not None:
        ids = {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.groups)}
        process["user"] = {**(process.get("user") or {}), **ids}
    if spec.privileged:
        process["capabilities"] = _all_capabilities(process.get("capabilities") or {})
    return process


def _env(base: list[str], spec: ExecSpec, user: ResolvedUser | None) -> list[str]:
    """The container's env, HOME of the requested user, then the request's env."""
    env = dict(entry.partition("=")[::2] for entry in base)
    if user is not None:
        env["HOME"] = user.home
    env.update(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    if spec.tty:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def _all_capabilities(current: dict[str, Any]) -> dict[str, Any]:
    """Every capability the agent itself may grant (its own bounding set)."""
    bounding = _own_bounding_set()
    every = [name for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1]
    return {**current, "bounding": every, "effective": every, "permitted": every}


def _own_bounding_set() -> int:
    # runc cannot hand out a capability the agent lacks (a sandbox may drop some).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return (1 << len(CAPABILITIES)) - 1


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


def _kill_and_forget(pid: int, exited: asyncio.Future[int | None]) -> None:
    if not exited.done():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _failure_from_log(path: str) -> StartFailure:
    """Classify runc's error message (its JSON log) into a start failure."""
    message = "runc exec failed"
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "fatal"):
                    message = str(entry.get("msg", message))
    return classify_runc_error(message)


def classify_runc_error(message: str) -> StartFailure:
    """Map runc's wording onto the protocol's failure codes."""
    lower = message.lower()
    if "executable file not found" in lower or (
        "exec: " in lower and "no such file or directory" in lower
    ):
        return not_found(message)
    if "chdir to cwd" in lower:
        return bad_working_dir(message)
    if "exec: " in lower and ("permission denied" in lower or "exec format error" in lower):
        return not_executable(message)
    if "does not exist" in lower:
        return StartFailure(CONTAINER_NOT_FOUND, message)
    if "stopped" in lower or "paused" in lower or "not running" in lower:
        return StartFailure(CONTAINER_NOT_RUNNING, message)
    return StartFailure(START_FAILED, message)


async def run_command(
    argv: list[str], reaper: ChildReaper, timeout: float = _COMMAND_TIMEOUT
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
        _kill_and_forget(proc.pid, exited)
        for pump in pumps:
            pump.close()
    return exit_status(status)[0], bytes(captures[0].data), bytes(captures[1].data)


def _resolver(fut: asyncio.Future[None]) -> Callable[[], None]:
    return lambda: None if fut.done() else fut.set_result(None)
