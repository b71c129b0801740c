"""Fixtures of the security tests: a test PKI, agent daemons, RabbitMQ users."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from tests.system.security.support import AgentDaemon, Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """CA, server (127.0.0.1), client and rogue certificates made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("correct-horse-battery-staple\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def daemon() -> Iterator[Callable[..., AgentDaemon]]:
    """Start agent daemons (``daemon(*args)``); all stopped after the test."""
    started: list[AgentDaemon] = []

    def start(*args: str, unix: bool = True, wait: bool = True) -> AgentDaemon:
        agent = AgentDaemon(*args, unix=unix)
        started.append(agent)
        return agent.start(wait=wait)

    yield start
    for agent in started:
        agent.stop()


@dataclass(frozen=True)
class BrokerUsers:
    """Two RabbitMQ users made for the test run, with their AMQP URLs."""

    alice: str
    mallory: str
    password: str
    base_url: str

    def url(self, user: str) -> str:
        parts = urlsplit(self.base_url)
        host = parts.hostname or "localhost"
        netloc = f"{quote(user)}:{quote(self.password)}@{host}" + (
            f":{parts.port}" if parts.port else ""
        )
        return urlunsplit(parts._replace(netloc=netloc))


def _ctl(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["rabbitmqctl", "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _all(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl failed: {err.decode(errors='replace')}")


@pytest.fixture(scope="session")
def broker_users(amqp_url: str) -> Iterator[BrokerUsers]:
    """Two real RabbitMQ users (``rabbitmqctl add_user``), deleted at the end."""
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is needed to add RabbitMQ users"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    suffix = uuid.uuid4().hex[:8]
    users = BrokerUsers(
        f"ebsec-alice-{suffix}", f"ebsec-mallory-{suffix}", "pw-" + suffix, amqp_url
    )
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    names = (users.alice, users.mallory)
    try:
        _all(*(_ctl("add_user", name, users.password) for name in names))
        _all(*(_ctl("set_permissions", "-p", vhost, name, ".*", ".*", ".*") for name in names))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        for name in names:
            _ctl("delete_user", name).communicate(timeout=60)
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(f"cannot add RabbitMQ users here: {exc}")
    try:
        yield users
    finally:
        for proc in [_ctl("delete_user", name) for name in names]:
            proc.communicate(timeout=60)
