"""The cgroup hierarchies mounted here: which one holds a path, the default root.

Read from ``/proc/self/mountinfo`` (and, for the agent's own cgroup,
``/proc/self/cgroup``); cgroup v2 and the v1 hierarchies alike.
"""

from __future__ import annotations

import os

from execbus.agent.compat import slots_dataclass

DEFAULT_NAME = "execbus"
_V1_HIERARCHIES = ("pids", "freezer")


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
