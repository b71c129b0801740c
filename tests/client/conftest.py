"""Fixtures of the SDK tests: a worker serving the in-process agent ``local``, and a client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from execbus import Client


@pytest.fixture
def local_worker(start_worker: Any) -> Any:
    """A real worker that owns the embedded agent ``local``."""
    worker = start_worker()
    worker.wait_owner("local")
    return worker


@pytest.fixture
async def client(amqp_url: str, namespace: str, local_worker: Any) -> AsyncIterator[Client]:
    """A connected client in the test's namespace."""
    async with Client(amqp_url, namespace=namespace) as connected:
        yield connected
