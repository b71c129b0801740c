"""The SDK against a real broker, a real worker and its real in-process agent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from execbus import Client, ExecState
from execbus.client import exit_code_of
from execbus.errors import (
    BrokerUnavailable,
    CommandNotFound,
    ExecTimeout,
    InvalidRequest,
    InvalidWorkingDir,
    NotFound,
    UnknownAgent,
)
from execbus.wire.ids import new_exec_id

pytestmark = pytest.mark.integration


async def test_run_returns_exit_code_and_output(client: Client) -> None:
    result = await client.run("local", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result.exit_code == 3
    assert not result.ok
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.signal is None
    assert not result.timed_out
    assert result.info is not None
    assert result.info.state is ExecState.EXITED


async def test_run_reports_signals_like_a_shell(client: Client) -> None:
    result = await client.run("local", ["sh", "-c", "kill -KILL $$"])
    assert (result.exit_code, result.signal) == (137, "SIGKILL")


async def test_run_passes_config_through(client: Client) -> None:
    exec_id = new_exec_id()
    result = await client.run(
        "local",
        ["sh", "-c", 'echo "$A,$B"; pwd'],
        env={"A": "1", "B": "two words"},
        working_dir="/tmp",
        labels={"job": "t1"},
        exec_id=exec_id,
    )
    assert result.stdout == b"1,two words\n/tmp\n"
    assert result.exec_id == exec_id
    info = await client.inspect("local", exec_id)
    assert info.labels == {"job": "t1"}
    assert sorted(info.env_keys) == ["A", "B"]


async def test_run_writes_stdin_and_closes_it(client: Client) -> None:
    data = b"line\n" * 50_000  # 250 KB: several stdin requests
    result = await client.run("local", ["cat"], stdin=data)
    assert result.exit_code == 0
    assert result.stdout == data


async def test_run_timeout_kills_the_command(client: Client) -> None:
    result = await client.run("local", ["sleep", "30"], timeout=0.5)
    assert result.timed_out
    assert result.exit_code == 137


async def test_start_failure_is_typed_with_its_exit_code(client: Client) -> None:
    with pytest.raises(CommandNotFound) as caught:
        await client.run("local", ["/no/such/command"])
    assert exit_code_of(caught.value) == 127


async def test_a_missing_working_dir_is_typed_with_its_exit_code(
    client: Client, tmp_path: Path
) -> None:
    missing = tmp_path / "nonexistent"
    with pytest.raises(InvalidWorkingDir) as caught:
        await client.run("local", ["sh", "-c", "echo ran"], working_dir=str(missing))
    assert caught.value.code == "invalid_working_dir"
    assert exit_code_of(caught.value) == 126
    assert str(missing) in caught.value.message


async def test_create_start_stdin_wait_remove(client: Client) -> None:
    cmd = ["sh", "-c", "read x; echo got:$x"]
    created = await client.create("local", cmd, attach_stdin=True)
    assert created.state is ExecState.CREATED
    exec_id = created.exec_id
    again = await client.create("local", cmd, attach_stdin=True, exec_id=exec_id)
    assert again.exec_id == exec_id, "a repeated create is idempotent"
    started = await client.start("local", exec_id, detach=True)
    assert started.state is ExecState.RUNNING
    again_started = await client.start("local", exec_id, detach=True)
    assert (again_started.exec_id, again_started.state) == (exec_id, ExecState.RUNNING)
    await client.write_stdin("local", exec_id, b"hello\n")
    done = await client.wait("local", exec_id)
    assert done.state is ExecState.EXITED
    assert done.exit is not None
    assert done.exit.stdout == b"got:hello\n"
    await client.remove("local", exec_id)
    with pytest.raises(NotFound):
        await client.inspect("local", exec_id)


async def test_start_attached_returns_the_result(client: Client) -> None:
    created = await client.create("local", ["sh", "-c", "exit 5"])
    result = await client.start("local", created.exec_id)
    assert result.exit_code == 5


async def test_list_signal_and_wait(client: Client) -> None:
    info = await client.run("local", ["sleep", "30"], detach=True)
    running = await client.list("local", include_finished=False)
    assert info.exec_id in [i.exec_id for i in running]
    with pytest.raises(ExecTimeout):
        await client.wait("local", info.exec_id, timeout=0.3)
    await client.signal("local", info.exec_id, "TERM")
    done = await client.wait("local", info.exec_id, timeout=10)
    assert done.exit is not None
    assert done.exit.exit_code == 143
    assert info.exec_id not in [i.exec_id for i in await client.list("local", None, False)]
    assert info.exec_id in [i.exec_id for i in await client.list("local", "")]


async def test_resize_a_tty(client: Client) -> None:
    cmd = ["sh", "-c", "read x; stty size"]
    info = await client.run(
        "local", cmd, tty=True, attach_stdin=True, console_size=(80, 24), detach=True
    )
    await client.resize("local", info.exec_id, 120, 40)
    await client.write_stdin("local", info.exec_id, b"\n")
    done = await client.wait("local", info.exec_id, timeout=10)
    assert done.exit is not None
    assert b"40 120" in done.exit.stdout


async def test_close_stdin_ends_the_input(client: Client) -> None:
    info = await client.run("local", ["cat"], attach_stdin=True, detach=True)
    await client.write_stdin("local", info.exec_id, b"abc")
    await client.close_stdin("local", info.exec_id)
    done = await client.wait("local", info.exec_id, timeout=10)
    assert done.exit is not None
    assert done.exit.stdout == b"abc"


async def test_invalid_arguments_are_rejected_locally(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="env"):
        await client.run("local", ["true"], env=["NO_EQUALS_SIGN"])
    with pytest.raises(InvalidRequest, match="list of arguments"):
        await client.run("local", "echo hi")  # a str is a Sequence[str]: caught at runtime
    with pytest.raises(InvalidRequest, match="exec_id"):
        await client.inspect("local", "not a valid id!")


async def test_unknown_agent_fails_fast(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(UnknownAgent, match="no worker serves agent 'ghost'"):
        await client.run("ghost", ["true"])
    assert time.monotonic() - started < 2


async def test_broker_unavailable_names_the_url_without_password() -> None:
    with pytest.raises(BrokerUnavailable) as caught:
        async with Client("amqp://guest:s3cret@127.0.0.1:1/", namespace="nowhere"):
            pass
    assert "127.0.0.1:1" in caught.value.message
    assert "s3cret" not in str(caught.value)


async def test_close_leaves_no_queue(amqp_url: str, namespace: str, local_worker: object) -> None:
    import aio_pika
    from aio_pika.exceptions import ChannelNotFoundEntity

    async with Client(amqp_url, namespace=namespace) as client:
        await client.run("local", ["true"])
        subscription = client.events()
        await subscription.open()
        inbox = client._require().inbox.name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(ChannelNotFoundEntity):
            await channel.declare_queue(inbox, passive=True)


async def test_close_wakes_pending_calls(
    amqp_url: str, namespace: str, local_worker: object
) -> None:
    from execbus.errors import BrokerError

    client = await Client(amqp_url, namespace=namespace).connect()
    info = await client.run("local", ["sleep", "30"], detach=True)
    waiting = asyncio.ensure_future(client.wait("local", info.exec_id))
    await asyncio.sleep(0.2)
    await client.close()
    with pytest.raises(BrokerError, match="closed"):
        await waiting


async def test_events_of_execs_nobody_here_follows_are_not_parsed(
    amqp_url: str, namespace: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every client of an agent receives all its exit events; it parses only its own."""
    async with Client(amqp_url, namespace=namespace) as bystander:
        await bystander.run("local", ["true"])  # binds it to the agent's exit events
        exits = bystander._require().exits
        parsed: list[str] = []  # every event the bystander parsed reaches deliver()
        deliver = exits.deliver

        def recording_deliver(event: Any) -> None:
            parsed.append(event.exec_id)
            deliver(event)

        monkeypatch.setattr(exits, "deliver", recording_deliver)
        results = await asyncio.gather(*(client.run("local", ["true"]) for _ in range(10)))
        others = {r.exec_id for r in results}
        mine = new_exec_id()
        execution = await bystander.submit("local", ["sh", "-c", "sleep 0.2"], exec_id=mine)
        assert (await execution.result()).exit_code == 0
        await client.run("local", ["true"])  # the others' events have surely arrived by now
    assert not others & set(parsed), "the bystander parsed exits of runs it does not follow"


async def test_malformed_events_on_the_inbox_are_dropped_with_a_warning(
    amqp_url: str, namespace: str, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who may publish to ``<ns>.events`` can reach a client's inbox: junk bodies
    and odd ``x-execbus-exec-id`` headers are dropped, and the client keeps working."""
    import logging

    import aio_pika

    first = await client.run("local", ["true"])  # binds the inbox to local's exits
    junk = [
        ({"x-execbus-exec-id": 42}, b"not json"),  # not a string: parsed, refused
        ({"x-execbus-exec-id": first.exec_id}, b'{"v": 1}'),  # nobody waits for it
        ({}, b'{"v": 1, "type": "exec.exited"}'),  # no header: parsed, refused
    ]
    caplog.set_level(logging.WARNING, logger="execbus.client")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        events = await channel.get_exchange(f"{namespace}.events", ensure=False)
        for headers, body in junk:
            await events.publish(aio_pika.Message(body, headers=headers), "exec.local.~.exited")
    result = await client.run("local", ["echo", "still fine"])
    assert result.stdout == b"still fine\n"
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 2, warnings  # the unwatched exec's copy was never parsed
