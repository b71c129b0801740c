"""A cgroup per exec: every process an exec starts, wherever it goes, is found and killed.

A process group loses the processes that call ``setsid`` (daemons do); a
cgroup does not: children are born in their parent's cgroup and only a
privileged process can move them out. So when the agent runs as root and a
cgroup hierarchy is writable, each exec gets its own cgroup::

    <root>/<life>/<exec_id>        e.g. /sys/fs/cgroup/execbus/a4026531836-812-9310024/3f2a...

``<root>`` is ``--cgroup-root`` (default: ``execbus`` at the top of the
cgroup v2 hierarchy, else of the v1 ``pids`` or ``freezer`` hierarchy).
``<life>`` names the agent process that owns the execs below it: its pid
namespace, pid and start time; an agent that starts removes what the dead
lives under the same root left behind (killing what still runs there).

An exec is born in its cgroup: for the moment of the spawn the agent moves
itself into the exec's cgroup and then back to its own
(:meth:`ExecCgroup.entered`), so the process and whatever it forks are in
the cgroup from their first instruction. The alternatives cost more or leave
a gap: code in the child between fork and exec (writing its own pid) gives
up the fast ``vfork`` path (~2 ms more per spawn, measured); moving the
child after the spawn leaves a window in which a fast fork escapes;
``clone3`` with ``CLONE_INTO_CGROUP`` is out of reach of Python's
``subprocess``. The two moves are one ``write("0")`` each (``0``: the
writing process), the way home through a ``cgroup.procs`` kept open. What
they still cost is the kernel's: a move takes the cgroup threadgroup lock
for writing, which, after a pause in moves, first waits for an RCU grace
period (the way in pays it, the way home right after does not). Only if the
agent cannot enter is the child moved in after the spawn, with the children
it already forked (:meth:`ExecCgroup.adopt`).

Killing an exec's cgroup writes ``cgroup.kill`` (cgroup v2, Linux 5.14+),
else SIGKILLs every pid of ``cgroup.procs`` until none is left. Controllers
(memory, cpu) are not enabled: the cgroups only track. The lifeline kills
what is left in the cgroups of a life whose agent died
(:mod:`execbus.agent.lifeline`).

Container execs (runc): ``runc exec`` moves the process it starts into the
container's own cgroup, so the exec's cgroup holds ``runc exec`` only; the
container process is tracked by its process group (see
:mod:`execbus.agent.procs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Iterator

from execbus.agent.compat import slots_dataclass
from execbus.agent.procs import is_live, start_time

log = logging.getLogger(__name__)

DEFAULT_NAME = "execbus"
_V1_HIERARCHIES = ("pids", "freezer")
_LIFE = re.compile(r"a(\d+)-(\d+)-(\d+)")
_KILL_ROUNDS = 20
# Where the agent goes when it cannot return to its own cgroup (in its life's
# directory, beside the exec cgroups; no exec id holds a '.').
REFUGE = "agent.home"


class CgroupError(Exception):
    """The configured cgroup root cannot be used (a one-line reason)."""


@slots_dataclass(frozen=True)
class Mount:
    """A mounted cgroup hierarchy."""

    point: str  # where it is mounted
    root: str  # which of its cgroups is mounted there (/ but for bind mounts)
    version: int
    options: frozenset[str]  # the v1 controllers (and name=...)

    def contains(self, path: str) -> bool:
        return path == self.point or path.startswith(self.point.rstrip("/") + "/")

    def own_cgroup(self) -> str | None:
        """The directory of this process's cgroup in this hierarchy, if it is visible."""
        try:
            with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        for line in lines:
            hid, _, rest = line.partition(":")
            controllers, _, path = rest.partition(":")
            wanted = hid == "0" and not controllers if self.version == 2 else hid != "0"
            if not wanted or (self.version == 1 and not set(controllers.split(",")) & self.options):
                continue
            if self.root != "/":  # a subtree is mounted: paths are relative to it
                if path != self.root and not path.startswith(self.root.rstrip("/") + "/"):
                    return None
                path = path[len(self.root.rstrip("/")) :] or "/"
            own = os.path.join(self.point, path.lstrip("/"))
            return own if os.path.isdir(own) else None
        return None


