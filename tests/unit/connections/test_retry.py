"""Agent-call retries: the bare first attempt, then tenacity with the same budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from execbus.connections.retry import RetryPolicy, call_with_retry
from execbus.errors import AgentUnavailable, NotFound

FAST = RetryPolicy(attempts=4, max_elapsed=5.0, attempt_timeout=1.0, initial_backoff=0.001)


class Flaky:
    """Fails with ``error`` the first ``failures`` times, then returns the call count."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or AgentUnavailable("connection refused")
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


async def test_a_successful_call_runs_once() -> None:
    call = Flaky(0)
    assert await call_with_retry(call, FAST) == 1


async def test_transient_failures_are_retried_with_on_retry_per_retry() -> None:
    call, retried_after = Flaky(2), []
    on_retry = lambda state: retried_after.append(state.attempt_number)  # noqa: E731
    assert await call_with_retry(call, FAST, on_retry=on_retry) == 3
    assert retried_after == [1, 2]


async def test_attempts_bound_the_calls_and_the_last_error_propagates() -> None:
    call = Flaky(10)
    with pytest.raises(AgentUnavailable, match="refused"):
        await call_with_retry(call, FAST)
    assert call.calls == FAST.attempts


async def test_a_single_attempt_policy_never_retries() -> None:
    call = Flaky(10)
    with pytest.raises(AgentUnavailable):
        await call_with_retry(call, RetryPolicy(attempts=1))
    assert call.calls == 1


async def test_semantic_errors_are_not_retried() -> None:
    call = Flaky(10, NotFound("no such exec"))
    with pytest.raises(NotFound):
        await call_with_retry(call, FAST)
    assert call.calls == 1


async def test_a_hung_attempt_times_out_and_is_retried() -> None:
    calls = 0

    async def hangs_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return "ok"

    assert await call_with_retry(hangs_once, FAST, attempt_timeout=0.05) == "ok"
    assert calls == 2


async def test_elapsed_time_counts_the_first_attempt() -> None:
    async def slow_failure() -> None:
        await asyncio.sleep(0.2)
        raise AgentUnavailable("reset")

    policy = RetryPolicy(attempts=100, max_elapsed=0.3, initial_backoff=0.001)
    t0 = time.monotonic()
    with pytest.raises(AgentUnavailable):
        await call_with_retry(slow_failure, policy)
    assert time.monotonic() - t0 < 0.9  # two or three attempts, not a hundred
