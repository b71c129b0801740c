"""``EXECBUS_AMQP_URL`` with several node URLs: start on one that answers, move on when it dies.

Two TCP proxies in front of the broker stand for two cluster nodes (the real
3-node cluster runs in the cluster fault tests): one is refused from the
start or cut later, and the worker and the SDK must carry on through the
other.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from execbus import Client
from execbus.broker import redact_url, urls_of
from execbus.errors import BrokerError
from execbus.settings import load_settings
from execbus.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes(amqp_url: str) -> Iterator[tuple[FaultProxy, FaultProxy, str]]:
    """Two "nodes" (proxies to the one broker) and the comma-separated URL of both."""
    parts = urlsplit(amqp_url)
    with FaultProxy(parts.hostname or "localhost", parts.port or 5672) as a:
        with FaultProxy(parts.hostname or "localhost", parts.port or 5672) as b:
            userinfo = parts.netloc.rpartition("@")[0]
            url = ",".join(
                f"amqp://{userinfo}@127.0.0.1:{proxy.port}{parts.path or '/'}" for proxy in (a, b)
            )
            yield a, b, url


def test_the_setting_takes_several_node_urls() -> None:
    settings = load_settings(amqp_url=" amqp://u:p@mq1/ , amqps://u:p@mq2:5671/vh ")
    assert urls_of(settings.amqp_url) == ["amqp://u:p@mq1/", "amqps://u:p@mq2:5671/vh"]
    assert redact_url(settings.amqp_url) == "amqp://u:***@mq1/,amqps://u:***@mq2:5671/vh"
    with pytest.raises(Exception, match="amqp:// or amqps://"):
        load_settings(amqp_url="amqp://mq1/,http://mq2/")


async def test_worker_and_client_start_on_a_node_that_answers(
    nodes: tuple[FaultProxy, FaultProxy, str], namespace: str, start_worker: Any
) -> None:
    a, _, url = nodes
    a.set_refuse(True)  # one node is down from the start
    worker = start_worker(env={"EXECBUS_AMQP_URL": url})
    worker.wait_owner("local")
    async with Client(url, namespace=namespace) as client:
        result = await client.run("local", ["echo", "hi"])
    assert result.stdout == b"hi\n"


async def test_a_client_moves_to_another_node_when_its_node_dies(
    nodes: tuple[FaultProxy, FaultProxy, str], amqp_url: str, namespace: str, start_worker: Any
) -> None:
    a, b, url = nodes
    start_worker().wait_owner("local")  # the worker on the broker itself
    async with Client(url, namespace=namespace) as client:
        assert (await client.run("local", ["true"])).ok
        dead, alive = (a, b) if a.connections() else (b, a)
        assert dead.connections() and not alive.connections()
        dead.set_refuse(True)  # the client's node dies, for good
        dead.cut()
        # It notices, reconnects by itself to the other node, and restores its queue;
        # a request made in between fails clearly (a caller retries it).
        async with asyncio.timeout(20):
            while True:
                try:
                    run = await client.run("local", ["echo", uuid.uuid4().hex], timeout=30)
                    break
                except BrokerError:
                    await asyncio.sleep(0.1)
        assert run.ok
        assert alive.connections() and not dead.connections(), "it moved to the other node"
