"""The agent's cgroups: its life's directory (:class:`CgroupRoot`) and an exec's
cgroup in it (:class:`ExecCgroup`), which the agent enters for each spawn."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

from execbus.agent.cgroups.directory import (
    _WRITE,
    _write_pid,
    children,
    kill,
    populated,
    procs,
    remove,
    wait_empty,
)
from execbus.agent.cgroups.mounts import CgroupError, Mount, default_root, mount_of
from execbus.agent.procs import start_time

log = logging.getLogger("execbus.agent.cgroups")  # the name it had as one module

_LIFE = re.compile(r"a(\d+)-(\d+)-(\d+)")
# Where the agent goes when it cannot return to its own cgroup (in its life's
# directory, beside the exec cgroups; no exec id holds a '.').
REFUGE = "agent.home"


def _pidns() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


class ExecCgroup:
    """The cgroup of one exec (of ``owner``'s life).

    :meth:`entered` moves the agent itself in for the moment of the spawn and
    back to its own cgroup (``owner.home``), so the child is born inside.
    """

    def __init__(self, path: str, owner: CgroupRoot) -> None:
        self.path = path
        self.owner = owner
        # True once a process was spawned from within (see entered): it and all
        # it forks are in the cgroup from their first instruction on
        self.born_inside = False

    @contextlib.contextmanager
    def entered(self) -> Iterator[bool]:
        """Spawn within: the agent itself is in the cgroup meanwhile (True), or could
        not be moved (False: :meth:`adopt` the child afterwards)."""
        if self.owner.home is None:
            yield False
            return
        try:
            _write_pid(self.path, 0)
        except OSError as exc:
            log.warning("cannot enter the exec's cgroup: %s", exc)
            yield False
            return
        try:
            yield True
            self.born_inside = True
        finally:
            self.owner.return_home()

    def adopt(self, pid: int) -> None:
        """Move ``pid`` into the cgroup, then every descendant it already has.

        Used when the agent cannot spawn from within: a child forked before the
        move stays where it was born, so the move is followed by a walk of
        ``/proc/<pid>/task/*/children`` (a descendant that was orphaned in
        between is missed). Raises OSError if ``pid`` cannot be moved.
        """
        _write_pid(self.path, pid)
        pending, seen = [pid], {pid}
        while pending:
            for child in _children_of(pending.pop()):
                if child not in seen:
                    seen.add(child)
                    with contextlib.suppress(OSError):
                        _write_pid(self.path, child)
                    pending.append(child)

    def populated(self) -> bool:
        return populated(self.path)

    def kill(self) -> bool:
        if os.getpid() in procs(self.path):  # never: see CgroupRoot.return_home
            log.error("the agent is in the exec's cgroup %s: not killing it", self.path)
            return False
        return kill(self.path)

    def remove(self) -> bool:
        return remove(self.path)


def _children_of(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        path = f"/proc/{pid}/task/{tid}/children"
        with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as f:
            found.extend(int(c) for c in f.read().split())
    return found


class CgroupRoot:
    """The cgroups of this agent: ``<root>/<life>/<exec_id>``."""

    def __init__(self, root: str, mount: Mount) -> None:
        self.root = root
        self.version = mount.version
        me = os.getpid()
        self.life = os.path.join(root, f"a{_pidns()}-{me}-{start_time(me) or 0}")
        # Where the agent returns after each spawn; None: it never leaves it and
        # children are moved in after the spawn instead.
        self.home = mount.own_cgroup()
        if self.home is not None and self.home.startswith(self.life):
            self.home = None
        # Its cgroup.procs, opened once: the way home is taken after every spawn.
        self._home_fd: int | None = None

    @classmethod
    def open(cls, setting: str | None) -> CgroupRoot | None:
        """The cgroup root for ``--cgroup-root``: ``None``/``"auto"`` (the default
        when running as root; nothing otherwise), ``"off"``, or a path.

        ``auto`` falls back to process groups (None) with a warning when no
        hierarchy is writable; an explicit path that cannot be used raises
        :class:`CgroupError`.
        """
        if setting == "off":
            return None
        if setting in (None, "", "auto"):
            if os.geteuid() != 0:
                return None
            found = default_root()
            if found is None:
                log.warning("no cgroup hierarchy is mounted: execs are tracked by process group")
                return None
            try:
                return cls._make(found)
            except CgroupError as exc:
                log.warning("%s: execs are tracked by process group", exc)
                return None
        assert setting is not None
        return cls._make(setting)

    @classmethod
    def _make(cls, root: str) -> CgroupRoot:
        mount = mount_of(root)
        if mount is None:
            raise CgroupError(f"--cgroup-root {root} is not in a cgroup file system")
        made = cls(root, mount)
        try:
            os.makedirs(made.life, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroups under {root}: {exc.strerror}") from None
        return made

    def create(self, exec_id: str) -> ExecCgroup:
        """A new, empty cgroup for an exec (exec ids are safe names: see execspec)."""
        name, n = exec_id, 0
        while True:
            path = os.path.join(self.life, name)
            try:
                os.mkdir(path, 0o755)
                return ExecCgroup(path, self)
            except FileExistsError:
                # the same exec id again (an id forgotten after ack): its old
                # cgroup still holds processes; '.' never appears in an exec id
                n += 1
                name = f"{exec_id}.{n}"
                if n > 1000:
                    raise

    def return_home(self) -> None:
        """Move the agent back to its own cgroup after a spawn.

        Should that fail (its cgroup removed meanwhile), the agent goes to
        ``<life>/agent.home`` and spawns its children without entering their
        cgroups from then on (see ExecCgroup.adopt).
        """
        if self.home is None:
            return
        try:
            if self._home_fd is None:
                self._home_fd = os.open(os.path.join(self.home, "cgroup.procs"), _WRITE)
            os.write(self._home_fd, b"0")
            return
        except OSError as exc:
            log.error("cannot return to the agent's cgroup %s: %s", self.home, exc)
        self.home = None
        self._close_home()
        refuge = os.path.join(self.life, REFUGE)

        try:
            os.makedirs(refuge, exist_ok=True)
            _write_pid(refuge, 0)
        except OSError as exc:
            log.critical("the agent is stuck in an exec's cgroup: %s", exc)

    def _close_home(self) -> None:
        fd, self._home_fd = self._home_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def sweep_dead_lives(self) -> list[str]:
        """Kill and remove what agents that are gone left under the root (same pid
        namespace only: another namespace's pids mean nothing here)."""
        swept = []
        ns = _pidns()
        for name in children(self.root):
            match = _LIFE.fullmatch(name)
            if match is None or match.group(1) != ns:
                continue
            path = os.path.join(self.root, name)
            if path == self.life:
                continue
            pid, started = int(match.group(2)), match.group(3)
            if start_time(pid) == started:
                continue  # that agent still runs
            if kill(path):
                swept.append(path)
                wait_empty(path, 2.0)
            remove(path)
        return swept

    def close(self) -> None:
        """Remove this life's directory (when every exec cgroup is gone)."""
        self._close_home()
        with contextlib.suppress(OSError):
            os.rmdir(self.life)
