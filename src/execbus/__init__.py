"""execbus: run commands inside containers and VM guests, over RabbitMQ.

Public API (imported lazily, so ``python -m execbus.agent`` needs only the
standard library)::

    from execbus import Client, ExecConfig, RunResult
    async with Client("amqp://guest:guest@localhost/") as client:
        result = await client.run("local", ["echo", "hi"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "execbus.client",
    "RunResult": "execbus.client",
    "ExecConfig": "execbus.wire",
    "ExecInfo": "execbus.wire",
    "ExecState": "execbus.wire",
    "ExitInfo": "execbus.wire",
    "Settings": "execbus.settings",
}

__all__ = ["Client", "ExecConfig", "ExecInfo", "ExecState", "ExitInfo", "RunResult", "Settings"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'execbus' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
