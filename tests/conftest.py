"""Shared fixtures: a real RabbitMQ, unique namespaces, real worker processes.

The broker: testcontainers' RabbitMQ where a Docker engine answers, else the
broker at ``EXECBUS_TEST_AMQP_URL`` (default ``amqp://guest:guest@localhost:5672/``).
Under ``CI=true`` a missing broker fails the run instead of skipping.
Every test gets its own namespace, and everything declared under it is
deleted afterwards; every process a fixture starts is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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


async def delete_namespace(amqp_url: str, ns: str) -> None:
    """Delete the queues and exchanges of ``ns`` (names listed by rabbitmqctl-free guess)."""
    import aio_pika

    queues = await _list_queues(ns)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for suffix in ("requests", "events", "dead", "unrouted", "control"):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{ns}.{suffix}")


async def _list_queues(ns: str) -> list[str]:
    """Queue names with the namespace prefix (rabbitmqctl; empty if unavailable)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "list_queues",
            "name",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except (OSError, TimeoutError):
        return []
    return [n for n in out.decode().split() if n.startswith(f"{ns}.")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    """A real ``execbus worker`` subprocess."""

    proc: subprocess.Popen[bytes]
    http_port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    def readyz(self) -> dict[str, object] | None:
        """The worker's readiness document (also when it answers 503), or None."""
        from execbus.testing.cluster import fetch_readyz

        return fetch_readyz(self.http_port)

    def wait_owner(self, agent: str, timeout: float = 15.0) -> None:
        """Wait until this worker owns ``agent`` and is connected to it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()}")
            doc = self.readyz()
            agents = doc.get("agents", {}) if doc else {}
            info = agents.get(agent) if isinstance(agents, dict) else None
            if isinstance(info, dict) and info.get("owner") and info.get("connected"):
                return
            time.sleep(0.05)
        raise AssertionError(f"worker did not become owner of {agent!r}:\n{self.log()}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()}")
            doc = self.readyz()
            if doc and doc.get("broker", {}).get("connected"):  # type: ignore[attr-defined]
                return
            time.sleep(0.05)
        raise AssertionError(f"worker not ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-5000:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def start_worker(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[object]:
    """Start real workers: ``start_worker("--agent", "a=unix:///...")``; all killed after."""
    workers: list[WorkerProcess] = []

    def start(
        *args: str, wait: str | None = "ready", env: dict[str, str] | None = None
    ) -> WorkerProcess:
        port = free_port()
        log_path = tmp_path / f"worker-{len(workers)}.log"
        cmd = [sys.executable, "-m", "execbus", "worker", "--http-port", str(port), *args]
        overrides = {
            "EXECBUS_AMQP_URL": amqp_url,
            "EXECBUS_NAMESPACE": namespace,
            "EXECBUS_LOG_LEVEL": "debug",
            "EXECBUS_SWEEP_INTERVAL": "1",
            **(env or {}),
        }
        full_env = child_env(**overrides)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = WorkerProcess(proc, port, log_path, list(args))
        workers.append(worker)
        if wait == "ready":
            worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        with contextlib.suppress(Exception):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            worker.proc.wait(10)


@dataclass
class AgentProcess:
    """A real ``execbus agent`` subprocess on a Unix socket."""

    proc: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    @property
    def address(self) -> str:
        return f"unix://{self.socket_path}"

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited early:\n{self.log_path.read_text()}")
            if self.socket_path.exists():
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket_path))
                    return
            time.sleep(0.02)
        raise AssertionError("agent did not start listening")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[object]:
    """Start real agent daemons on Unix sockets; all killed after."""
    agents: list[AgentProcess] = []

    def start(name: str = "agent", *extra: str, socket_path: Path | None = None) -> AgentProcess:
        sock = socket_path or tmp_path / f"{name}.sock"
        log_path = tmp_path / f"{name}-{len(agents)}.log"
        cmd = [sys.executable, "-m", "execbus.agent", "--listen", f"unix://{sock}", *extra]
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                cmd,
                env=child_env(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        agent = AgentProcess(proc, sock, log_path)
        agents.append(agent)
        agent.wait_listening()
        return agent

    yield start
    for agent in agents:
        with contextlib.suppress(Exception):
            os.killpg(agent.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            agent.proc.wait(10)
