"""End to end: a real worker serving a real qemu-ga, driven over a real RabbitMQ."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest

from execbus.testing.processes import WorkerProcess, child_env
from execbus.wire.codec import parse_reply
from execbus.wire.replies import Reply
from tests.system.qga.conftest import QemuGuestAgent

pytestmark = [pytest.mark.qga, pytest.mark.integration]

StartWorker = Callable[..., WorkerProcess]


def serve(start_worker: StartWorker, qga: QemuGuestAgent) -> WorkerProcess:
    worker = start_worker("--agent", f"vm1={qga.address}")
    worker.wait_owner("vm1")
    return worker


async def request(amqp_url: str, namespace: str, body: dict[str, Any]) -> Reply:
    """Publish one raw request to agent vm1 and wait for its RPC reply."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        exchange = await channel.get_exchange(f"{namespace}.requests")
        correlation_id = uuid.uuid4().hex
        message = aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            message_id=uuid.uuid4().hex,
            correlation_id=correlation_id,
            reply_to=replies.name,
        )
        await exchange.publish(message, routing_key="agent.vm1")
        async with asyncio.timeout(20), replies.iterator() as messages:
            async for incoming in messages:
                async with incoming.process():
                    if incoming.correlation_id == correlation_id:
                        return parse_reply(incoming.body)
    raise AssertionError("no reply")  # pragma: no cover


async def test_run_through_the_worker(
    amqp_url: str, namespace: str, start_worker: StartWorker, qga: QemuGuestAgent
) -> None:
    serve(start_worker, qga)
    body = {"v": 1, "type": "exec.run", "config": {"cmd": ["uname", "-a"]}}
    reply = await request(amqp_url, namespace, body)
    assert reply.ok, reply.error
    info = reply.result
    assert info is not None
    assert info.state == "exited"  # type: ignore[union-attr]
    assert info.exit.exit_code == 0  # type: ignore[union-attr]
    assert info.exit.stdout.startswith(b"Linux ")  # type: ignore[union-attr]


async def test_unsupported_through_the_worker(
    amqp_url: str, namespace: str, start_worker: StartWorker, qga: QemuGuestAgent
) -> None:
    serve(start_worker, qga)
    body = {"v": 1, "type": "exec.run", "config": {"cmd": ["sh"], "tty": True}}
    reply = await request(amqp_url, namespace, body)
    assert not reply.ok
    assert reply.error is not None
    assert reply.error.code == "unsupported"
    assert "TTY" in reply.error.message


async def test_timeout_through_the_worker(
    amqp_url: str, namespace: str, start_worker: StartWorker, qga: QemuGuestAgent
) -> None:
    serve(start_worker, qga)
    body = {"v": 1, "type": "exec.run", "config": {"cmd": ["sleep", "30"], "timeout": 0.5}}
    reply = await request(amqp_url, namespace, body)
    assert reply.ok, reply.error
    exit_info = reply.result.exit  # type: ignore[union-attr]
    assert exit_info is not None
    assert (exit_info.exit_code, exit_info.timed_out) == (137, True)


@pytest.mark.skipif(
    importlib.util.find_spec("execbus.cli.commands") is None,
    reason="the `execbus run` CLI (execbus.cli.commands) does not exist yet",
)
def test_cli_run(
    amqp_url: str, namespace: str, start_worker: StartWorker, qga: QemuGuestAgent
) -> None:
    serve(start_worker, qga)
    env = child_env(EXECBUS_AMQP_URL=amqp_url, EXECBUS_NAMESPACE=namespace)
    done = subprocess.run(
        [sys.executable, "-m", "execbus", "run", "--agent", "vm1", "--", "uname", "-a"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"Linux ")
