"""Retries of agent calls: transient faults only, bounded by attempts and time.

The predicate is narrow: only :class:`~execbus.errors.AgentUnavailable`
(connection reset, a call that timed out) is retried. Semantic errors
(unknown user, not found), a refused authentication, ``CancelledError`` and
:class:`~execbus.errors.AgentDisconnected` (the call already waited for the
lost link to come back) never are. Every
attempt has its own timeout; the backoff is exponential with jitter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from execbus.errors import AgentDisconnected, AgentUnavailable

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try an agent call."""

    attempts: int = 6
    max_elapsed: float = 15.0
    attempt_timeout: float = 10.0
    initial_backoff: float = 0.05
    max_backoff: float = 2.0


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    on_retry: Callable[[RetryCallState], None] | None = None,
    attempt_timeout: float | None = None,
) -> T:
    """Run ``call`` with the policy; the last :class:`AgentUnavailable` propagates.

    The first attempt runs bare: nearly every agent call succeeds at once, and
    setting up tenacity per call costs more than the call's own framing. A
    failed first attempt is handed to tenacity as its attempt 1, so the
    backoff, the stops and ``on_retry`` behave exactly as if it ran there.
    """
    timeout = policy.attempt_timeout if attempt_timeout is None else attempt_timeout
    started = time.monotonic()
    try:
        return await _with_timeout(call, timeout)
    except AgentUnavailable as exc:
        if not _retryable(exc):
            raise
        first_failure: AgentUnavailable | None = exc
    spent = time.monotonic() - started

    async def attempt_call() -> T:
        nonlocal first_failure
        if first_failure is not None:
            failure, first_failure = first_failure, None
            raise failure  # attempt 1, already made
        return await _with_timeout(call, timeout)

    retrying = AsyncRetrying(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(policy.attempts)
        | stop_after_delay(max(0.0, policy.max_elapsed - spent)),
        wait=wait_random_exponential(multiplier=policy.initial_backoff, max=policy.max_backoff),
        before_sleep=on_retry,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await attempt_call()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, AgentUnavailable) and not isinstance(exc, AgentDisconnected)


async def _with_timeout(call: Callable[[], Awaitable[T]], timeout: float) -> T:
    try:
        async with asyncio.timeout(timeout):
            return await call()
    except TimeoutError:
        raise AgentUnavailable(f"agent did not answer within {timeout:g} s") from None
