"""Starting execs: output, exit codes, env, working directory, stdin, idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import uuid
from typing import Any

import pytest

from execbus.agent.spawn import DEFAULT_PATH
from execbus.testing.agent_peer import AgentPeer, AgentRequestError, split_captures
from tests.system.agent.harness import AgentFactory


def new_id() -> str:
    return uuid.uuid4().hex


async def test_stdout_and_stderr_are_captured_separately(client: AgentPeer) -> None:
    state, out, err = await client.run(["sh", "-c", "echo out; echo err >&2; echo more"])
    assert (out, err) == (b"out\nmore\n", b"err\n")
    assert state["state"] == "exited"
    assert state["exit"] == {
        "exit_code": 0,
        "signal": None,
        "timed_out": False,
        "stdout_len": 9,
        "stderr_len": 4,
        "stdout_dropped": 0,
        "stderr_dropped": 0,
    }
    assert state["finished_at"] >= state["started_at"] > 0
    assert state["pid"] > 0


@pytest.mark.parametrize(
    ("script", "code", "signal"),
    [
        ("exit 0", 0, None),
        ("exit 3", 3, None),
        ("kill -KILL $$", 137, "SIGKILL"),
        ("kill -TERM $$", 143, "SIGTERM"),
    ],
)
async def test_exit_codes(client: AgentPeer, script: str, code: int, signal: str | None) -> None:
    state, _, _ = await client.run(["sh", "-c", script])
    assert (state["exit"]["exit_code"], state["exit"]["signal"]) == (code, signal)


async def test_command_not_found_fails_with_127(client: AgentPeer) -> None:
    for cmd in (["no-such-command-xyz"], ["/no/such/file"], ["./relative-missing"]):
        state, out, err = await client.run(cmd)
        assert state["state"] == "failed"
        assert state["exit"] is None
        assert state["pid"] is None
        assert state["error"]["code"] == "command_not_found"
        assert state["error"]["exit_code"] == 127
        assert out == err == b""


async def test_not_executable_fails_with_126(client: AgentPeer, tmp_dir: str) -> None:
    script = os.path.join(tmp_dir, "script.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    for cmd in ([script], [tmp_dir]):
        state, _, _ = await client.run(cmd)
        assert state["state"] == "failed"
        assert state["error"]["code"] == "command_not_executable"
        assert state["error"]["exit_code"] == 126
    state, _, _ = await client.run(["script.sh"], env=[f"PATH={tmp_dir}"])
    assert state["error"]["code"] == "command_not_executable"


async def test_env_is_exactly_the_given_env(client: AgentPeer) -> None:
    home = pwd.getpwuid(os.geteuid()).pw_dir
    _, out, _ = await client.run(["env"], env=["A=1", "B=x=y", "EMPTY="])
    assert sorted(out.decode().splitlines()) == [
        "A=1",
        "B=x=y",
        "EMPTY=",
        f"HOME={home}",
        f"PATH={DEFAULT_PATH}",
    ]
    _, out, _ = await client.run(["/usr/bin/env"], env=["PATH=/nowhere", "HOME=/h"])
    assert sorted(out.decode().splitlines()) == ["HOME=/h", "PATH=/nowhere"]


async def test_executable_is_resolved_with_the_exec_path(client: AgentPeer, tmp_dir: str) -> None:
    tool = os.path.join(tmp_dir, "mytool")
    with open(tool, "w") as f:
        f.write("#!/bin/sh\necho from mytool\n")
    os.chmod(tool, 0o755)
    _, out, _ = await client.run(["mytool"], env=[f"PATH=/nowhere:{tmp_dir}:/bin"])
    assert out == b"from mytool\n"
    state, _, _ = await client.run(["sh", "-c", "true"], env=["PATH=/nowhere"])
    assert state["error"]["code"] == "command_not_found"


async def test_env_entry_without_equals_is_invalid(client: AgentPeer) -> None:
    with pytest.raises(AgentRequestError) as err:
        await client.call("start", exec_id=new_id(), cmd=["true"], env=["SECRET"])
    assert err.value.code == "invalid"


async def test_working_dir(client: AgentPeer, tmp_dir: str) -> None:
    _, out, _ = await client.run(["pwd"], working_dir=tmp_dir)
    assert out == tmp_dir.encode() + b"\n"
    _, out, _ = await client.run(["pwd"])
    assert out == b"/\n"
    state, _, _ = await client.run(["pwd"], working_dir=os.path.join(tmp_dir, "missing"))
    assert state["state"] == "failed"
    assert state["error"]["code"] == "invalid_working_dir"
    with pytest.raises(AgentRequestError) as err:
        await client.call("start", exec_id=new_id(), cmd=["pwd"], working_dir="relative")
    assert err.value.code == "invalid"


async def test_stdin_round_trip(client: AgentPeer) -> None:
    exec_id = new_id()
    await client.call("start", exec_id=exec_id, cmd=["cat"], stdin=True)
    await client.call("stdin", b"hello ", exec_id=exec_id)
    await client.call("stdin", b"world", exec_id=exec_id, close=True)
    frame = await client.request("wait", exec_id=exec_id)
    out, _ = split_captures(frame.header["result"], frame.payload)
    assert out == b"hello world"
    with pytest.raises(AgentRequestError) as err:
        await client.call("stdin", b"late", exec_id=exec_id)
    assert err.value.code == "not_running"


async def test_stdin_larger_than_a_pipe_is_flow_controlled(client: AgentPeer) -> None:
    exec_id = new_id()
    data = os.urandom(3 * 1024 * 1024)
    await client.call("start", exec_id=exec_id, cmd=["sha256sum"], stdin=True)
    await client.call("stdin", data, exec_id=exec_id, close=True)
    frame = await client.request("wait", exec_id=exec_id)
    out, _ = split_captures(frame.header["result"], frame.payload)
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()


async def test_stdin_of_an_exec_without_stdin(client: AgentPeer) -> None:
    exec_id = new_id()
    await client.call("start", exec_id=exec_id, cmd=["sleep", "30"])
    with pytest.raises(AgentRequestError) as err:
        await client.call("stdin", b"x", exec_id=exec_id)
    assert err.value.code == "stdin_closed"
    await client.call("signal", exec_id=exec_id, signal="KILL")
    _, out, _ = await client.run(["cat"])
    assert out == b""  # stdin is /dev/null


async def test_start_is_idempotent_by_exec_id(client: AgentPeer, tmp_dir: str) -> None:
    exec_id, log = new_id(), os.path.join(tmp_dir, "runs")
    args = {"exec_id": exec_id, "cmd": ["sh", "-c", f"echo run >> {log}; echo out"]}
    first, second = await asyncio.gather(client.call("start", **args), client.call("start", **args))
    assert sorted([first["new"], second["new"]]) == [False, True]
    assert first["pid"] == second["pid"]
    await client.call("wait", exec_id=exec_id)
    frame = await client.request("start", **args)
    assert frame.header["result"]["new"] is False
    assert frame.header["result"]["state"] == "exited"
    assert split_captures(frame.header["result"], frame.payload) == (b"out\n", b"")
    with open(log) as f:
        assert f.read() == "run\n"


async def test_inspect_list_ack(client: AgentPeer) -> None:
    exec_id = new_id()
    await client.call("start", exec_id=exec_id, cmd=["sleep", "30"], meta={"k": [1, "v"]})
    frame = await client.request("inspect", exec_id=exec_id)
    assert frame.header["result"]["state"] == "running"
    assert frame.header["result"]["meta"] == {"k": [1, "v"]}
    assert frame.payload == b""
    with pytest.raises(AgentRequestError) as err:
        await client.call("ack", exec_id=exec_id)
    assert err.value.code == "not_finished"
    await client.call("signal", exec_id=exec_id, signal="KILL")
    await client.call("wait", exec_id=exec_id)
    listed = {e["exec_id"]: e for e in (await client.call("list"))["execs"]}
    assert listed[exec_id]["exit"]["signal"] == "SIGKILL"
    await client.call("ack", exec_id=exec_id)
    assert exec_id not in {e["exec_id"] for e in (await client.call("list"))["execs"]}
    for op in ("inspect", "wait", "ack"):
        with pytest.raises(AgentRequestError) as err:
            await client.call(op, exec_id=exec_id)
        assert err.value.code == "not_found"


async def test_output_limit_counts_the_rest_as_dropped(client: AgentPeer) -> None:
    state, out, err = await client.run(
        ["sh", "-c", "printf 0123456789abcdef; printf xyz >&2"], output_limit=10
    )
    assert (out, err) == (b"0123456789", b"xyz")
    assert state["exit"]["stdout_dropped"] == 6
    assert state["exit"]["stderr_dropped"] == 0


async def test_privileged_is_refused_by_default(client: AgentPeer) -> None:
    with pytest.raises(AgentRequestError) as err:
        await client.call("start", exec_id=new_id(), cmd=["true"], privileged=True)
    assert err.value.code == "forbidden"


async def test_privileged_host_exec_with_allow_privileged(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--allow-privileged")
    c = await agent.connect()
    try:
        _state, out, _ = await c.run(["echo", "ok"], privileged=True)
        assert out == b"ok\n"
    finally:
        await c.close()


async def test_invalid_start_arguments(client: AgentPeer) -> None:
    bad: list[dict[str, Any]] = [
        {"cmd": []},
        {"cmd": "echo hi"},
        {"cmd": ["echo", 1]},
        {"cmd": ["true"], "timeout": -1},
        {"cmd": ["true"], "tty": "yes"},
        {"cmd": ["true"], "output_limit": 1024**3},
        {"cmd": ["true"], "console_size": {"width": 0, "height": 10}},
        {"cmd": ["true"], "meta": [1]},
        {"cmd": ["true"], "container_id": "--help"},
        {"cmd": ["true"], "container_id": "a/b"},
    ]
    for args in bad:
        with pytest.raises(AgentRequestError) as err:
            await client.call("start", exec_id=new_id(), **args)
        assert err.value.code == "invalid", args
    with pytest.raises(AgentRequestError) as err:
        await client.call("start", cmd=["true"])
    assert err.value.code == "invalid"


async def test_max_execs_limit(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--max-execs", "2")
    c = await agent.connect()
    try:
        await c.call("start", exec_id="a", cmd=["sleep", "30"])
        await c.call("start", exec_id="b", cmd=["true"])
        with pytest.raises(AgentRequestError) as err:
            await c.call("start", exec_id="c", cmd=["true"])
        assert err.value.code == "limit_exceeded"
        assert (await c.call("start", exec_id="a", cmd=["sleep", "30"]))["new"] is False
        await c.call("wait", exec_id="b")
        await c.call("ack", exec_id="b")
        assert (await c.call("start", exec_id="c", cmd=["true"]))["new"] is True
        await c.call("signal", exec_id="a", signal=9)
    finally:
        await c.close()


async def test_unattached_streams_are_neither_captured_nor_counted(client: AgentPeer) -> None:
    script = ["sh", "-c", "echo out; echo err >&2"]
    state, out, err = await client.run(script, attach_stdout=False)
    assert (out, err) == (b"", b"err\n")
    assert state["exit"]["stdout_dropped"] == 0
    state, out, err = await client.run(script, attach_stderr=False, output_limit=2)
    assert (out, err) == (b"ou", b"")
    assert (state["exit"]["stdout_dropped"], state["exit"]["stderr_dropped"]) == (2, 0)
    state, out, _ = await client.run(script, attach_stdout=False, attach_stderr=False)
    assert out == b""
    assert state["exit"]["exit_code"] == 0
    state, out, _ = await client.run(["echo", "tty"], tty=True, attach_stdout=False)
    assert out == b""
    assert state["exit"]["exit_code"] == 0
