"""Which processes are whose: identities that survive pid reuse, and process groups.

A pid alone names a process only while it lives: once it is reaped the
number can be handed to an unrelated process. So the agent names a process
by its pid *and* its start time (field 22 of ``/proc/<pid>/stat``, in clock
ticks since boot), which no later process with the same pid can share.

Process groups: every exec's main process leads a group of its own (a new
session). Linux does not reuse a pid while a process still uses it as its
process group (or session) id, so:

* the leader is alive (or a zombie) with the recorded start time: the group
  is the exec's;
* no process has the leader's pid: whatever is left in the group (background
  processes the exec started) is the exec's;
* a process with another start time has the pid: the exec's group is empty
  (its pid could only be reused once nothing used it), and that group is
  someone else's.

What leaves the group (``setsid``, ``setpgid``) escapes this bookkeeping;
only a cgroup (:mod:`execbus.agent.cgroups`) keeps track of those.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from typing import Optional

# (pid, start time): a process group leader as the agent knows it.
Leader = tuple[int, Optional[str]]


def split_stat(stat: bytes) -> list[bytes]:
    """The fields of a ``/proc/<pid>/stat`` line after the command name (state first).

    Pure, so a stat line read elsewhere (a guest's, through qemu-ga) is read the same way.
    """
    return stat.rpartition(b")")[2].split()  # the command name may hold spaces and ')'


def stat_start_time(fields: list[bytes]) -> str | None:
    """Field 22 (start time in clock ticks since boot) of :func:`split_stat` fields;
    None if the line is too short."""
    return fields[19].decode("ascii", "replace") if len(fields) > 19 else None


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:  # no file object: this is read for every exec
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)  # a line of a few hundred bytes, whole in one read
    except OSError:
        return None
    finally:
        os.close(fd)
    return split_stat(stat)


def start_time(pid: int, *, zombies: bool = True) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), None if there is
    no such process (or it is a zombie and ``zombies`` is false)."""
    fields = stat_fields(pid)
    if fields is None or len(fields) <= 19:
        return None
    if not zombies and fields[0] in (b"Z", b"X"):
        return None
    return stat_start_time(fields)


def child_start_time(pid: int) -> str | None:
    """Like :func:`start_time`, for a child of this process not reaped yet (a zombie
    counts); None once it is not: reaped, and its pid maybe someone else's."""
    fields = stat_fields(pid)
    if fields is None or len(fields) <= 19 or fields[1] != b"%d" % os.getpid():
        return None
    return stat_start_time(fields)


def owns_group(leader: Leader) -> bool:
    """True when process group ``leader[0]`` is still the one its leader started
    (see the module docstring); a group that may be empty counts as owned."""
    pid, started = leader
    now = start_time(pid)
    return now is None or now == started


def signal_group(leader: Leader, signum: int) -> bool:
    """Send ``signum`` to the leader's process group if it is still ours; True if sent."""
    if not owns_group(leader):
        return False
    try:
        os.killpg(leader[0], signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(leader: Leader, members: dict[int, list[int]] | None = None) -> bool:
    """True while the leader's group is ours and has a live process (zombies, which
    an init may take a while to reap, do not count). ``members``: the result of
    one :func:`live_group_members` scan for many groups (else one is made)."""
    try:
        os.killpg(leader[0], 0)  # cheap, and first: most groups are simply empty
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not owns_group(leader):
        return False
    if members is None or leader[0] not in members:
        members = live_group_members([leader[0]])
    return bool(members[leader[0]])


def is_live(pid: int) -> bool:
    """True if ``pid`` is a process that is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and bool(fields) and fields[0] not in (b"Z", b"X")


def live_group_members(pgids: Iterable[int]) -> dict[int, list[int]]:
    """Pids of the live (non-zombie) processes of each process group (scans /proc)."""
    wanted = {str(p).encode(): p for p in pgids}
    found: dict[int, list[int]] = {p: [] for p in wanted.values()}
    if not wanted:
        return found
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            fields = stat_fields(int(entry))
            if fields is None or len(fields) < 3 or fields[0] in (b"Z", b"X"):
                continue
            pgid = wanted.get(fields[2])
            if pgid is not None:
                found[pgid].append(int(entry))
    return found


def kill_groups(leaders: Iterable[Leader]) -> bool:
    """SIGKILL every group of ``leaders`` that is still ours; True if any was signalled."""
    sent = False
    for leader in leaders:
        sent = signal_group(leader, signal.SIGKILL) or sent
    return sent
