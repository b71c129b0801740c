"""The runc backend: execs inside OCI containers managed by runc.

* :mod:`~execbus.agent.runc.backend` — :class:`RuncBackend`: one ``runc exec``
  per exec, run in the foreground as the agent's child (TTYs, resizes, exit
  statuses, the pid file);
* :mod:`~execbus.agent.runc.oci` — the OCI process of a ``runc exec``: the
  container's own, with the request applied (and the capability names);
* :mod:`~execbus.agent.runc.state` — what ``runc state`` says about a
  container, trusted while its init process lives;
* :mod:`~execbus.agent.runc.errors` — runc's failure messages as start
  failure codes.

:func:`execbus.agent.containers.make_backends` imports it only when runc is
enabled.
"""
