"""The one backoff formula of execbus: exponential, capped, with jitter.

Every reconnect loop (agent connections, the worker's and the client's broker
connection) waits ``backoff_delay(attempt)`` between attempts, so a crowd of
workers never hammers a broker or an agent in lockstep. Agent *calls* retry
through tenacity (``connections/retry.py``) with the same shape
(``wait_random_exponential``).
"""

from __future__ import annotations

import random

BASE = 0.05


def backoff_delay(attempt: int, *, cap: float, base: float = BASE) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

    ``base * 2**attempt``, capped at ``cap``, times a random factor in
    [0.5, 1) ("equal jitter": never less than half the nominal wait).
    """
    nominal = min(cap, base * 2 ** min(max(attempt, 0), 30))
    return float(nominal * random.uniform(0.5, 1.0))
