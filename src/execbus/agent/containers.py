"""Where an exec runs: the backend interface and the ``host`` backend.

``container_id == ""`` selects the host backend (the guest itself); any other
id goes to the runc backend (:mod:`execbus.agent.runc.backend`) when it is enabled.
"""

from __future__ import annotations

import os
import pwd
import shutil
from typing import Protocol

from execbus.agent.cgroups import ExecCgroup
from execbus.agent.errors import (
    FORBIDDEN,
    UNSUPPORTED,
    AgentError,
    bad_working_dir,
)
from execbus.agent.execspec import ExecSpec
from execbus.agent.options import AgentOptions
from execbus.agent.reaper import ChildReaper, exit_status
from execbus.agent.spawn import (
    DEFAULT_PATH,
    Credentials,
    Launched,
    ProcessPlan,
    env_dict,
    resolve_executable,
    spawn,
)
from execbus.agent.users import HostUserDB, ResolvedUser, resolve_user


class Backend(Protocol):
    """Starts execs somewhere; the supervisor owns them afterwards."""

    name: str

    async def launch(self, spec: ExecSpec, cgroup: ExecCgroup | None = None) -> Launched:
        """Spawn ``spec`` (into ``cgroup``); raises :class:`StartFailure` or :class:`AgentError`."""
        ...

    def close(self) -> None:
        """Release what the backend holds (temporary files)."""
        ...


class HostBackend:
    """Runs execs directly in the agent's own system (the guest)."""

    name = "host"

    def __init__(self, reaper: ChildReaper) -> None:
        self._reaper = reaper
        self._users = HostUserDB()
        self._own_home = _home_of(os.geteuid())

    async def launch(self, spec: ExecSpec, cgroup: ExecCgroup | None = None) -> Launched:
        # Synchronous on purpose: every step is a quick local system call, and
        # a start that never yields keeps pipelined requests in order.
        return self._launch(spec, cgroup)

    def _launch(self, spec: ExecSpec, cgroup: ExecCgroup | None) -> Launched:
        cwd = spec.working_dir or "/"
        if not os.path.isdir(cwd):
            raise bad_working_dir(f"working directory {cwd!r} does not exist")
        user = resolve_user(spec.user, self._users) if spec.user else None
        env = env_dict(spec.env, self._env_defaults(user, spec.tty))
        executable = resolve_executable(spec.cmd[0], env["PATH"], cwd)
        plan = ProcessPlan(
            argv=spec.cmd,
            env=env,
            executable=executable,
            cwd=cwd,
            creds=_credentials(user, spec.user),
            tty=spec.tty,
            console_size=spec.console_size,
            stdin=spec.stdin,
            stdout=spec.attach_stdout,
            stderr=spec.attach_stderr,
            cgroup=cgroup,
        )
        proc, stdio = spawn(plan)
        exited = self._reaper.watch_process(proc)
        groups = (proc.pid,)  # the child is a session (and group) leader
        contained = cgroup is not None and cgroup.born_inside
        return Launched(
            proc, proc.pid, stdio, exited, groups, groups, exit_status, contained=contained
        )

    def _env_defaults(self, user: ResolvedUser | None, tty: bool) -> dict[str, str]:
        defaults = {"PATH": DEFAULT_PATH, "HOME": user.home if user else self._own_home}
        if tty:
            defaults["TERM"] = "xterm"
        return defaults

    def close(self) -> None:
        pass


def _credentials(user: ResolvedUser | None, spec: str) -> Credentials | None:
    """Credentials to switch to, or None to keep the agent's own."""
    if user is None:
        return None
    if os.geteuid() != 0:
        if (user.uid, user.gid) == (os.geteuid(), os.getegid()):
            return None
        raise AgentError(
            FORBIDDEN, f"cannot run as user {spec!r}: the agent is not running as root"
        )
    return Credentials(user.uid, user.gid, user.groups)


def _home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:
        return "/"


def make_backends(options: AgentOptions, reaper: ChildReaper) -> dict[str, Backend]:
    """The enabled backends by name (``host`` always)."""
    backends: dict[str, Backend] = {"host": HostBackend(reaper)}
    enabled = options.runc
    if enabled is None:
        enabled = shutil.which(options.runc_binary) is not None
    if enabled:
        from execbus.agent.runc.backend import RuncBackend

        backends["runc"] = RuncBackend(reaper, options.runc_binary, options.runc_root)
    return backends


def backend_for(backends: dict[str, Backend], container_id: str) -> Backend:
    """``host`` for an empty container id, else the container backend."""
    if not container_id:
        return backends["host"]
    backend = backends.get("runc")
    if backend is None:
        raise AgentError(UNSUPPORTED, "this agent has no container backend (runc is not enabled)")
    return backend
