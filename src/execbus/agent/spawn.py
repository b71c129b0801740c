"""Spawning real processes: pipes or a PTY, a new session, optional credentials.

The pipe path passes no ``preexec_fn`` so ``subprocess`` uses its fast vfork
path (CPython gives it up only for ``preexec_fn`` or a user/group switch);
only TTY execs run one, to make the PTY their controlling terminal. An exec
with a cgroup (:mod:`execbus.agent.cgroups`) is born in it: the agent steps
into the cgroup for the moment of the spawn and back out.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import subprocess
import termios
import tty
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

from execbus.agent.cgroups import ExecCgroup
from execbus.agent.compat import slots_dataclass
from execbus.agent.errors import (
    START_FAILED,
    StartFailure,
    bad_working_dir,
    not_executable,
    not_found,
)

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOT_EXECUTABLE = {errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR, errno.ETXTBSY}


@slots_dataclass(frozen=True)
class Credentials:
    """Who a process runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]


@slots_dataclass()
class ProcessPlan:
    """Everything :func:`spawn` needs; ``executable`` is already resolved."""

    argv: list[str]
    env: dict[str, str]
    executable: str | None = None
    cwd: str | None = None
    creds: Credentials | None = None
    tty: bool = False
    console_size: tuple[int, int] = (80, 24)
    stdin: bool = False
    stdout: bool = True  # False: /dev/null (pipes only; a PTY is always read)
    stderr: bool = True
    raw_tty: bool = False  # the PTY only relays another terminal (runc's)
    cgroup: ExecCgroup | None = None  # born in it (see spawn)


@slots_dataclass()
class Stdio:
    """Our ends of a new process's standard streams (all owned by the caller)."""

    stdout: int | None = None
    stderr: int | None = None
    stdin: int | None = None
    control: int | None = None  # a PTY master descriptor for resizes

    def close(self) -> None:
        for fd in (self.stdout, self.stderr, self.stdin, self.control):
            if fd is not None:
                os.close(fd)


@slots_dataclass()
class Launched:
    """A running exec as a backend hands it over.

    ``exited`` resolves with ``proc``'s wait status. ``signal_groups``
    receive ``signal`` requests; ``kill_groups`` are killed on timeout and
    shutdown. ``decode`` turns ``proc``'s wait status into
    ``(exit_code, signal_number)``.
    """

    proc: subprocess.Popen[bytes]
    pid: int
    stdio: Stdio
    exited: asyncio.Future[int | None]
    signal_groups: tuple[int, ...]
    kill_groups: tuple[int, ...]
    decode: Callable[[int | None], tuple[int, int | None]]
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    resize: Callable[[int, int], None] | None = None  # default: TIOCSWINSZ on stdio.control
    # Every process of ``kill_groups`` is in the exec's cgroup from its first
    # instruction (a host exec spawned from within it): the cgroup alone tracks them.
    contained: bool = False


def spawn(plan: ProcessPlan) -> tuple[subprocess.Popen[bytes], Stdio]:
    """Start ``plan`` in a new session; raises :class:`StartFailure`."""
    if plan.cgroup is None:
        return _spawn_tty(plan) if plan.tty else _spawn_pipes(plan)
    with plan.cgroup.entered() as inside:  # born in the cgroup: nothing escapes it
        proc, stdio = _spawn_tty(plan) if plan.tty else _spawn_pipes(plan)
    if not inside:
        try:
            plan.cgroup.adopt(proc.pid)
        except OSError as exc:  # still tracked by its process group
            log.warning("cannot move the process into its cgroup: %s", exc, extra={"pid": proc.pid})
    return proc, stdio


def _spawn_pipes(plan: ProcessPlan) -> tuple[subprocess.Popen[bytes], Stdio]:
    in_r, in_w = _pipe(plan.stdin)
    out_r, out_w = _pipe(plan.stdout)
    err_r, err_w = _pipe(plan.stderr)
    stdio = Stdio(stdout=out_r, stderr=err_r, stdin=in_w)
    try:
        proc = _popen(plan, _or_devnull(in_r), _or_devnull(out_w), _or_devnull(err_w), None)
    except BaseException:
        stdio.close()
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            if fd is not None:
                os.close(fd)
    return proc, stdio


