"""The SDK's event subscriptions and output streams, against a real worker."""

from __future__ import annotations

import asyncio

import pytest

from execbus import Client
from execbus.client import Subscription
from execbus.errors import InvalidRequest, NotFound
from execbus.wire.events import Event, ExitedEvent
from execbus.wire.ids import new_exec_id

pytestmark = pytest.mark.integration


async def events_of(sub: Subscription, exec_id: str, until: str = "exec.exited") -> list[Event]:
    """The events of ``exec_id`` on ``sub``, up to the first of type ``until``."""
    got: list[Event] = []
    async with asyncio.timeout(10):
        async for event in sub:
            if event.exec_id == exec_id:
                got.append(event)
                if event.type == until:
                    return got
    raise AssertionError(f"subscription ended before {until}")


async def nothing_on(sub: Subscription, seconds: float = 0.3) -> bool:
    try:
        await asyncio.wait_for(anext(sub), seconds)
    except TimeoutError:
        return True
    return False


async def test_events_follow_a_run_with_filters(client: Client) -> None:
    exec_id = new_exec_id()
    async with (
        client.events(agent="local") as everything,
        client.events(agent="local", kind="exited") as exits,
        client.events(container_id="") as host,
        client.events(agent="other-agent") as other,
    ):
        await client.run("local", ["sh", "-c", "echo hi"], exec_id=exec_id, labels={"k": "v"})
        kinds = [e.type for e in await events_of(everything, exec_id)]
        assert kinds == ["exec.created", "exec.started", "exec.exited"]
        (exited,) = await events_of(exits, exec_id)
        assert isinstance(exited, ExitedEvent)
        assert exited.exit.stdout == b"hi\n"
        assert exited.labels == {"k": "v"}
        assert (await events_of(host, exec_id))[-1].type == "exec.exited"
        assert await nothing_on(other)


async def test_events_reject_an_unknown_kind(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="unknown event kind"):
        client.events(kind="exploded")


async def test_output_streams_in_order_and_separates_streams(client: Client) -> None:
    exec_id = new_exec_id()
    script = "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done"
    async with client.output("local", exec_id, existing=False) as output:
        execution = await client.submit(
            "local", ["sh", "-c", script], exec_id=exec_id, stream_output=True
        )
        chunks = [chunk async for chunk in output]
        result = await execution.result()
    stdout = b"".join(c.data for c in chunks if c.stream == "stdout")
    stderr = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert stdout == result.stdout == b"".join(b"out%d\n" % i for i in range(1, 201))
    assert stderr == result.stderr
    for stream in ("stdout", "stderr"):
        seqs = [c.seq for c in chunks if c.stream == stream]
        assert seqs == list(range(len(seqs)))
    assert output.end is not None
    assert output.end.type == "exec.exited"


async def test_output_of_a_finished_exec_is_empty(client: Client) -> None:
    result = await client.run("local", ["echo", "done"], stream_output=True)
    async with asyncio.timeout(5):
        assert [c async for c in client.output("local", result.exec_id)] == []
    with pytest.raises(NotFound):
        async for _ in client.output("local", new_exec_id()):
            pass


async def test_output_follows_a_running_exec(client: Client) -> None:
    info = await client.run(
        "local",
        ["sh", "-c", "read x; echo got:$x"],
        attach_stdin=True,
        stream_output=True,
        detach=True,
    )
    async with client.output("local", info.exec_id) as output:
        await client.write_stdin("local", info.exec_id, b"ping\n")
        async with asyncio.timeout(10):
            data = b"".join([chunk.data async for chunk in output])
    assert data == b"got:ping\n"
