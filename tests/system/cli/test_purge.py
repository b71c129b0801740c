"""``execbus purge``: against the real broker, with real workers of the namespace."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest

from execbus.testing import broker as private_broker
from execbus.testing.processes import child_env
from tests.system.cli.conftest import Execbus, runner

pytestmark = pytest.mark.integration

FIXED_EXCHANGES = ("requests", "events", "dead", "unrouted", "control")
needs_rabbitmqctl = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None, reason="rabbitmqctl lists the queues to check"
)


def list_names(kind: str, ns: str, node: str | None = None) -> list[str]:
    """Queue or exchange names of ``ns`` as rabbitmqctl sees them (the test's own view)."""
    args = ["rabbitmqctl", "-q", *(("-n", node) if node else ()), f"list_{kind}", "name"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return sorted(n for n in out.split() if n.startswith(f"{ns}."))


async def exists(amqp_url: str, kind: str, name: str) -> bool:
    """Passive declare: the broker's answer, whatever rabbitmqctl says."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            if kind == "queue":
                await channel.declare_queue(name, passive=True)
            else:
                await channel.get_exchange(name, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True


def one_line_error(result: Any) -> str:
    err: str = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def served(start_worker: Any) -> Any:
    """A worker of the test namespace with an agent and a pool: every kind of queue exists."""
    worker = start_worker("--agent", "a1=local", "--agent", "a2=local", "--pool", "p=a1+a2")
    worker.wait_owner("a1")
    worker.wait_owner("a2")
    return worker


@needs_rabbitmqctl
async def test_refused_while_a_worker_is_alive_then_everything_goes(
    execbus: Execbus, amqp_url: str, namespace: str, served: Any
) -> None:
    before = list_names("queues", namespace)
    assert f"{namespace}.agent.a1" in before and f"{namespace}.pool.p" in before
    assert f"{namespace}.lease.a1" in before

    refused = execbus("purge", "--namespace", namespace, "--yes")
    assert refused.returncode == 1
    line = one_line_error(refused)
    assert f"namespace {namespace!r} is in use" in line and "--force" in line
    assert "1 worker(s) announcing" in line and f"{namespace}.lease.a1" in line
    assert list_names("queues", namespace) == before, "nothing deleted"

    assert served.terminate() == 0
    # A request nobody consumes any more: purge says how many messages go with the queues.
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{namespace}.requests")
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="agent.a1")

    done = execbus("purge", "--namespace", namespace, "--yes", "--listen", "1.2")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert f"namespace {namespace!r} (found by rabbitmqctl" in out
    assert f"deleted 12 of 12: 7 queues (1 message) and 5 exchanges of namespace {namespace!r}" in (
        out
    ), out
    assert list_names("queues", namespace) == []
    assert list_names("exchanges", namespace) == []
    for suffix in FIXED_EXCHANGES:
        assert not await exists(amqp_url, "exchange", f"{namespace}.{suffix}")
    for queue in ("agent.a1", "agent.a2", "pool.p", "lease.a1", "dead", "unrouted"):
        assert not await exists(amqp_url, "queue", f"{namespace}.{queue}")

    again = execbus("purge", "--namespace", namespace, "--yes", "--listen", "1.2")
    assert again.returncode == 0
    assert "nothing to purge" in again.stdout.decode()


@needs_rabbitmqctl
def test_force_purges_a_live_namespace(execbus: Execbus, namespace: str, served: Any) -> None:
    result = execbus("purge", "--namespace", namespace, "--yes", "--force")
    assert result.returncode == 0, result.stderr
    assert "--force: deleting while in use" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    out = result.stdout.decode()
    assert f"{namespace}.lease.a1  (ownership lease)" in out
    assert "deleted 12 of 12: 7 queues (0 messages) and 5 exchanges" in out, out


@needs_rabbitmqctl
def test_dry_run_and_confirmation(execbus: Execbus, namespace: str, served: Any) -> None:
    assert served.terminate() == 0
    before = list_names("queues", namespace)
    dry = execbus("purge", "--namespace", namespace, "--dry-run", "--listen", "1.2")
    assert dry.returncode == 0
    assert "would delete 7 queues (0 messages) and 5 exchanges" in dry.stdout.decode()
    # Not a terminal and no --yes: nothing happens.
    piped = execbus("purge", "--namespace", namespace, input=b"y\n")
    assert piped.returncode == 1
    assert one_line_error(piped) == "execbus: not a terminal, so no confirmation: pass --yes"
    assert list_names("queues", namespace) == before


def run_on_tty(env: dict[str, str], args: list[str], answer: bytes) -> tuple[int, str]:
    """Run ``execbus ARGS`` with a terminal on stdin; type ``answer`` at the prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "execbus", *args],
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    answered = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(master, answer)
                answered = True
            if proc.poll() is not None and not ready:
                break
        return proc.wait(30), seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


@needs_rabbitmqctl
def test_asks_on_a_terminal(cli_env: dict[str, str], namespace: str, served: Any) -> None:
    assert served.terminate() == 0
    before = list_names("queues", namespace)
    code, screen = run_on_tty(
        cli_env, ["purge", "--namespace", namespace, "--listen", "1.2"], b"n\n"
    )
    assert code == 1, screen
    assert f"Delete 7 queues (0 messages) and 5 exchanges of namespace {namespace!r}? [y/N]" in (
        screen
    )
    assert "nothing deleted" in screen
    assert list_names("queues", namespace) == before
    code, screen = run_on_tty(
        cli_env, ["purge", "--namespace", namespace, "--listen", "1.2"], b"y\n"
    )
    assert code == 0, screen
    assert list_names("queues", namespace) == []


async def test_without_a_listing_known_names_are_purged(
    execbus: Execbus, amqp_url: str, namespace: str, served: Any
) -> None:
    """--via names (what auto falls back to without management API or rabbitmqctl)."""
    assert served.terminate() == 0
    result = execbus(
        "purge", "--namespace", namespace, "--yes", "--via", "names", "--agent", "a1", "--pool", "p"
    )
    assert result.returncode == 0, result.stderr
    assert "listed by known names only" in result.stderr.decode()
    assert "(found by names)" in result.stdout.decode()
    for queue in ("agent.a1", "lease.a1", "pool.p", "dead", "unrouted"):
        assert not await exists(amqp_url, "queue", f"{namespace}.{queue}"), queue
    for suffix in FIXED_EXCHANGES:
        assert not await exists(amqp_url, "exchange", f"{namespace}.{suffix}"), suffix
    # a2 was not named: the known-names method cannot find it, and says so above.
    assert await exists(amqp_url, "queue", f"{namespace}.agent.a2")


async def test_names_finds_the_agents_of_live_workers_with_force(
    execbus: Execbus, amqp_url: str, namespace: str, served: Any
) -> None:
    result = execbus("purge", "--namespace", namespace, "--yes", "--force", "--via", "names")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    # The live worker declares its queues again when it notices (a new broker
    # session), so what counts is that purge found and deleted them.
    for queue in ("agent.a1", "agent.a2", "lease.a1", "lease.a2", "pool.p"):
        assert f"  {namespace}.{queue}  (" in out, queue
    assert "deleted 12 of 12: 7 queues" in out, out


def test_errors_are_one_line(amqp_url: str) -> None:
    dead = runner(child_env(EXECBUS_AMQP_URL="amqp://guest:guest@127.0.0.1:1/"))
    result = dead("purge", "--namespace", "nothing", "--yes")
    assert result.returncode == 125
    assert one_line_error(result).startswith("execbus: cannot connect to the broker at ")
    bad_password = amqp_url.replace("guest:guest@", "guest:wrong@")
    wrong = runner(child_env(EXECBUS_AMQP_URL=bad_password))("purge", "--namespace", "x", "--yes")
    assert wrong.returncode == 125
    assert "guest:wrong" not in one_line_error(wrong)
    usage = runner(child_env(EXECBUS_NAMESPACE="fromenv"))("purge", "--yes")
    assert usage.returncode == 2
    assert "--namespace is required" in one_line_error(usage)
    amq = runner(child_env())("purge", "--namespace", "amq", "--yes")
    assert amq.returncode == 2
    assert "broker" in one_line_error(amq)


@pytest.mark.slow
@pytest.mark.timeout(240)  # a private node starts and stops
@pytest.mark.skipif(not private_broker.available(), reason="needs rabbitmq-server and root")
def test_management_api_lists_the_namespace(tmp_path: Path) -> None:
    """A private node with the management plugin; rabbitmqctl out of reach (PATH)."""
    with private_broker.PrivateBroker(management=True) as node:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(node.management_url + "api/overview", timeout=5):
                    break
            except OSError as exc:
                if getattr(exc, "code", None) == 401:
                    break  # up (it wants credentials)
                assert time.monotonic() < deadline, "the management API never came up"
                time.sleep(0.5)
        ns = f"m{uuid.uuid4().hex[:8]}"
        odd = f"{ns}.something.nobody.knows"
        asyncio.run(_declare(node.url, ns, odd))
        env = child_env(EXECBUS_AMQP_URL=node.url)
        env["PATH"] = "/nonexistent"  # no rabbitmqctl: the API must do it
        result = runner(env)(
            "purge", "--namespace", ns, "--yes", "--management-url", node.management_url
        )
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        assert "(found by management)" in out and odd in out
        assert list_names("queues", ns, node.node) == []
        assert list_names("exchanges", ns, node.node) == []
        # auto without a management URL that works, nor rabbitmqctl: the known names.
        asyncio.run(_declare(node.url, ns, odd))
        fallback = runner(env)(
            "purge", "--namespace", ns, "--yes", "--management-url", "http://127.0.0.1:1/"
        )
        assert fallback.returncode == 0, fallback.stderr
        err = fallback.stderr.decode()
        assert "listed by known names only" in err
        out = fallback.stdout.decode()
        assert "(found by names; management API at http://127.0.0.1:1: " in out
        assert "rabbitmqctl is not installed here" in out
        assert list_names("queues", ns, node.node) == [odd], "names cannot find it, and said so"
        # With rabbitmqctl on the PATH: it lists this host's default node, not the private
        # one, and purge sees that (its marker queue is missing) instead of trusting it.
        if shutil.which("rabbitmqctl"):
            asyncio.run(_declare(node.url, ns, odd))
            wrong_node = runner(child_env(EXECBUS_AMQP_URL=node.url))(
                "purge", "--namespace", ns, "--yes", "--management-url", "http://127.0.0.1:1/"
            )
            assert wrong_node.returncode == 0, wrong_node.stderr
            assert "rabbitmqctl (this host's node) lists another broker or vhost" in (
                wrong_node.stdout.decode()
            )
            assert "(found by names;" in wrong_node.stdout.decode()
    assert not node.dir.exists(), "the private node leaves no directory behind"


async def _declare(url: str, ns: str, odd: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for suffix in FIXED_EXCHANGES:
            await channel.declare_exchange(f"{ns}.{suffix}", aio_pika.ExchangeType.TOPIC)
        for name in (f"{ns}.dead", f"{ns}.unrouted", odd):
            await channel.declare_queue(name, durable=True)


@needs_rabbitmqctl
def test_without_the_permissions_one_line(amqp_url: str, namespace: str, served: Any) -> None:
    """A caller's permissions (none on the namespace's control exchange): refused, one line."""
    name, password = f"ebpurge-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    vhost = urlsplit(amqp_url).path.lstrip("/") or "/"
    subprocess.run(["rabbitmqctl", "-q", "add_user", name, password], check=True, timeout=60)
    try:
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, name, "^$", "^$", "^$"],
            check=True,
            timeout=60,
        )
        parts = urlsplit(amqp_url)
        netloc = f"{name}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        url = urlunsplit(parts._replace(netloc=netloc))
        result = runner(child_env(EXECBUS_AMQP_URL=url))(
            "purge", "--namespace", namespace, "--yes", "--listen", "0.5"
        )
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", name], check=True, timeout=60)
    assert result.returncode == 125
    line = one_line_error(result)
    assert line.startswith("execbus: access refused: purge needs the workers' permissions"), line
    assert f"{namespace}.agent.a1" in list_names("queues", namespace), "nothing deleted"
