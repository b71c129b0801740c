"""Real agent and worker processes for tests, benchmarks and soaks: one harness.

:class:`AgentProcess` (``agent``) runs ``python -m execbus.agent`` (on a Unix
socket in a work directory, or only the listeners it is given), ready once its
socket accepts or, with JSON logs, once it logs ``agent ready``;
:class:`WorkerProcess` (``worker``) runs ``python -m execbus worker`` with its
own HTTP port for ``/readyz`` (:meth:`~WorkerProcess.wait_ready`,
:meth:`~WorkerProcess.wait_owner`). Both are :class:`Managed` (``managed``):
every child runs in its own session with its output in a log file. A child can
be signalled, terminated (SIGTERM to it alone), stopped (SIGTERM to its group,
then SIGKILL), crashed (:meth:`~Managed.kill`: SIGKILL to it alone, as a crash
would: an agent's lifeline survives it), ended with its whole group
(:meth:`~Managed.kill_group`) and started again with the same command line (a
restart).

:class:`Processes` (``group``) keeps the agents and workers of one namespace
and :meth:`Processes.kill` ends them all, whatever happened. Two namespace
cleaners (``namespaces``): :func:`delete_namespace` (fast, best effort: the
test fixtures' per test) and :func:`purge` (``execbus purge``'s code:
thorough, slower). :func:`free_port`, :func:`child_env` (``src/`` on
``PYTHONPATH``) and :func:`fetch_readyz` (``helpers``) serve the rest of
``execbus.testing``.

Every name is importable from here. Used by the test fixtures
(``tests/conftest.py`` and the agent and security harnesses),
``bench/e2e.py`` and ``bench/chaos.py``.
"""

from execbus.testing.processes.agent import AgentProcess
from execbus.testing.processes.group import Processes
from execbus.testing.processes.helpers import SRC, child_env, fetch_readyz, free_port, tail
from execbus.testing.processes.managed import Managed, ProcessDied
from execbus.testing.processes.namespaces import NAMESPACE_EXCHANGES, delete_namespace, purge
from execbus.testing.processes.worker import WorkerProcess

__all__ = [
    "NAMESPACE_EXCHANGES",
    "SRC",
    "AgentProcess",
    "Managed",
    "ProcessDied",
    "Processes",
    "WorkerProcess",
    "child_env",
    "delete_namespace",
    "fetch_readyz",
    "free_port",
    "purge",
    "tail",
]