def _mounts() -> list[Mount]:
    """The cgroup hierarchies mounted in this mount namespace."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return []
    found = []
    for line in lines:
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4].replace("\\040", " ")
        version = 2 if rest[0] == "cgroup2" else 1
        options = frozenset(rest[2].split(",")) if version == 1 else frozenset()
        found.append(Mount(point, fields[3], version, options))
    return found


def default_root() -> str | None:
    """The default cgroup root (``execbus`` at the top of the cgroup v2 hierarchy, else
    of the v1 ``pids`` or ``freezer`` one); None without a cgroup hierarchy."""
    mounts = _mounts()
    for mount in mounts:
        if mount.version == 2:
            return os.path.join(mount.point, DEFAULT_NAME)
    for wanted in _V1_HIERARCHIES:
        for mount in mounts:
            if mount.version == 1 and wanted in mount.options:
                return os.path.join(mount.point, DEFAULT_NAME)
    return None


def mount_of(path: str) -> Mount | None:
    """The cgroup hierarchy holding ``path`` (None: not in a cgroup file system)."""
    real = os.path.realpath(path)
    holding = [m for m in _mounts() if m.contains(real)]
    return max(holding, key=lambda m: len(m.point)) if holding else None


def _pidns() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


# -- operations on one cgroup directory (also used by the lifeline) ------------


def procs(path: str) -> list[int]:
    """The pids in the cgroup (none if it is gone)."""
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f:
            return [int(line) for line in f.read().split()]
    except (OSError, ValueError):
        return []


def populated(path: str) -> bool:
    """True while a process (of the cgroup or one below it) is in the cgroup."""
    try:
        events = _read(os.path.join(path, "cgroup.events"))
    except FileNotFoundError:
        if not os.path.isdir(path):
            return False
    except OSError:
        return False
    else:
        for line in events.split(b"\n"):
            if line.startswith(b"populated "):
                return line[10:].strip() != b"0"
    # cgroup v1 (no cgroup.events): its procs may list zombies
    return any(is_live(pid) for pid in procs(path)) or any(
        populated(os.path.join(path, sub)) for sub in children(path)
    )


def _read(path: str) -> bytes:
    """A small cgroup file in one read (no file object: this is on every exec's path)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def children(path: str) -> list[str]:
    """The names of the cgroups right below ``path`` (none if it is gone)."""
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def kill(path: str) -> bool:
    """SIGKILL every process in the cgroup and below; True if there was any."""
    had = populated(path)
    if not had:
        return False
    try:
        with open(os.path.join(path, "cgroup.kill"), "w", encoding="ascii") as f:
            f.write("1")
        return True
    except OSError:
        pass  # cgroup v1, or a kernel before 5.14
    for sub in children(path):
        kill(os.path.join(path, sub))
    for _ in range(_KILL_ROUNDS):  # a process may fork while we kill: again until none
        pids = procs(path)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return True


def remove(path: str) -> bool:
    """Remove the cgroup (and its empty children); True once it is gone."""
    for attempt in range(2):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return True
        except OSError:
            # busy: processes, or cgroups below it (an exec's has none: it is
            # tried first, without listing the directory)
            below = children(path) if attempt == 0 else []
            if not below:
                return False
            for sub in below:
                remove(os.path.join(path, sub))
        else:
            return True
    return False


def wait_empty(path: str, timeout: float) -> bool:
    """Poll until no process is left in the cgroup; True if it emptied in time."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while populated(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


# -- the agent's cgroups --------------------------------------------------------


_WRITE = os.O_WRONLY | os.O_CLOEXEC


def _write_pid(cgroup: str, pid: int) -> None:
    """Move process ``pid`` (0: the caller) into ``cgroup``."""
    fd = os.open(os.path.join(cgroup, "cgroup.procs"), _WRITE)
    try:
        os.write(fd, b"%d" % pid)
    finally:
        os.close(fd)


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
