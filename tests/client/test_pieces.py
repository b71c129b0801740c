"""The SDK's pure parts, without a broker: config building, ordering, dedupe, redaction."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from execbus.client.config import build_config, env_list, exec_request
from execbus.client.connection import redact_url
from execbus.client.dedupe import SeenIds
from execbus.client.execution import run_result
from execbus.client.results import exit_code_of
from execbus.client.subscriptions import ChunkOrder
from execbus.client.target import AgentTarget, PoolTarget, Target
from execbus.errors import CommandNotFound, InvalidRequest
from execbus.wire.config import ExecConfig
from execbus.wire.events import ExitedEvent, FailedEvent, OutputEvent
from execbus.wire.records import ErrorInfo, ExitInfo
from execbus.wire.replies import Reply
from execbus.wire.requests import CreateRequest, RunRequest
from execbus.wire.routing import Names

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def chunk(stream: str, seq: int) -> OutputEvent:
    return OutputEvent(
        event_id=f"{stream}{seq}", agent="a", exec_id="e1", time=NOW,
        stream=stream, seq=seq, data=b"%d" % seq,  # type: ignore[arg-type]
    )  # fmt: skip


def test_chunks_come_out_in_seq_order_without_duplicates() -> None:
    order = ChunkOrder()
    assert order.add(chunk("stdout", 1)) == []
    assert [c.seq for c in order.add(chunk("stdout", 0))] == [0, 1]
    assert order.add(chunk("stdout", 1)) == [], "a duplicate is dropped"
    assert [c.seq for c in order.add(chunk("stderr", 0))] == [0], "streams are independent"
    assert order.add(chunk("stdout", 3)) == []
    assert [c.seq for c in order.rest()] == [3], "a gap never filled is flushed at the end"


def test_seen_ids_are_bounded() -> None:
    seen = SeenIds(capacity=2)
    assert seen.first_time("a")
    assert not seen.first_time("a")
    assert seen.first_time("b")
    assert seen.first_time("c")
    assert seen.first_time("a"), "the oldest id was forgotten"


def test_build_config_accepts_friendly_values() -> None:
    config = build_config(
        ["echo", "hi"], env={"A": "1"}, labels={"k": "v"}, console_size=(100, 40), user=None
    )
    assert config.env == ["A=1"]
    assert config.console_size is not None
    assert (config.console_size.width, config.console_size.height) == (100, 40)
    assert build_config(["x"], env=["B=2"]).env == ["B=2"]
    assert build_config(ExecConfig(cmd=["x"]), detach=True).detach


@pytest.mark.parametrize(
    ("cmd", "options", "message"),
    [
        ("echo hi", {}, "list of arguments"),
        (["x"], {"env": ["NOPE"]}, "env"),
        (["x"], {"working_dir": "rel"}, "absolute"),
        (["x"], {"bogus": 1}, "bogus"),
        (ExecConfig(cmd=["x"]), {"tty": True}, "not both"),
    ],
)
def test_build_config_rejects_bad_values(
    cmd: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        build_config(cmd, **options)  # type: ignore[arg-type]


def test_env_list_rejects_a_string() -> None:
    with pytest.raises(InvalidRequest):
        env_list("A=1")


def test_redact_url_hides_the_password() -> None:
    assert redact_url("amqp://u:pw@host:5672/vh") == "amqp://u:***@host:5672/vh"
    assert redact_url("amqp://host/") == "amqp://host/"


def test_run_result_prefers_the_reply_then_the_event() -> None:
    exit_info = ExitInfo(exit_code=3, stdout=b"out")
    event = ExitedEvent(event_id="x", agent="a", exec_id="e1", time=NOW, exit=exit_info)
    result = run_result("e1", None, event)
    assert (result.exit_code, result.stdout, result.info) == (3, b"out", None)
    failure = Reply.failure("command_not_found", "nope", exit_code=127)
    with pytest.raises(CommandNotFound) as caught:
        run_result("e1", failure, None)
    assert exit_code_of(caught.value) == 127
    error = ErrorInfo(code="command_not_found", message="nope", exit_code=127)
    failed = FailedEvent(event_id="y", agent="a", exec_id="e1", time=NOW, error=error)
    with pytest.raises(CommandNotFound):
        run_result("e1", None, failed)


def test_target_of_takes_exactly_one_of_agent_and_pool() -> None:
    assert Target.of("a1", None) == AgentTarget("a1")
    assert Target.of(None, "gpu") == PoolTarget("gpu")
    assert AgentTarget("x") != PoolTarget("x")
    with pytest.raises(InvalidRequest, match=r"not both \(got agent 'a1' and pool 'gpu'\)"):
        Target.of("a1", "gpu")
    with pytest.raises(InvalidRequest, match="no agent and no pool"):
        Target.of(None, None)


def test_target_names_its_routing_key_queue_and_itself() -> None:
    names = Names("ns")
    agent, pool = AgentTarget("a1"), PoolTarget("gpu")
    assert (agent.agent, agent.pool, pool.agent, pool.pool) == ("a1", None, None, "gpu")
    assert (agent.routing_key(), pool.routing_key()) == ("agent.a1", "pool.gpu")
    assert (agent.queue(names), pool.queue(names)) == ("ns.agent.a1", "ns.pool.gpu")
    assert (agent.describe(), pool.describe()) == ("agent 'a1'", "pool 'gpu'")


def test_exec_request_addresses_the_target_with_a_fresh_or_given_id() -> None:
    target, exec_id, run = exec_request(RunRequest, None, "gpu", ["true"], None, {})
    assert target == PoolTarget("gpu")
    assert (run.agent, run.pool, run.exec_id, run.config.cmd) == (None, "gpu", exec_id, ["true"])
    target, exec_id, create = exec_request(
        CreateRequest, "a1", None, ["true"], "e1", {"tty": True}, detach=True
    )
    assert (target, exec_id, create.agent, create.pool) == (AgentTarget("a1"), "e1", "a1", None)
    assert create.config.tty and create.config.detach
