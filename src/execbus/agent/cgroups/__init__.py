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

The package, by concept: ``mounts`` (the mounted hierarchies, the default
root, :class:`CgroupError`), ``directory`` (operations on one cgroup
directory by path: what is in it, kill, remove, wait until empty, move a
process in), ``root`` (:class:`CgroupRoot`, the agent's life, and
:class:`ExecCgroup`, an exec's cgroup in it). Every name is importable from
here.
"""

from execbus.agent.cgroups.directory import _KILL_ROUNDS as _KILL_ROUNDS
from execbus.agent.cgroups.directory import _WRITE as _WRITE
from execbus.agent.cgroups.directory import _read as _read
from execbus.agent.cgroups.directory import _write_pid as _write_pid
from execbus.agent.cgroups.directory import children, kill, populated, procs, remove, wait_empty
from execbus.agent.cgroups.mounts import _V1_HIERARCHIES as _V1_HIERARCHIES
from execbus.agent.cgroups.mounts import (
    DEFAULT_NAME,
    CgroupError,
    Mount,
    default_root,
    mount_of,
)
from execbus.agent.cgroups.mounts import _mounts as _mounts
from execbus.agent.cgroups.root import _LIFE as _LIFE
from execbus.agent.cgroups.root import REFUGE, CgroupRoot, ExecCgroup
from execbus.agent.cgroups.root import _children_of as _children_of
from execbus.agent.cgroups.root import _pidns as _pidns

__all__ = [
    "DEFAULT_NAME",
    "REFUGE",
    "CgroupError",
    "CgroupRoot",
    "ExecCgroup",
    "Mount",
    "children",
    "default_root",
    "kill",
    "mount_of",
    "populated",
    "procs",
    "remove",
    "wait_empty",
]
