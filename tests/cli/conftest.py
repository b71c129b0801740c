"""Fixtures of the CLI tests: ``execbus`` as a subprocess, pointed at the test's namespace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import child_env

Execbus = Callable[..., "subprocess.CompletedProcess[bytes]"]


@pytest.fixture
def cli_env(amqp_url: str, namespace: str) -> dict[str, str]:
    """The environment of an ``execbus`` child: the test broker and namespace, src on the path."""
    return child_env(EXECBUS_AMQP_URL=amqp_url, EXECBUS_NAMESPACE=namespace)


@pytest.fixture
def execbus(cli_env: dict[str, str]) -> Execbus:
    """Run ``python -m execbus ARGS...``; returns the completed process (output captured)."""

    def run(*args: str, input: bytes | None = None, timeout: float = 30) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "execbus", *args],
            env=cli_env,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def local_worker(start_worker: Any) -> Any:
    """A real worker that owns the embedded agent ``local``."""
    worker = start_worker()
    worker.wait_owner("local")
    return worker