def _pipe(wanted: bool) -> tuple[int, int] | tuple[None, None]:
    return os.pipe() if wanted else (None, None)


def _or_devnull(fd: int | None) -> int:
    return subprocess.DEVNULL if fd is None else fd


def _spawn_tty(plan: ProcessPlan) -> tuple[subprocess.Popen[bytes], Stdio]:
    master, slave = os.openpty()
    stdio = Stdio(stdout=master)
    try:
        set_winsize(slave, *plan.console_size)
        if plan.raw_tty:
            tty.setraw(slave)
        if plan.creds is not None:
            os.fchown(slave, plan.creds.uid, -1)
        stdio.control = os.dup(master)
        if plan.stdin:
            stdio.stdin = os.dup(master)
        proc = _popen(plan, slave, slave, slave, _acquire_controlling_tty)
    except BaseException:
        stdio.close()
        raise
    finally:
        os.close(slave)
    return proc, stdio


def _acquire_controlling_tty() -> None:
    # Runs in the child after setsid(): make the PTY slave (fd 0) our terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _popen(
    plan: ProcessPlan,
    stdin: int,
    stdout: int,
    stderr: int,
    preexec: Callable[[], None] | None,
) -> subprocess.Popen[bytes]:
    creds: dict[str, Any] = {}
    if plan.creds is not None:
        c = plan.creds
        creds = {"user": c.uid, "group": c.gid, "extra_groups": list(c.groups)}
    try:
        return subprocess.Popen(
            plan.argv,
            executable=plan.executable,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=plan.env,
            cwd=plan.cwd,
            start_new_session=True,
            preexec_fn=preexec,
            **creds,
        )
    except OSError as exc:
        raise _start_failure(exc, plan) from None
    except subprocess.SubprocessError as exc:
        raise StartFailure(START_FAILED, f"could not start the process: {exc}") from None


def _start_failure(exc: OSError, plan: ProcessPlan) -> StartFailure:
    """Map an error raised by the child before exec to the protocol's codes."""
    if plan.cwd is not None and exc.filename == plan.cwd:
        return bad_working_dir(f"working directory {plan.cwd!r}: {exc.strerror}")
    if exc.filename is None:
        return StartFailure(START_FAILED, f"could not start the process: {exc.strerror}")
    if exc.errno == errno.ENOENT:
        return not_found(f"{plan.argv[0]}: {exc.strerror}")
    if exc.errno in _NOT_EXECUTABLE:
        return not_executable(f"{plan.argv[0]}: {exc.strerror}")
    return StartFailure(START_FAILED, f"{plan.argv[0]}: {exc.strerror}")


def set_winsize(fd: int, width: int, height: int) -> None:
    """TIOCSWINSZ; on a master the kernel sends SIGWINCH to the foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def resolve_executable(name: str, search_path: str, cwd: str) -> str:
    """Find ``name`` like execvp would with ``search_path``; raises 127/126 failures."""
    if "/" in name:
        return _check_executable(os.path.join(cwd, name))
    denied: str | None = None
    for entry in search_path.split(":"):
        candidate = os.path.join(cwd, entry or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = denied or candidate
    if denied is not None:
        raise not_executable(f"{name}: permission denied ({denied})")
    raise not_found(f"{name}: executable file not found in $PATH")


def _check_executable(path: str) -> str:
    if not os.path.exists(path):
        raise not_found(f"{path}: no such file or directory")
    if os.path.isdir(path):
        raise not_executable(f"{path}: is a directory")
    if not os.access(path, os.X_OK):
        raise not_executable(f"{path}: permission denied")
    return path


def env_dict(pairs: Sequence[tuple[str, str]], defaults: dict[str, str]) -> dict[str, str]:
    """The request's env (later entries win) over ``defaults``."""
    env = dict(defaults)
    env.update(pairs)
    return env
