"""How an exec ended, in one word: the vocabulary of metrics and logs on both sides.

``ok`` (exit code 0), ``nonzero``, ``signalled`` (killed by a signal),
``timed_out`` (killed by its timeout). The agent and the worker both count
finished execs by it (``execbus_agent_execs_finished_total{result}``,
``execbus_execs_finished_total{result}``), so it lives here, in the
standard-library-only agent package the worker may import.
"""

from __future__ import annotations


def exit_result(exit_code: int, signal: str | None, timed_out: bool) -> str:
    """``ok`` / ``nonzero`` / ``signalled`` / ``timed_out``."""
    if timed_out:
        return "timed_out"
    if signal:
        return "signalled"
    return "ok" if exit_code == 0 else "nonzero"
