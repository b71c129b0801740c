"""Per-exec lanes (``worker/lanes.py``): one exec's work in order, different execs in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from execbus.testing.waiting import wait_until
from execbus.worker.lanes import Lanes


async def test_the_work_of_one_key_runs_in_submission_order() -> None:
    lanes = Lanes()
    order: list[int] = []

    def step(n: int, delay: float) -> Callable[[], Awaitable[int]]:
        async def work() -> int:
            await asyncio.sleep(delay)  # the first takes longest: order must not change
            order.append(n)
            return n

        return work

    tasks = [lanes.submit("e1", step(n, 0.03 - n * 0.01)) for n in range(3)]
    assert await asyncio.gather(*tasks) == [0, 1, 2]
    assert order == [0, 1, 2]
    assert len(lanes) == 0, "a lane is dropped once its work is done"


async def test_different_keys_do_not_wait_for_each_other() -> None:
    lanes = Lanes()
    gate = asyncio.Event()

    async def blocked() -> str:
        await gate.wait()
        return "e1"

    async def free() -> str:
        return "e2"

    first = lanes.submit("e1", blocked)
    second = lanes.submit("e2", free)
    assert await asyncio.wait_for(second, 1) == "e2"
    assert not first.done() and len(lanes) == 1
    gate.set()
    assert await first == "e1"


async def test_a_later_request_waits_even_while_the_earlier_one_has_not_started() -> None:
    lanes = Lanes()
    gate = asyncio.Event()
    started: list[str] = []

    async def create() -> None:
        started.append("create")
        await gate.wait()

    async def start() -> None:
        started.append("start")

    lanes.submit("e1", create)
    later = lanes.submit("e1", start)
    await wait_until(lambda: started == ["create"])
    assert not later.done()
    gate.set()
    await later
    assert started == ["create", "start"]


async def test_a_failed_request_does_not_block_its_lane() -> None:
    lanes = Lanes()

    async def boom() -> None:
        raise RuntimeError("boom")

    async def fine() -> str:
        return "ok"

    failed = lanes.submit("e1", boom)
    after = lanes.submit("e1", fine)
    with pytest.raises(RuntimeError, match="boom"):
        await failed
    assert await after == "ok"
    assert len(lanes) == 0


async def test_a_cancelled_request_releases_its_lane() -> None:
    lanes = Lanes()
    gate = asyncio.Event()

    waiting = asyncio.Event()

    async def hang() -> None:
        waiting.set()
        await gate.wait()

    async def fine() -> str:
        return "ok"

    hung = lanes.submit("e1", hang)
    after = lanes.submit("e1", fine)
    await asyncio.wait_for(waiting.wait(), 1)
    hung.cancel()
    assert await asyncio.wait_for(after, 1) == "ok"
