"""Fixtures of the CLI tests: ``execbus`` as a subprocess, pointed at the test's namespace."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import child_env

Execbus = Callable[..., "subprocess.CompletedProcess[bytes]"]


@pytest.fixture
def cli_env(amqp_url: str, namespace: str) -> dict[str, str]:
    """The environment of an ``execbus`` child: the test broker and namespace, src on the path."""
    return child_env(EXECBUS_AMQP_URL=amqp_url, EXECBUS_NAMESPACE=namespace)


def runner(env: dict[str, str]) -> Execbus:
    """Run ``python -m execbus ARGS...`` in ``env``; returns the completed process."""

    def run(*args: str, input: bytes | None = None, timeout: float = 30) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "execbus", *args],
            env=env,
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def execbus(cli_env: dict[str, str]) -> Execbus:
    """``execbus`` in the test's namespace (deleted after the test)."""
    return runner(cli_env)


@pytest.fixture
def offline_execbus(amqp_url: str) -> Execbus:
    """``execbus`` in a fresh namespace where no worker runs (nothing gets declared there)."""
    return runner(
        child_env(EXECBUS_AMQP_URL=amqp_url, EXECBUS_NAMESPACE=f"x{uuid.uuid4().hex[:10]}")
    )


@pytest.fixture
def local_worker(start_worker: Any) -> Any:
    """A real worker that owns the embedded agent ``local``."""
    worker = start_worker()
    worker.wait_owner("local")
    return worker
