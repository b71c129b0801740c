"""Handshake and framing: hello, versions, errors that keep or close a connection."""

from __future__ import annotations

import pytest

from execbus.agent.protocol import encode_frame
from execbus.testing.agent_peer import AgentPeer, AgentRequestError, announce, raw_frame
from tests.system.agent.harness import AgentFactory, AgentProcess


async def test_hello_reports_the_agent(shared_agent: AgentProcess) -> None:
    first = await shared_agent.connect()
    second = await shared_agent.connect()
    try:
        info = first.hello_result
        assert info["version"] == 1
        assert info["agent"] == "execbus-agent"
        assert len(info["boot_id"]) == 32
        assert info["max_frame"] == 16 * 1024 * 1024
        assert {"tty", "stdin", "signal", "resize", "stream"} <= set(info["capabilities"])
        assert "host" in info["backends"]
        assert info["hostname"]
        assert second.hello_result["boot_id"] == info["boot_id"]
    finally:
        await first.close()
        await second.close()


async def test_boot_id_changes_with_each_agent(
    shared_agent: AgentProcess, agent_factory: AgentFactory
) -> None:
    other = agent_factory()
    a, b = await shared_agent.connect(), await other.connect()
    try:
        assert a.hello_result["boot_id"] != b.hello_result["boot_id"]
    finally:
        await a.close()
        await b.close()


async def test_no_common_version_is_refused_and_closed(shared_agent: AgentProcess) -> None:
    c = await shared_agent.connect(hello=False)
    try:
        with pytest.raises(AgentRequestError) as err:
            await c.call("hello", versions=[7, 99], token=None)
        assert err.value.code == "unsupported_version"
        await c.wait_closed()
    finally:
        await c.close()


async def test_highest_common_version_is_chosen(shared_agent: AgentProcess) -> None:
    c = await shared_agent.connect(versions=[1, 2, 3])
    try:
        assert c.hello_result["version"] == 1
    finally:
        await c.close()


async def test_request_before_hello_is_refused_and_closed(shared_agent: AgentProcess) -> None:
    c = await shared_agent.connect(hello=False)
    try:
        with pytest.raises(AgentRequestError) as err:
            await c.call("ping")
        assert err.value.code == "handshake_required"
        await c.wait_closed()
    finally:
        await c.close()


async def test_bad_frame_before_hello_is_answered(shared_agent: AgentProcess) -> None:
    c = await shared_agent.connect(hello=False)
    try:
        c.send_raw(raw_frame(b"{not json"))
        error = (await c.unsolicited()).header
        assert error == {"re": None, "ok": False, "error": error["error"]}
        assert error["error"]["code"] == "bad_json"
        assert (await c.call("hello", versions=[1], token=None))["version"] == 1
    finally:
        await c.close()


async def test_malformed_frames_are_answered_and_the_connection_stays(client: AgentPeer) -> None:
    client.send_raw(raw_frame(b"{not json"))
    client.send_raw(raw_frame(b"[1, 2]"))
    client.send_raw(raw_frame(b"{}", kind=9))
    client.send_raw(encode_frame({"op": "ping"}))  # no id
    codes = []
    for _ in range(4):
        header = (await client.unsolicited()).header
        assert header["re"] is None
        assert header["ok"] is False
        codes.append(header["error"]["code"])
    assert codes == ["bad_json", "bad_json", "bad_frame", "invalid"]
    assert "time" in await client.call("ping")


async def test_unknown_op_is_invalid_and_the_connection_stays(client: AgentPeer) -> None:
    with pytest.raises(AgentRequestError) as err:
        await client.call("reboot")
    assert err.value.code == "invalid"
    with pytest.raises(AgentRequestError) as err:
        await client.call("hello", versions=[1])
    assert err.value.code == "invalid"
    assert "time" in await client.call("ping")


async def test_oversized_frame_closes_only_that_connection(shared_agent: AgentProcess) -> None:
    bad, good = await shared_agent.connect(), await shared_agent.connect()
    try:
        bad.send_raw(announce(16 * 1024 * 1024 + 1) + b"\x01")
        error = (await bad.unsolicited()).header
        assert error["re"] is None
        assert error["error"]["code"] == "frame_too_large"
        await bad.wait_closed()
        assert "time" in await good.call("ping")
    finally:
        await bad.close()
        await good.close()
