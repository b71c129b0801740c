"""The execbus guest agent: a standard-library-only daemon that spawns processes.

It serves the framed protocol of ``docs/agent-protocol.md`` on Unix, TCP, TLS
and vsock sockets (:mod:`execbus.agent.server` feeding :mod:`execbus.agent.core`),
runs commands on the host or in runc containers (:mod:`execbus.agent.containers`)
and keeps every exit until a client acknowledges it
(:mod:`execbus.agent.supervisor`). Run it with ``python -m execbus.agent``
(:mod:`execbus.agent.cli`).

Every module of this package imports the Python standard library only, so the
agent runs in a minimal guest that has nothing but ``python3``, from 3.9 on:
``execbus agent-bundle`` makes it one file (``docs/guest.md``). Take what 3.10+
added from :mod:`execbus.agent.compat`; ``tests/system/agent/test_py39.py``
checks.
"""
