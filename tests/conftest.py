"""Shared fixtures: a real RabbitMQ, unique namespaces, real worker processes.

The broker: testcontainers' RabbitMQ where a Docker engine answers, else the
broker at ``EXECBUS_TEST_AMQP_URL`` (default ``amqp://guest:guest@localhost:5672/``).
Under ``CI=true`` a missing broker fails the run instead of skipping.
Every test gets its own namespace, and everything declared under it is
deleted afterwards; every process a fixture starts is killed. The processes
and the namespace cleanup are ``execbus.testing.processes``'s, as in bench/.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from execbus.testing.processes import (
    AgentProcess,
    WorkerProcess,
    child_env,
    delete_namespace,
)

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DEFAULT_TEST_URL = "amqp://guest:guest@localhost:5672/"


def _broker_reachable(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    """True when a Docker engine answers /_ping on its Unix socket (or DOCKER_HOST)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(host[len("unix://") :])
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(1024)
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A real RabbitMQ: testcontainers where Docker runs, else EXECBUS_TEST_AMQP_URL."""
    url = os.environ.get("EXECBUS_TEST_AMQP_URL")
    if url is None and _docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            params = container.get_connection_params()
            yield f"amqp://guest:guest@{params.host}:{params.port}/"
        return
    url = url or DEFAULT_TEST_URL
    if not _broker_reachable(url):
        message = f"no RabbitMQ at {url} (set EXECBUS_TEST_AMQP_URL)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield url


@pytest.fixture
async def namespace(amqp_url: str) -> AsyncIterator[str]:
    """A unique namespace; everything under it is deleted after the test."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    await delete_namespace(amqp_url, ns)


StartWorker = Callable[..., WorkerProcess]
StartAgent = Callable[..., AgentProcess]


@pytest.fixture
def start_worker(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real workers: ``start_worker("--agent", "a=unix:///...")``; all killed after."""
    workers: list[WorkerProcess] = []

    def start(
        *args: str, wait: str | None = "ready", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        overrides = {
            "EXECBUS_AMQP_URL": amqp_url,
            "EXECBUS_NAMESPACE": namespace,
            "EXECBUS_LOG_LEVEL": "debug",
            "EXECBUS_SWEEP_INTERVAL": "1",
            **(env or {}),
        }
        name = f"worker-{len(workers)}"
        worker = WorkerProcess(name, tmp_path, child_env(**overrides), {}, *args)
        workers.append(worker)
        worker.start()
        if wait == "ready":
            worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.kill_group()


@pytest.fixture
def local_worker(start_worker: StartWorker) -> WorkerProcess:
    """A real worker that owns the embedded agent ``local``."""
    worker = start_worker()
    worker.wait_owner("local")
    return worker


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[StartAgent]:
    """Start real agent daemons on Unix sockets (``start_agent(name, *args)``); all killed after."""
    agents: list[AgentProcess] = []

    def start(name: str = "agent", *extra: str, socket_path: Path | None = None) -> AgentProcess:
        log_path = tmp_path / f"{name}-{len(agents)}.log"
        agent = AgentProcess(
            name, tmp_path, child_env(), *extra, socket_path=socket_path, log_path=log_path
        )
        agents.append(agent)
        agent.start().wait_ready(10.0)
        return agent

    yield start
    for agent in agents:
        agent.kill_group()
