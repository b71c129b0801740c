"""Fixtures of the SDK tests: a client of a worker serving the in-process agent ``local``
(``local_worker``, from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from execbus import Client
from execbus.testing.processes import WorkerProcess


@pytest.fixture
async def client(
    amqp_url: str, namespace: str, local_worker: WorkerProcess
) -> AsyncIterator[Client]:
    """A connected client in the test's namespace."""
    async with Client(amqp_url, namespace=namespace) as connected:
        yield connected
