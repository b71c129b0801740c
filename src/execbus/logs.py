"""The worker's logging: the agent's formatter with the worker's field policy.

Formatting is :mod:`execbus.agent.logs`, the one formatter of execbus (text
or JSON lines on stderr, UTC timestamps). The worker adds its policy: the
context fields of its lines (:data:`CONTEXT_FIELDS`: the exec, the agent,
the container, ...) come first and are left out when empty; every other
extra field is kept, so the in-process agent's lines show their ``pid``,
``program`` or ``peer`` as a standalone agent's do. And aio-pika and aiormq
are quieted. Env values and stdin are never passed to the logger.
"""

from __future__ import annotations

import logging

from execbus.agent.logs import FieldPolicy
from execbus.agent.logs import setup_logging as _setup_logging

CONTEXT_FIELDS = ("exec_id", "agent", "container", "worker_id", "code")
WORKER_FIELDS = FieldPolicy(first=CONTEXT_FIELDS, drop_none=True)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once, on stderr, with the worker's field policy."""
    _setup_logging(level, fmt, WORKER_FIELDS)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    # aiormq logs every failed connection attempt at ERROR; execbus says the same in
    # one line of its own (with the URL redacted), so the two would double up.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
