"""Fixtures of the CLI tests: ``execbus`` as a subprocess, pointed at the test's namespace."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pytest

from execbus.testing.processes import child_env

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


# -- RabbitMQ users with exactly the permissions `execbus permissions` prints ----------


@dataclass(frozen=True)
class BrokerUser:
    """A RabbitMQ user made for one test; ``url`` authenticates as it."""

    name: str
    url: str


def _rabbitmqctl(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["rabbitmqctl", "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait_all(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl failed: {err.decode(errors='replace').strip()}")


def user_url(amqp_url: str, user: str, password: str) -> str:
    parts = urlsplit(amqp_url)
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def broker_user(amqp_url: str, namespace: str) -> Iterator[Callable[..., BrokerUser]]:
    """``broker_user(role, agents=REGEX)``: a new RabbitMQ user holding exactly what
    ``execbus permissions ROLE --user U --namespace NS --agents REGEX`` prints, applied
    line by line with rabbitmqctl; deleted after the test."""
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is needed to add RabbitMQ users"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    vhost = unquote(urlsplit(amqp_url).path[1:]) or "/"
    made: list[str] = []

    def make(role: str, agents: str = ".*") -> BrokerUser:
        name = f"ebcli-{role}-{uuid.uuid4().hex[:8]}"
        password = "pw-" + uuid.uuid4().hex
        _wait_all(_rabbitmqctl("add_user", name, password))
        made.append(name)
        printed = subprocess.run(
            [sys.executable, "-m", "execbus", "permissions", role, "--user", name,
             "--namespace", namespace, "--agents", agents, "--vhost", vhost],
            env=child_env(), capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        lines = [shlex.split(line) for line in printed.splitlines() if line.strip()]
        assert lines and all(line[0] == "rabbitmqctl" for line in lines), printed
        _wait_all(*(_rabbitmqctl(*line[1:]) for line in lines))
        return BrokerUser(name, user_url(amqp_url, name, password))

    yield make
    _wait_all(*(_rabbitmqctl("delete_user", name) for name in made))
