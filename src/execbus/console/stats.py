"""Rates and latencies over time, per agent and overall, for the page's charts.

Pure: every method takes the time. Counts go in one-second buckets (of the
console's clock, when the event arrived) kept for ``window`` seconds: new
execs and finished execs by result. Run times (started -> exited, from the
agent's own timestamps) and end-to-end times (exec.created -> exit event,
both the worker's clock) are sampled per bucket, at most ``MAX_SAMPLES``
per second, for percentiles over ``LATENCY_STEP``-second steps.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

RESULTS = ("ok", "nonzero", "signalled", "timed_out", "failed")
MAX_SAMPLES = 200
LATENCY_STEP = 10
MAX_AGENTS = 1_000  # per-agent series kept for this many agents (the busiest)
TOTAL = ""  # the overall series' key


@dataclass(slots=True)
class Bucket:
    second: int
    new: Counter[str] = field(default_factory=Counter)
    finished: dict[str, Counter[str]] = field(default_factory=dict)  # agent -> result -> n
    runtimes: list[tuple[str, float]] = field(default_factory=list)
    e2e: list[tuple[str, float]] = field(default_factory=list)
    offered: list[int] = field(default_factory=lambda: [0, 0])  # runtimes, e2e (reservoirs)


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Stats:
    """The last ``window`` seconds of activity."""

    def __init__(self, window: int = 300, seed: int | None = None) -> None:
        self.window = window
        self._buckets: dict[int, Bucket] = {}
        self._random = random.Random(seed)
        self.agents: Counter[str] = Counter()  # activity per agent, for MAX_AGENTS

    def _bucket(self, now: float) -> Bucket:
        second = int(now)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = Bucket(second)
            cutoff = second - self.window
            for old in [s for s in self._buckets if s <= cutoff]:
                del self._buckets[old]
        return bucket

    def _tracked(self, agent: str) -> bool:
        if agent in self.agents or len(self.agents) < MAX_AGENTS:
            self.agents[agent] += 1
            return True
        return False

    def new_exec(self, agent: str, now: float) -> None:
        bucket = self._bucket(now)
        bucket.new[TOTAL] += 1
        if self._tracked(agent):
            bucket.new[agent] += 1

    def finished(
        self,
        agent: str,
        result: str,
        now: float,
        runtime: float | None = None,
        e2e: float | None = None,
    ) -> None:
        bucket = self._bucket(now)
        tracked = self._tracked(agent)
        for key in (TOTAL, agent) if tracked else (TOTAL,):
            bucket.finished.setdefault(key, Counter())[result] += 1
        sample = agent if tracked else TOTAL
        if runtime is not None:
            bucket.offered[0] += 1
            self._sample(bucket.runtimes, bucket.offered[0], (sample, runtime))
        if e2e is not None:
            bucket.offered[1] += 1
            self._sample(bucket.e2e, bucket.offered[1], (sample, e2e))

    def _sample(
        self, values: list[tuple[str, float]], offered: int, item: tuple[str, float]
    ) -> None:
        """Reservoir sampling: each of the ``offered`` values has the same chance to stay."""
        if len(values) < MAX_SAMPLES:
            values.append(item)
            return
        slot = self._random.randrange(offered)
        if slot < MAX_SAMPLES:
            values[slot] = item

    def series(self, agent: str | None, now: float, seconds: int | None = None) -> dict[str, Any]:
        """Chart data for ``agent`` (None: overall) over the last ``seconds``.

        ``rate``: per-second columns ``t`` (unix seconds), ``new`` and one per
        result; ``latency``: per ``LATENCY_STEP`` columns ``t``, ``p50``/
        ``p90``/``p99`` of run times and ``e2e_p50``/``e2e_p99`` (seconds).
        """
        span = min(seconds or self.window, self.window)
        key = agent or TOTAL
        end = int(now)
        start = end - span + 1
        rate: dict[str, list[Any]] = {"t": [], "new": [], **{r: [] for r in RESULTS}}
        for second in range(start, end + 1):
            bucket = self._buckets.get(second)
            rate["t"].append(second)
            rate["new"].append(bucket.new.get(key, 0) if bucket else 0)
            finished = bucket.finished.get(key) if bucket else None
            for result in RESULTS:
                rate[result].append(finished.get(result, 0) if finished else 0)
        latency: dict[str, list[Any]] = {
            "t": [],
            "p50": [],
            "p90": [],
            "p99": [],
            "e2e_p50": [],
            "e2e_p99": [],
        }
        first_step = start - start % LATENCY_STEP
        for step in range(first_step, end + 1, LATENCY_STEP):
            runtimes: list[float] = []
            e2e: list[float] = []
            for second in range(step, step + LATENCY_STEP):
                bucket = self._buckets.get(second)
                if bucket is None:
                    continue
                runtimes += [v for a, v in bucket.runtimes if agent is None or a == agent]
                e2e += [v for a, v in bucket.e2e if agent is None or a == agent]
            runtimes.sort()
            e2e.sort()
            latency["t"].append(step)
            for q in (50, 90, 99):
                latency[f"p{q}"].append(_round(percentile(runtimes, q)))
            latency["e2e_p50"].append(_round(percentile(e2e, 50)))
            latency["e2e_p99"].append(_round(percentile(e2e, 99)))
        totals = {r: sum(rate[r]) for r in ("new", *RESULTS)}
        return {"agent": agent, "rate": rate, "latency": latency, "totals": totals}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
