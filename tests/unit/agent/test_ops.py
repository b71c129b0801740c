"""The agent's ops against a fake OpContext: no sockets, no session, no core."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from execbus.agent.errors import INVALID, LIMIT_EXCEEDED, AgentError
from execbus.agent.execspec import ExecSpec
from execbus.agent.ops import OPS


class FakeExec:
    def __init__(self, exec_id: str) -> None:
        self.exec_id = exec_id
        self.signals: list[int] = []
        self.stdin: list[tuple[bytes, bool]] = []

    def to_state(self) -> dict[str, Any]:
        return {"exec_id": self.exec_id, "state": "running"}

    def captures(self) -> bytes:
        return b"out"

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    async def write_stdin(self, data: bytes, *, close: bool) -> None:
        self.stdin.append((data, close))


class FakeSupervisor:
    def __init__(self) -> None:
        self.execs: dict[str, FakeExec] = {}
        self.acked: list[str] = []

    async def start(self, spec: ExecSpec) -> tuple[FakeExec, bool]:
        new = spec.exec_id not in self.execs
        exe = self.execs.setdefault(spec.exec_id, FakeExec(spec.exec_id))
        return exe, new

    async def lookup(self, exec_id: str) -> FakeExec:
        return self.execs[exec_id]

    def all(self) -> list[FakeExec]:
        return list(self.execs.values())

    def ack(self, exec_id: str) -> None:
        self.acked.append(exec_id)


class FakeContext:
    """An OpContext: what a session gives the ops."""

    def __init__(self, cap: int | None = None) -> None:
        self.supervisor = FakeSupervisor()
        self.max_frame = 16 * 1024 * 1024
        self.cap = cap
        self.claimed: list[str] = []
        self.settled: list[tuple[str, object]] = []
        self.watching = False

    def claim_exec(self, exec_id: str) -> bool:
        if self.cap is None:
            return False
        if len(self.claimed) >= self.cap:
            raise AgentError(LIMIT_EXCEEDED, "full")
        self.claimed.append(exec_id)
        return True

    def settle_exec(self, exec_id: str, exe: object) -> None:
        self.settled.append((exec_id, exe))

    def watch(self) -> None:
        self.watching = True


def call(ctx: FakeContext, op: str, payload: bytes = b"", **req: Any) -> tuple[Any, bytes]:
    return asyncio.run(OPS[op](ctx, {"op": op, **req}, payload))  # type: ignore[arg-type]


def test_start_claims_a_slot_and_settles_it_with_what_it_started() -> None:
    ctx = FakeContext(cap=1)
    result, captures = call(ctx, "start", exec_id="e1", cmd=["true"])
    assert result == {"exec_id": "e1", "state": "running", "new": True}
    assert captures == b"out"
    assert ctx.claimed == ["e1"]
    assert ctx.settled == [("e1", ctx.supervisor.execs["e1"])]


def test_start_beyond_the_connection_cap_is_refused_before_spawning() -> None:
    ctx = FakeContext(cap=0)
    with pytest.raises(AgentError) as refused:
        call(ctx, "start", exec_id="e1", cmd=["true"])
    assert refused.value.code == LIMIT_EXCEEDED
    assert ctx.supervisor.execs == {}


def test_watch_signal_stdin_list_and_ack_go_to_the_context() -> None:
    ctx = FakeContext()
    call(ctx, "start", exec_id="e1", cmd=["cat"])
    assert call(ctx, "watch") == ({}, b"")
    assert ctx.watching
    call(ctx, "signal", exec_id="e1", signal="TERM")
    assert ctx.supervisor.execs["e1"].signals == [15]
    call(ctx, "stdin", b"data", exec_id="e1", close=True)
    assert ctx.supervisor.execs["e1"].stdin == [(b"data", True)]
    assert call(ctx, "list")[0] == {"execs": [{"exec_id": "e1", "state": "running"}]}
    call(ctx, "ack", exec_id="e1")
    assert ctx.supervisor.acked == ["e1"]


def test_bad_arguments_are_invalid() -> None:
    ctx = FakeContext()
    for op, req in (("stdin", {"exec_id": "e1", "close": "yes"}), ("hello", {})):
        with pytest.raises(AgentError) as bad:
            call(ctx, op, **req)
        assert bad.value.code == INVALID
