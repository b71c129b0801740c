"""A connection to QEMU's guest agent (``qemu-ga``), behind :class:`AgentConnection`.

qemu-ga speaks newline-delimited QMP-style JSON on one stream (a Unix socket
with ``qemu-ga -m unix-listen``, or the host side of a virtio-serial
channel), one command at a time and in order, and serves one client at a
time. What qemu-ga cannot do, this package emulates or refuses
(``docs/qga.md``):

- completion: qemu-ga pushes nothing, so every running exec is polled with
  ``guest-exec-status`` (backoff from ``poll_initial`` doubling to
  ``poll_max``). qemu-ga forgets a pid once it has answered ``exited``, so
  the exec table (pids, configs, exits until ``ack``) lives here, in the
  worker;
- signals and timeouts: qemu-ga cannot signal, so a ``/bin/sh`` helper run
  through ``guest-exec`` signals the process and its descendants (qemu-ga's
  children are not group leaders: they share qemu-ga's own process group,
  which must never be signalled);
- TTYs, streamed stdin, resize, users, containers and privileged execs are
  :class:`~execbus.errors.Unsupported`;
- ``stream_output``: qemu-ga hands out output only once the process has
  exited, so the captured output is pushed as output chunks at the exit,
  just before the exit itself (followers such as ``execbus run`` then
  print it); nothing arrives while the process runs.

The modules, each importing only those above it:

- :mod:`.stream`: :class:`QgaStream`, the line stream (call, sync, graceful close);
- :mod:`.translate`: pure functions from an exec to ``guest-exec`` arguments
  and from ``guest-exec-status`` answers to exits;
- :mod:`.identity`: what the handshake learns (commands, ``cwd``, boot identity);
- :mod:`.killtree`: the kill-tree script and :class:`SignalHelper`;
- :mod:`.table`: :class:`ExecTable`, the execs and their pollers;
- :mod:`.connection`: :class:`QgaConnection`, which wires them.
"""

from execbus.connections.qga.connection import QgaConnection
from execbus.connections.qga.killtree import SignalHelper
from execbus.connections.qga.stream import QgaCommandError, QgaStream
from execbus.connections.qga.table import ExecTable, QgaExec

__all__ = [
    "ExecTable",
    "QgaCommandError",
    "QgaConnection",
    "QgaExec",
    "QgaStream",
    "SignalHelper",
]
