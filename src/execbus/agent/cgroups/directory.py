"""Operations on one cgroup directory, by path (also used by the lifeline).

What is in it (:func:`procs`, :func:`populated`, :func:`children`), killing
it (:func:`kill`), removing it (:func:`remove`), waiting for it to empty
(:func:`wait_empty`) and moving a process in (:func:`_write_pid`), on cgroup
v2 and v1 alike. What reads a cgroup takes an absent one for an empty one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from execbus.agent.procs import is_live

_KILL_ROUNDS = 20
_WRITE = os.O_WRONLY | os.O_CLOEXEC


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


def _write_pid(cgroup: str, pid: int) -> None:
    """Move process ``pid`` (0: the caller) into ``cgroup``."""
    fd = os.open(os.path.join(cgroup, "cgroup.procs"), _WRITE)
    try:
        os.write(fd, b"%d" % pid)
    finally:
        os.close(fd)
